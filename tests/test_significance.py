"""rmlab.significance: the paired bootstrap over held-out pairs and seeds, on synthetic per-pair results whose
answer is known by construction, and end to end through ``rmlab.report.main`` on a fake sweep directory.

Every expected number here is computed independently of rmlab.significance: by hand (literals), by plain-Python
float64 loops, or by rmlab's own per-job scorer (``rmlab.rewardbench.evaluation_report``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import yaml

from rmlab.plots import plot_differences
from rmlab.report import build_report, main
from rmlab.rewardbench import evaluation_report
from rmlab.significance import (COLUMNS, Comparison, Difference, PairData, bootstrap_p_value, column_scores, compare,
                                compare_rows, draw_plan, holm_adjust, identity_plan, load_pair_data, paired_bootstrap,
                                resolution_note, section_layout, subset_positions)

MAPPING = {"Chat": ["chat_a", "chat_b"], "Chat Hard": ["hard"], "Safety": ["safety"], "Reasoning": ["math", "code"]}
WEIGHTS = {"chat_a": 3, "chat_b": 1, "hard": 1, "safety": 2, "math": 5, "code": 2}
NAMES = list(WEIGHTS)
PER_SUBSET = 40
SUBSETS = tuple(NAMES[i % len(NAMES)] for i in range(PER_SUBSET * len(NAMES)))  # interleaved, not grouped
SEEDS = ("1", "2", "3")
# Pairs the better loss gets right on top of the baseline, per subset (same in every seed), and the resulting
# differences, by hand: accuracy differences extra/40; Chat (3*4 + 1*8)/40/4; Reasoning (5*2 + 2*12)/40/7.
EXTRA = {"chat_a": 4, "chat_b": 8, "hard": 6, "safety": 10, "math": 2, "code": 12}
EXPECTED = {"Chat": 0.125, "Chat Hard": 0.15, "Safety": 0.25, "Reasoning": 0.85 / 7}
EXPECTED = {"Avg": (0.125 + 0.15 + 0.25 + 0.85 / 7) / 4, **EXPECTED}


def baseline_correct(seed: int) -> np.ndarray:
    """Exactly half of every subset right, at seed-dependent positions."""
    rng = np.random.default_rng(100 + seed)
    correct = np.zeros(len(SUBSETS), dtype=bool)
    for name in NAMES:
        positions = np.flatnonzero(np.array(SUBSETS) == name)
        correct[rng.choice(positions, PER_SUBSET // 2, replace=False)] = True
    return correct


def flipped(correct: np.ndarray, counts: dict[str, int], to: bool, seed: int) -> np.ndarray:
    """A copy with counts[subset] pairs of that subset (currently != to) set to ``to``."""
    rng, out = np.random.default_rng(200 + seed), correct.copy()
    for name, count in counts.items():
        candidates = np.flatnonzero((np.array(SUBSETS) == name) & (out != to))
        out[rng.choice(candidates, count, replace=False)] = to
    return out


def better_correct(seed: int) -> np.ndarray:
    return flipped(baseline_correct(seed), EXTRA, True, seed)


def pair_data(correct: np.ndarray, subsets: tuple[str, ...] = SUBSETS) -> PairData:
    return PairData("heldout", subsets, correct, {k: tuple(v) for k, v in MAPPING.items()},
                    {k: float(v) for k, v in WEIGHTS.items()})


def by_seed(make, seeds=SEEDS) -> dict[str, PairData]:
    return {seed: pair_data(make(int(seed))) for seed in seeds}


def hand_scores(rows: list[list[bool]], subsets=SUBSETS) -> dict[str, float]:
    """Plain-Python float64: per seed subset accuracy, weighted sections, Avg; then the mean over seeds."""
    per_seed = []
    for correct in rows:
        accuracy = {name: sum(c for c, s in zip(correct, subsets) if s == name) / subsets.count(name)
                    for name in set(subsets)}
        sections = {section: sum(accuracy[n] * WEIGHTS[n] for n in members) / sum(WEIGHTS[n] for n in members)
                    for section, members in MAPPING.items()}
        per_seed.append({"Avg": sum(sections.values()) / len(sections), **sections})
    return {column: sum(scores[column] for scores in per_seed) / len(per_seed) for column in COLUMNS}


def rewards(correct: np.ndarray) -> tuple[list[float], list[float]]:
    """Chosen/rejected rewards: right pairs chosen > rejected; wrong ones alternate ties and chosen < rejected."""
    chosen = [1.0 if c else (0.25 if i % 2 else -0.5) for i, c in enumerate(correct)]
    rejected = [-1.0 + 0.001 * i if c else (0.25 if i % 2 else 0.5) for i, c in enumerate(correct)]
    return chosen, rejected


def rmlab_scores(correct: np.ndarray, subsets=SUBSETS) -> dict[str, float]:
    """rmlab's own per-job Table 3 numbers for these results."""
    report = evaluation_report(*rewards(correct), list(subsets), example_counts=WEIGHTS, subset_mapping=MAPPING)
    return {"Avg": report["Avg"], **report["sections"]}


