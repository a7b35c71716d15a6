"""The Table 3 report of a sweep that scored RewardBench 2 (rmlab/report.py, rmlab/significance_rb2.py): its
columns, and the paired bootstrap over prompts within subsets (a Ties question's ref and tied prompts together)."""

from __future__ import annotations

import csv
import json
import random
import statistics
from pathlib import Path

import numpy as np
import pytest
from test_report import add_job, scores, write_multirun

from rmlab.report import build_report, main
from rmlab.rewardbench2 import SUBSETS, rb2_scores
from rmlab.significance import draw_plan
from rmlab.significance_rb2 import COLUMNS, load_prompt_data

PER_SUBSET, QUESTIONS = 12, 8


def rb2_lines(skill: float, seed: int, prompts: int = PER_SUBSET) -> list[dict]:
    """A job's rewards/rewardbench2.jsonl: the correct completions outscore the others with probability ``skill``
    (ties at the maximum now and then); Ties: ``QUESTIONS`` twins and one tied prompt without its ref."""
    rng = random.Random(f"{skill}:{seed}")

    def rewards(correct: int, total: int) -> list[float]:
        good = rng.random() < skill
        values = [round(rng.uniform(1, 2) if good else rng.uniform(0, 1), 1) for _ in range(correct)]
        return values + [round(rng.uniform(0, 1) if good else rng.uniform(1, 2), 1) for _ in range(total - correct)]

    lines = [{"id": str(i), "subset": subset, "num_correct": 1, "rewards": rewards(1, 4)}
             for subset in SUBSETS[:-1] for i in range(prompts)]
    for n in range(QUESTIONS + 1):
        for kind, correct in (("ref", 1), ("tied", 3)):
            if (kind, n) != ("ref", QUESTIONS):
                lines.append({"id": f"{kind}:{n}", "subset": "Ties", "num_correct": correct,
                              "rewards": rewards(correct, correct + 3)})
    return lines


