"""The Table 3 report of a sweep (the tables a run prints: :mod:`rmlab.results`).

``python -m rmlab.report <sweep dir>`` writes ``table3.md``, ``table3.csv`` and ``table3.png`` into a Hydra
multirun directory and prints the table: one row per loss (and per other varying override), mean ± sample std
(ddof=1) over seeds, failed and missing jobs shown as such, each row's paired difference from a baseline loss
with a 95% bootstrap interval over pairs and seeds (:mod:`rmlab.significance`), and the paper's Table 3 as a
labelled reference. When the sweep scored RewardBench 2, its subsets and final score get a table of their own, with
their paired differences (over prompts within subsets: :mod:`rmlab.significance_rb2`), and columns in the CSV.
No torch or Lightning is imported here.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rmlab.significance import (COLUMNS, CSV_HEADER, CSV_STATS, DEFAULT_SAMPLES, DEFAULT_SEED, DIFFERENCE_HEADER,
                                Comparison, PairData, compare_rows, difference_note, difference_rows, load_pair_data,
                                resolution_note)
from rmlab.paper_table3 import PAPER_HEADER, PAPER_TITLE, paper_rows
from rmlab.report_sets import SetData, compare_sets, load_set_data, set_header, set_names, set_rows
from rmlab.significance_rb2 import COLUMNS as RB2_COLUMNS
from rmlab.significance_rb2 import PromptData, load_prompt_data, prompt_differences, scores_of
from rmlab.significance_rb2 import difference_note as rb2_difference_note


# --------------------------------------------------------------------------- Table 3 report of a sweep
LOSS_ORDER: tuple[str, ...] = ("bt", "bt_temperature", "focal", "focal_penalty", "hinge", "margin_mse",
                               "cross_entropy", "tempered_log")
AVERAGED_KEY = "seed"  # the only override averaged over; every other varying override splits rows
DEFAULT_BASELINE = "bt"

STD_NOTE = "mean ± sample std (ddof=1) over seeds"
SETS_TITLE = (f"Other evaluation sets (not in Table 3): accuracy %, {STD_NOTE}; paired difference vs the baseline, "
              "[95% interval] over the set's pairs and seeds, Holm over each set's differences")
RESULT_HEADER = ("loss", *COLUMNS, "seeds ok", "status")
RB2_HEADER = ("loss", *RB2_COLUMNS, "seeds ok", "status")
RB2_DIFFERENCE_HEADER = ("loss", *RB2_COLUMNS, "paired seeds", "note")


@dataclass
class Job:
    """One sweep job: finished ("ok"), crashed ("failed") or expected without a result ("missing")."""

    name: str                     # job directory name, or "#<job num> <overrides>" when the directory is absent
    overrides: dict[str, str]
    status: str
    loss: Optional[str] = None
    scores: dict[str, float] = field(default_factory=dict)  # Table 3 columns, fractions in [0, 1]
    detail: str = ""              # first error line (failed) or why it counts as missing
    pairs: Union[PairData, str] = "no per-pair data: no metrics.json"  # per-pair results, or why there are none
    sets: SetData = field(default_factory=dict)  # the other evaluation sets: accuracy and per-pair results
    prompts: Union[PromptData, str] = "no per-prompt data: no RewardBench 2 score"  # RewardBench 2's, or why not


@dataclass
class Row:
    """One Table 3 row: a loss (plus any other varying overrides) over its seeds."""

    loss: str
    extra: dict[str, str]
    jobs: list[Job]

    @property
    def label(self) -> str:
        extra = ",".join(f"{key}={value}" for key, value in self.extra.items())
        return f"{self.loss} ({extra})" if extra else self.loss

    def count(self, status: str) -> int:
        return sum(job.status == status for job in self.jobs)

    def stats(self, column: str) -> tuple[Optional[float], Optional[float], int]:
        """(mean, sample std or None when n < 2, n) of a column over the OK seeds, as fractions."""
        values = [job.scores[column] for job in self.jobs if job.status == "ok" and column in job.scores]
        if not values:
            return None, None, 0
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)

    def cell(self, column: str) -> str:
        """Percent with one decimal (± std); "failed"/"missing"/"n/a" when there is nothing to average."""
        mean, std, _ = self.stats(column)
        if mean is None:
            return "n/a" if self.count("ok") else "failed" if self.count("failed") else "missing"
        return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")

    @property
    def seeds(self) -> str:
        return f"{self.count('ok')}/{len(self.jobs)}"

    @property
    def status(self) -> str:
        notes, total = [], len(self.jobs)
        if failed := [job for job in self.jobs if job.status == "failed"]:
            errors = " | ".join(dict.fromkeys(job.detail for job in failed))
            notes.append(f"failed ({len(failed)}/{total} seeds): {errors}")
        if missing := self.count("missing"):
            notes.append(f"missing ({missing}/{total} seeds)")
        return "; ".join(notes) or "ok"


@dataclass
class Report:
    """Rows in Table 3 order and every job (finished, failed, missing) of one sweep directory."""

    sweep_dir: Path
    rows: list[Row]
    jobs: list[Job]
    baseline: str = DEFAULT_BASELINE
    comparisons: list[Comparison] = field(default_factory=list)  # per row: its paired difference from baseline
    rb2_comparisons: list[Comparison] = field(default_factory=list)  # the same on RewardBench 2 (none: not scored)
    bootstrap: tuple[int, int] = (DEFAULT_SAMPLES, DEFAULT_SEED)  # (replicates, bootstrap seed)
    sets: dict[str, list[Comparison]] = field(default_factory=dict)  # other set -> per row: paired difference

    def __post_init__(self) -> None:
        if len(self.comparisons) != len(self.rows):
            self.comparisons = [Comparison(reason="not compared") for _ in self.rows]

    @property
    def compared(self) -> list[tuple[str, Comparison]]:
        return [(row.label, comparison) for row, comparison in zip(self.rows, self.comparisons)]

    @property
    def rb2_compared(self) -> list[tuple[str, Comparison]]:
        return [(row.label, comparison) for row, comparison in zip(self.rows, self.rb2_comparisons)]

    @property
    def problems(self) -> list[Job]:
        return [job for job in self.jobs if job.status != "ok"]


def _parse_overrides(overrides: list[str]) -> list[Override]:
    return [o for o in OverridesParser.create().parse_overrides(overrides) if o.type != OverrideType.DEL]


def _natural(text: Optional[str]) -> tuple[int, float, str]:
    """Sort key: numbers by value first, then text (so 2 < 10, and a missing value last)."""
    try:
        return 0, float(text), ""  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, 0.0, text) if text is not None else (2, 0.0, "")


def _first_line(text: Any) -> str:
    return (str(text or "").strip().splitlines() or ["unknown error"])[0]


def _read_job(job_dir: Path) -> Job:
    """A job directory's overrides and its result: metrics.json, failed.json (wins) or neither (missing)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = {o.key_or_group: o.get_value_element_as_str()
                 for o in _parse_overrides(yaml.safe_load(overrides_file.read_text()) or [])} \
        if overrides_file.is_file() else {}
    job = Job(job_dir.name, overrides, "missing", overrides.get("loss"),
              detail="no metrics.json or failed.json (still running?)")
    try:
        if (job_dir / "failed.json").is_file():
            info = json.loads((job_dir / "failed.json").read_text())
            job.status, job.detail = "failed", _first_line(info.get("error"))
        elif (job_dir / "metrics.json").is_file():
            info = json.loads((job_dir / "metrics.json").read_text())
            job.status, job.detail = "ok", ""
            job.scores = {k: float(v) for k, v in (info.get("table3") or {}).items()
                          if k in COLUMNS and isinstance(v, (int, float))}
            job.pairs = load_pair_data(job_dir, info)
            job.sets = load_set_data(job_dir, info)
            if rb2 := scores_of(info):
                job.scores, job.prompts = {**job.scores, **rb2}, load_prompt_data(job_dir)
            info = info.get("run") or {}
        else:
            return job
    except (OSError, ValueError, TypeError, AttributeError) as error:
        job.status, job.detail = "failed", f"unreadable result file: {_first_line(error)}"
        return job
    job.loss = info.get("loss") or job.loss
    for key in ("loss", AVERAGED_KEY):
        if info.get(key) is not None:
            overrides.setdefault(key, str(info[key]))
    return job


