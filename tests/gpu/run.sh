#!/usr/bin/env bash
# The GPU checks of the scale-out issue (ZeRO-2 / ZeRO-3 fits, export + reload, DeepSpeed resume) in one go.
# Needs one CUDA GPU and the deepspeed extra; about 5 minutes on one H100. CI has no GPU: these tests skip there.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pytest tests/gpu -v -p no:cacheprovider "$@"
