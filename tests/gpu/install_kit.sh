#!/usr/bin/env bash
# Installs the device kit (tests/gpu/kit.py) and rmlab into PYTHON's environment without any package index: every
# kit wheel as it is (no dependency resolution: the image has torch, numpy, ...), then rmlab from the working tree,
# editable, built with the kit's setuptools. Run from the repository root. tests/gpu/device_run.sh calls it on the
# device; tests/test_device_kit.py into a clean Python 3.12 environment.
#   bash tests/gpu/install_kit.sh PYTHON [KIT_DIR]      (KIT_DIR: .devkit)
set -euo pipefail
PYTHON=$1
KIT=${2:-.devkit}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index "$@"; }
pip_install --no-deps "$KIT"/wheels/*.whl
pip_install --no-deps --find-links "$KIT/build" --find-links "$KIT/wheels" --editable .