def _expected_jobs(sweep_dir: Path) -> list[dict[str, str]]:
    """The grid Hydra's basic sweeper launched, in job-number order, from multirun.yaml ([] when absent)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return []
    hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
    params = (hydra_cfg.get("sweeper") or {}).get("params") or {}
    task = (hydra_cfg.get("overrides") or {}).get("task") or []
    grid: dict[str, list[str]] = {}  # command-line overrides replace sweeper params, keeping their position
    for o in _parse_overrides([f"{key}={value}" for key, value in params.items()] + list(task)):
        grid[o.key_or_group] = list(o.sweep_string_iterator()) if o.is_sweep_override() \
            else [o.get_value_element_as_str()]
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _job_dirs(sweep_dir: Path) -> list[Path]:
    def key(path: Path) -> tuple[int, str]:
        number = path.name.split("_", 1)[0]
        return (int(number) if number.isdigit() else sys.maxsize), path.name

    return sorted((path for path in sweep_dir.iterdir() if path.is_dir() and any(
        (path / name).exists() for name in (".hydra", "metrics.json", "failed.json"))), key=key)


def _data_by_seed(row: Row, kind: str = "pairs") -> dict[str, Any]:
    """Finished jobs of a row: seed -> per-pair data (``kind="pairs"``) or RewardBench 2's per-prompt data
    (``"prompts"``), or why there is none."""
    return {seed: data if not isinstance(data := getattr(job, kind), str) else f"{row.label} seed {seed}: {data}"
            for job in row.jobs if job.status == "ok" and (seed := job.overrides.get(AVERAGED_KEY)) is not None}


def build_report(sweep_dir: Path | str, baseline: str = DEFAULT_BASELINE, bootstrap_samples: int = DEFAULT_SAMPLES,
                 bootstrap_seed: int = DEFAULT_SEED) -> Report:
    """Read every job of a sweep directory, group them into Table 3 rows (seeds averaged), compare to baseline."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"not a sweep directory: {sweep_dir}")
    jobs = [_read_job(path) for path in _job_dirs(sweep_dir)]
    expected = _expected_jobs(sweep_dir)
    swept = [key for key in (expected[0] if expected else {}) if len({job[key] for job in expected}) > 1]
    seen = {tuple(job.overrides.get(key) for key in swept) for job in jobs}
    for number, overrides in enumerate(expected):
        if tuple(overrides[key] for key in swept) not in seen:
            name = f"#{number} " + ",".join(f"{key}={overrides[key]}" for key in swept)
            jobs.append(Job(name, overrides, "missing", overrides.get("loss"), detail="no job directory"))
    known = {job.loss for job in jobs if job.loss}
    default_loss = known.pop() if len(known) == 1 else "unknown"
    keys = {key for job in jobs for key in job.overrides} - {"loss", AVERAGED_KEY}
    varying = sorted(key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1)
    groups: dict[tuple[str, tuple[Optional[str], ...]], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.loss or default_loss, tuple(job.overrides.get(k) for k in varying)), []).append(job)

    def order(item: tuple[tuple[str, tuple[Optional[str], ...]], list[Job]]) -> tuple:
        (loss, values), _ = item
        rank = LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER)
        return rank, loss, tuple(_natural(value) for value in values)

    rows = [Row(loss, {k: v for k, v in zip(varying, values) if v is not None}, group)
            for (loss, values), group in sorted(groups.items(), key=order)]
    comparisons = compare_rows([(row.loss, row.extra, _data_by_seed(row)) for row in rows], baseline,
                               bootstrap_samples, bootstrap_seed)
    sets = compare_sets(rows, set_names(jobs), baseline, bootstrap_samples, bootstrap_seed)
    rb2 = compare_rows([(row.loss, row.extra, _data_by_seed(row, "prompts")) for row in rows], baseline,
                       bootstrap_samples, bootstrap_seed, paired=prompt_differences, missing="no per-prompt data") \
        if any(column in job.scores for job in jobs for column in RB2_COLUMNS) else []
    return Report(sweep_dir, rows, jobs, baseline, comparisons, rb2, (bootstrap_samples, bootstrap_seed), sets)


