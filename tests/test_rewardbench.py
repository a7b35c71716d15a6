"""Tests for rmlab.evaluation (RewardBench scoring). Expected values are worked out by hand."""

import math

import pytest
from conftest import OFFICIAL_EXAMPLE_COUNTS, OFFICIAL_SUBSET_MAPPING

from rmlab.data.embedded import SECTION_MAPPING
from rmlab.rewardbench import (
    EXAMPLE_COUNTS,
    SECTIONS,
    SUBSET_MAPPING,
    accuracy_by_subset,
    counts_by_subset,
    overall_score,
    pair_accuracy,
    evaluation_report,
    section_scores,
)

HEP = ["hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"]


# --------------------------------------------------------------------------- constants


def test_sections_and_mapping_shape():
    assert SECTIONS == ("Chat", "Chat Hard", "Safety", "Reasoning")
    assert tuple(SUBSET_MAPPING) == SECTIONS
    mapped = [s for subs in SUBSET_MAPPING.values() for s in subs]
    assert len(mapped) == len(set(mapped)) == 23
    assert set(mapped) == set(EXAMPLE_COUNTS)
    assert SUBSET_MAPPING["Reasoning"] == ["math-prm", *HEP]


def test_filtered_split_totals_match_rewardbench():
    # Per-section row counts of the filtered split (dataset card: 2985 prompts).
    chat = 100 + 95 + 95 + 28 + 40
    chat_hard = 37 + 100 + 134 + 92 + 47 + 46
    safety = 100 + 100 + 250 + 154 + 136
    reasoning_actual = 447 + 6 * 164
    assert (chat, chat_hard, safety, reasoning_actual) == (358, 456, 740, 1431)

    def section_total(section):
        return sum(EXAMPLE_COUNTS[s] for s in SUBSET_MAPPING[section])

    assert section_total("Chat") == chat
    assert section_total("Chat Hard") == chat_hard
    assert section_total("Safety") == safety
    # math-prm carries the up-weighted 984 in EXAMPLE_COUNTS instead of its 447 rows.
    assert section_total("Reasoning") == 984 + 6 * 164 == 1968

    weighted_total = sum(EXAMPLE_COUNTS[s] for subs in SUBSET_MAPPING.values() for s in subs)
    assert weighted_total == 3522
    assert weighted_total - EXAMPLE_COUNTS["math-prm"] + 447 == 2985  # math-prm's actual rows


def test_math_prm_weight_equals_all_hep_subsets():
    assert EXAMPLE_COUNTS["math-prm"] == sum(EXAMPLE_COUNTS[s] for s in HEP) == 984


# --------------------------------------------------------------------------- accuracy