# --------------------------------------------------------------------------- the bootstrap on known answers
def test_better_by_construction_is_positive_significant_and_exact():
    comparison = compare(by_seed(better_correct), by_seed(baseline_correct))
    assert comparison.seeds == SEEDS and not comparison.reason
    assert list(comparison.differences) == list(COLUMNS)
    hand_row = hand_scores([list(better_correct(s)) for s in (1, 2, 3)])
    hand_base = hand_scores([list(baseline_correct(s)) for s in (1, 2, 3)])
    for column, diff in comparison.differences.items():
        assert diff.estimate == pytest.approx(EXPECTED[column], abs=1e-12)  # hand-computed literals
        assert diff.estimate == pytest.approx(hand_row[column] - hand_base[column], abs=1e-12)
        rmlab_diff = np.mean([rmlab_scores(better_correct(s))[column] - rmlab_scores(baseline_correct(s))[column]
                              for s in (1, 2, 3)])
        assert diff.estimate == pytest.approx(rmlab_diff, abs=1e-12)
        assert 0 < diff.low <= diff.estimate <= diff.high and diff.significant
        assert diff.p_value == 2 / 2001  # no replicate at or below 0
        assert diff.cell().endswith("]*†")
    assert comparison.cell("Avg") == "+16.2 [{:+.1f}, {:+.1f}]*†".format(100 * comparison.differences["Avg"].low,
                                                                     100 * comparison.differences["Avg"].high)
    reverse = compare(by_seed(baseline_correct), by_seed(better_correct))  # the baseline is worse, significantly
    for column, diff in reverse.differences.items():
        assert diff.estimate == pytest.approx(-EXPECTED[column], abs=1e-12)
        assert diff.high < 0 and diff.significant


def test_identical_loss_is_exactly_zero_and_not_significant():
    comparison = compare(by_seed(baseline_correct), by_seed(baseline_correct), samples=500)
    assert list(comparison.differences) == list(COLUMNS)
    for diff in comparison.differences.values():
        assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)
        assert not diff.significant
        assert diff.cell() == "+0.0 [+0.0, +0.0]"


def noisy_correct(seed: int) -> np.ndarray:
    """The baseline with, per seed, one pair flipped right and one flipped wrong in three subsets, plus one
    extra pair right in seed 1 (net +1 pair out of 720 pair-seeds)."""
    picked = [NAMES[(seed + k) % len(NAMES)] for k in (0, 2, 4)]
    correct = flipped(flipped(baseline_correct(seed), dict.fromkeys(picked, 1), True, seed),
                      dict.fromkeys(picked, 1), False, seed + 50)
    return flipped(correct, {"chat_a": 1}, True, seed + 90) if seed == 1 else correct


@pytest.mark.parametrize("bootstrap_seed", [0, 1, 2])
def test_noise_only_is_not_significant(bootstrap_seed):
    comparison = compare(by_seed(noisy_correct), by_seed(baseline_correct), seed=bootstrap_seed)
    hand_row = hand_scores([list(noisy_correct(s)) for s in (1, 2, 3)])
    hand_base = hand_scores([list(baseline_correct(s)) for s in (1, 2, 3)])
    for column, diff in comparison.differences.items():
        assert diff.estimate == pytest.approx(hand_row[column] - hand_base[column], abs=1e-12)
        assert not diff.significant, (column, diff)
        assert diff.low <= diff.estimate <= diff.high
    avg = comparison.differences["Avg"]
    assert avg.estimate == pytest.approx(3 / 40 / 4 / 4 / 3)  # only the net +1 chat_a pair: 3/4 of Chat, 1 seed
    assert avg.low < 0 < avg.high
    assert "*" not in "".join(map(comparison.cell, COLUMNS))