def _result_rows(report: Report, columns: tuple[str, ...] = COLUMNS) -> list[list[str]]:
    return [[row.label, *map(row.cell, columns), row.seeds, row.status] for row in report.rows]


def _markdown(report: Report) -> str:
    def table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
        align = ["---:" if name in (*COLUMNS, *RB2_COLUMNS) else "---" for name in header]
        return ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |"
                for line in [list(header), align, *rows]]

    lines = [f"# Table 3: {report.sweep_dir.name}", "",
             f"Accuracy in % per RewardBench section, {STD_NOTE}; failed or missing jobs are never counted as 0.", ""]
    note = difference_note(report.baseline, *report.bootstrap)
    lines += table(RESULT_HEADER, _result_rows(report))
    lines += ["", f"## Paired differences vs {report.baseline}", "", note, ""]
    lines += table(DIFFERENCE_HEADER, difference_rows(report.compared))
    lines += ["", resolution, ""] if (resolution := resolution_note(report.compared)) else [""]
    if report.sets:
        lines += [f"## {SETS_TITLE}", ""] + table(set_header(list(report.sets), report.baseline),
                                                  set_rows(report.rows, list(report.sets), report.sets)) + [""]
    if report.rb2_comparisons:
        lines += ["## RewardBench 2", "", f"Score in % per subset and final (RewardBench 2's rules), {STD_NOTE}.", ""]
        lines += table(RB2_HEADER, _result_rows(report, RB2_COLUMNS))
        lines += ["", f"### Paired differences vs {report.baseline}", "", rb2_difference_note(report.baseline,
                                                                                          *report.bootstrap), ""]
        lines += table(RB2_DIFFERENCE_HEADER, difference_rows(report.rb2_compared, RB2_COLUMNS)) + [""]
    lines += ["## Jobs", ""]
    lines += [f"- `{job.name}`: {job.status}: {job.detail}" for job in report.problems] \
        or [f"All {len(report.jobs)} jobs finished."]
    lines += ["", f"## {PAPER_TITLE}", ""] + table(PAPER_HEADER, paper_rows())
    return "\n".join(lines) + "\n"


