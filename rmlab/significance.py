"""Which Table 3 differences between losses are real: a paired bootstrap over the scored pairs AND seeds.

Every loss of a sweep is scored on the same evaluation pairs (``rewards/<set>.jsonl``: one line per pair, same
order in every job) with the same seeds, so a row (loss) is compared with the baseline row PAIRED.

Data. A job's per-pair result is ``correct = chosen > rejected`` strictly (ties and NaN wrong), read from
``rewards/<set>.jsonl``, where ``<set>`` is ``metrics.json``'s ``run.table3_set`` ("heldout" when absent), with
``eval[<set>].section_mapping`` ({section: [subset, ...]}) and ``eval[<set>].subset_weights`` ({subset: weight}).
Two rows are compared on the seeds both have a finished job for. Every job involved must hold per-pair data
("no per-pair data" otherwise: older runs lack the mapping/weights, nothing is guessed) for the same set with
the same length and subset sequence ("not paired (different pairs)" otherwise) and the same mapping/weights.

Scores, as :mod:`rmlab.rewardbench` computes them per job: subset accuracy = fraction correct; section =
weighted mean of the accuracies of its subsets present, with ``subset_weights``; Avg = plain mean of the
sections present. A row's score is the mean over seeds.

Estimate: row − baseline on the original data (means over the shared seeds).

Bootstrap replicate (``samples`` of them): draw S seeds with replacement from the S shared seeds, and for every
subset draw n_k pair positions with replacement from that subset's n_k positions (stratified: subset sizes,
hence section weights, stay fixed). The SAME drawn seeds and pair positions apply to both rows, and the same
drawn pairs to every seed (the pairs are the same items in every job). Each row's per-seed scores are computed
on the drawn pairs as above, averaged over the drawn seeds (a seed drawn twice counts twice); the replicate
value is row − baseline. Interval: percentiles 2.5 and 97.5 of the replicate values (numpy's default linear
interpolation). Draws come from ``numpy.random.default_rng(seed)`` created afresh for each comparison, so the
result is deterministic and independent of which other rows exist. Significant: the interval excludes 0 (by
more than 1e-12, float noise).

Multiple comparisons. A table compares every row with the baseline on five columns, so at 95% about one
interval in twenty excludes 0 by chance alone. Each difference also gets a two-sided bootstrap p-value,
``min(1, 2 (k + 1) / (R + 1))`` with ``k`` the replicates on the smaller side of 0 (``<= 0`` or ``>= 0``) and
``R`` the replicates, and the p-values of all the table's differences are adjusted together by Holm's
step-down method (Holm 1979): sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``
for ``m`` differences. ``†`` marks a Holm-adjusted p-value below 0.05 (family-wise error 5%). With the
default 2000 replicates the smallest p-value is 2/2001, so in a family of more than 50 differences nothing can
pass: raise ``--bootstrap-samples``.

Pure numpy + stdlib (no torch/Lightning); scores are fractions, cells print percentage points (pp).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any, Union

import numpy as np

from rmlab.rewardbench import SECTIONS

COLUMNS: tuple[str, ...] = ("Avg", *SECTIONS)
DEFAULT_SET = "heldout"
DEFAULT_SAMPLES = 2000
DEFAULT_SEED = 0
EPS = 1e-12  # |bound| below this counts as 0 (float noise), for significance only
FAMILY_ALPHA = 0.05  # Holm-adjusted p-values below this get a dagger
CSV_STATS: tuple[str, ...] = ("diff pp", "ci low pp", "ci high pp", "significant", "p", "holm p")
CSV_HEADER: tuple[str, ...] = (*(f"{c} {s}" for c in COLUMNS for s in CSV_STATS), "paired seeds", "paired note")
DIFFERENCE_HEADER: tuple[str, ...] = ("loss", *COLUMNS, "paired seeds", "note")  # markdown / printed table

Sections = Mapping[str, Sequence[tuple[str, float]]]  # section -> [(subset, weight)] of the present subsets


@dataclass(frozen=True, eq=False)
class PairData:
    """One job's per-pair results on the set that gave its Table 3 row."""

    set_name: str
    subsets: tuple[str, ...]          # subset of each pair, in file order
    correct: np.ndarray               # bool (n_pairs,): chosen > rejected strictly
    section_mapping: dict[str, tuple[str, ...]]
    subset_weights: dict[str, float]


