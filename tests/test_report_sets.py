"""The sweep report's other evaluation sets (rmlab.report_sets), on fake sweep directories with hand-set pairs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from rmlab.report import build_report, print_report, write_report

TABLE3 = {"Avg": 0.5, "Chat": 0.5, "Chat Hard": 0.5, "Safety": 0.5, "Reasoning": 0.5}


def add_job(sweep: Path, loss: str, seed: int, sets: dict[str, list[tuple[str, bool]]]) -> None:
    """A finished job: its Table 3 set is "rewardbench"; every set in ``sets`` gets its accuracy in metrics.json
    and one line per (subset, correct) pair in rewards/<set>.jsonl."""
    job = sweep / f"{loss}-{seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- loss={loss}\n- seed={seed}\n")
    (job / "rewards").mkdir()
    evaluation = {}
    for name, pairs in sets.items():
        lines = [{"subset": subset, "chosen": 1.0 if right else 0.0, "rejected": 0.5} for subset, right in pairs]
        (job / "rewards" / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        evaluation[name] = {"accuracy": sum(right for _, right in pairs) / len(pairs), "pairs": len(pairs)}
    run = {"loss": loss, "seed": seed, "table3_set": "rewardbench"}
    (job / "metrics.json").write_text(json.dumps({"table3": TABLE3, "eval": evaluation, "data": {}, "run": run}))


# heldout: subset "a" of 3 pairs, "b" of 1 (the plain accuracy weighs pairs, not subsets)
BT = {1: [("a", True), ("a", False), ("a", False), ("b", False)],
      2: [("a", True), ("a", True), ("a", False), ("b", False)]}
HINGE = {1: [("a", True), ("a", True), ("a", True), ("b", False)],
         2: [("a", True), ("a", True), ("a", True), ("b", True)]}


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for seed in (1, 2):
        hhh = [("harmless", True), ("honest", seed == 1)]
        add_job(root, "bt", seed, {"rewardbench": [("x", True)], "heldout": BT[seed], "hhh": hhh})
        add_job(root, "hinge", seed, {"rewardbench": [("x", True)], "heldout": HINGE[seed], "hhh": hhh})
    return root


def test_other_sets_accuracy_and_paired_difference(sweep):
    report = build_report(sweep, bootstrap_samples=400)
    assert list(report.sets) == ["heldout", "hhh"]  # the Table 3 set is not repeated
    bt, hinge = report.rows
    assert [job.sets["heldout"][0] for job in hinge.jobs] == [0.75, 1.0]  # plain accuracy: 3/4 and 4/4
    difference = report.sets["heldout"][1].differences["Avg"]
    # hand-computed: hinge (0.75 + 1.0) / 2 − bt (0.25 + 0.5) / 2 = 0.5
    assert difference.estimate == pytest.approx(0.5)
    assert difference.low <= difference.estimate <= difference.high
    assert report.sets["heldout"][0].reason == "baseline"
    same = report.sets["hhh"][1].differences["Avg"]  # identical correctness in both rows: exactly 0, not significant
    assert (same.estimate, same.low, same.high, same.significant) == (0.0, 0.0, 0.0, False)


def test_bootstrap_score_is_the_plain_accuracy_weighted_by_pairs(tmp_path):
    """Subset a: 3 of 3 right, subset b: 0 of 1. Plain accuracy 0.75; a mean of subset accuracies would be 0.5."""
    root = tmp_path / "sweep"
    add_job(root, "bt", 1, {"rewardbench": [("x", True)], "heldout": [("a", False)] * 3 + [("b", False)]})
    add_job(root, "hinge", 1, {"rewardbench": [("x", True)], "heldout": [("a", True)] * 3 + [("b", False)]})
    difference = build_report(root, bootstrap_samples=50).sets["heldout"][1].differences["Avg"]
    assert difference.estimate == pytest.approx(0.75)


def test_mean_std_cells_and_outputs(sweep, capsys):
    report = build_report(sweep, bootstrap_samples=200)
    print_report(report)
    text = capsys.readouterr().out
    assert "Other evaluation sets" in text
    expected = f"{100 * statistics.fmean([0.75, 1.0]):.1f} ± {100 * statistics.stdev([0.75, 1.0]):.1f}"
    assert expected == "87.5 ± 17.7" and expected in text
    markdown = write_report(sweep, report)["md"].read_text()
    assert "## Other evaluation sets" in markdown and "| hinge | 87.5 ± 17.7 |" in markdown
    assert "heldout − bt (pp)" in markdown


def test_a_job_without_per_pair_data_says_so(sweep):
    (sweep / "hinge-2" / "rewards" / "hhh.jsonl").unlink()
    report = build_report(sweep, bootstrap_samples=50)
    comparison = report.sets["hhh"][1]
    assert comparison.reason == "no per-pair data" and "hinge seed 2" in comparison.detail
    assert report.sets["heldout"][1].differences  # the other set is still compared
