"""RewardBench 2: rmlab's scores equal the official package's, PyPI rewardbench 0.1.4 (issue 23).

rewardbench pins transformers 4.51, so its code runs in a venv of its own, built by
``bash tests/rb2_official/build_venv.sh`` at ``$RMLAB_RB2_VENV`` (default ``<repo>/.rb2-venv``);
``tests/rb2_official/official_scores.py`` runs there and prints the official scores of a JSONL of rows
with rewards. Without that venv the tests that need it are skipped, saying how to build it.

- Hand-built cases with answers worked out by hand check the harness itself (official side only).
- Seeded synthetic data in RB2's layout, with random rewards full of deliberate ties
  (``tests/rb2_official/make_synthetic.py``), goes to both the official code and
  ``rmlab.rewardbench2.rb2_scores``: every subset score and the final score must agree.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from rb2_official.make_synthetic import SUBSETS, hand_row, synthetic_rows, to_groups, write_jsonl

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("RMLAB_RB2_VENV", REPO / ".rb2-venv"))
OFFICIAL_SCRIPT = REPO / "tests" / "rb2_official" / "official_scores.py"
SEEDS = (0, 1, 2)
TOL = 1e-12

# ------------------------------------------------------------------ hand-built cases, answers by hand
# Best of 4: 1/k when the chosen (first) reward is at the maximum and k completions share it, else 0.
BEST_OF_4_TIES = [
    hand_row("0", "Factuality", 1, [1.0, 1.0, 1.0, 1.0]),  # 4-way tie at the max: 1/4
    hand_row("1", "Factuality", 1, [2.0, 2.0, 1.0, 0.0]),  # 2-way: 1/2
    hand_row("2", "Factuality", 1, [0.5, 1.0, 0.0, 0.0]),  # chosen below the max: 0
    hand_row("3", "Factuality", 1, [3.0, 1.0, 2.0, 2.0]),  # chosen alone at the max: 1
    hand_row("4", "Factuality", 1, [1.0, 1.0, 1.0, 0.0]),  # 3-way: 1/3
]
# Ties (process_single_model): accuracy = every correct above every incorrect (strictly); for prompt ids
# with both a ref and a tied row: preferred = tied margin > tied spread, hard = min(ref, tied margin) >
# tied spread, and tanh(min margin / spread - 1) averaged over the ids whose spread is > 0 only.
TIES_TWINS = [
    # id 0: tied accurate, spread 1.0, margin 1.0 (not > 1.0); ref accurate, margin 0.5; ratio 0.5.
    hand_row("tied:0", "Ties", 3, [2.0, 1.5, 1.0, 0.0, -1.0]),
    hand_row("ref:0", "Ties", 1, [1.0, 0.5, 0.0]),
    # id 1: tied accurate, zero spread, margin 0.5 > 0; ref margin 2.0; hard min 0.5 > 0; no ratio term.
    hand_row("tied:1", "Ties", 2, [1.0, 1.0, 0.0, 0.5]),
    hand_row("ref:1", "Ties", 1, [2.0, 0.0]),
    hand_row("tied:2", "Ties", 2, [0.0, 1.0, 1.0, -1.0]),  # no ref twin; worst correct ties an incorrect
    hand_row("ref:3", "Ties", 1, [0.0, 1.0, -1.0]),  # no tied twin; not accurate
]
SIX_SUBSETS = [
    hand_row("0", "Factuality", 1, [1.0, 0.0, 0.0, 0.0]),  # 1
    hand_row("1", "Precise IF", 1, [1.0, 1.0, 0.0, 0.0]),  # 1/2
    hand_row("2", "Math", 1, [0.0, 1.0, 0.0, 0.0]),  # 0
    hand_row("3", "Safety", 1, [1.0, 1.0, 1.0, 1.0]),  # 1/4
    hand_row("4", "Focus", 1, [2.0, 1.0, 1.0, 1.0]),  # 1
    # Ties: both accurate; tied margin 0.5 = spread 0.5, so neither margin term; tanh(1 - 1) = 0: 0.3 + 0.3.
    hand_row("ref:0", "Ties", 1, [1.0, 0.0]),
    hand_row("tied:0", "Ties", 2, [1.0, 0.5, 0.0]),
]
# ref accuracy 2/3, tied accuracy 2/3, preferred 1/2 and hard 1/2 over ids 0 and 1, tanh term from id 0 alone.
TIES_TWINS_SCORE = 0.3 * 2 / 3 + 0.3 * 2 / 3 + 0.2 * 1 / 2 + 0.2 * 1 / 2 + 0.01 * math.tanh(0.5 - 1)
SIX_SUBSETS_SCORES = {"Factuality": 1.0, "Precise IF": 0.5, "Math": 0.0, "Safety": 0.25, "Focus": 1.0, "Ties": 0.6}
HAND_CASES = {
    "best_of_4_ties": (BEST_OF_4_TIES, {"Factuality": 5 / 12, "final": 5 / 12}),
    "ties_twins": (TIES_TWINS, {"Ties": TIES_TWINS_SCORE, "final": TIES_TWINS_SCORE}),
    "six_subsets": (SIX_SUBSETS, {**SIX_SUBSETS_SCORES, "final": 3.35 / 6}),
}
SYNTHETIC = {f"synthetic_seed{seed}": synthetic_rows(seed=seed) for seed in SEEDS}


def assert_scores_equal(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=TOL, rel=0), f"{what}: {key}: {got[key]!r} != {value!r}"


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> dict[str, dict]:
    """The official scores of every case, from one run of official_scores.py in the rewardbench venv."""
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(
            f"no rewardbench 0.1.4 venv at {VENV}: build it with `bash tests/rb2_official/build_venv.sh` "
            "(one to two minutes), or point RMLAB_RB2_VENV at one"
        )
    folder = tmp_path_factory.mktemp("rb2_official")
    cases = {name: rows for name, (rows, _) in HAND_CASES.items()} | SYNTHETIC
    paths = [write_jsonl(rows, folder / f"{name}.jsonl") for name, rows in cases.items()]
    run = subprocess.run(
        [str(python), str(OFFICIAL_SCRIPT), *map(str, paths)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"official_scores.py failed:\n{run.stderr[-4000:]}"
    lines = run.stdout.strip().splitlines()
    assert len(lines) == len(cases), run.stdout
    return {name: json.loads(line) for name, line in zip(cases, lines)}


def test_synthetic_rows_hold_the_deliberate_ties():
    for name, rows in SYNTHETIC.items():
        assert sorted({row["subset"] for row in rows}) == sorted(SUBSETS), name
        best_of_4 = [row["rewards"] for row in rows if row["subset"] != "Ties"]
        assert all(len(r) == 4 for r in best_of_4)
        at_max = [r.count(max(r)) for r in best_of_4 if r[0] == max(r)]
        assert {2, 3, 4} <= set(at_max), f"{name}: chosen ties at the max, k = {sorted(set(at_max))}"
        ties = {row["id"]: row for row in rows if row["subset"] == "Ties"}
        numbers = {i.split(":")[1] for i in ties}
        assert any(f"ref:{n}" in ties and f"tied:{n}" in ties for n in numbers), name
        assert any((f"ref:{n}" in ties) != (f"tied:{n}" in ties) for n in numbers), f"{name}: no id without a twin"
        spreads = [set(r["rewards"][: r["num_correct"]]) for r in ties.values() if r["num_correct"] > 1]
        assert any(len(s) == 1 for s in spreads), f"{name}: no Ties group with zero spread among its correct answers"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HAND_CASES))
def test_official_harness_on_hand_built_cases(official, case):
    assert_scores_equal(official[case], HAND_CASES[case][1], f"official, {case}")


@pytest.mark.slow
@pytest.mark.parametrize("case", [*sorted(SYNTHETIC), "six_subsets"])
def test_rmlab_scores_equal_official(official, case):
    from rmlab.rewardbench2 import rb2_scores

    rows = SYNTHETIC[case] if case in SYNTHETIC else HAND_CASES[case][0]
    assert set(official[case]) == {*SUBSETS, "final"}
    assert_scores_equal(rb2_scores(to_groups(rows)), official[case], f"rmlab vs official, {case}")
