"""Decontamination (the paper's Table 4): drop training pairs whose prompt shares a word n-gram with an eval prompt.

**Rule.** Text is lowercased and split into words (``\\w+``, so punctuation is dropped). A training prompt
is contaminated when one of its turns (``roles``, default the user turns) shares a run of ``n`` consecutive
words with a turn of an evaluation prompt, for some ``n_min <= n <= n_max`` (default 7..13). Such a run
exists iff a shared ``n_min``-gram exists, so only ``n_min``-grams are hashed: the evaluation n-grams go
into a hash table (n-gram → where it occurs), and each training turn's n-grams are probed against it with
``isdisjoint`` (C speed, no pairwise comparison). N-grams never span two turns, and a turn shorter than
``n_min`` words has no n-gram, so it can never match (6 shared words do not match, 7 do).

**Reported** for each contaminated pair: the longest shared run (``shared_words``) and the matched n-gram
(its first ``n_max`` words), found by extending the probe hits (only for contaminated prompts).
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from rmlab.data.formats import BadRow, PreferencePair, RowStats, to_pair
from rmlab.data.recipe.config import DecontaminateConfig, InputConfig
from rmlab.data.recipe.io import Record, RowWriter, expand_globs, input_name, iter_records, read_input
from rmlab.data.recipe.io import markdown_table, skip_rows, write_report

_WORD = re.compile(r"\w+")
Gram = tuple[str, ...]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def prompt_turns(pair: PreferencePair, roles: Sequence[str]) -> list[list[str]]:
    """The words of each prompt turn whose role is in ``roles`` (one list per turn)."""
    return [words(turn["content"]) for turn in pair.prompt if turn["role"] in roles]


def ngrams(turn: Sequence[str], n: int) -> Iterator[Gram]:
    return zip(*(turn[i:] for i in range(n)))


@dataclass
class Match:
    eval_ids: set[int] = field(default_factory=set)
    shared_words: int = 0
    ngram: str = ""


class NgramIndex:
    """The ``n``-grams of the evaluation prompts, each mapped to its occurrences (prompt, turn, position)."""

    def __init__(self, prompts: Sequence[list[list[str]]], n: int) -> None:
        self.prompts, self.n = prompts, n
        self.table: dict[Gram, list[tuple[int, int, int]]] = defaultdict(list)
        for prompt_id, turns in enumerate(prompts):
            for turn_id, turn in enumerate(turns):
                for position, gram in enumerate(ngrams(turn, n)):
                    self.table[gram].append((prompt_id, turn_id, position))
        self.table = dict(self.table)
        self.keys = self.table.keys()

    def hits(self, turns: Sequence[Sequence[str]]) -> bool:
        return any(not self.keys.isdisjoint(ngrams(turn, self.n)) for turn in turns)

    def match(self, turns: Sequence[Sequence[str]], n_max: int) -> Match:
        """Every eval prompt sharing an n-gram with ``turns``, and the longest shared word run."""
        result = Match()
        for turn in turns:
            for start, gram in enumerate(ngrams(turn, self.n)):
                for prompt_id, turn_id, position in self.table.get(gram, ()):
                    result.eval_ids.add(prompt_id)
                    other = self.prompts[prompt_id][turn_id]
                    if start and position and turn[start - 1] == other[position - 1]:
                        continue  # not the start of a maximal run: counted from its first word
                    length = self.n
                    while (start + length < len(turn) and position + length < len(other)
                           and turn[start + length] == other[position + length]):
                        length += 1
                    if length > result.shared_words:
                        result.shared_words = length
                        result.ngram = " ".join(turn[start:start + min(length, n_max)])
        return result


@dataclass
class EvalPrompts:
    """Distinct evaluation prompts (as word lists per turn), with the set and subset each came from."""

    turns: list[list[list[str]]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # "<set>/<subset>" of the prompt's first occurrence
    stats: RowStats = field(default_factory=RowStats)


def _eval_prompt(row: Any, spec: InputConfig, roles: Sequence[str]) -> tuple[list[list[str]], str]:
    """An eval row's prompt turns; a row that is no pair still gives a plain-string ``prompt`` (RewardBench 2's
    rows, whose ``chosen`` and ``rejected`` are lists of completions, give theirs so)."""
    try:
        pair = to_pair(row, spec.layout, spec.subset_key)
        return prompt_turns(pair, roles), pair.subset
    except BadRow:
        if isinstance(row, dict) and isinstance(row.get("prompt"), str) and "user" in roles:
            return [words(row["prompt"])], str(row.get(spec.subset_key) or "default")
        raise


def load_eval_prompts(specs: Sequence[InputConfig], roles: Sequence[str]) -> EvalPrompts:
    prompts, seen = EvalPrompts(), set()
    for index, spec in enumerate(specs):
        name = input_name(spec)
        for _, row in read_input(spec, f"tool.eval_sets[{index}]"):
            prompts.stats.rows_read += 1
            prompts.stats.rows_used += 1
            try:
                turns, subset = _eval_prompt(row, spec, roles)
            except BadRow as bad:
                prompts.stats.skip(bad.reason)
                continue
            key = tuple(" ".join(turn) for turn in turns)
            if key not in seen:
                seen.add(key)
                prompts.turns.append(turns)
                prompts.labels.append(f"{name}/{subset}")
    return prompts


def decontaminate(records: Iterable[Record], index: NgramIndex, roles: Sequence[str], n_max: int
                  ) -> Iterator[tuple[Record, Optional[Match]]]:
    """Each record with its match, or with None when its prompt is clean (streamed)."""
    for record in records:
        turns = prompt_turns(record.pair, roles)
        yield record, (index.match(turns, n_max) if index.hits(turns) else None)


@dataclass
class Tally:
    """Table 4's counts, accumulated while streaming; prompts are counted as hashes of their compared turns."""

    pairs: Counter = field(default_factory=Counter)  # per training source
    prompts: defaultdict = field(default_factory=lambda: defaultdict(set))
    bad_pairs: Counter = field(default_factory=Counter)
    bad_prompts: defaultdict = field(default_factory=lambda: defaultdict(set))
    by_eval_subset: defaultdict = field(default_factory=lambda: defaultdict(set))  # label -> train prompt hashes
    matched: set = field(default_factory=set)  # eval prompt ids with a match

    def add(self, record: Record, match: Optional[Match], roles: Sequence[str], labels: Sequence[str]) -> None:
        key = hash(tuple(turn["content"] for turn in record.pair.prompt if turn["role"] in roles))
        self.pairs[record.source] += 1
        self.prompts[record.source].add(key)
        if match is None:
            return
        self.bad_pairs[record.source] += 1
        self.bad_prompts[record.source].add(key)
        self.matched |= match.eval_ids
        for eval_id in match.eval_ids:
            self.by_eval_subset[labels[eval_id]].add(key)


