"""Filtering by a reward model (the WildGuardMix recipe): keep the pairs an rmlab reward model ranks correctly.

The model is a directory exported by ``python -m rmlab`` (``<run dir>/export``): it is loaded with
:func:`rmlab.model.build_reward_model`, pairs are rendered and truncated by :class:`PairTokenizer` exactly as
in training, and scored by :func:`rmlab.scoring.score_pairs` in batches of similar length. A pair is kept
when ``reward(chosen) - reward(rejected) > margin`` (a tie is not kept, as in RewardBench). Pairs whose
response does not fit ``max_length`` are dropped and counted as ``response_too_long``.
torch and transformers are imported only here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from rmlab.data.formats import BadRow, DataError
from rmlab.data.recipe.config import RMFilterConfig
from rmlab.data.recipe.io import Record, load_records, markdown_table, skip_rows, write_report, write_rows

CHUNK_BATCHES = 8  # batches scored between progress-bar updates


def pair_rewards(model: Any, tokenized: Sequence[Any], pad_token_id: int, batch_size: int) -> list[tuple[float, float]]:
    """(chosen, rejected) rewards per pair, in input order, scored shortest first in chunks of similar length."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rmlab.scoring import score_pairs

    order = sorted(range(len(tokenized)), key=lambda i: tokenized[i].num_tokens)
    rewards: list[tuple[float, float]] = [(0.0, 0.0)] * len(tokenized)
    step = max(1, batch_size * CHUNK_BATCHES // 2)  # pairs per chunk: each pair is two sequences
    columns = (TextColumn("scoring pairs"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("score", total=len(order))
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            chosen, rejected = score_pairs(model, [tokenized[i] for i in chunk], pad_token_id, batch_size)
            for index, good, bad in zip(chunk, chosen, rejected):
                rewards[index] = (good, bad)
            progress.advance(task, len(chunk))
    return rewards


def run(cfg: RMFilterConfig) -> dict[str, Any]:
    """The ``rm_filter`` tool: pairs.<fmt> (kept rows + rewards), removed.jsonl, report.md / report.json."""
    import torch

    from rmlab.data.tokenize import PairTokenizer
    from rmlab.model import build_reward_model

    out = Path(cfg.output_dir)
    if not (Path(cfg.model).expanduser() / "config.json").is_file():
        raise DataError(f"tool.model={cfg.model!r} is not an exported reward model (no config.json). Fix: point it at "
                        "the export/ directory of an rmlab run.")
    records, stats = load_records(cfg.input)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    bundle = build_reward_model(cfg.model)
    bundle.model.to(device)
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, cfg.max_length)
    scorable: list[Record] = []
    tokenized = []
    for record in records:
        try:
            tokenized.append(pair_tokenizer(record.pair))
            scorable.append(record)
        except BadRow as bad:
            stats.skip(bad.reason)
    rewards = pair_rewards(bundle.model, tokenized, bundle.tokenizer.pad_token_id, cfg.batch_size)
    kept, removed = [], []
    for record, (good, bad) in zip(scorable, rewards):
        row = {**record.row, "rm_chosen_reward": good, "rm_rejected_reward": bad}
        (kept if good - bad > cfg.margin else removed).append((record, row))
    skip_rows(stats, "rm_misranked", len(removed))
    write_rows(out, "pairs", [row for _, row in kept], cfg.format)
    write_rows(out, "removed", [{"location": r.location, **row} for r, row in removed], "jsonl")
    total, right = Counter(r.pair.subset for r in scorable), Counter(r.pair.subset for r, _ in kept)
    summary = [{"subset": s, "pairs": n, "kept": right[s], "kept_fraction": right[s] / n} for s, n in total.items()]
    sections = [
        f"Model `{cfg.model}` on `{device}`; kept when chosen − rejected reward > {cfg.margin:g}; "
        f"max_length {cfg.max_length}.",
        markdown_table(["Subset", "Pairs scored", "Kept", "Kept %"],
                       [[r["subset"], r["pairs"], r["kept"], f"{100 * r['kept_fraction']:.1f}"] for r in summary]
                       + [["**Total**", len(scorable), len(kept), f"{100 * len(kept) / max(len(scorable), 1):.1f}"]]),
        f"Rows: {stats.as_dict()}.",
    ]
    report = {"subsets": summary, "scored": len(scorable), "kept": len(kept), "margin": cfg.margin,
              "model": cfg.model, "device": device, "rows": stats.as_dict()}
    write_report(out, "Filtering by a reward model", sections, report)
    return report