def read_pair_results(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """A ``rewards/<set>.jsonl``'s subsets and whether each pair was ranked right (chosen > rejected), in file
    order; a malformed file raises (OSError, ValueError, KeyError, TypeError)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return (tuple(str(line["subset"]) for line in lines),
            np.array([float(line["chosen"]) > float(line["rejected"]) for line in lines], dtype=bool))


def load_pair_data(job_dir: Path, metrics: Mapping[str, Any]) -> Union[PairData, str]:
    """A finished job's per-pair data, or the reason there is none ("no per-pair data: ...")."""
    try:
        name = str((metrics.get("run") or {}).get("table3_set") or DEFAULT_SET)
        report = (metrics.get("eval") or {}).get(name) or {}
        mapping, weights = report.get("section_mapping"), report.get("subset_weights")
    except (AttributeError, TypeError) as error:
        return f"no per-pair data: unreadable metrics.json ({error})"
    if not isinstance(mapping, Mapping) or not isinstance(weights, Mapping) or not mapping or not weights:
        return f"no per-pair data: metrics.json eval.{name} has no section_mapping/subset_weights"
    path = job_dir / "rewards" / f"{name}.jsonl"
    if not path.is_file():
        return f"no per-pair data: no rewards/{name}.jsonl"
    try:
        subsets, correct = read_pair_results(path)
        mapping = {str(section): tuple(map(str, members)) for section, members in mapping.items()}
        weights = {str(subset): float(weight) for subset, weight in weights.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"no per-pair data: unreadable rewards/{name}.jsonl or weights ({type(error).__name__}: {error})"
    if not subsets:
        return f"no per-pair data: rewards/{name}.jsonl is empty"
    present = set(subsets)
    if unweighted := sorted({s for members in mapping.values() for s in members if s in present} - set(weights)):
        return f"no per-pair data: no subset weight for {', '.join(unweighted)}"
    return PairData(name, subsets, correct, mapping, weights)


def subset_positions(subsets: Sequence[str]) -> dict[str, np.ndarray]:
    """Positions of each subset's pairs, subsets in first-seen order."""
    positions: dict[str, list[int]] = {}
    for index, name in enumerate(subsets):
        positions.setdefault(name, []).append(index)
    return {name: np.asarray(indices, dtype=np.intp) for name, indices in positions.items()}


def section_layout(mapping: Mapping[str, Sequence[str]], weights: Mapping[str, float],
                   present: Sequence[str]) -> dict[str, list[tuple[str, float]]]:
    """Section -> [(subset, weight)] of its present subsets; sections with none (or zero weight) are left out."""
    layout: dict[str, list[tuple[str, float]]] = {}
    for section, members in mapping.items():
        parts = [(name, float(weights[name])) for name in members if name in present]
        if parts and sum(weight for _, weight in parts) > 0:
            layout[section] = parts
    return layout


@dataclass(frozen=True, eq=False)
class Plan:
    """Resampling of R replicates: drawn seed indices and drawn pair positions per subset."""

    seeds: np.ndarray              # (R, S) indices into the shared seeds
    pairs: dict[str, np.ndarray]   # subset -> (R, n_k) positions into the pair list (all within that subset)


def draw_plan(n_seeds: int, positions: Mapping[str, np.ndarray], samples: int, seed: int) -> Plan:
    """``samples`` replicates: seeds with replacement, pairs with replacement within each subset."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(samples, n_seeds))
    pairs = {name: pos[rng.integers(0, len(pos), size=(samples, len(pos)))] for name, pos in positions.items()}
    return Plan(seeds, pairs)


def identity_plan(n_seeds: int, positions: Mapping[str, np.ndarray]) -> Plan:
    """The original data as a single replicate: every seed once, every pair once."""
    return Plan(np.arange(n_seeds)[None, :], {name: pos[None, :] for name, pos in positions.items()})


def column_scores(correct: np.ndarray, sections: Sections, plan: Plan) -> dict[str, np.ndarray]:
    """Per replicate (shape (R,)): Avg and each section, the mean over the drawn seeds of each seed's score.

    ``correct`` is (S, n_pairs) bool, one row per shared seed. Per seed and replicate, as rmlab scores a job:
    subset accuracy = drawn correct / n_k; section = sum(acc * w) / sum(w); Avg = mean of the sections.
    """
    accuracy: dict[str, np.ndarray] = {}  # subset -> (S, R)
    for name in dict.fromkeys(subset for parts in sections.values() for subset, _ in parts):
        drawn = plan.pairs[name]
        accuracy[name] = np.count_nonzero(correct[:, drawn], axis=2) / drawn.shape[1]
    per_seed: dict[str, np.ndarray] = {}  # column -> (S, R)
    for section, parts in sections.items():
        weighted, total = 0.0, 0.0
        for name, weight in parts:
            weighted, total = weighted + accuracy[name] * weight, total + weight
        per_seed[section] = weighted / total
    if per_seed:
        per_seed = {"Avg": sum(per_seed.values()) / len(per_seed), **per_seed}
    return seed_means({column: values for column, values in per_seed.items() if column in COLUMNS}, plan)


def seed_means(per_seed: Mapping[str, np.ndarray], plan: Plan) -> dict[str, np.ndarray]:
    """Per column, (S, R) per-seed scores → (R,): each replicate's mean over its drawn seeds."""
    return {column: np.take_along_axis(values.T, plan.seeds, axis=1).mean(axis=1)
            for column, values in per_seed.items()}


@dataclass(frozen=True)
class Difference:
    """Row − baseline (fractions) with its 95% paired-bootstrap interval and bootstrap p-value; ``holm_p_value``
    is adjusted over all the differences of a table by :func:`compare_rows` (until then the raw p-value)."""

    estimate: float
    low: float
    high: float
    p_value: float = 1.0
    holm_p_value: float = 1.0

    @property
    def significant(self) -> bool:
        return self.low > EPS or self.high < -EPS

    @property
    def holm_significant(self) -> bool:
        return self.holm_p_value < FAMILY_ALPHA

    def cell(self) -> str:
        """``+2.7 [+0.4, +5.1]*†`` in percentage points; ``*`` when the interval excludes 0, ``†`` when the
        Holm-adjusted p-value is below 0.05."""
        return f"{100 * self.estimate:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]" + \
            ("*" if self.significant else "") + ("†" if self.holm_significant else "")


def bootstrap_p_value(replicates: np.ndarray) -> float:
    """Two-sided p-value of "no difference": ``min(1, 2 (k + 1) / (R + 1))``, ``k`` the replicates on the smaller
    side of 0 (ties with 0 count on both sides)."""
    smaller_side = min(np.count_nonzero(replicates <= 0), np.count_nonzero(replicates >= 0))
    return min(1.0, 2 * (smaller_side + 1) / (len(replicates) + 1))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


Scorer = Callable[[Plan], dict[str, np.ndarray]]  # a row's per-replicate column scores under a plan


def bootstrap_differences(row: Scorer, base: Scorer, n_seeds: int, positions: Mapping[str, np.ndarray],
                          columns: Sequence[str], samples: int = DEFAULT_SAMPLES,
                          seed: int = DEFAULT_SEED) -> dict[str, Difference]:
    """Row − baseline per column (``columns`` order): the estimate on the original data, the interval and p-value
    from ``samples`` replicates that draw the seeds and, within each stratum of ``positions``, the items."""
    point = identity_plan(n_seeds, positions)
    base_point = base(point)
    estimate = {c: float(v[0] - base_point[c][0]) for c, v in row(point).items()}
    plan = draw_plan(n_seeds, positions, samples, seed)
    base_scores = base(plan)
    differences = {}
    for column, values in row(plan).items():
        replicates = values - base_scores[column]
        low, high = np.percentile(replicates, [2.5, 97.5])
        p_value = bootstrap_p_value(replicates)
        differences[column] = Difference(estimate[column], float(low), float(high), p_value, p_value)
    return {column: differences[column] for column in columns if column in differences}


def paired_bootstrap(row: np.ndarray, base: np.ndarray, subsets: Sequence[str], sections: Sections,
                     samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> dict[str, Difference]:
    """Row − baseline per column (COLUMNS order) from (S, n_pairs) bool arrays whose seeds correspond."""
    if row.shape != base.shape or row.shape[1] != len(subsets):
        raise ValueError(f"unpaired arrays: {row.shape} vs {base.shape} for {len(subsets)} pairs")
    return bootstrap_differences(functools.partial(column_scores, row, sections),
                                 functools.partial(column_scores, base, sections), row.shape[0],
                                 subset_positions(subsets), COLUMNS, samples, seed)


@dataclass
class Comparison:
    """One row against the baseline: differences per column, or the reason there are none."""

    seeds: tuple[str, ...] = ()
    differences: dict[str, Difference] = field(default_factory=dict)
    reason: str = ""   # short cell text when there are no numbers ("no shared seeds", ...)
    detail: str = ""   # longer note (which job, which seeds)

    def cell(self, column: str) -> str:
        if column in self.differences:
            return self.differences[column].cell()
        return self.reason or "n/a"

    @property
    def note(self) -> str:
        return "; ".join(text for text in (self.reason if not self.differences else "", self.detail) if text)

    def csv_cells(self, columns: Sequence[str] = COLUMNS) -> list[str]:
        """Values for CSV_HEADER: per column diff, ci low, ci high (pp, 4 decimals), significant, p-value and
        Holm-adjusted p-value (4 significant digits); seeds; note."""
        cells: list[str] = []
        for column in columns:
            d = self.differences.get(column)
            cells += [f"{100 * d.estimate:.4f}", f"{100 * d.low:.4f}", f"{100 * d.high:.4f}", str(d.significant),
                      f"{d.p_value:.4g}", f"{d.holm_p_value:.4g}"] if d else [""] * len(CSV_STATS)
        return [*cells, ",".join(self.seeds), self.note]


def _seed_key(seed: str) -> tuple[int, float, str]:
    try:
        return 0, float(seed), ""
    except ValueError:
        return 1, 0.0, seed


Paired = Callable[[list[Any], list[Any], int, int], Union[dict[str, Difference], tuple[str, str]]]


def pair_differences(rows: list[PairData], bases: list[PairData], samples: int = DEFAULT_SAMPLES,
                     seed: int = DEFAULT_SEED) -> Union[dict[str, Difference], tuple[str, str]]:
    """Row − baseline from the jobs of the shared seeds (in the same seed order), or (reason, detail) when they
    do not hold the same pairs, mapping and weights."""
    data = [*rows, *bases]
    first = data[0]
    if any(job.set_name != first.set_name or job.subsets != first.subsets for job in data):
        sizes = sorted({f"{job.set_name}: {len(job.subsets)} pairs" for job in data})
        return "not paired (different pairs)", ", ".join(sizes) if len(sizes) > 1 \
            else f"{sizes[0]} each, in a different subset order"
    if any(job.section_mapping != first.section_mapping or job.subset_weights != first.subset_weights
           for job in data):
        return "not paired (different section mapping or subset weights)", ""
    sections = section_layout(first.section_mapping, first.subset_weights, first.subsets)
    return paired_bootstrap(np.stack([job.correct for job in rows]), np.stack([job.correct for job in bases]),
                            first.subsets, sections, samples, seed)


def compare(row: Mapping[str, Any], base: Mapping[str, Any], samples: int = DEFAULT_SAMPLES,
            seed: int = DEFAULT_SEED, paired: Paired = pair_differences, missing: str = "no per-pair data"
            ) -> Comparison:
    """Compare two rows given as {seed: per-item data or the reason there is none} of their finished jobs, on the
    shared seeds; ``paired`` computes the differences (:func:`pair_differences`: pairs), ``missing`` is the cell
    when a job has no data."""
    shared = tuple(sorted(set(row) & set(base), key=_seed_key))
    seeds = [",".join(sorted(side, key=_seed_key)) or "none" for side in (row, base)]
    detail = f"finished seeds: row {seeds[0]}, baseline {seeds[1]}" if set(row) != set(base) else ""
    if not shared:
        return Comparison(shared, reason="no shared seeds", detail=detail)
    jobs = [row[s] for s in shared] + [base[s] for s in shared]
    if reasons := list(dict.fromkeys(job for job in jobs if isinstance(job, str))):
        more = f" (and {len(reasons) - 1} more jobs)" if len(reasons) > 1 else ""
        return Comparison(shared, reason=missing, detail="; ".join(filter(None, [reasons[0] + more, detail])))
    differences = paired(jobs[:len(shared)], jobs[len(shared):], samples, seed)
    if isinstance(differences, tuple):
        return Comparison(shared, reason=differences[0], detail=differences[1])
    return Comparison(shared, differences, reason="" if differences else "no sections", detail=detail)


# --------------------------------------------------------------------------- rows of a sweep and their text
SweepRow = tuple[str, Mapping[str, str], Mapping[str, Union[PairData, str]]]  # (loss, other overrides, by seed)


def compare_rows(rows: Sequence[SweepRow], baseline: str, samples: int = DEFAULT_SAMPLES,
                 seed: int = DEFAULT_SEED, **options: Any) -> list[Comparison]:
    """Each row against the baseline-loss row with the same other overrides (else the only baseline row), the
    p-values adjusted by Holm over every difference of the table.

    A row is (loss, other overrides, {seed: per-item data or why not} of its finished jobs); ``options`` go to
    :func:`compare` (its ``paired`` and ``missing``).
    """
    bases = [index for index, (loss, _, _) in enumerate(rows) if loss == baseline]
    comparisons = []
    for index, (_, extra, by_seed) in enumerate(rows):
        base = next((b for b in bases if rows[b][1] == extra), bases[0] if len(bases) == 1 else None)
        if base == index:
            comparisons.append(Comparison(reason="baseline"))
        elif base is None:
            comparisons.append(Comparison(reason=f"no {baseline} row" if not bases else f"ambiguous {baseline} row"))
        else:
            comparisons.append(compare(by_seed, rows[base][2], samples, seed, **options))
    return holm_over_table(comparisons)


def holm_over_table(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons with every difference's ``holm_p_value`` adjusted over all the differences they hold."""
    family = [(index, column) for index, c in enumerate(comparisons) for column in c.differences]
    adjusted = dict(zip(family, holm_adjust([comparisons[i].differences[c].p_value for i, c in family])))
    return [replace(comparison, differences={column: replace(difference, holm_p_value=adjusted[index, column])
                                             for column, difference in comparison.differences.items()})
            for index, comparison in enumerate(comparisons)]


def difference_note(baseline: str, samples: int, seed: int) -> str:
    """How to read the differences table."""
    return (f"Row − {baseline} in percentage points, mean over the seeds both rows share, [95% interval] from a "
            f"paired bootstrap over the Table 3 set's pairs (stratified by subset) and seeds ({samples} replicates, "
            f"bootstrap seed {seed}); * = the interval excludes 0 (significant on its own); † = significant after "
            f"Holm's correction over all the table's differences (family-wise error 5%).")


def resolution_note(rows: Sequence[tuple[str, Comparison]], power: float = 0.8, column: str = "Avg") -> str:
    """What "no difference" means in size: the half-widths of the Avg intervals (a smaller true difference cannot
    exclude 0), and the true difference needed to be detected with ``power`` at 5% on its own and under Holm's
    strictest step (5% / m for m differences), taking each interval as ±1.96 normal standard errors."""
    half_widths = sorted((d.high - d.low) / 2 for _, c in rows for name, d in c.differences.items()
                         if name == column)
    if not half_widths:
        return ""
    m = sum(len(c.differences) for _, c in rows)
    z = NormalDist().inv_cdf
    median = float(np.median(half_widths))
    alone, holm = ((z(1 - alpha / 2) + z(power)) / z(0.975) * median for alpha in (FAMILY_ALPHA, FAMILY_ALPHA / m))
    return (f"Resolution: the {column} intervals' half-widths are {100 * half_widths[0]:.1f} to "
            f"{100 * half_widths[-1]:.1f} points (median {100 * median:.1f}): a true {column} difference smaller than "
            f"that cannot be told from 0. Detecting one with {power:.0%} power takes about {100 * alone:.1f} points "
            f"on its own (5%), and {100 * holm:.1f} under Holm's strictest step ({m} differences).")


def difference_rows(rows: Sequence[tuple[str, Comparison]], columns: Sequence[str] = COLUMNS) -> list[list[str]]:
    """Cells of the differences table (DIFFERENCE_HEADER) for (label, comparison) rows."""
    return [[label, *map(comparison.cell, columns), ",".join(comparison.seeds), comparison.detail]
            for label, comparison in rows]