def test_same_bootstrap_seed_same_intervals_other_seed_other_intervals():
    row, base = by_seed(noisy_correct), by_seed(baseline_correct)
    first, again = compare(row, base, seed=7), compare(row, base, seed=7)
    assert first.differences == again.differences  # frozen dataclasses: exact float equality
    other = compare(row, base, seed=8)
    assert [d.estimate for d in other.differences.values()] == [d.estimate for d in first.differences.values()]
    assert any((d.low, d.high) != (o.low, o.high) for d, o in zip(first.differences.values(),
                                                                   other.differences.values()))


def test_seeds_are_resampled_too():
    """A loss that wins big in one seed of three and ties in the others: the pairs alone would call it
    significant, but a replicate misses that seed with probability (2/3)**3 ~ 0.30 > 0.025, so it is not."""
    row = {seed: pair_data(better_correct(1) if seed == "1" else baseline_correct(int(seed))) for seed in SEEDS}
    base = {seed: pair_data(baseline_correct(int(seed))) for seed in SEEDS}
    comparison = compare(row, base)
    for column, diff in comparison.differences.items():
        assert diff.estimate == pytest.approx(EXPECTED[column] / 3, abs=1e-12)
        assert diff.low == 0.0 and diff.high > 0 and not diff.significant
    one_seed = compare({"1": row["1"]}, {"1": base["1"]})  # the winning seed alone: significant
    assert all(diff.significant for diff in one_seed.differences.values())
    plan = draw_plan(3, subset_positions(SUBSETS), samples=200, seed=0)
    assert sum(sorted(map(int, draw)) != [0, 1, 2] for draw in plan.seeds) > 100  # seeds drawn with replacement


def test_one_replicate_equals_hand_computation():
    rows = [better_correct(s) for s in (1, 2, 3)]
    positions = subset_positions(SUBSETS)
    plan = draw_plan(3, positions, samples=4, seed=11)
    sections = section_layout(MAPPING, WEIGHTS, SUBSETS)
    scores = column_scores(np.stack(rows), sections, plan)
    for r in range(4):
        seeds = [int(i) for i in plan.seeds[r]]
        assert len(seeds) == 3 and all(0 <= i < 3 for i in seeds)
        per_seed = []
        for i in seeds:  # independent float64 loops over the drawn positions
            section = {}
            for name_section, members in MAPPING.items():
                num = den = 0.0
                for name in members:
                    drawn = [int(p) for p in plan.pairs[name][r]]
                    assert len(drawn) == PER_SUBSET and all(SUBSETS[p] == name for p in drawn)  # stratified
                    num += sum(bool(rows[i][p]) for p in drawn) / len(drawn) * WEIGHTS[name]
                    den += WEIGHTS[name]
                section[name_section] = num / den
            per_seed.append({"Avg": sum(section.values()) / 4, **section})
        for column in COLUMNS:
            assert scores[column][r] == pytest.approx(sum(s[column] for s in per_seed) / 3, abs=1e-14)
    assert len({tuple(plan.pairs["math"][r]) for r in range(4)}) == 4  # replicates differ
    point = column_scores(np.stack(rows), sections, identity_plan(3, positions))
    for column in COLUMNS:  # the original data: rmlab's own per-job scorer, averaged over seeds
        assert point[column][0] == pytest.approx(np.mean([rmlab_scores(c)[column] for c in rows]), abs=1e-14)


def comparison_and_replicates(make_row) -> tuple[Comparison, dict[str, np.ndarray]]:
    """``compare(row, baseline, seed=5)`` and, recomputed outside it, the replicates it draws per column."""
    row, base = np.stack([make_row(s) for s in (1, 2, 3)]), np.stack([baseline_correct(s) for s in (1, 2, 3)])
    sections = section_layout(MAPPING, WEIGHTS, SUBSETS)
    plan = draw_plan(3, subset_positions(SUBSETS), samples=2000, seed=5)  # the draws compare(seed=5) makes
    comparison = compare(by_seed(make_row), by_seed(baseline_correct), samples=2000, seed=5)
    row_scores, base_scores = column_scores(row, sections, plan), column_scores(base, sections, plan)
    return comparison, {column: row_scores[column] - base_scores[column] for column in row_scores}


