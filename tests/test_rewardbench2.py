"""RewardBench 2's rules (rmlab/rewardbench2.py) on hand-built groups with known answers, and the checks a local
copy of the dataset passes (rmlab/data/groups.py). Against the official package itself:
tests/test_rewardbench2_official.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import write_jsonl, write_parquet

from rmlab.data.formats import DataError
from rmlab.data.groups import load_groups
from rmlab.rewardbench2 import SUBSETS, best_of_n_result, rb2_scores, ties_terms, ties_units

NAN = float("nan")


def group(subset: str, rewards: list[float], num_correct: int = 1, group_id: str = "0") -> dict:
    return {"id": group_id, "subset": subset, "num_correct": num_correct, "rewards": rewards}


@pytest.mark.parametrize("rewards,expected", [
    ([3.0, 2.0, 1.0, 0.0], 1.0),    # the chosen completion alone at the maximum
    ([2.0, 2.0, 1.0, 0.0], 0.5),    # tied at the maximum with one rejected completion: 1/k, k = 2
    ([2.0, 1.0, 2.0, 2.0], 1 / 3),  # k = 3, the others anywhere in the group
    ([2.0, 2.0, 2.0, 2.0], 0.25),   # all four tied: chance
    ([1.0, 2.0, 0.0, 0.0], 0.0),    # the first chosen completion is not at the maximum
    ([1.0, 1.0, 2.0, 2.0], 0.0),    # ... nor when it ties with another below the maximum
    ([NAN, 0.0, 0.0, 0.0], 0.0),    # a NaN reward: numpy's max is NaN, nothing equals it
    ([1.0, NAN, 0.0, 0.0], 0.0),
])
def test_a_best_of_4_prompt_scores_1_over_k_at_the_maximum(rewards, expected):
    assert best_of_n_result(rewards) == expected


def test_a_subset_is_the_mean_over_its_prompts_and_final_the_mean_of_the_six():
    groups = [group("Factuality", [2.0, 2.0, 1.0, 0.0]), group("Factuality", [1.0, 2.0, 0.0, 0.0]),
              group("Factuality", [3.0, 0.0, 0.0, 0.0]), group("Precise IF", [1.0, 1.0, 1.0, 1.0]),
              group("Math", [0.0, 1.0, 1.0, 1.0]), group("Safety", [1.0, 0.0, 0.0, 0.0]),
              group("Focus", [1.0, 1.0, 0.0, 0.0]), group("Focus", [1.0, 0.0, 0.0, 0.0]),
              group("Ties", [1.0, 0.0], group_id="ref:0")]  # a ref prompt alone: 0.3 × its accuracy
    expected = {"Factuality": 0.5, "Precise IF": 0.25, "Math": 0.0, "Safety": 1.0, "Focus": 0.75, "Ties": 0.3}
    scores = rb2_scores(groups)
    assert scores == {**expected, "final": pytest.approx(sum(expected.values()) / 6, abs=1e-15)}
    assert list(scores) == [*SUBSETS, "final"]


# Ties by hand. Number 1: twins; number 2: twins whose tied prompt has a zero spread among its correct answers;
# number 3: a tied prompt without a ref twin.
TIES = [
    group("Ties", [3.0, 1.0, 2.0], 1, "ref:1"),            # accurate (3 > 2), margin 1.0
    group("Ties", [5.0, 3.5, 4.5, 1.0], 3, "tied:1"),      # accurate, margin 2.5, spread 1.5
    group("Ties", [0.0, 1.0], 1, "ref:2"),                 # not accurate, margin -1.0
    group("Ties", [2.0, 2.0, 0.5], 2, "tied:2"),           # accurate, margin 1.5, spread 0
    group("Ties", [1.0, 3.0, 2.0], 2, "tied:3"),           # not accurate (1 < 2), margin -1.0, spread 2.0
]
TIES_TERMS = {"tied_accuracy": 2 / 3, "ref_accuracy": 0.5,
              "preferred": 1.0,       # 2.5 > 1.5 and 1.5 > 0: twins only (tied:3 has no ref twin)
              "preferred_hard": 0.0,  # min(1.0, 2.5) = 1.0 <= 1.5; min(-1.0, 1.5) <= 0
              "margin_term": math.tanh(1.0 / 1.5 - 1)}  # number 1 only: a zero spread is left out of the mean


def test_ties_by_hand():
    assert ties_terms(ties_units(TIES)) == pytest.approx(TIES_TERMS, abs=1e-15)
    expected = 0.3 * 2 / 3 + 0.3 * 0.5 + 0.2 * 1.0 + 0.2 * 0.0 + 0.01 * math.tanh(1.0 / 1.5 - 1)
    assert rb2_scores(TIES)["Ties"] == pytest.approx(expected, abs=1e-15)
    # (the repository's newer code would put tanh(-1.0 / 0 - 1) = -1 for number 2 into the margin term)
    assert rb2_scores(TIES)["Ties"] != pytest.approx(expected - 0.01 * (TIES_TERMS["margin_term"] + 1) / 2)


def test_a_tied_prompt_without_a_ref_twin_counts_in_the_accuracy_only():
    without = [g for g in TIES if g["id"] != "tied:3"]
    assert ties_terms(ties_units(without)) == pytest.approx({**TIES_TERMS, "tied_accuracy": 1.0}, abs=1e-15)
    alone = [group("Ties", [1.0, 0.0], 1, "ref:5"), group("Ties", [2.0, 1.5, 0.0], 2, "tied:6"),
             group("Ties", [0.0, 1.5, 2.0], 2, "tied:7")]  # no number has both: the twin terms are 0
    assert ties_terms(ties_units(alone)) == {"tied_accuracy": 0.5, "ref_accuracy": 1.0, "preferred": 0,
                                             "preferred_hard": 0, "margin_term": 0}
    assert rb2_scores(alone)["Ties"] == pytest.approx(0.3 * 0.5 + 0.3 * 1.0)


def test_a_zero_spread_among_correct_answers():
    """Equal rewards for all correct answers: the margin must still beat 0 (strictly) to be preferred, and the
    prompt stays out of the tanh term (the official 0.1.4 code divides only by a spread > 0)."""
    twins = [group("Ties", [1.0, 0.0], 1, "ref:1"), group("Ties", [2.0, 2.0, 2.0, 0.5], 3, "tied:1")]
    assert ties_terms(ties_units(twins)) == {"tied_accuracy": 1.0, "ref_accuracy": 1.0, "preferred": 1.0,
                                             "preferred_hard": 1.0, "margin_term": 0}
    flat = [group("Ties", [1.0, 0.0], 1, "ref:1"), group("Ties", [2.0, 2.0, 2.0], 2, "tied:1")]  # margin 0 too
    assert ties_terms(ties_units(flat))["preferred"] == 0.0


def test_twins_without_any_spread_give_nan_as_the_official_mean_of_nothing():
    one_correct = [group("Ties", [1.0, 0.0], 1, "ref:1"), group("Ties", [1.0, 0.0], 1, "tied:1")]
    assert math.isnan(rb2_scores(one_correct)["Ties"])


def test_ties_ids_and_unknown_subsets_are_refused():
    with pytest.raises(ValueError, match="reads neither ref:<n> nor tied:<n>"):
        rb2_scores([group("Ties", [1.0, 0.0], 1, "both:1")])
    with pytest.raises(ValueError, match="appears twice"):
        rb2_scores([group("Ties", [1.0, 0.0], 1, "ref:1"), group("Ties", [0.0, 1.0], 1, "ref:1")])
    with pytest.raises(ValueError, match="not one of RewardBench 2's"):
        rb2_scores([group("Chat", [1.0, 0.0])])


# --------------------------------------------------------------------------- a local copy of the dataset
def rb2_rows(per_subset: int = 2, ties_numbers: int = 2) -> list[dict]:
    """Rows in allenai/reward-bench-2's layout: ``per_subset`` best-of-4 prompts in each of the five subsets and
    ``ties_numbers`` Ties questions, each a ref prompt (one correct answer) and a tied one (three)."""
    rows = []
    for subset in SUBSETS[:-1]:
        for i in range(per_subset):
            rows.append({"id": str(i), "prompt": f"A {subset.lower()} question, number {i}?",
                         "chosen": [f"The right answer to {subset} question {i}."],
                         "rejected": [f"A wrong answer, try {j}." for j in range(3)], "num_correct": 1,
                         "num_incorrect": 3, "total_completions": 4, "subset": subset, "models": ["m"] * 4})
    for n in range(ties_numbers):
        for kind, correct in (("ref", ["Red."]), ("tied", ["Red.", "Blue.", "Green, a colour of the rainbow."])):
            rows.append({"id": f"{kind}:{n}", "prompt": f"Name a colour of the rainbow ({kind} {n}).",
                         "chosen": correct, "rejected": ["Brown.", "Pink is one."], "num_correct": len(correct),
                         "num_incorrect": 2, "total_completions": len(correct) + 2, "subset": "Ties",
                         "models": ["m"] * (len(correct) + 2)})
    return rows


def write_rb2_copy(directory: Path, rows: list[dict]) -> Path:
    """A local copy laid out as on the hub: ``<directory>/data/test-00000-of-00001.parquet``."""
    (directory / "data").mkdir(parents=True, exist_ok=True)
    write_parquet(directory / "data" / "test-00000-of-00001.parquet", rows)
    return directory


def test_a_local_copy_laid_out_as_on_the_hub_loads_every_row(tmp_path):
    rows = rb2_rows()
    groups, stats = load_groups(str(write_rb2_copy(tmp_path / "reward-bench-2", rows)), split="test")
    assert [(g.id, g.subset, g.num_correct, len(g.completions)) for g in groups] == \
        [(r["id"], r["subset"], r["num_correct"], r["total_completions"]) for r in rows]
    assert groups[0].prompt == [{"role": "user", "content": rows[0]["prompt"]}]
    assert groups[0].completions == rows[0]["chosen"] + rows[0]["rejected"]  # the correct ones first
    assert stats.as_dict() == {"rows_read": len(rows), "rows_used": len(rows), "rows_skipped": 0,
                               "skipped_by_reason": {}}
    (from_jsonl, _), (from_parquet, _) = (load_groups(str(write_jsonl(tmp_path / "rb2.jsonl", rows))),
                                          load_groups(str(write_parquet(tmp_path / "rb2.parquet", rows))))
    assert from_jsonl == from_parquet == groups


BAD_ROWS = {  # what is wrong with row 3 -> (the change, what the message says)
    "missing columns": (lambda row: {k: v for k, v in row.items() if k not in ("num_correct", "id")},
                        "no column 'num_correct', 'id'. Fix: add them (a RewardBench 2 row holds prompt, chosen"),
    "num_correct larger than the group": (lambda row: {**row, "num_correct": 5},
                                          "num_correct=5 is larger than the group (4 completions: 1 chosen + 3 "
                                          "rejected). Fix: num_correct counts the chosen completions: set it to 1"),
    "empty group": (lambda row: {**row, "chosen": [], "rejected": [], "total_completions": 0},
                    "an empty group (chosen and rejected are both empty). Fix: give the prompt its completions"),
    "chosen empty": (lambda row: {**row, "chosen": [], "total_completions": 3},
                     "chosen is empty: the first completion must be a correct one"),
    "chosen not a list": (lambda row: {**row, "chosen": "The right answer."},
                          "chosen must be a list of completions (strings)"),
    "total_completions": (lambda row: {**row, "total_completions": 5},
                          "total_completions=5, but the row holds 4 completions. Fix: set total_completions to 4"),
    "unknown subset": (lambda row: {**row, "subset": "Chat"}, "subset 'Chat' is not one of RewardBench 2's"),
    "Ties id": (lambda row: {**row, "subset": "Ties", "id": "7"},
                "id '7' of a Ties row reads neither ref:<n> nor tied:<n>. Fix: name a Ties prompt ref:<n>"),
}


def refused(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_groups(str(path))
    message = str(info.value)
    assert "\n" not in message and "Fix: " in message, message
    return message


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_refused_in_one_line_naming_the_file_the_row_and_the_fix(case, tmp_path):
    change, expected = BAD_ROWS[case]
    rows = rb2_rows(per_subset=1, ties_numbers=1)
    rows.insert(2, change(dict(rows[0])))
    path = write_jsonl(tmp_path / "rb2.jsonl", rows)
    message = refused(path)
    assert message.startswith(f"{path}:3: ") and expected in message, message


def test_a_ties_id_twice_is_refused_naming_both_rows(tmp_path):
    rows = rb2_rows(per_subset=1, ties_numbers=1)
    path = write_jsonl(tmp_path / "rb2.jsonl", rows + [rows[5]])
    assert refused(path).startswith(f"{path}:{len(rows) + 1}: Ties id 'ref:0' occurs twice (first at {path}:6)")


def test_a_good_row_is_never_changed_by_the_checks(tmp_path):
    rows = rb2_rows(per_subset=1, ties_numbers=1)
    path = tmp_path / "rb2.jsonl"
    path.write_text("".join(json.dumps({**row, "extra": {"nested": [1, 2]}}) + "\n" for row in rows))
    groups, stats = load_groups(str(path), max_rows=3)
    assert len(groups) == stats.rows_read == stats.rows_used == 3
