"""``python -m rmlab.bench`` machinery on a tiny budget (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, write_jsonl
from rmlab.bench.workers import benchmark_pairs

@pytest.mark.slow  # real training runs in subprocesses
def test_bench_runs_all_sides_on_the_same_pairs_and_prints_the_table(tiny_llama_dir, tmp_path):
    pytest.importorskip("trl")
    rows = [{"prompt": f"tell me about topic {i} " * (1 + i % 3), "chosen": f"a helpful answer {i} " * (1 + i % 4),
             "rejected": f"no {i}"} for i in range(24)]
    rows.insert(3, {"prompt": "too long", "chosen": "word " * 400, "rejected": "no"})  # does not fit: left out
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    summary_path = tmp_path / "bench.json"
    env = {**os.environ, "RMLAB_TOKENIZED_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "rmlab.bench", "--model", str(tiny_llama_dir), "--data", str(data), "--max-pairs", "20",
         "--max-length", "128", "--batch-size", "4", "--rounds", "1", "--threads", "1", "--gemm-seconds", "0.2",
         "--configs", "rmlab,rmlab-padded,trl-defaults,trl-best", "--json", str(summary_path),
         "--workdir", str(tmp_path / "runs")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4 and "pairs/s" in table[0] and "share of GEMM peak" in table[0]
    for label in ("rmlab (Lightning, packed batches)", "rmlab, packing off (length-grouped, padded)",
                  "TRL RewardTrainer, defaults",
                  "TRL, group_by_length + checkpointing off"):
        assert any(line.startswith(f"| {label} |") for line in table), label
    assert all(f"rmlab / {other}:" in result.stdout for other in ("rmlab-padded", "trl-defaults", "trl-best"))
    assert "load average" in result.stdout and "GEMM peak measured in this run" in result.stdout

    summary = json.loads(summary_path.read_text())["summary"]
    configs = summary["configs"]
    assert {c["pairs"] for c in configs.values()} == {19}  # the same pairs on every side
    assert len({c["real_tokens"] for c in configs.values()}) == 1  # identical token ids, counted alike
    assert {c["steps"] for c in configs.values()} == {5}  # 4 pairs per optimizer step everywhere
    assert summary["gemm_gflops"] > 0
    for name, values in configs.items():
        assert values["pairs_per_s"] > 0 and values["peak_rss_mib"] > 0 and values["eval_pairs_per_s"] > 0, name
        assert 0 < values["real_fraction"] <= 1 and values["gemm_share"] > 0
    assert configs["rmlab"]["real_fraction"] == 1.0  # one padding-free row per batch
    assert configs["rmlab"]["packing"].startswith("rmlab_segments") and configs["rmlab"]["optimizer"] == "AdamW fused"
    # rmlab-padded: packing off, so each batch of 4 length-sorted pairs (one window) pads to its longest sequence
    _, tokenized, _ = benchmark_pairs({"model": str(tiny_llama_dir), "data": str(data), "max_pairs": 20,
                                       "max_length": 128})
    widths = sorted((max(len(p.chosen_ids), len(p.rejected_ids)) for p in tokenized), reverse=True)
    padded_tokens = sum(2 * len(widths[i:i + 4]) * widths[i] for i in range(0, len(widths), 4))
    real_tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in tokenized)
    assert configs["rmlab"]["real_tokens"] == real_tokens < padded_tokens
    assert configs["rmlab-padded"]["packing"] == "off" and configs["rmlab-padded"]["optimizer"] == "AdamW fused"
    assert configs["rmlab-padded"]["real_fraction"] == pytest.approx(real_tokens / padded_tokens)
    assert {c["active_dropout"] for c in configs.values()} == {0} and "dropout: active dropout layers" in result.stdout


def test_ratios_are_paired_by_round_with_their_spread():
    """Each ratio is computed per round (its configs ran back to back) and reported as the median with the
    min–max of the per-round values; the machine line names the CPU's ISA flags."""
    from rmlab.bench.table import machine_line, summarize

    def result(pairs_per_s: float) -> dict:
        return {"pairs": 10, "train_seconds": 10 / pairs_per_s, "real_tokens": 100, "processed_tokens": 100,
                "non_embedding_parameters": 1000, "eval_seconds": 1.0, "steps": 2, "packing": "off",
                "optimizer": "AdamW", "peak_rss_mib": 1.0, "first_step_s": 1.0}

    rounds = [{"gemm": {"gflops": gemm}, "rmlab": result(a), "trl-best": result(b)}
              for gemm, a, b in ((0.03, 6.0, 4.0), (0.05, 5.0, 5.0), (0.02, 9.0, 4.5))]  # per round 1.5, 1.0, 2.0
    table, summary = summarize(rounds, ["rmlab", "trl-best"], {"threads": 2, "data": "x.jsonl", "max_pairs": 10,
                               "max_length": 8, "batch_size": 4, "lr": 1e-3, "tokens_per_batch": 10},
                               ((0.0,) * 3, (0.0,) * 3))
    assert summary["ratios"]["rmlab / trl-best"] == {"median": 1.5, "min": 1.0, "max": 2.0, "rounds": [1.5, 1.0, 2.0]}
    assert "rmlab / trl-best: 1.50× (rounds 1.00–2.00)" in table
    # the share: 6 * 1000 parameters * 100 tokens in 10 / (pairs/s) seconds = 60000 * pairs/s FLOP/s, against the
    # best GEMM round (0.05 GFLOP/s), not each round's own measurement: 6.0 pairs/s -> 3.6e5 / 5e7 = 0.0072
    assert summary["gemm_gflops"] == 0.05 and summary["gemm_gflops_rounds"] == [0.03, 0.05, 0.02]
    assert summary["ratios"]["rmlab share of GEMM peak"]["rounds"] == pytest.approx([0.0072, 0.006, 0.0108])
    assert "0.1 GFLOP/s, the best of the rounds (0.0, 0.1, 0.0)" in table
    flags = [f for f in open("/proc/cpuinfo").read().split() if f == "avx2" or f.startswith(("avx512", "amx"))]
    assert all(flag in machine_line() for flag in set(flags))


@pytest.mark.parametrize("rmlab_pairs_per_s,warned", [(4.2, True), (6.0, False)])
def test_a_ratio_below_the_floor_is_flagged_as_a_regression(rmlab_pairs_per_s, warned):
    """rmlab at 1.05× TRL at its best: below the 1.1× floor, a warning line; at 1.5×, none. Dropout per side."""
    from rmlab.bench.table import summarize

    def result(pairs_per_s: float, dropout: int) -> dict:
        return {"pairs": 10, "train_seconds": 10 / pairs_per_s, "real_tokens": 100, "processed_tokens": 100,
                "non_embedding_parameters": 1000, "eval_seconds": 1.0, "steps": 2, "packing": "off",
                "optimizer": "AdamW", "peak_rss_mib": 1.0, "first_step_s": 1.0, "active_dropout": dropout}

    rounds = [{"gemm": {"gflops": 1.0}, "rmlab": result(rmlab_pairs_per_s, 0), "trl-best": result(4.0, 0)}]
    table, _ = summarize(rounds, ["rmlab", "trl-best"], {"threads": 2, "data": "x.jsonl", "max_pairs": 10,
                         "max_length": 8, "batch_size": 4, "lr": 1e-3, "tokens_per_batch": 10}, ((0.0,) * 3,) * 2)
    assert ("WARNING: rmlab / trl-best = 1.05×, below the 1.1× floor" in table) == warned
    assert "active dropout layers per side {'rmlab': 0, 'trl-best': 0}" in table
