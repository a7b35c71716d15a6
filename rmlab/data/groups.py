"""Best-of-N rows (RewardBench 2's layout) → :class:`CompletionGroup`, checked; each completion tokenized alone.

A row holds ``prompt`` (a string, or a list of ``{role, content}`` turns), ``chosen`` (a list of completions: the
correct ones), ``rejected`` (a list: the incorrect ones), ``num_correct`` (the chosen count), ``total_completions``
(chosen + rejected), ``subset`` (one of RewardBench 2's six) and ``id`` (in Ties ``ref:<n>`` or ``tied:<n>``); other
columns are ignored. Sources: the hub dataset (``allenai/reward-bench-2``, split ``test``), a local directory laid
out as on the hub (``data/test-*.parquet``), or one ``.parquet`` / ``.jsonl`` / ``.json`` file
(:func:`rmlab.data.formats.read_rows`).

A benchmark's score is over all its prompts, so a row that breaks the layout is refused, never dropped: a
:class:`~rmlab.data.formats.DataError` names the file, the row and the fix. A group whose conversation the chat
template cannot render is skipped and counted by reason (``rows_read = rows_used + rows_skipped``), as for pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from rmlab.data.formats import BadRow, DataError, Message, RowStats, as_prompt, read_rows
from rmlab.data.tokenize import PairTokenizer
from rmlab.rewardbench2 import SUBSETS, TIES, ties_id

COLUMNS = ("prompt", "chosen", "rejected", "num_correct", "total_completions", "subset", "id")
LAYOUT = "a RewardBench 2 row holds prompt, chosen (a list), rejected (a list), num_correct, total_completions, " \
    "subset and id, as allenai/reward-bench-2 does"


@dataclass(frozen=True)
class CompletionGroup:
    """One prompt and its completions, the correct ones first."""

    id: str
    subset: str
    prompt: list[Message]
    completions: list[str]
    num_correct: int


@dataclass(frozen=True)
class TokenizedGroup:
    """A group's completions as token ids (each the prompt + that completion alone), in the group's order."""

    id: str
    subset: str
    num_correct: int
    sequences: list[list[int]]
    truncated: int = 0  # completions cut into (longer than max_length): scored on their end, counted


def _refuse(location: str, problem: str, fix: str) -> DataError:
    return DataError(f"{location}: {problem}. Fix: {fix}.")


def _completions(row: dict, key: str, location: str) -> list[str]:
    value = row[key]
    if not isinstance(value, (list, tuple)) or not all(isinstance(text, str) for text in value):
        raise _refuse(location, f"{key} must be a list of completions (strings), got {str(value)[:60]!r}",
                      f"make it a list ({LAYOUT})")
    return list(value)


def _count(row: dict, key: str, location: str) -> int:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _refuse(location, f"{key}={value!r} is not a count", f"set {key} to a whole number >= 0")
    return value


def to_group(row: Any, location: str) -> CompletionGroup:
    """One row as a checked group, or a :class:`DataError` naming ``location`` and the fix."""
    if isinstance(row, BadRow):
        raise _refuse(location, str(row), "repair or remove this line")
    if not isinstance(row, dict):
        raise _refuse(location, f"expected an object, got {type(row).__name__}", f"write one object per row ({LAYOUT})")
    if missing := [column for column in COLUMNS if column not in row]:
        raise _refuse(location, f"no column {', '.join(map(repr, missing))}",
                      f"add {'it' if len(missing) == 1 else 'them'} ({LAYOUT})")
    chosen, rejected = _completions(row, "chosen", location), _completions(row, "rejected", location)
    num_correct, total = _count(row, "num_correct", location), _count(row, "total_completions", location)
    size, subset, group_id = len(chosen) + len(rejected), str(row["subset"]), str(row["id"])
    if not size:
        raise _refuse(location, "an empty group (chosen and rejected are both empty)",
                      "give the prompt its completions, or remove the row")
    if not chosen:
        raise _refuse(location, "chosen is empty: the first completion must be a correct one",
                      "put the correct completion(s) in chosen")
    if num_correct > size:
        raise _refuse(location, f"num_correct={num_correct} is larger than the group ({size} completions: "
                      f"{len(chosen)} chosen + {len(rejected)} rejected)",
                      f"num_correct counts the chosen completions: set it to {len(chosen)}")
    if total != size:
        raise _refuse(location, f"total_completions={total}, but the row holds {size} completions",
                      f"set total_completions to {size}")
    if subset not in SUBSETS:
        raise _refuse(location, f"subset {subset!r} is not one of RewardBench 2's ({', '.join(SUBSETS)})",
                      "name each row's subset as the dataset does")
    if subset == TIES and ties_id(group_id) is None:
        raise _refuse(location, f"id {group_id!r} of a Ties row reads neither ref:<n> nor tied:<n>",
                      "name a Ties prompt ref:<n> (its reference, one correct answer) or tied:<n> (several correct "
                      "answers), the twins of one question sharing <n>")
    try:
        prompt = as_prompt(row["prompt"])
    except BadRow as bad:
        raise _refuse(location, str(bad), "give a prompt string or a list of {role, content} turns") from bad
    if not prompt or not all(isinstance(turn["content"], str) and turn["content"].strip() for turn in prompt):
        raise _refuse(location, "the prompt is empty", "give the row its prompt")
    return CompletionGroup(group_id, subset, prompt, chosen + rejected, num_correct)


def load_groups(source: str, split: str = "test", max_rows: Optional[int] = None,
                stats: Optional[RowStats] = None) -> tuple[list[CompletionGroup], RowStats]:
    """Every row of ``source`` as a group (a bad row raises; see the module docstring); a Ties id may occur once."""
    stats = stats or RowStats()
    groups, seen = [], {}
    for location, row in read_rows(source, split, None, max_rows):
        stats.rows_read += 1
        stats.rows_used += 1
        group = to_group(row, location)
        if group.subset == TIES:
            if group.id in seen:
                raise _refuse(location, f"Ties id {group.id!r} occurs twice (first at {seen[group.id]})",
                              "give each Ties prompt its own id")
            seen[group.id] = location
        groups.append(group)
    return groups, stats


def tokenize_groups(groups: Sequence[CompletionGroup], pair_tokenizer: PairTokenizer,
                    stats: RowStats) -> list[TokenizedGroup]:
    """Each completion after its prompt, alone (:meth:`PairTokenizer.completion`); a group the template cannot
    render is skipped and counted in ``stats``."""
    tokenized = []
    for group in groups:
        try:
            encoded = [pair_tokenizer.completion(group.prompt, text) for text in group.completions]
        except BadRow as bad:
            stats.skip(bad.reason)
            continue
        tokenized.append(TokenizedGroup(group.id, group.subset, group.num_correct, [ids for ids, _ in encoded],
                                        sum(cut for _, cut in encoded)))
    return tokenized