def test_interval_is_the_central_95_percent_of_paired_replicates():
    comparison, replicates_by_column = comparison_and_replicates(better_correct)
    for column, diff in comparison.differences.items():
        replicates = replicates_by_column[column]
        assert (diff.low, diff.high) == (np.percentile(replicates, 2.5), np.percentile(replicates, 97.5))
        inside = np.mean((replicates >= diff.low) & (replicates <= diff.high))
        assert 0.94 <= inside <= 0.97, (column, inside)


def test_p_value_counts_the_replicates_on_the_smaller_side_of_zero():
    assert bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == 2 * (1 + 1) / (4 + 1)
    assert bootstrap_p_value(np.array([-2.0, 0.0, 1.0, 2.0, 3.0])) == 2 * (2 + 1) / (5 + 1)  # a tie counts both sides
    assert bootstrap_p_value(np.zeros(7)) == 1.0 and bootstrap_p_value(np.full(2000, 0.1)) == 2 / 2001
    comparison, replicates_by_column = comparison_and_replicates(noisy_correct)
    for column, diff in comparison.differences.items():
        replicates = [float(r) for r in replicates_by_column[column]]
        smaller = min(sum(r <= 0 for r in replicates), sum(r >= 0 for r in replicates))
        assert diff.p_value == min(1.0, 2 * (smaller + 1) / 2001) and diff.holm_p_value == diff.p_value
        assert diff.p_value > 0.05 and not diff.significant


def test_holm_adjustment_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0] and holm_adjust([]) == [] and holm_adjust([0.2]) == [0.2]


def test_the_table_is_one_family_for_holm():
    """compare_rows adjusts the p-values of every difference of the table together; only the strong row keeps
    its daggers, and the adjusted values are Holm's on the raw ones (hand-sorted here)."""
    rows = [("bt", {}, by_seed(baseline_correct)), ("focal", {}, by_seed(better_correct)),
            ("hinge", {}, by_seed(noisy_correct))]
    table = compare_rows(rows, "bt", 2000)
    raw = [(d.p_value, i, c) for i, comparison in enumerate(table) for c, d in comparison.differences.items()]
    assert len(raw) == 2 * len(COLUMNS)
    running = 0.0
    for rank, (p_value, i, column) in enumerate(sorted(raw)):
        running = max(running, min(1.0, (len(raw) - rank) * p_value))
        assert table[i].differences[column].holm_p_value == pytest.approx(running, abs=1e-15)
    assert all(d.holm_significant and d.cell().endswith("*†") for d in table[1].differences.values())
    assert not any(d.holm_significant or "†" in d.cell() for d in table[2].differences.values())
    assert table[1].differences["Avg"].holm_p_value == pytest.approx(2 * len(COLUMNS) * 2 / 2001)


def test_resolution_note_gives_the_size_of_no_difference_by_hand():
    """Half-widths 1, 2 and 4 points (median 2); 80% power at 5%: (1.95996 + 0.84162) / 1.95996 * 2 = 2.86 points;
    Holm's strictest step over m = 6 differences (3 rows x Avg, Chat): z at 1 - 0.05/12 = 2.63826, so 3.55."""
    def comparison(half_width: float) -> Comparison:
        return Comparison(("1",), {"Avg": Difference(0.0, -half_width, half_width), "Chat": Difference(0.0, 0.0, 0.0)})

    note = resolution_note([("a", comparison(0.01)), ("b", comparison(0.04)), ("c", comparison(0.02))])
    assert "1.0 to 4.0 points (median 2.0)" in note
    assert "about 2.9 points on its own" in note and "3.6 under Holm's strictest step (6 differences)" in note
    assert resolution_note([("a", Comparison(reason="no shared seeds"))]) == ""


def test_paired_bootstrap_needs_aligned_arrays():
    with pytest.raises(ValueError, match="unpaired"):
        paired_bootstrap(np.zeros((2, 5), bool), np.zeros((3, 5), bool), ["a"] * 5, {"Chat": [("a", 1.0)]})


