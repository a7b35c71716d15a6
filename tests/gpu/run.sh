#!/usr/bin/env bash
# The GPU checks (DeepSpeed ZeRO-2 / ZeRO-3: fit, score on the GPU, export and reload, resume; bf16-mixed single
# device and FSDP fits) in one go.
# Needs one CUDA GPU and the deepspeed extra; CI has no GPU, so these tests skip there (tests/test_deepspeed.py
# runs the same path on CPU processes in CI).
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pytest tests/gpu -v -p no:cacheprovider "$@"
