"""The sweep report's other evaluation sets: every set a job scored besides the one that gave its Table 3 row.

A loss can move the held-out pairs of its own training data, or an extra set such as HHH, while the RewardBench
sections stay where the untrained model left them; this table shows those sets next to Table 3. Per set and loss:
the plain accuracy (``eval[<set>].accuracy``, every pair counting once) as mean ± sample std over seeds, and the
paired difference from the baseline loss with :mod:`rmlab.significance`'s bootstrap over the set's pairs
(stratified by subset) and seeds. Each set is one section whose subsets weigh their pair counts, so the bootstrap's
Avg is that accuracy. Holm's correction runs over the differences of each set (a family per set, apart from the
Table 3 family).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union


from rmlab.significance import DEFAULT_SET, Comparison, PairData, compare_rows, read_pair_results

SetData = dict[str, tuple[float, Union[PairData, str]]]  # set -> (accuracy, per-pair data or why none)


def load_set_data(job_dir: Path, metrics: Mapping[str, Any]) -> SetData:
    """A finished job's accuracy and per-pair results on each set other than its Table 3 set."""
    table3_set = str((metrics.get("run") or {}).get("table3_set") or DEFAULT_SET)
    sets: SetData = {}
    for name, report in (metrics.get("eval") or {}).items():
        if name == table3_set or not isinstance(report, Mapping) or not isinstance(report.get("accuracy"),
                                                                                   (int, float)):
            continue
        sets[str(name)] = (float(report["accuracy"]), _pair_data(job_dir / "rewards" / f"{name}.jsonl", str(name)))
    return sets


def _pair_data(path: Path, name: str) -> Union[PairData, str]:
    """One section named after the set, each subset weighing its pair count: its score is the plain accuracy."""
    try:
        subsets, correct = read_pair_results(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"no per-pair data: rewards/{path.name} ({type(error).__name__}: {error})"
    if not subsets:
        return f"no per-pair data: rewards/{path.name} is empty"
    counts = {subset: float(subsets.count(subset)) for subset in dict.fromkeys(subsets)}
    return PairData(name, subsets, correct, {name: tuple(counts)}, counts)


def set_names(jobs: Sequence[Any]) -> list[str]:
    """The sets any finished job scored besides its Table 3 set, in first-seen order."""
    return list(dict.fromkeys(name for job in jobs if job.status == "ok" for name in job.sets))


def compare_sets(rows: Sequence[Any], names: Sequence[str], baseline: str, samples: int,
                 seed: int) -> dict[str, list[Comparison]]:
    """Per set: each row against the baseline row (see :func:`rmlab.significance.compare_rows`)."""
    compared = {}
    for name in names:
        by_row = []
        for row in rows:
            by_seed: dict[str, Union[PairData, str]] = {}
            for job in row.jobs:
                if job.status == "ok" and (seed_value := job.overrides.get("seed")) is not None:
                    data = job.sets.get(name, (None, "no per-pair data: the job did not score this set"))[1]
                    by_seed[seed_value] = data if isinstance(data, PairData) \
                        else f"{row.label} seed {seed_value}: {data}"
            by_row.append((row.loss, row.extra, by_seed))
        compared[name] = compare_rows(by_row, baseline, samples, seed)
    return compared


def _mean_std(row: Any, name: str) -> str:
    values = [job.sets[name][0] for job in row.jobs if job.status == "ok" and name in job.sets]
    if not values:
        return "n/a"
    return f"{100 * statistics.fmean(values):.1f}" + (f" ± {100 * statistics.stdev(values):.1f}"
                                                       if len(values) > 1 else "")


def set_header(names: Sequence[str], baseline: str) -> tuple[str, ...]:
    return ("loss", *(f"{name} %" for name in names), *(f"{name} − {baseline} (pp)" for name in names))


def set_rows(rows: Sequence[Any], names: Sequence[str], compared: Mapping[str, list[Comparison]]) -> list[list[str]]:
    """Cells for :func:`set_header`: accuracy mean ± std per set, then the paired difference per set."""
    return [[row.label, *(_mean_std(row, name) for name in names),
             *(compared[name][index].cell("Avg") for name in names)] for index, row in enumerate(rows)]