def add_rb2_job(sweep: Path, number: int, loss: str, seed: int, lines: list[dict] | None, with_file: bool = True):
    """A finished job whose metrics.json holds Table 3's row and (``lines``) RewardBench 2's block and rewards."""
    job = add_job(sweep, number, [f"loss={loss}", f"seed={seed}"], scores(0.6))
    if lines is None:
        return job
    metrics = json.loads((job / "metrics.json").read_text())
    metrics["rewardbench2"] = {**rb2_scores(lines), "prompts": {}}
    (job / "metrics.json").write_text(json.dumps(metrics))
    if with_file:
        (job / "rewards").mkdir()
        (job / "rewards" / "rewardbench2.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return job


LOSSES = ["bt", "focal", "hinge", "margin_mse", "cross_entropy"]


@pytest.fixture
def sweep(tmp_path) -> Path:
    """bt (skill 0.3) and focal (0.95) on seeds 1-3; hinge = bt's rewards; margin_mse on fewer prompts;
    cross_entropy without its rewards file."""
    root = tmp_path / "sweep"
    write_multirun(root, {"loss": ",".join(LOSSES), "seed": "1,2,3"}, [])
    for seed in (1, 2, 3):
        def add(loss: str, lines, **kwargs) -> None:
            add_rb2_job(root, LOSSES.index(loss) * 3 + seed - 1, loss, seed, lines, **kwargs)

        add("bt", rb2_lines(0.3, seed))
        add("focal", rb2_lines(0.95, seed))
        add("hinge", rb2_lines(0.3, seed))
        add("margin_mse", rb2_lines(0.95, seed, prompts=PER_SUBSET - 1))
        add("cross_entropy", rb2_lines(0.95, seed), with_file=False)
    return root


def test_the_report_shows_rewardbench2_columns_and_paired_differences(sweep):
    assert main([str(sweep), "--bootstrap-samples", "500"]) == 0
    markdown = (sweep / "table3.md").read_text()
    section = markdown.split("## RewardBench 2")[1].split("## Jobs")[0]
    header = "| loss | RB2 final | RB2 Factuality | RB2 Precise IF | RB2 Math | RB2 Safety | RB2 Focus | RB2 Ties |"
    assert header + " seeds ok | status |" in section and header + " paired seeds | note |" in section
    focal = [rb2_scores(rb2_lines(0.95, seed)) for seed in (1, 2, 3)]
    values = {name: [seed[name] for seed in focal] for name in ("final", *SUBSETS)}
    cells = [f"{100 * statistics.fmean(v):.1f} ± {100 * statistics.stdev(v):.1f}" for v in values.values()]
    assert "| focal | " + " | ".join(cells) + " | 3/3 | ok |" in section  # mean ± sample std of metrics.json
    lines = {line.split(" | ")[0].lstrip("| "): line for line in section.split("### Paired")[1].splitlines()
             if line.startswith("| ")}
    assert lines["focal"].count("]*") == 7
    assert lines["hinge"] == "| hinge |" + " +0.0 [+0.0, +0.0] |" * 7 + " 1,2,3 |  |"  # bt's rewards again
    assert lines["margin_mse"].count("not paired (different prompts)") == 7
    assert lines["cross_entropy"].count(" no per-prompt data |") == 7 and "no rewards/rewardbench2.jsonl" in \
        lines["cross_entropy"]
    with (sweep / "table3.csv").open() as handle:
        table = {row["label"]: row for row in csv.DictReader(handle)}
    bt = [rb2_scores(rb2_lines(0.3, seed)) for seed in (1, 2, 3)]
    report = build_report(sweep, bootstrap_samples=50)
    assert [c.reason for c in report.rb2_comparisons[:1]] == ["baseline"]
    for column, name in zip(COLUMNS, ("final", *SUBSETS)):
        expected = statistics.fmean(f[name] - b[name] for f, b in zip(focal, bt))  # the estimate: paired means
        assert report.rb2_comparisons[1].differences[column].estimate == pytest.approx(expected, abs=1e-12)
        assert float(table["focal"][f"{column} diff pp"]) == pytest.approx(100 * expected, abs=6e-5)
        assert float(table["focal"][f"{column} mean %"]) == pytest.approx(100 * statistics.fmean(values[name]))
        assert table["focal"][f"{column} significant"] == "True" and table["hinge"][f"{column} p"] == "1"
    assert table["focal"]["RB2 paired seeds"] == "1,2,3" and table["bt"]["RB2 paired note"] == "baseline"
    assert table["focal"]["Avg mean %"] == "60.0000"  # Table 3's own columns are still there


def test_one_replicate_resamples_prompts_within_subsets_and_ties_questions_whole(tmp_path):
    """With one replicate the interval is that replicate: per seed, RewardBench 2's own scores (rb2_scores) of the
    drawn prompts, a Ties question's ref and tied prompts drawn together (renumbered when drawn twice)."""
    root = tmp_path / "sweep"
    for number, (loss, skill) in enumerate([("bt", 0.4), ("focal", 0.7)]):
        add_rb2_job(root, number, loss, 1, rb2_lines(skill, 1))
    focal = build_report(root, bootstrap_samples=1, bootstrap_seed=11).rb2_comparisons[1]
    data = load_prompt_data(root / "1_loss=focal,seed=1")
    plan = draw_plan(1, {subset: np.arange(size) for subset, size in data.sizes.items()}, 1, 11)

    def drawn(lines: list[dict]) -> dict[str, float]:
        by_subset = {subset: [line for line in lines if line["subset"] == subset] for subset in SUBSETS}
        picked = [by_subset[subset][i] for subset in SUBSETS[:-1] for i in plan.pairs[subset][0]]
        for copy, i in enumerate(plan.pairs["Ties"][0]):  # the drawn question's prompts, renumbered
            picked += [{**line, "id": f"{line['id'].split(':')[0]}:{copy}"} for line in by_subset["Ties"]
                       if line["id"].split(":")[1] == str(data.ties[i].number)]
        return rb2_scores(picked)

    row, base = drawn(rb2_lines(0.7, 1)), drawn(rb2_lines(0.4, 1))
    assert len(set(plan.pairs["Ties"][0])) < QUESTIONS + 1  # some question drawn twice
    for column, name in zip(COLUMNS, ("final", *SUBSETS)):
        difference = focal.differences[column]
        assert difference.low == difference.high == pytest.approx(row[name] - base[name], abs=1e-12), name


def test_a_sweep_without_rewardbench2_has_no_such_columns(tmp_path):
    root = tmp_path / "sweep"
    for number, loss in enumerate(["bt", "focal"]):
        add_rb2_job(root, number, loss, 1, None)
    report = build_report(root, bootstrap_samples=10)
    assert report.rb2_comparisons == []
    main([str(root), "--bootstrap-samples", "10"])
    assert "RewardBench 2" not in (root / "table3.md").read_text()
    assert "RB2" not in (root / "table3.csv").read_text().splitlines()[0]