# --------------------------------------------------------------------------- pairing rules
def test_pairing_rules():
    base = by_seed(baseline_correct)
    shorter = {s: pair_data(d.correct[:-6], SUBSETS[:-6]) for s, d in by_seed(better_correct).items()}
    reordered = {s: pair_data(d.correct, SUBSETS[1:] + SUBSETS[:1]) for s, d in by_seed(better_correct).items()}
    for row in (shorter, reordered):
        comparison = compare(row, base)
        assert comparison.reason == "not paired (different pairs)" and not comparison.differences
        assert comparison.cell("Avg") == "not paired (different pairs)" and comparison.csv_cells()[0] == ""
    assert compare(reordered, base).detail == "heldout: 240 pairs each, in a different subset order"
    assert compare(shorter, base).detail == "heldout: 234 pairs, heldout: 240 pairs"
    reweighted = {s: PairData("heldout", SUBSETS, d.correct, d.section_mapping, {**d.subset_weights, "math": 1.0})
                  for s, d in by_seed(better_correct).items()}
    assert compare(reweighted, base).reason == "not paired (different section mapping or subset weights)"
    partial = compare(by_seed(better_correct, ("1", "3")), base)  # a seed failed: only the shared ones count
    assert partial.seeds == ("1", "3") and partial.detail == "finished seeds: row 1,3, baseline 1,2,3"
    assert partial.differences["Avg"].estimate == pytest.approx(EXPECTED["Avg"], abs=1e-12)
    none = compare(by_seed(better_correct, ("4",)), base)
    assert none.reason == "no shared seeds" and none.cell("Chat") == "no shared seeds"
    old = compare({"1": "no per-pair data: metrics.json eval.heldout has no section_mapping/subset_weights"}, base)
    assert old.reason == "no per-pair data" and "section_mapping" in old.detail


def test_rows_meet_the_baseline_with_the_same_other_overrides():
    base, better = by_seed(baseline_correct), by_seed(better_correct)
    single = compare_rows([("bt", {}, base), ("focal", {"loss.gamma": "1"}, better), ("hinge", {}, base)], "bt", 50)
    assert single[0].reason == "baseline" and single[1].differences["Avg"].significant
    assert single[2].differences["Avg"] == Difference(0.0, 0.0, 0.0)
    rows = [("bt", {"x": "1"}, base), ("bt", {"x": "2"}, better), ("focal", {"x": "1"}, better),
            ("focal", {"x": "2"}, better), ("focal", {"x": "3"}, better)]
    split = compare_rows(rows, "bt", 50)
    assert [c.reason for c in split[:2]] == ["baseline", "baseline"]
    assert split[2].differences["Avg"].estimate == pytest.approx(EXPECTED["Avg"], abs=1e-12)  # vs bt x=1
    assert split[3].differences["Avg"] == Difference(0.0, 0.0, 0.0)  # vs bt x=2, the same results
    assert split[4].reason == "ambiguous bt row" and compare_rows(rows[2:], "bt")[0].reason == "no bt row"


def test_csv_cells():
    comparison = Comparison(("1", "2"), {"Avg": Difference(0.0271, 0.004, 0.051)})
    cells = comparison.csv_cells()
    assert cells[:6] == ["2.7100", "0.4000", "5.1000", "True", "1", "1"] and cells[6:12] == [""] * 6
    assert cells[-2:] == ["1,2", ""] and comparison.cell("Avg") == "+2.7 [+0.4, +5.1]*"
    assert comparison.cell("Chat") == "n/a"


