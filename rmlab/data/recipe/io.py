"""Reading tool inputs as records, and writing datasets (JSONL / Parquet) and reports (Markdown + JSON).

A :class:`Record` keeps the original row next to its validated :class:`PreferencePair`, so tools that
only drop rows (decontaminate, select, rm_filter) write the surviving rows unchanged. Bad rows are
skipped and counted in a :class:`RowStats` by reason, as in training.
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from rmlab.checks import FILE_SUFFIXES
from rmlab.data.formats import BadRow, DataError, PreferencePair, RowStats, read_rows, to_pair
from rmlab.data.recipe.config import InputConfig

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Record:
    row: dict
    pair: PreferencePair
    source: str  # the row's source_key value, or the input's name
    location: str  # file:line (or file[row N]) for messages and removed-row listings


def input_name(spec: InputConfig) -> str:
    """``spec.name``, else ``<folder>/<stem>`` of a file, else the path or hub id as given."""
    if spec.name:
        return spec.name
    path = Path(spec.path)
    if path.suffix.lower() in FILE_SUFFIXES:
        return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
    return spec.path


def expand_globs(specs: Sequence[InputConfig], key: str) -> list[InputConfig]:
    """One input per file matched by a glob in ``path`` (sorted); other paths pass through."""
    expanded = []
    for index, spec in enumerate(specs):
        if not _GLOB_CHARS & set(spec.path):
            expanded.append(spec)
            continue
        matches = sorted(glob.glob(str(Path(spec.path).expanduser())))
        if not matches:
            raise DataError(f"{key}[{index}].path={spec.path!r} matches no file. Fix: check the pattern "
                            "(it is relative to the directory you run from).")
        expanded += [replace(spec, path=match, name=None) for match in matches]
    return expanded


def check_exists(spec: InputConfig, key: str) -> None:
    """Fail early, naming the config key, when a file path does not exist."""
    path = Path(spec.path).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES and not path.is_file():
        raise DataError(f"{key}.path={spec.path!r}: no such file. Fix: set {key}.path to an existing "
                        ".jsonl/.json/.parquet file (relative paths start where you run the command), "
                        "a dataset directory or a hub id.")


def skip_rows(stats: RowStats, reason: str, count: int) -> None:
    """``stats.skip`` for a tool's own drop reason, left out of the counts when nothing was dropped."""
    if count:
        stats.skip(reason, count)


def read_input(spec: InputConfig, key: str) -> Iterator[tuple[str, Any]]:
    """:func:`read_rows` of ``spec``; errors name the config key."""
    check_exists(spec, key)
    try:
        yield from read_rows(spec.path, spec.split, spec.subset_name, spec.max_rows)
    except DataError as err:
        raise DataError(f"{key} (path={spec.path!r}): {err}") from err


def iter_records(spec: InputConfig, key: str, stats: RowStats) -> Iterator[Record]:
    """Every valid row of ``spec`` as a Record, streamed; bad rows are counted in ``stats`` and skipped."""
    name = input_name(spec)
    for location, row in read_input(spec, key):
        stats.rows_read += 1
        stats.rows_used += 1
        try:
            pair = to_pair(row, spec.layout, spec.subset_key)
        except BadRow as bad:
            stats.skip(bad.reason)
            continue
        origin = row.get(spec.source_key) if spec.source_key else None
        yield Record(row, pair, str(origin) if origin not in (None, "") else name, location)


def load_records(spec: InputConfig, key: str = "tool.input", stats: RowStats | None = None
                 ) -> tuple[list[Record], RowStats]:
    """:func:`iter_records` as a list, with its row counts."""
    stats = stats if stats is not None else RowStats()
    return list(iter_records(spec, key, stats)), stats


def pair_row(record: Record) -> dict[str, Any]:
    """A row in the messages layout (what rmlab trains on) plus the original row's scalar columns."""
    scalar = (str, int, float, bool, type(None))
    row = {key: value for key, value in record.row.items()
           if key not in ("chosen", "rejected", "prompt") and isinstance(value, scalar)}
    row.update(chosen=record.pair.chosen, rejected=record.pair.rejected, subset=record.pair.subset,
               source=record.source)
    return row


class RowWriter:
    """Streams rows to ``<directory>/<stem>.jsonl``, or to ``.parquet`` in batches (the first batch sets the schema)."""

    def __init__(self, directory: Path, stem: str, fmt: str, batch_rows: int = 50_000) -> None:
        self.path, self.batch_rows = directory / f"{stem}.{fmt}", batch_rows
        self.count, self._batch, self._parquet = 0, [], None
        self._handle = self.path.open("w", encoding="utf-8") if fmt == "jsonl" else None

    def write(self, row: dict) -> None:
        self.count += 1
        if self._handle is not None:
            self._handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            return
        self._batch.append(row)
        if len(self._batch) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = self._parquet.schema if self._parquet else None
            table = pa.Table.from_pylist(self._batch, schema=schema)
            self._parquet = self._parquet or pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise DataError(f"{self.path}: the rows do not fit one Parquet schema ({err}). "
                            "Fix: use tool.format=jsonl.") from err
        self._batch = []

    def close(self) -> Path:
        if self._handle is not None:
            self._handle.close()
            return self.path
        if self._batch or self._parquet is None:  # no rows at all gives an empty table
            self._flush()
        self._parquet.close()
        return self.path

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_rows(directory: Path, stem: str, rows: Sequence[dict], fmt: str) -> Path:
    """Write ``rows`` to ``<directory>/<stem>.<fmt>`` (jsonl | parquet, one schema inferred from all rows)."""
    with RowWriter(directory, stem, fmt, batch_rows=max(len(rows), 1)) as writer:
        for row in rows:
            writer.write(row)
    return writer.path


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(headers)
        writer.writerows(rows)
    return path


def write_report(directory: Path, title: str, sections: Sequence[str], data: dict[str, Any]) -> Path:
    """``report.md`` (title + Markdown sections) and ``report.json`` (``data``); prints the Markdown."""
    markdown = f"# {title}\n\n" + "\n\n".join(sections) + "\n"
    (directory / "report.md").write_text(markdown, encoding="utf-8")
    (directory / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                                           encoding="utf-8")
    print(markdown)
    return directory / "report.md"
