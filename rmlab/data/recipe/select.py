"""Selection by an external score: the top fraction of each category, after per-source offsets.

Each pair's adjusted score is ``score + offsets[source]`` (0 for sources not listed). Within each category
(the ``subset_key`` column), pairs are ranked by adjusted score, highest first (ties keep file order), and
the first ``floor(fraction * n)`` are kept, where ``n`` is the category's pair count and ``fraction`` is
``fractions[category]`` or ``default_fraction``. Offsets let a stronger source's pairs outrank a weaker
source's at equal score (the Magpie recipe, ``conf/tool/select_magpie.yaml``). Pairs without a numeric
score are dropped and counted as ``missing_score``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from rmlab.data.recipe.config import SelectConfig
from rmlab.data.recipe.io import Record, load_records, markdown_table, skip_rows, write_report, write_rows


def kept_count(fraction: float, pairs: int) -> int:
    """``floor(fraction * pairs)``, robust to float error (0.29 * 100 keeps 29)."""
    return math.floor(fraction * pairs + 1e-9)


def select(records: Sequence[Record], scores: Sequence[float], fractions: Mapping[str, float], default_fraction: float,
           offsets: Mapping[str, float]) -> tuple[list[int], list[dict[str, Any]]]:
    """Indices of the kept records (in input order) and one summary row per category."""
    by_category: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_category[record.pair.subset].append(index)
    adjusted = [score + offsets.get(record.source, 0.0) for record, score in zip(records, scores)]
    kept: list[int] = []
    summary = []
    for category, members in by_category.items():
        fraction = fractions.get(category, default_fraction)
        ranked = sorted(members, key=lambda i: -adjusted[i])[:kept_count(fraction, len(members))]
        kept += ranked
        summary.append({"category": category, "pairs": len(members), "fraction": fraction, "kept": len(ranked),
                        "threshold": min((adjusted[i] for i in ranked), default=None)})
    return sorted(kept), summary


def run(cfg: SelectConfig) -> dict[str, Any]:
    """The ``select`` tool: pairs.<fmt> (kept rows, unchanged), report.md / report.json."""
    out = Path(cfg.output_dir)
    records, stats = load_records(cfg.input)
    scored, scores = [], []
    for record in records:
        score = record.row.get(cfg.score_key)
        if isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score):
            scored.append(record)
            scores.append(float(score))
        else:
            stats.skip("missing_score")
    kept, summary = select(scored, scores, cfg.fractions, cfg.default_fraction, cfg.offsets)
    skip_rows(stats, "not_selected", len(scored) - len(kept))
    write_rows(out, "pairs", [scored[i].row for i in kept], cfg.format)
    sources, sources_kept = Counter(r.source for r in scored), Counter(scored[i].source for i in kept)
    unused = {"fractions": sorted(set(cfg.fractions) - {row["category"] for row in summary}),
              "offsets": sorted(set(cfg.offsets) - set(sources))}
    sections = [
        f"Score column `{cfg.score_key}` of `{cfg.input.path}`; kept = floor(fraction × pairs) per category.",
        "## Categories\n\n" + markdown_table(
            ["Category", "Pairs", "Fraction", "Kept", "Lowest kept adjusted score"],
            [[r["category"], r["pairs"], f"{r['fraction']:g}", r["kept"],
              "-" if r["threshold"] is None else f"{r['threshold']:.4f}"] for r in summary]),
        "## Sources\n\n" + markdown_table(
            ["Source", "Pairs", "Offset", "Kept"],
            [[source, n, f"{cfg.offsets.get(source, 0.0):+g}", sources_kept[source]] for source, n in sources.items()]),
        f"Rows: {stats.as_dict()}."
        + (f" Not in the data (check the names): {unused}." if unused["fractions"] or unused["offsets"] else ""),
    ]
    report = {"categories": summary, "sources": {s: {"pairs": n, "kept": sources_kept[s]} for s, n in sources.items()},
              "unused": unused, "rows": stats.as_dict()}
    write_report(out, "Selection by score", sections, report)
    return report