def _stat_cells(row: Row, columns: tuple[str, ...]) -> list[str]:
    """Mean % and std % (4 decimals) of each column; empty when there is nothing to average."""
    return ["" if value is None else f"{100 * value:.4f}" for column in columns for value in row.stats(column)[:2]]


def _write_csv(report: Report, path: Path) -> None:
    """table3.csv: a row per Table 3 row; RewardBench 2's columns follow when the sweep scored it."""
    rb2 = RB2_COLUMNS if report.rb2_comparisons else ()
    rb2_header = [*(f"{c} {stat}" for c in rb2 for stat in ("mean %", "std %")),
                  *(f"{c} {stat}" for c in rb2 for stat in CSV_STATS), "RB2 paired seeds",
                  "RB2 paired note"] if rb2 else []
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["loss", "overrides", "label", "n_ok", "n_failed", "n_missing",
                         *(f"{c} {stat}" for c in COLUMNS for stat in ("mean %", "std %")), "status",
                         "baseline", *CSV_HEADER, *rb2_header])
        for index, (row, comparison) in enumerate(zip(report.rows, report.comparisons)):
            extra = [*_stat_cells(row, rb2), *report.rb2_comparisons[index].csv_cells(rb2)] if rb2 else []
            writer.writerow([row.loss, ",".join(f"{k}={v}" for k, v in row.extra.items()), row.label,
                             row.count("ok"), row.count("failed"), row.count("missing"), *_stat_cells(row, COLUMNS),
                             row.status, report.baseline, *comparison.csv_cells(), *extra])


