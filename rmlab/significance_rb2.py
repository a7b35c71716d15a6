"""Which RewardBench 2 differences between losses are real: :mod:`rmlab.significance`'s paired bootstrap, over
RewardBench 2's prompts (resampled within their subsets) and seeds.

Data. A job's ``rewards/rewardbench2.jsonl`` (one line per prompt: id, subset, num_correct, every completion's
reward; :func:`rmlab.evaluation.write_group_rewards`), scored by :mod:`rmlab.rewardbench2`'s rules: each prompt of
the five best-of-4 subsets gives its result (1/k or 0), each Ties question a unit (its ``ref`` and ``tied`` prompts,
drawn together, as the Ties score pairs them). Jobs are paired when they hold the same prompts in the same order.

A replicate draws the seeds, and within each subset its prompts (Ties: its questions), with replacement: per seed,
a best-of-4 subset's score is the mean of its drawn prompts' results, Ties the Ties score of the drawn questions (one
drawn twice counts twice), final the mean of the subsets; then the mean over the drawn seeds. The estimate, the 95%
interval, the p-values and Holm's correction (over this table's own differences) are as for Table 3.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from rmlab.rewardbench2 import FINAL, NAME, SUBSETS, TIES, TiesUnit, best_of_n_result, ties_score, ties_terms, \
    ties_units
from rmlab.significance import Difference, Plan, bootstrap_differences, seed_means

PREFIX = "RB2 "
COLUMNS: tuple[str, ...] = tuple(PREFIX + name for name in (FINAL, *SUBSETS))  # the report's RewardBench 2 columns


@dataclass(frozen=True, eq=False)
class PromptData:
    """One job's per-prompt results on RewardBench 2."""

    prompts: tuple[tuple[str, str], ...]  # (subset, id) of every prompt, in file order
    results: dict[str, np.ndarray]  # best-of-4 subset -> each prompt's result (1/k or 0), in file order
    ties: tuple[TiesUnit, ...]  # the Ties questions (rmlab.rewardbench2.ties_units' order)

    @property
    def sizes(self) -> dict[str, int]:
        """Items drawn per subset (Ties: questions), in SUBSETS order."""
        sizes = {subset: len(values) for subset, values in self.results.items()}
        return {subset: sizes[subset] if subset != TIES else len(self.ties) for subset in SUBSETS
                if subset in sizes or (subset == TIES and self.ties)}


def scores_of(metrics: Mapping[str, Any]) -> dict[str, float]:
    """metrics.json's RewardBench 2 scores under the report's column names ({} when it was not scored)."""
    block = metrics.get(NAME)
    if not isinstance(block, Mapping):
        return {}
    return {PREFIX + name: float(block[name]) for name in (FINAL, *SUBSETS)
            if isinstance(block.get(name), (int, float))}


def load_prompt_data(job_dir: Path) -> Union[PromptData, str]:
    """A finished job's per-prompt data, or why there is none ("no per-prompt data: ...")."""
    path = job_dir / "rewards" / f"{NAME}.jsonl"
    if not path.is_file():
        return f"no per-prompt data: no rewards/{NAME}.jsonl"
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        prompts = tuple((str(line["subset"]), str(line["id"])) for line in lines)
        results: dict[str, list[float]] = {}
        for line in lines:
            if line["subset"] != TIES:
                results.setdefault(line["subset"], []).append(best_of_n_result([float(r) for r in line["rewards"]]))
        ties = tuple(ties_units([line for line in lines if line["subset"] == TIES]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"no per-prompt data: unreadable rewards/{NAME}.jsonl ({type(error).__name__}: {error})"
    if not lines:
        return f"no per-prompt data: rewards/{NAME}.jsonl is empty"
    return PromptData(prompts, {subset: np.asarray(values) for subset, values in results.items()}, ties)


def column_scores(data: Sequence[PromptData], plan: Plan) -> dict[str, np.ndarray]:
    """Per replicate (R,): final and each subset, the mean over the drawn seeds of each seed's score (module
    docstring); ``data`` holds one job per shared seed."""
    per_seed: dict[str, np.ndarray] = {}  # subset -> (S, R)
    for subset in data[0].sizes:
        drawn = plan.pairs[subset]
        per_seed[subset] = np.array([[ties_score(ties_terms([job.ties[i] for i in draw])) for draw in drawn]
                                     for job in data]) if subset == TIES else \
            np.stack([job.results[subset][drawn].mean(axis=1) for job in data])
    per_seed = {FINAL: sum(per_seed.values()) / len(per_seed), **per_seed}
    return seed_means({PREFIX + name: values for name, values in per_seed.items()}, plan)


def prompt_differences(rows: list[PromptData], bases: list[PromptData], samples: int, seed: int
                       ) -> Union[dict[str, Difference], tuple[str, str]]:
    """Row − baseline per RewardBench 2 column, or (reason, detail) when the jobs hold other prompts
    (:data:`rmlab.significance.Paired`)."""
    data = [*rows, *bases]
    if any(job.prompts != data[0].prompts for job in data):
        sizes = sorted({f"{len(job.prompts)} prompts" for job in data})
        return "not paired (different prompts)", ", ".join(sizes) if len(sizes) > 1 \
            else f"{sizes[0]} each, in another order or with other ids"
    positions = {subset: np.arange(size) for subset, size in data[0].sizes.items()}
    return bootstrap_differences(functools.partial(column_scores, rows), functools.partial(column_scores, bases),
                                 len(rows), positions, COLUMNS, samples, seed)


def difference_note(baseline: str, samples: int, seed: int) -> str:
    """How to read RewardBench 2's differences table."""
    return (f"Row − {baseline} in percentage points, mean over the seeds both rows share, [95% interval] from a "
            f"paired bootstrap over RewardBench 2's prompts (resampled within each subset; a Ties question's ref and "
            f"tied prompts together) and seeds ({samples} replicates, bootstrap seed {seed}); * = the interval "
            f"excludes 0; † = significant after Holm's correction over this table's differences.")
