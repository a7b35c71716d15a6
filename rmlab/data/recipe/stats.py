"""Statistics of a mixture (the paper's Table 1) and its composition before / after the filters (Figure 1).

Per source (the row's ``source_key`` value, else the source's name): pairs; average turns (user turns per
conversation); average prompt tokens (all turns before the final response, contents only: no chat template,
no special tokens); average response tokens (mean of the chosen and the rejected final turn); categories
(``subset_key`` values) when the data has them. Tokens come from ``tokenizer`` (a ``tokenizer.json`` or a
local tokenizer directory), or are whitespace-separated words when it is null.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from rmlab.data.formats import DataError
from rmlab.data.recipe.config import StatsConfig
from rmlab.data.recipe.io import Record, markdown_table, pair_row, write_csv, write_report, write_rows
from rmlab.data.recipe.mixture import build_mixture

TokenCount = Callable[[list[str]], list[int]]
TABLE1 = ["Source", "Pairs", "Avg. turns", "Avg. prompt tokens", "Avg. response tokens", "Categories"]


def token_counter(tokenizer: Optional[str]) -> tuple[str, TokenCount]:
    """(unit name, function counting the tokens of each text)."""
    if tokenizer is None:
        return "words", lambda texts: [len(text.split()) for text in texts]
    path = Path(tokenizer).expanduser()
    file = path if path.suffix == ".json" else path / "tokenizer.json"
    if file.is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(file))
        fast.no_padding()  # a tokenizer.json may carry a model's padding/truncation (MiniLM's: both at 128)
        fast.no_truncation()
        return f"tokens ({tokenizer})", lambda texts: [
            len(encoding.ids) for encoding in fast.encode_batch(texts, add_special_tokens=False)]
    if not path.is_dir():
        raise DataError(f"tool.tokenizer={tokenizer!r}: neither a tokenizer.json file nor a local tokenizer "
                        "directory. Fix: point it at one (hub ids are not fetched), or set tool.tokenizer=null "
                        "to count words.")
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(str(path))
    return f"tokens ({tokenizer})", lambda texts: [
        len(ids) for ids in slow(texts, add_special_tokens=False)["input_ids"]]


def categories(subsets: Sequence[str], shown: int = 6) -> str:
    """``"math 40%, code 35%, ... (+3 more)"``; empty when every pair is in the default category."""
    counts = Counter(subsets)
    if set(counts) <= {"default"}:
        return ""
    parts = [f"{name} {100 * n / len(subsets):.0f}%" for name, n in counts.most_common(shown)]
    return ", ".join(parts) + (f" (+{len(counts) - shown} more)" if len(counts) > shown else "")


def table1(records: Sequence[Record], count: TokenCount) -> list[list[Any]]:
    """Table 1 rows, one per source label in first-seen order, then a total row."""
    texts: list[str] = []
    spans = []  # per record: (prompt text range, chosen index, rejected index)
    for record in records:
        start = len(texts)
        texts += [turn["content"] for turn in record.pair.prompt]
        texts += [record.pair.chosen[-1]["content"], record.pair.rejected[-1]["content"]]
        spans.append((start, len(texts) - 2))
    tokens = count(texts)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[record.source].append(index)
    groups["Total"] = list(range(len(records)))

    def row(label: str, members: list[int]) -> list[Any]:
        n = max(len(members), 1)
        turns = sum(sum(t["role"] == "user" for t in records[i].pair.chosen) for i in members)
        prompt = sum(sum(tokens[spans[i][0]:spans[i][1]]) for i in members)
        response = sum(tokens[spans[i][1]] + tokens[spans[i][1] + 1] for i in members) / 2
        return [label, len(members), round(turns / n, 2), round(prompt / n, 1), round(response / n, 1),
                categories([records[i].pair.subset for i in members])]

    return [row(label, members) for label, members in groups.items()]


def composition_figure(before: Counter, after: Counter, path: Path) -> Path:
    """Figure 1: two pies, the sources' shares before the filters and in the final mixture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(before)
    colors = {label: plt.get_cmap("tab20")(i % 20) for i, label in enumerate(labels)}
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for axis, counts, title in ((axes[0], before, "Before filters"), (axes[1], after, "Final mixture")):
        shown = [label for label in labels if counts.get(label)]
        axis.pie([counts[label] for label in shown], colors=[colors[label] for label in shown],
                 autopct=lambda pct: f"{pct:.0f}%" if pct >= 3 else "", startangle=90, counterclock=False)
        axis.set_title(f"{title} ({sum(counts.values()):,} pairs)")
        axis.axis("equal")
    figure.legend([plt.Rectangle((0, 0), 1, 1, color=colors[label]) for label in labels],
                  [f"{label}: {before[label]:,} → {after.get(label, 0):,}" for label in labels],
                  loc="lower center", ncol=min(3, len(labels)), frameon=False)
    figure.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 3), 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def run(cfg: StatsConfig) -> dict[str, Any]:
    """The ``stats`` tool: report.md / report.json, table1.csv, composition.png and the mixture (pairs.<fmt>)."""
    out = Path(cfg.output_dir)
    unit, count = token_counter(cfg.tokenizer)
    mixture, stats = build_mixture(cfg.sources, cfg.seed, cfg.total)
    final = [record for source in mixture for record in source.kept]
    rows = table1(final, count)
    headers = TABLE1[:3] + [f"Avg. prompt {unit}", f"Avg. response {unit}", TABLE1[5]]
    write_csv(out / "table1.csv", headers, rows)
    before = Counter(record.source for source in mixture for record in source.loaded)
    after = Counter(record.source for record in final)
    composition_figure(before, after, out / "composition.png")
    if cfg.write_pairs:
        write_rows(out, "pairs", [pair_row(record) for record in final], cfg.format)
    composition = {source.name: source.counts for source in mixture}
    composition_rows = [[name, c["rows_read"], c["pairs"], c["after_filters"], c["after_cap"], c["selected"],
                         f"{100 * c['fraction']:.1f}%"] for name, c in composition.items()]
    sections = [
        f"## Table 1: statistics of the final mixture ({unit})\n\n"
        + markdown_table(headers, rows[:-1] + [["**Total**", *rows[-1][1:]]]),
        "## Composition (Figure 1: composition.png)\n\n" + markdown_table(
            ["Source", "Rows read", "Valid pairs", "After filters", "After cap", "In mixture", "Share"],
            composition_rows),
        f"Rows: {stats.as_dict()}. Seed: {cfg.seed}.",
    ]
    report = {"table1": [dict(zip(headers, row)) for row in rows],
              "composition": composition, "composition_by_label": {"before": dict(before), "after": dict(after)},
              "rows": stats.as_dict(), "tokens": unit, "seed": cfg.seed}
    write_report(out, "Data statistics", sections, report)
    return report