def write_report(sweep_dir: Path | str, report: Optional[Report] = None) -> dict[str, Path]:
    """Write table3.md, table3.csv and table3.png into the sweep directory; returns their paths by suffix."""
    report = report or build_report(sweep_dir)
    paths = {suffix: Path(sweep_dir) / f"table3.{suffix}" for suffix in ("md", "csv", "png")}
    paths["md"].write_text(_markdown(report))
    _write_csv(report, paths["csv"])
    from rmlab.plots import plot_report  # matplotlib loads only here

    plot_report(report, paths["png"])
    return paths


def _rich_table(title: str, header: tuple[str, ...], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="right" if name in (*COLUMNS, *RB2_COLUMNS) else "left")
    for row in rows:
        table.add_row(*map(escape, row))
    return table


def print_report(report: Report, console: Optional[Console] = None) -> None:
    """Print the Table 3 rows, the failed/missing jobs and the paper's reference numbers with rich."""
    console = console or Console()
    console.print(_rich_table(f"Table 3: {report.sweep_dir.name} — accuracy %, {STD_NOTE}", RESULT_HEADER,
                              _result_rows(report)))
    problems = [[job.name, job.status, job.detail] for job in report.problems]
    console.print(_rich_table("Jobs failed or missing", ("job", "status", "detail"), problems) if problems
                  else f"All {len(report.jobs)} jobs finished.")
    console.print(_rich_table(f"Paired differences vs {report.baseline} (pp) — "
                              f"{difference_note(report.baseline, *report.bootstrap)}", DIFFERENCE_HEADER,
                              difference_rows(report.compared)))
    if resolution := resolution_note(report.compared):
        console.print(resolution)
    if report.sets:
        console.print(_rich_table(SETS_TITLE, set_header(list(report.sets), report.baseline),
                                  set_rows(report.rows, list(report.sets), report.sets)))
    if report.rb2_comparisons:
        console.print(_rich_table(f"RewardBench 2: {report.sweep_dir.name} — score %, {STD_NOTE}", RB2_HEADER,
                                  _result_rows(report, RB2_COLUMNS)))
        console.print(_rich_table(f"RewardBench 2: paired differences vs {report.baseline} (pp) — "
                                  f"{rb2_difference_note(report.baseline, *report.bootstrap)}", RB2_DIFFERENCE_HEADER,
                                  difference_rows(report.rb2_compared, RB2_COLUMNS)))
    console.print(_rich_table(PAPER_TITLE, PAPER_HEADER, paper_rows()))


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m rmlab.report <sweep dir>``: write table3.{md,csv,png} there and print the table."""
    parser = argparse.ArgumentParser(prog="python -m rmlab.report", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory, e.g. outputs/multirun/<date>")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="loss the others are compared with (paired)")
    parser.add_argument("--bootstrap-samples", type=int, default=DEFAULT_SAMPLES, help="bootstrap replicates")
    parser.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap draws")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"not a directory: {args.sweep_dir}")
    if args.bootstrap_samples < 1:
        parser.error("--bootstrap-samples must be at least 1")
    report = build_report(args.sweep_dir, args.baseline, args.bootstrap_samples, args.bootstrap_seed)
    paths = write_report(args.sweep_dir, report)
    console = Console(width=None if sys.stdout.isatty() else 200)
    print_report(report, console)
    console.print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
