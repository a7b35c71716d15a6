#!/usr/bin/env bash
# The GPU checks of DeepSpeed (ZeRO-2 / ZeRO-3: fit, score on the GPU, export and reload, resume) in one go.
# Needs one CUDA GPU and the deepspeed extra; CI has no GPU, so these tests skip there (tests/test_deepspeed.py
# runs the same path on CPU processes in CI).
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pytest tests/gpu -v -p no:cacheprovider "$@"