def test_plot_draws_each_interval_as_an_error_bar_and_stars_the_significant_ones():
    """table3.png's panel: one error bar per (row, column) with numbers, spanning exactly [low, high] in pp around
    the estimate; a star above each significant one; a row without numbers listed as not compared."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    better = Comparison(("1", "2"), {"Avg": Difference(0.03, 0.01, 0.05), "Chat": Difference(-0.01, -0.04, 0.02)})
    same = Comparison(("1", "2"), {"Avg": Difference(0.0, 0.0, 0.0)})
    missing = Comparison(reason="no shared seeds")
    figure, ax = plt.subplots()
    plot_differences(ax, [("focal", better), ("hinge", same), ("cross_entropy", missing)], "bt", 100, 0, {})
    bars = [(container.lines[0].get_xydata()[0, 1], container.lines[2][0].get_segments()[0][:, 1])
            for container in ax.containers]
    assert [(float(y), [float(v) for v in span]) for y, span in bars] == [
        (pytest.approx(3.0), pytest.approx([1.0, 5.0])), (pytest.approx(-1.0), pytest.approx([-4.0, 2.0])),
        (0.0, [0.0, 0.0])]
    stars = [text for text in ax.texts if text.get_text() == "*"]
    assert len(stars) == 1 and stars[0].xy[1] == pytest.approx(5.0)  # only focal's Avg excludes 0
    assert any("cross_entropy: no shared seeds" in text.get_text() for text in ax.texts)
    plt.close(figure)


# --------------------------------------------------------------------------- job directories
def write_job(sweep: Path, num: int, loss: str, seed: int, correct: Optional[np.ndarray] = None,
              subsets: tuple[str, ...] = SUBSETS, per_pair: bool = True, table3_set: Optional[str] = None) -> Path:
    """A finished job (metrics.json + rewards/<set>.jsonl) or, with ``correct=None``, a failed one."""
    job = sweep / f"{num}_loss={loss},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"loss={loss}", f"seed={seed}"]))
    if correct is None:
        (job / "failed.json").write_text(json.dumps({"error": "RuntimeError: boom", "loss": loss, "seed": seed}))
        return job
    name = table3_set or "heldout"
    chosen, rejected = rewards(correct)
    report = evaluation_report(chosen, rejected, list(subsets), example_counts=WEIGHTS, subset_mapping=MAPPING)
    for key, value in (("section_mapping", MAPPING), ("subset_weights", WEIGHTS)):
        if per_pair:
            report[key] = value
        else:  # an older run: its metrics.json has neither
            report.pop(key, None)
    run = {"loss": loss, "seed": seed, **({"table3_set": table3_set} if table3_set else {})}
    metrics = {"table3": {"Avg": report["Avg"], **report["sections"]}, "eval": {name: report}, "data": {}, "run": run}
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "rewards").mkdir()
    (job / "rewards" / f"{name}.jsonl").write_text("".join(
        json.dumps({"subset": s, "chosen": c, "rejected": r}) + "\n" for s, c, r in zip(subsets, chosen, rejected)))
    return job


def test_load_pair_data_reads_the_table3_set(tmp_path):
    job = write_job(tmp_path, 0, "bt", 1, baseline_correct(1), table3_set="rewardbench")
    data = load_pair_data(job, json.loads((job / "metrics.json").read_text()))
    assert isinstance(data, PairData) and data.set_name == "rewardbench" and data.subsets == SUBSETS
    assert np.array_equal(data.correct, baseline_correct(1))  # ties (chosen == rejected) count as wrong
    assert data.subset_weights == {k: float(v) for k, v in WEIGHTS.items()}
    old = write_job(tmp_path, 1, "bt", 2, baseline_correct(2), per_pair=False)
    assert load_pair_data(old, json.loads((old / "metrics.json").read_text())).startswith("no per-pair data")
    (job / "rewards" / "rewardbench.jsonl").unlink()
    assert load_pair_data(job, json.loads((job / "metrics.json").read_text())) == \
        "no per-pair data: no rewards/rewardbench.jsonl"


LOSSES = ["bt", "focal", "hinge", "margin_mse", "cross_entropy", "tempered_log"]


@pytest.fixture
def sweep(tmp_path) -> Path:
    """bt baseline; focal better (seed 3 failed); hinge identical to bt; margin_mse scored other pairs;
    cross_entropy an older run without per-pair data; tempered_log failed in every seed."""
    root = tmp_path / "2024-10-24_12-00-00"
    root.mkdir()
    config = {"hydra": {"sweeper": {"params": {"loss": ",".join(LOSSES), "seed": "1,2,3"}},
                        "overrides": {"task": []}}}
    (root / "multirun.yaml").write_text(yaml.safe_dump(config))
    for seed in (1, 2, 3):
        def add(loss: str, **kwargs) -> None:
            write_job(root, LOSSES.index(loss) * 3 + seed - 1, loss, seed, **kwargs)

        add("bt", correct=baseline_correct(seed))
        add("focal", correct=better_correct(seed) if seed != 3 else None)
        add("hinge", correct=baseline_correct(seed))
        add("margin_mse", correct=better_correct(seed)[:-6], subsets=SUBSETS[:-6])
        add("cross_entropy", correct=better_correct(seed), per_pair=False)
        add("tempered_log", correct=None)
    return root


def test_report_end_to_end(sweep):
    assert main([str(sweep), "--bootstrap-samples", "1000"]) == 0
    markdown = (sweep / "table3.md").read_text()
    assert "## Paired differences vs bt" in markdown and "(1000 replicates, bootstrap seed 0)" in markdown
    assert "| loss | Avg | Chat | Chat Hard | Safety | Reasoning | paired seeds | note |" in markdown
    section = markdown.split("## Paired differences vs bt")[1].split("## Jobs")[0]
    lines = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines() if line.startswith("| ")}
    assert lines["bt"].startswith("| bt | baseline | baseline |")
    assert "| +16.2 [+" in lines["focal"] and lines["focal"].count("]*† |") == 5  # significant, also after Holm
    assert "| 1,2 | finished seeds: row 1,2, baseline 1,2,3 |" in lines["focal"]
    assert lines["hinge"] == "| hinge |" + " +0.0 [+0.0, +0.0] |" * 5 + " 1,2,3 |  |"
    assert lines["margin_mse"].count("not paired (different pairs)") == 5
    assert lines["cross_entropy"].count(" no per-pair data |") == 5
    assert "| cross_entropy seed 1: no per-pair data: metrics.json eval.heldout has no section_mapping/" \
        "subset_weights (and 2 more jobs) |" in lines["cross_entropy"]
    assert lines["tempered_log"].count(" no shared seeds |") == 5
    assert "Resolution: the Avg intervals' half-widths are " in section  # focal's and hinge's Avg intervals
    # the Table 3 rows are still there, from metrics.json
    assert "| focal | 66.2 ± 0.0 | 62.5 ± 0.0 | 65.0 ± 0.0 | 75.0 ± 0.0 | 62.1 ± 0.0 | 2/3 |" in markdown
    with (sweep / "table3.csv").open() as handle:
        table = {row["label"]: row for row in csv.DictReader(handle)}
    focal, hinge = table["focal"], table["hinge"]
    for column in COLUMNS:
        assert float(focal[f"{column} diff pp"]) == pytest.approx(100 * EXPECTED[column], abs=1e-3)
        assert float(focal[f"{column} ci low pp"]) > 0 and focal[f"{column} significant"] == "True"
        assert float(focal[f"{column} p"]) < float(focal[f"{column} holm p"]) < 0.05  # Holm over 10 differences
        # the paired recomputation agrees with the Table 3 means read from metrics.json (bt is 50% everywhere)
        assert float(focal[f"{column} diff pp"]) == pytest.approx(
            float(focal[f"{column} mean %"]) - float(table["bt"][f"{column} mean %"]), abs=1e-3)
        assert (hinge[f"{column} diff pp"], hinge[f"{column} ci low pp"], hinge[f"{column} ci high pp"],
                hinge[f"{column} significant"], hinge[f"{column} p"], hinge[f"{column} holm p"]) == \
            ("0.0000", "0.0000", "0.0000", "False", "1", "1")
        assert table["margin_mse"][f"{column} diff pp"] == "" == table["bt"][f"{column} significant"]
    assert focal["baseline"] == "bt" and focal["paired seeds"] == "1,2"
    assert table["bt"]["paired note"] == "baseline"
    assert table["margin_mse"]["paired note"].startswith("not paired (different pairs)")
    assert table["tempered_log"]["paired note"] == \
        "no shared seeds; finished seeds: row none, baseline 1,2,3"
    assert table["bt"]["Avg mean %"] == "50.0000" and table["bt"]["status"] == "ok"  # existing columns unchanged
    assert (sweep / "table3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_other_baseline_and_determinism(sweep):
    first = build_report(sweep, baseline="focal", bootstrap_samples=300, bootstrap_seed=3)
    again = build_report(sweep, baseline="focal", bootstrap_samples=300, bootstrap_seed=3)
    assert [c.differences for c in first.comparisons] == [c.differences for c in again.comparisons]
    by_label = dict(zip((row.label for row in first.rows), first.comparisons))
    assert by_label["focal"].reason == "baseline"
    bt = by_label["bt"]
    assert bt.seeds == ("1", "2") and bt.differences["Avg"].estimate == pytest.approx(-EXPECTED["Avg"], abs=1e-12)
    assert all(d.high < 0 and d.significant for d in bt.differences.values())
    assert main([str(sweep), "--baseline", "focal", "--bootstrap-samples", "300"]) == 0
    assert "## Paired differences vs focal" in (sweep / "table3.md").read_text()
    none = build_report(sweep, baseline="nope", bootstrap_samples=10)
    assert {c.reason for c in none.comparisons} == {"no nope row"}
