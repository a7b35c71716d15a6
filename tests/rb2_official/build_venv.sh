#!/usr/bin/env bash
# Builds the venv in which tests/rb2_official/official_scores.py runs RewardBench 2's own scoring code,
# PyPI rewardbench==0.1.4 (rewardbench/utils.py: load_bon_dataset_v2, reroll_and_score_dataset,
# sample_stats, process_single_model), for tests/test_rewardbench2_official.py.
#
# rewardbench pins transformers==4.51.0, so it cannot share rmlab's environment. Its declared
# dependencies (bitsandbytes, wandb, fschat's web stack, vllm extras, ...) are not needed to import
# the package: rewardbench goes in with --no-deps, next to exactly what `import rewardbench` needs
# (its __init__ imports chattemplates, dpo, models and utils, which import torch, transformers, trl,
# accelerate, datasets, fastchat.conversation, huggingface_hub, numpy and pandas; models/__init__ also
# touches LlamaTokenizer, which needs sentencepiece). Versions are those
# of rewardbench 0.1.4's time (spring 2025), except torch: the CPU build 2.13.0 that rmlab's CI uses
# (an unpinned torch would pull a multi-GB CUDA build). fschat goes in with --no-deps: only its
# conversation module is imported, and that needs the standard library alone.
#
# Usage: bash tests/rb2_official/build_venv.sh [VENV]
#   VENV defaults to $RMLAB_RB2_VENV, else <repo>/.rb2-venv (the path the test looks at).
#   PYTHON picks the interpreter that makes the venv (default: python3).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-${RMLAB_RB2_VENV:-$repo/.rb2-venv}}"
python="${PYTHON:-python3}"

rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --no-compile --only-binary=:all:)
"${pip[@]}" \
    torch==2.13.0 \
    transformers==4.51.0 tokenizers==0.21.1 sentencepiece==0.2.0 huggingface-hub==0.30.2 \
    trl==0.17.0 accelerate==1.6.0 \
    datasets==3.5.0 pyarrow==19.0.1 \
    numpy==2.2.5 pandas==2.2.3
"${pip[@]}" --no-deps rewardbench==0.1.4 fschat==0.2.36

"$venv/bin/python" - <<'EOF'
import rewardbench
from rewardbench.utils import load_bon_dataset_v2, process_single_model, reroll_and_score_dataset  # noqa: F401

assert rewardbench.__version__ == "0.1.4", rewardbench.__version__
print(f"rewardbench {rewardbench.__version__} imports")
EOF
