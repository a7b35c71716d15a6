"""Real ``python -m rmlab`` runs on 2 CPU processes (gloo), as tests/test_deepspeed.py and tests/test_fsdp.py
start them (with tests/probes.py's callback), and what they read back (rewards, the weight-decay line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
TIMEOUT_S = 600
PARTITIONED = "strategy.stage3_param_persistence_threshold=0"  # every ZeRO-3 parameter is gathered and released


def command(run_dir: Path, model_dir: Path, data: Path, *extra: str) -> list[str]:
    """96 pairs, 2 processes × 4 pairs × accumulation 2 = 16 pairs per step, 4 steps, a checkpoint every 2."""
    return [sys.executable, "-m", "rmlab", "model=hf", f"model.name_or_path={model_dir}", "data=local",
            f"data.source={data}", "data.max_length=64", "data.batch_size=4", "data.global_batch_size=16",
            "trainer.devices=2", "trainer.max_steps=4", "ckpt_every_n_steps=2", "logger=none",
            "trainer.enable_progress_bar=false", "optimizer.optimizer.lr=1e-3", "optimizer.optimizer.weight_decay=1e-3",
            "+callbacks.probe._target_=probes.Probe", f"hydra.run.dir={run_dir}", *extra]


def child_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables (torchrun's, srun's, a rank's), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in
           ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(TESTS_DIR), env.get("PYTHONPATH", "")]), **extra)
    return env


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(args, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


def tail(result: Any) -> str:
    return f"rc={result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-4000:]}"


def rewards(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rewards" / "heldout.jsonl").read_text().splitlines()]


def decay_line(result: subprocess.CompletedProcess) -> str:
    return next(line.split(" - ", 1)[-1] for line in (result.stdout + result.stderr).splitlines()
                if "weight decay 0.001 on" in line)
