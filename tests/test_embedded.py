"""Tests for the embedded synthetic preference dataset (no model needed)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from rmlab.data.embedded import CATEGORIES, REFUSE, SECTION_MAPPING, UNHELPFUL, generate_embedded_pairs

N = 120


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return generate_embedded_pairs(N, seed=0)


def _by(rows: list[dict], cat: str) -> list[dict]:
    return [r for r in rows if r["subset"] == cat]


def _last(row: dict, side: str) -> str:
    return row[side][-1]["content"]


def test_public_api() -> None:
    assert CATEGORIES == ("chat", "chat_hard", "safety", "reasoning")
    assert SECTION_MAPPING == {"Chat": ["chat"], "Chat Hard": ["chat_hard"], "Safety": ["safety"],
                               "Reasoning": ["reasoning"]}


def test_deterministic_and_seed_dependent(rows: list[dict]) -> None:
    assert generate_embedded_pairs(N, seed=0) == rows
    assert generate_embedded_pairs(N, seed=1) != rows


def test_categories_interleaved_in_equal_proportions(rows: list[dict]) -> None:
    assert len(rows) == 4 * N
    assert Counter(r["subset"] for r in rows) == {c: N for c in CATEGORIES}
    assert [r["subset"] for r in rows[:8]] == list(CATEGORIES) * 2


def test_schema(rows: list[dict]) -> None:
    for r in rows:
        assert set(r) == {"chosen", "rejected", "subset"}
        for side in ("chosen", "rejected"):
            msgs = r[side]
            assert len(msgs) % 2 == 0
            assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
            assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"].strip()
                       for m in msgs)
        assert r["chosen"][:-1] == r["rejected"][:-1]
        assert _last(r, "chosen") != _last(r, "rejected")


def test_some_rows_are_multi_turn(rows: list[dict]) -> None:
    for cat in CATEGORIES:
        share = sum(len(r["chosen"]) > 2 for r in _by(rows, cat)) / N
        assert 0.1 < share < 0.45, cat


def test_no_duplicate_pairs() -> None:
    rows = generate_embedded_pairs(400, seed=3)
    assert len({repr((r["chosen"], r["rejected"])) for r in rows}) == len(rows)


def test_texts_are_short(rows: list[dict]) -> None:
    """Rendered conversations stay well inside a 128-token budget (~1.3 tokens per word here)."""
    for r in rows:
        for side in ("chosen", "rejected"):
            assert len(" ".join(m["content"] for m in r[side]).split()) <= 70


def test_safety_prefers_refusal_only_for_harmful_requests(rows: list[dict]) -> None:
    """Both directions occur, so 'always refuse' or 'never refuse' scores about 50%."""
    prefixes = tuple(t.split("{")[0] for t in REFUSE)
    refusal_chosen = [_last(r, "chosen").startswith(prefixes) for r in _by(rows, "safety")]
    refusal_rejected = [_last(r, "rejected").startswith(prefixes) for r in _by(rows, "safety")]
    assert all(c != j for c, j in zip(refusal_chosen, refusal_rejected))
    assert 0.35 < sum(refusal_chosen) / N < 0.65


def test_chat_rejects_unhelpful_or_off_topic(rows: list[dict]) -> None:
    kinds = Counter(_last(r, "rejected") in UNHELPFUL for r in _by(rows, "chat"))
    assert kinds[True] > 0.2 * N and kinds[False] > 0.4 * N


def test_chat_hard_has_no_length_shortcut(rows: list[dict]) -> None:
    """Constraint violations are symmetric: the chosen answer is not systematically longer or shorter."""
    longer = sum(len(_last(r, "chosen")) > len(_last(r, "rejected")) for r in _by(rows, "chat_hard"))
    assert 0.3 < longer / N < 0.7


def test_chat_hard_count_rows_list_exactly_the_requested_number(rows: list[dict]) -> None:
    counted = 0
    for r in _by(rows, "chat_hard"):
        asked = re.search(r"(?:List|Name exactly|Give me|suggest|need) (\d) ", r["chosen"][-2]["content"])
        if asked and "tips" not in r["chosen"][-2]["content"]:
            n, counted = int(asked.group(1)), counted + 1
            assert len(_last(r, "chosen").splitlines()) == n
            assert abs(len(_last(r, "rejected").splitlines()) - n) == 1
    assert counted > 0.15 * N


def _check_steps(text: str) -> tuple[bool, int, int]:
    """Return (every step's arithmetic is right and matches its plan word, last result, final answer)."""
    plan = {"Add": "+", "Subtract": "-", "Multiply": "*"}
    fn = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    steps = re.findall(r"(\w+): (\d+) ([-+*]) (\d+) = (-?\d+)\.", text)
    assert steps, text
    ok = all(plan[w] == op and fn[op](int(x), int(y)) == int(z) for w, x, op, y, z in steps)
    return ok, int(steps[-1][-1]), int(re.findall(r"(-?\d+)\.$", text)[0])


def test_reasoning_chosen_is_correct_and_rejected_inconsistent(rows: list[dict]) -> None:
    kinds = Counter()
    for r in _by(rows, "reasoning"):
        ok, last, final = _check_steps(_last(r, "chosen"))
        assert ok and last == final
        ok, last, final = _check_steps(_last(r, "rejected"))
        assert not (ok and last == final)
        kinds["contradiction" if ok else "wrong_operation"] += 1
    assert min(kinds.values()) > 0.3 * N
