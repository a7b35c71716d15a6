"""``python -m rmlab.bench`` machinery on a tiny budget (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, write_jsonl


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
         "--configs", "rmlab,trl-defaults,trl-best", "--json", str(summary_path), "--workdir", str(tmp_path / "runs")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3 and "pairs/s" in table[0] and "share of GEMM peak" in table[0]
    for label in ("rmlab (Lightning, packed batches)", "TRL RewardTrainer, defaults",
                  "TRL, group_by_length + checkpointing off"):
        assert any(line.startswith(f"| {label} |") for line in table), label
    assert "rmlab / trl-defaults:" in result.stdout and "rmlab / trl-best:" in result.stdout
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