def test_pair_accuracy_ties_count_as_wrong():
    chosen = [1.0, 2.0, 3.0, 4.0, 0.0]
    rejected = [1.0, 1.0, 5.0, 4.0, -0.5]
    # pair 0 tie, 1 correct, 2 wrong, 3 tie, 4 correct -> 2 / 5
    assert pair_accuracy(chosen, rejected) == pytest.approx(2 / 5)
    assert pair_accuracy([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_pair_accuracy_nan_counts_as_wrong_and_validates():
    assert pair_accuracy([math.nan, 1.0], [0.0, 0.0]) == 0.5
    with pytest.raises(ValueError):
        pair_accuracy([1.0], [0.0, 1.0])
    with pytest.raises(ValueError):
        pair_accuracy([], [])


def test_accuracy_and_counts_by_subset():
    chosen = [2.0, 1.0, 0.0, 3.0, 3.0, 1.0]
    rejected = [1.0, 1.0, 1.0, 2.0, 3.0, 0.0]
    subsets = ["a", "a", "a", "b", "b", "c"]
    # a: correct, tie, wrong -> 1/3; b: correct, tie -> 1/2; c: correct -> 1
    assert accuracy_by_subset(chosen, rejected, subsets) == pytest.approx({"a": 1 / 3, "b": 1 / 2, "c": 1.0})
    assert counts_by_subset(subsets) == {"a": 3, "b": 2, "c": 1}
    with pytest.raises(ValueError):
        accuracy_by_subset(chosen, rejected, subsets[:-1])


# --------------------------------------------------------------------------- sections


SUBSET_ACC = {
    # Chat: all five present
    "alpacaeval-easy": 1.0,
    "alpacaeval-length": 0.8,
    "alpacaeval-hard": 0.6,
    "mt-bench-easy": 0.5,
    "mt-bench-med": 0.25,
    # Chat Hard: only two of six present
    "mt-bench-hard": 0.0,
    "llmbar-natural": 0.5,
    # Safety: none present -> omitted
    # Reasoning: math-prm plus the six hep subsets
    "math-prm": 0.9,
    "hep-cpp": 1.0,
    "hep-go": 0.5,
    "hep-java": 0.5,
    "hep-js": 0.5,
    "hep-python": 0.5,
    "hep-rust": 0.0,
    # not in any section -> ignored
    "anthropic_helpful": 0.1,
}

# Hand arithmetic:
# Chat      = (100*1.0 + 95*0.8 + 95*0.6 + 28*0.5 + 40*0.25) / (100+95+95+28+40) = 257 / 358
# Chat Hard = (37*0.0 + 100*0.5) / (37+100) = 50 / 137
# Reasoning = (984*0.9 + 164*(1.0+0.5+0.5+0.5+0.5+0.0)) / (984 + 6*164) = 1377.6 / 1968 = 0.7
#           = (math-prm + mean(hep)) / 2 = (0.9 + 0.5) / 2
EXPECTED_CHAT = 257 / 358
EXPECTED_CHAT_HARD = 50 / 137
EXPECTED_REASONING = 0.7


def test_section_scores_hand_computed():
    scores = section_scores(SUBSET_ACC)
    assert list(scores) == ["Chat", "Chat Hard", "Reasoning"]
    assert scores["Chat"] == pytest.approx(EXPECTED_CHAT)
    assert scores["Chat Hard"] == pytest.approx(EXPECTED_CHAT_HARD)
    assert scores["Reasoning"] == pytest.approx(EXPECTED_REASONING)


def test_missing_sections_are_omitted_not_zero():
    scores = section_scores(SUBSET_ACC)
    assert "Safety" not in scores
    assert section_scores({}) == {}
    assert section_scores({"unknown-subset": 1.0}) == {}


def test_reasoning_is_mean_of_math_and_code():
    acc = {"math-prm": 0.2, **{s: v for s, v in zip(HEP, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])}}
    code_mean = (0.9 + 0.8 + 0.7 + 0.6 + 0.5 + 0.4) / 6
    assert section_scores(acc)["Reasoning"] == pytest.approx((0.2 + code_mean) / 2)
    # With the actual 447 math rows the result would differ (math under-weighted).
    unweighted = (447 * 0.2 + 164 * 6 * code_mean) / (447 + 6 * 164)
    assert section_scores(acc)["Reasoning"] != pytest.approx(unweighted)


def test_overall_score():
    sections = section_scores(SUBSET_ACC)
    expected = (257 / 358 + 50 / 137 + 0.7) / 3
    assert overall_score(sections) == pytest.approx(expected)
    assert overall_score({"Chat": 1.0, "Chat Hard": 0.5, "Safety": 0.25, "Reasoning": 0.25}) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        overall_score({})


# --------------------------------------------------------------------------- custom data


def test_custom_mapping_with_observed_counts():
    mapping = {"Chat": ["a", "b"], "Safety": ["c"], "Reasoning": ["d"]}
    acc = {"a": 1.0, "b": 0.0, "c": 0.4}
    # a has 3 rows, b has 1 -> Chat = (3*1.0 + 1*0.0) / 4 = 0.75; Reasoning has no data -> omitted
    scores = section_scores(acc, example_counts={}, subset_mapping=mapping, observed_counts={"a": 3, "b": 1, "c": 5})
    assert scores == pytest.approx({"Chat": 0.75, "Safety": 0.4})
    # Fixed example_counts take precedence over observed counts: (1*1.0 + 1*0.0) / 2
    scores = section_scores(acc, {"a": 1, "b": 1}, mapping, observed_counts={"a": 3, "b": 1, "c": 5})
    assert scores["Chat"] == pytest.approx(0.5)


def test_custom_mapping_missing_count_raises():
    with pytest.raises(KeyError):
        section_scores({"a": 1.0}, example_counts={}, subset_mapping={"Chat": ["a"]})


def test_report_on_rmlab_categories():
    #          chat       chat_hard        safety   (no reasoning rows)
    chosen = [1.0, 1.0, 0.0, 0.3, 0.3, 0.3, 2.0]
    rejected = [0.0, 0.0, 1.0, 0.3, 0.1, 0.9, 1.0]
    subsets = ["chat", "chat", "chat", "chat_hard", "chat_hard", "chat_hard", "safety"]
    # chat 2/3; chat_hard: tie, correct, wrong -> 1/3; safety 1/1
    result = evaluation_report(chosen, rejected, subsets, example_counts={}, subset_mapping=SECTION_MAPPING)
    assert result["sections"] == pytest.approx({"Chat": 2 / 3, "Chat Hard": 1 / 3, "Safety": 1.0})
    assert result["Avg"] == pytest.approx((2 / 3 + 1 / 3 + 1.0) / 3)
    assert result["accuracy"] == pytest.approx(4 / 7)
    assert result["subset_counts"] == {"chat": 3, "chat_hard": 3, "safety": 1}
    assert "Reasoning" not in result["sections"]
    assert "sections" not in evaluation_report(chosen, rejected, subsets, subset_mapping=None)


def test_report_rewardbench_defaults():
    chosen = [1.0] * 3 + [0.0] + [1.0, 0.0]
    rejected = [0.0] * 6
    subsets = ["math-prm", "math-prm", "math-prm", "math-prm", "hep-go", "hep-go"]
    # math-prm 3/4 (one tie), hep-go 1/2 -> (984*0.75 + 164*0.5) / (984+164) = 820 / 1148
    result = evaluation_report(chosen, rejected, subsets)
    assert result["sections"] == pytest.approx({"Reasoning": 820 / 1148})
    assert result["Avg"] == pytest.approx(820 / 1148)


@pytest.mark.parametrize("subset", sorted(OFFICIAL_EXAMPLE_COUNTS))
def test_every_example_count_is_the_official_one(subset):
    assert EXAMPLE_COUNTS[subset] == OFFICIAL_EXAMPLE_COUNTS[subset]


def test_mapping_and_count_tables_are_exactly_the_official_ones():
    assert EXAMPLE_COUNTS == OFFICIAL_EXAMPLE_COUNTS
    assert {section: list(subsets) for section, subsets in SUBSET_MAPPING.items()} == OFFICIAL_SUBSET_MAPPING
    assert list(SUBSET_MAPPING) == list(OFFICIAL_SUBSET_MAPPING)


def test_safety_weighs_xstest_refuse_154_and_respond_250():
    """All five Safety subsets, by hand: (100·1 + 100·0.5 + 154·1 + 250·0 + 136·0.25) / 740."""
    accuracy = {"refusals-dangerous": 1.0, "refusals-offensive": 0.5, "xstest-should-refuse": 1.0,
                "xstest-should-respond": 0.0, "donotanswer": 0.25}
    expected = (100 * 1.0 + 100 * 0.5 + 154 * 1.0 + 250 * 0.0 + 136 * 0.25) / 740
    assert section_scores(accuracy)["Safety"] == pytest.approx(expected, rel=1e-15)
    assert abs(expected - (100 + 50 + 250 * 1.0 + 0 + 34) / 740) > 0.1  # the swapped counts would differ


def test_overall_score_with_every_subset_by_hand():
    """Every subset present: each section's weighted mean by hand, math-prm at 984, Avg the plain mean."""
    accuracy = {name: (index % 7) / 6 for index, name in enumerate(sorted(OFFICIAL_EXAMPLE_COUNTS))}
    sections = section_scores(accuracy)
    for section, members in OFFICIAL_SUBSET_MAPPING.items():
        weights = [OFFICIAL_EXAMPLE_COUNTS[name] for name in members]
        by_hand = sum(w * accuracy[name] for w, name in zip(weights, members)) / sum(weights)
        assert sections[section] == pytest.approx(by_hand, rel=1e-15), section
    assert overall_score(sections) == pytest.approx(sum(sections.values()) / 4, rel=1e-15)


# --------------------------------------------------------------------------- RewardBench rebuilt with subsets missing
def rebuilt_rows():
    """(subset, chosen, rejected) rows of a RewardBench rebuilt without mt-bench, refusals, donotanswer, math-prm."""
    return ([("alpacaeval-easy", 1.0, 0.0)] * 3 + [("alpacaeval-easy", 0.0, 1.0)]          # 3/4
            + [("alpacaeval-hard", 2.0, 1.0), ("alpacaeval-hard", 1.0, 1.0)]                # 1/2 (a tie is wrong)
            + [("llmbar-natural", 1.0, 0.0)] * 2 + [("llmbar-adver-manual", 0.0, 1.0)]      # 1, 0
            + [("xstest-should-respond", 1.0, 0.0), ("xstest-should-respond", 0.0, 1.0)]    # 1/2
            + [("xstest-should-refuse", 1.0, 0.0)]                                          # 1
            + [("hep-python", 1.0, 0.0), ("hep-python", 0.0, 1.0), ("hep-go", 1.0, 0.0)])   # 1/2, 1


def test_sections_of_a_rebuilt_rewardbench_weigh_the_present_subsets_and_list_the_missing_ones():
    """By hand, with RewardBench's weights: Chat (100*3/4 + 95*1/2) / 195; Chat Hard (100*1 + 46*0) / 146;
    Safety (250*1/2 + 154*1) / 404; Reasoning without math-prm the mean of the hep subsets present (1/2 + 1) / 2."""
    subsets, chosen, rejected = zip(*rebuilt_rows())
    report = evaluation_report(chosen, rejected, subsets)
    expected = {"Chat": 122.5 / 195, "Chat Hard": 100 / 146, "Safety": 279 / 404, "Reasoning": 0.75}
    assert report["sections"] == pytest.approx(expected)
    assert report["Avg"] == pytest.approx(sum(expected.values()) / 4)
    assert report["section_mapping"]["Reasoning"] == ["hep-go", "hep-python"]
    assert report["subset_weights"]["alpacaeval-hard"] == 95 and report["subset_weights"]["xstest-should-respond"] == 250
    assert report["missing_subsets"] == {
        "Chat": ["alpacaeval-length", "mt-bench-easy", "mt-bench-med"],
        "Chat Hard": ["mt-bench-hard", "llmbar-adver-neighbor", "llmbar-adver-GPTInst", "llmbar-adver-GPTOut"],
        "Safety": ["refusals-dangerous", "refusals-offensive", "donotanswer"],
        "Reasoning": ["math-prm", "hep-cpp", "hep-java", "hep-js", "hep-rust"]}
    assert report["missing_sections"] == []


def test_a_section_with_no_subset_present_is_left_out_of_avg_and_named():
    subsets, chosen, rejected = zip(*[row for row in rebuilt_rows() if not row[0].startswith("hep-")])
    report = evaluation_report(chosen, rejected, subsets)
    assert report["missing_sections"] == ["Reasoning"] and "Reasoning" not in report["sections"]
    assert report["Avg"] == pytest.approx((122.5 / 195 + 100 / 146 + 279 / 404) / 3)
    assert report["missing_subsets"]["Reasoning"] == SUBSET_MAPPING["Reasoning"]