def contamination_tables(tally: Tally, labels: Sequence[str]) -> dict[str, Any]:
    """Table 4: per eval subset, prompts and prompts with a match; per training source, contaminated prompts."""
    eval_hit = Counter(labels[eval_id] for eval_id in tally.matched)
    evaluation = [{"eval_subset": label, "eval_prompts": total, "eval_prompts_matched": eval_hit[label],
                   "contaminated_train_prompts": len(tally.by_eval_subset[label])}
                  for label, total in Counter(labels).items()]
    training = [{"train_source": source, "pairs": count, "prompts": len(tally.prompts[source]),
                 "contaminated_pairs": tally.bad_pairs[source], "contaminated_prompts": len(tally.bad_prompts[source])}
                for source, count in tally.pairs.items()]
    totals = {"eval_prompts": len(labels), "eval_prompts_matched": len(tally.matched),
              "train_pairs": sum(tally.pairs.values()), "train_prompts": len(set().union(*tally.prompts.values())),
              "contaminated_pairs": sum(tally.bad_pairs.values()),
              "contaminated_prompts": len(set().union(*tally.bad_prompts.values()))}
    return {"evaluation": evaluation, "training": training, "totals": totals}


def removed_row(record: Record, match: Match, labels: Sequence[str], n_max: int) -> dict[str, Any]:
    return {"location": record.location, "source": record.source, "ngram": match.ngram,
            "n": min(match.shared_words, n_max), "shared_words": match.shared_words,
            "eval_prompts": sorted({labels[i] for i in match.eval_ids}), "row": record.row}


def run(cfg: DecontaminateConfig) -> dict[str, Any]:
    """The ``decontaminate`` tool: pairs.<fmt> (clean rows), removed.jsonl, report.md / report.json.

    Training rows are streamed (memory holds the evaluation index, not the training set)."""
    out, started = Path(cfg.output_dir), time.perf_counter()
    prompts = load_eval_prompts(expand_globs(cfg.eval_sets, "tool.eval_sets"), cfg.roles)
    index = NgramIndex(prompts.turns, cfg.n_min)
    indexed = time.perf_counter()
    stats, tally = RowStats(), Tally()
    with RowWriter(out, "pairs", cfg.format) as clean, RowWriter(out, "removed", "jsonl") as removed:
        for record, match in decontaminate(iter_records(cfg.input, "tool.input", stats), index, cfg.roles, cfg.n_max):
            tally.add(record, match, cfg.roles, prompts.labels)
            if match is None:
                clean.write(record.row)
            else:
                removed.write(removed_row(record, match, prompts.labels, cfg.n_max))
    skip_rows(stats, "contaminated", removed.count)
    tables = contamination_tables(tally, prompts.labels)
    timing = {"eval_index_s": round(indexed - started, 2), "train_pass_s": round(time.perf_counter() - indexed, 2)}
    totals = tables["totals"]
    sections = [
        f"Rule: a shared word n-gram with {cfg.n_min} <= n <= {cfg.n_max} between a training prompt and an evaluation "
        f"prompt (roles: {', '.join(cfg.roles)}; lowercased `\\w+` words). Input: `{cfg.input.path}`.",
        "## Evaluation prompts with a match\n\n" + markdown_table(
            ["Evaluation subset", "Prompts", "Prompts with a match", "Contaminated training prompts"],
            [list(row.values()) for row in tables["evaluation"]]
            + [["**Total**", totals["eval_prompts"], totals["eval_prompts_matched"], totals["contaminated_prompts"]]]),
        "## Contaminated training data\n\n" + markdown_table(
            ["Training source", "Pairs", "Prompts", "Contaminated pairs (removed)", "Contaminated prompts"],
            [list(row.values()) for row in tables["training"]]
            + [["**Total**", totals["train_pairs"], totals["train_prompts"], totals["contaminated_pairs"],
                totals["contaminated_prompts"]]]),
        f"Rows: {stats.as_dict()}. Evaluation rows: {prompts.stats.as_dict()}. Time: {timing}.",
    ]
    report = {**tables, "rows": stats.as_dict(), "eval_rows": prompts.stats.as_dict(), "timing": timing,
              "n_min": cfg.n_min, "n_max": cfg.n_max, "roles": list(cfg.roles)}
    write_report(out, "Decontamination", sections, report)
    return report
