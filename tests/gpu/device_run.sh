#!/usr/bin/env bash
# rmlab on the lent GPU machine, in one call from the repository root, the kit built here first
# (python tests/gpu/kit.py):
#   run(command="bash tests/gpu/device_run.sh", carry=[".devkit"], timeout_s=540)
# It records the environment, installs the kit offline into a venv over the image's packages, composes every GPU
# config, runs tests/gpu (a skip counts as a failure), then the throughput check, and stops itself BUDGET_S seconds
# after it started (420: a warm rerun still fits the 15-minute lease), so that everything it wrote to $OUT comes
# back: summary.txt (read this first), env.txt, install.log, compose.log, pytest.log, junit.xml, throughput.log,
# throughput.json, runs.tgz (the runs' small files).
# Dry mode, without a GPU (tests/test_device_kit.py runs it in CI): RMLAB_DEVICE_DRY=1 installs nothing (PYTHON, the
# current environment's interpreter, runs everything), lets tests/gpu skip and runs the throughput check tiny, on CPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
BUDGET_S=${BUDGET_S:-420}
DRY=${RMLAB_DEVICE_DRY:-0}
OUT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
       TOKENIZERS_PARALLELISM=false RMLAB_TOKENIZED_CACHE=off
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET_S - $(elapsed) )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$OUT/summary.txt"; }
finish() {
  tar czf "$OUT/runs.tgz" -C "$WORK" --exclude=venv --exclude=checkpoints --exclude='*.safetensors' --exclude='*.bin' \
    --exclude='*.pt' . 2>/dev/null
  log "done: exit $1 (outputs in $OUT)"
  exit "$1"
}
status=0

# 0. The environment, as found (seconds). -----------------------------------------------------------------------------
PY=${PYTHON:-python3}
{ echo "date: $(date -u)"; nvidia-smi 2>&1 | head -15; echo "cpus: $(nproc)"; free -g; df -h /tmp
  echo "python3: $(command -v python3) $(python3 -V 2>&1); python: $(command -v python || echo none)"
  "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|lightning|pytorch.lightning|transformers|accelerate|peft|pytest|flash.attn|pyarrow|pandas|trl|datasets|deepspeed|hydra.core|omegaconf|setuptools|typing.extensions|numpy|ninja|rich) '
  "$PY" - <<'EOF'
import importlib.util as found
import torch
print("TORCH", torch.__version__, "| cuda", torch.version.cuda, "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("GPU", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0),
          "| bf16", torch.cuda.is_bf16_supported(), "| nccl", torch.cuda.nccl.version())
print({name: bool(found.find_spec(name)) for name in ("flash_attn", "pyarrow", "pandas", "trl", "deepspeed", "hydra")},
      "| torch varlen:", hasattr(__import__("torch.nn.attention", fromlist=["x"]), "varlen")
      or bool(found.find_spec("torch.nn.attention.varlen")))
EOF
} > "$OUT/env.txt" 2>&1
log "environment: $(grep -m1 '^TORCH ' "$OUT/env.txt")"
log "gpu: $(grep -m1 '^GPU ' "$OUT/env.txt" || echo none)"

# 1. The kit, offline, into a venv over the image's packages (about 20 s). ---------------------------------------------
if [ "$DRY" = 1 ]; then
  log "dry run: nothing installed; $PY runs everything"
elif [ ! -d .devkit/wheels ]; then
  log "FAIL: no .devkit here: build it first (python tests/gpu/kit.py) and carry it (carry=[\".devkit\"])"; finish 1
else
  if python3 -m venv --without-pip --system-site-packages "$WORK/venv" >>"$OUT/install.log" 2>&1; then
    PY=$WORK/venv/bin/python   # pip comes from the image; what it installs goes into the venv
  else
    export PIP_BREAK_SYSTEM_PACKAGES=1   # no venv module: into the image's own environment (a throwaway machine)
    log "no venv: installing into the image's python3"
  fi
  if ! bash tests/gpu/install_kit.sh "$PY" .devkit >>"$OUT/install.log" 2>&1; then
    log "FAIL: the kit did not install (install.log)"; finish 1
  fi
  log "kit installed: $("$PY" -c 'import deepspeed, hydra, rmlab.conf; print("deepspeed", deepspeed.__version__, "| rmlab.conf", rmlab.conf.__path__[0])' 2>&1 | tail -1)"
fi

# 2. Every GPU config composes, and what the runs will use is there (seconds). -----------------------------------------
if "$PY" tests/gpu/compose_configs.py >"$OUT/compose.log" 2>&1; then log "$(tail -1 "$OUT/compose.log")"
else log "FAIL: compose (compose.log)"; status=1; fi
log "kernels: $("$PY" -c 'from rmlab.packing import installed_varlen_kernel as k; print("packed attention on CUDA:", k()[1] or "the per-sequence loop")' 2>&1 | tail -1)"

# 3. tests/gpu, a skip being a failure on the device (3 to 5 minutes). --------------------------------------------------
THROUGHPUT_S=${THROUGHPUT_S:-110}
PYTEST_S=$(( $(left) - THROUGHPUT_S ))
[ "$DRY" = 1 ] || export RMLAB_REQUIRE_GPU=1
timeout "$PYTEST_S" "$PY" -m pytest tests/gpu -v -rA -p no:cacheprovider --basetemp="$WORK/pytest" \
  --junitxml="$OUT/junit.xml" >"$OUT/pytest.log" 2>&1
rc=$?
log "tests/gpu (rc $rc, limit ${PYTEST_S} s): $(tail -1 "$OUT/pytest.log")"
grep -E '^(PASSED|FAILED|ERROR|SKIPPED) ' "$OUT/pytest.log" | cut -c1-150 | while read -r line; do log "  $line"; done
[ "$rc" = 0 ] || status=1

# 4. Throughput (about 1.5 minutes): packed vs padded, MFU, the attention kernels, TRL if the image allows. -------------
TINY=$([ "$DRY" = 1 ] && echo --tiny)
if [ "$(left)" -gt 30 ]; then
  timeout $(( $(left) - 10 )) "$PY" tests/gpu/throughput.py --out "$OUT/throughput.json" $TINY >"$OUT/throughput.log" 2>&1
  rc=$?
  grep '^THROUGHPUT' "$OUT/throughput.log" | cut -c1-400 | while read -r line; do log "$line"; done
  log "throughput: rc $rc"
  [ "$rc" = 0 ] || status=1
else
  log "throughput: skipped, $(left) s left"; status=1
fi
finish "$status"
