"""The benchmark's summary: medians over rounds, ratios, and the printed table."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any, Optional

LABELS = {"rmlab": "rmlab (Lightning, packed batches)", "rmlab-padded": "rmlab, packing off (length-grouped, padded)",
          "trl-defaults": "TRL RewardTrainer, defaults", "trl-best": "TRL, group_by_length + checkpointing off", "gemm": "fp32 GEMM (torch.mm, model shapes)"}


def derived(result: dict[str, Any], gemm_gflops: Optional[float]) -> dict[str, Any]:
    seconds = result["train_seconds"]
    out = dict(result)
    out["pairs_per_s"] = result["pairs"] / seconds
    out["tokens_per_s"] = result["real_tokens"] / seconds
    out["real_fraction"] = result["real_tokens"] / max(result["processed_tokens"], 1)
    parameter_tokens = (result["non_embedding_parameters"] * result["real_tokens"]
                        - result.get("skipped_parameter_tokens", 0))
    out["gflops"] = 6 * parameter_tokens / seconds / 1e9  # the FLOPs actually run
    out["gemm_share"] = out["gflops"] / gemm_gflops if gemm_gflops else None
    out["eval_pairs_per_s"] = result["pairs"] / result["eval_seconds"] if result.get("eval_seconds") else None
    return out


def median(values: list[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def machine_line() -> str:
    """CPU model, its vector/matrix ISA flags (avx2, avx512*, amx*), cores, Python, torch, OS."""
    import torch

    cpu, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = sorted(f for f in line.split(":", 1)[1].split() if f == "avx2" or f.startswith(("avx512", "amx")))
    except OSError:
        pass
    return (f"{cpu} [{' '.join(flags) or 'no avx2/avx512/amx flags'}], {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, torch {torch.__version__}, {platform.system()} {platform.release()}")


def ratio_cell(values: list[float], unit: str = "×") -> str:
    """A ratio over rounds: the median and the spread (min–max) of the per-round ratios."""
    if not values:
        return "–"
    spread = f" (rounds {min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
    return f"{statistics.median(values):.2f}{unit}{spread}"


def summarize(rounds: list[dict[str, dict]], configs: list[str], spec: dict[str, Any],
              load: tuple[tuple[float, ...], tuple[float, ...]]) -> tuple[str, dict[str, Any]]:
    # The peak is the best GEMM measurement of the run: a round whose 1.5 s measurement a neighbour slowed down
    # must not inflate that round's share (on a shared machine the rounds' measurements differ by up to 1.7x).
    gemm_values = [round_results["gemm"]["gflops"] for round_results in rounds]
    gemm_peak = max(gemm_values)
    per_config = {name: [derived(round_results[name], gemm_peak) for round_results in rounds] for name in configs}
    summary: dict[str, Any] = {"gemm_gflops": gemm_peak, "gemm_gflops_rounds": gemm_values, "configs": {}}
    for name, results in per_config.items():
        keys = ("pairs_per_s", "tokens_per_s", "real_fraction", "gflops", "gemm_share", "peak_rss_mib",
                "eval_pairs_per_s", "first_step_s", "batch_fraction_min")
        summary["configs"][name] = {key: median([r.get(key) for r in results]) for key in keys}
        summary["configs"][name]["pairs_per_s_rounds"] = [r["pairs_per_s"] for r in results]
        summary["configs"][name].update({key: results[0].get(key) for key in ("pairs", "steps", "packing", "optimizer",
                                                                                "real_tokens", "active_dropout")})
    ratios: dict[str, list[float]] = {}  # per round (each config of a round ran back to back), then the median
    if "rmlab" in per_config:
        for other in ("trl-defaults", "trl-best", "rmlab-padded"):
            if other in per_config:
                ratios[f"rmlab / {other}"] = [a["pairs_per_s"] / b["pairs_per_s"]
                                              for a, b in zip(per_config["rmlab"], per_config[other])]
        ratios["rmlab eval / train"] = [r["eval_pairs_per_s"] / r["pairs_per_s"] for r in per_config["rmlab"]
                                        if r["eval_pairs_per_s"]]
        ratios["rmlab share of GEMM peak"] = [r["gemm_share"] for r in per_config["rmlab"] if r["gemm_share"]]
    summary["ratios"] = {key: {"median": median(values), "min": min(values, default=None),
                               "max": max(values, default=None), "rounds": values} for key, values in ratios.items()}
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
             f"{fmt(gemm_peak, 1)} GFLOP/s, the best of the rounds ({', '.join(fmt(v, 1) for v in gemm_values)}); "
             "every share is taken against it.", "",
             "| config | pairs/s | real tokens/s | real-token fraction | achieved GFLOP/s | share of GEMM peak "
             "| peak RSS (MiB) | eval pairs/s | first step after (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in configs:
        c = summary["configs"][name]
        lines.append(f"| {LABELS[name]} | {fmt(c['pairs_per_s'])} | {fmt(c['tokens_per_s'], 0)} | "
                     f"{fmt(c['real_fraction'], 3)} | {fmt(c['gflops'], 1)} | {fmt(c['gemm_share'], 2)} | "
                     f"{fmt(c['peak_rss_mib'], 0)} | {fmt(c['eval_pairs_per_s'])} | {fmt(c['first_step_s'], 1)} |")
    lines.append("")
    lines += [f"{key}: {ratio_cell(values, '' if 'share' in key else '×')}" for key, values in ratios.items()]
    for name in configs:
        c = summary["configs"][name]
        lines.append(f"{name}: pairs/s per round {', '.join(fmt(v) for v in c['pairs_per_s_rounds'])}; "
                     f"{c['steps']} steps; optimizer {c['optimizer']}; packing {c['packing']}; "
                     f"lowest batch real-token fraction {fmt(c['batch_fraction_min'], 3)}; "
                     f"active dropout layers {c['active_dropout']}")
    lines += regression_lines(summary)
    return "\n".join(lines), summary


REGRESSION_FLOOR = 1.1  # rmlab / TRL at its best: measured 1.19-1.26x on the Intel Xeon (AVX-512/AMX) when fp32 closed


def regression_lines(summary: dict[str, Any]) -> list[str]:
    """Like for like (both sides without dropout, as TRL and rmlab train by default), and a warning when rmlab falls
    below :data:`REGRESSION_FLOOR` × TRL at its best."""
    dropout = {name: c["active_dropout"] for name, c in summary["configs"].items() if c.get("active_dropout") is not None}
    lines = [f"dropout: active dropout layers per side {dropout} (rmlab model.disable_dropout=true and TRL's "
             "disable_dropout=True, both defaults: 0 means like for like)"] if dropout else []
    best = summary["ratios"].get("rmlab / trl-best", {}).get("median")
    if best is not None and best < REGRESSION_FLOOR:
        lines.append(f"WARNING: rmlab / trl-best = {best:.2f}×, below the {REGRESSION_FLOOR}× floor: a throughput "
                     "regression (or a machine unlike the ones measured: compare the GEMM peak)")
    return lines
