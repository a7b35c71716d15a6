"""``+sweeps=table3_real`` end to end, cut small: two losses, one seed, a few steps, on the real files of
``../shared/data`` (skipped when they are absent), then ``python -m rmlab.report`` on the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rmlab.rewardbench import SUBSET_MAPPING

pytestmark = pytest.mark.slow

REBUILT_FILES = {"rewardbench_sources/alpacaeval.jsonl": 2406, "rewardbench_sources/xstest.jsonl": 380,
                 "rewardbench_sources/hep.jsonl": 984, "llmbar/llmbar_instruction_following.jsonl": 419}
PER_SUBSET = 3


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, shared_data_dir, minilm_path):
    tmp = tmp_path_factory.mktemp("real-sweep")
    sweep = tmp / "sweep"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "WANDB_MODE": "offline",
           "WANDB_DIR": str(tmp / "wandb-dir")}
    command = [sys.executable, "-m", "rmlab", "--multirun", "+sweeps=table3_real", "loss=bt,cross_entropy", "seed=1",
               f"paths.data_dir={shared_data_dir}", "data.sources.0.cap=80", "data.batch_size=4",
               f"eval.sets.0.per_subset={PER_SUBSET}", "eval.sets.1.max_rows=12", "export=false",
               f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=900,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = sorted(path for path in sweep.iterdir() if (path / "metrics.json").is_file())
    return sweep, [json.loads((job / "metrics.json").read_text()) for job in jobs]


def test_both_losses_train_on_real_pairs_and_score_the_rebuilt_sections(real_sweep):
    _, metrics = real_sweep
    assert [m["run"]["loss"] for m in metrics] == ["bt", "cross_entropy"]
    for m in metrics:
        assert m["run"]["table3_set"] == "rewardbench" and m["run"]["optimizer_steps"] >= 5
        assert set(m["table3"]) == {"Avg", "Chat", "Chat Hard", "Safety", "Reasoning"}
        data = m["data"]
        assert data["rows_read"] == 6059 and data["rows_used"] + data["rows_skipped"] == 6059
        assert m["eval"]["hhh"]["pairs"] == 12 and m["eval"]["heldout"]["pairs"] == m["run"]["heldout_pairs"]


def test_the_rebuilt_rewardbench_names_what_each_section_used_and_lacked(real_sweep):
    """Rows in = rows scored + rows left out of the per-subset sample; each section lists its present and missing
    subsets, and the section scores follow from the subset accuracies by RewardBench's weights."""
    from rmlab.rewardbench import EXAMPLE_COUNTS

    report = real_sweep[1][0]["eval"]["rewardbench"]
    subsets = report["subset_counts"]
    assert set(subsets.values()) == {PER_SUBSET} and len(subsets) == 3 + 2 + 6 + 5
    assert report["data"]["rows_read"] == sum(REBUILT_FILES.values())
    assert report["data"]["rows_used"] == report["pairs"] == len(subsets) * PER_SUBSET
    assert report["data"]["skipped_by_reason"] == {
        f"beyond the per-subset sample (per_subset={PER_SUBSET})": sum(REBUILT_FILES.values()) - report["pairs"]}
    assert report["missing_subsets"]["Reasoning"] == ["math-prm"]
    assert report["missing_subsets"]["Chat"] == ["mt-bench-easy", "mt-bench-med"]
    assert report["missing_subsets"]["Safety"] == ["refusals-dangerous", "refusals-offensive", "donotanswer"]
    assert report["missing_sections"] == []
    for section, used in report["section_mapping"].items():
        assert set(used) | set(report["missing_subsets"].get(section, [])) == set(SUBSET_MAPPING[section])
        weights = [EXAMPLE_COUNTS[name] for name in used]
        expected = sum(report["subsets"][name] * w for name, w in zip(used, weights)) / sum(weights)
        assert report["sections"][section] == pytest.approx(expected)


def test_the_report_compares_the_two_losses_on_the_rebuilt_sections(real_sweep):
    sweep, metrics = real_sweep
    result = subprocess.run([sys.executable, "-m", "rmlab.report", str(sweep)], capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (sweep / "table3.md").read_text()
    assert "cross_entropy" in table and "bt" in table
    avg_pp = f"{100 * metrics[1]['table3']['Avg']:.1f}"
    assert avg_pp in table, (avg_pp, table)
    heldout_pp = f"{100 * metrics[1]['eval']['heldout']['accuracy']:.1f}"  # the other sets' block, one seed: no ±
    assert "## Other evaluation sets" in table and f"| cross_entropy | {heldout_pp} |" in table, table
