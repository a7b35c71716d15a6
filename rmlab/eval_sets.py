"""After training: score the held-out pairs and every configured evaluation set (rank 0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmlab.data.datamodule import PreferenceDataModule, tokenize_pairs
from rmlab.data.formats import load_pairs
from rmlab.data.tokenize import PairTokenizer
from rmlab.evaluation import EXAMPLE_COUNTS, SECTIONS, SUBSET_MAPPING, evaluation_report
from rmlab.model import RewardModelBundle
from rmlab.scoring import score_pairs


def write_rewards(path: Path, pairs: list, chosen: list[float], rejected: list[float]) -> None:
    """One line per scored pair, in the set's order: subset, chosen and rejected reward."""
    with path.open("w") as handle:
        for pair, chosen_reward, rejected_reward in zip(pairs, chosen, rejected):
            handle.write(json.dumps({"subset": pair.subset, "chosen": chosen_reward, "rejected": rejected_reward}) + "\n")


def evaluate_sets(bundle: RewardModelBundle, pair_tokenizer: PairTokenizer, datamodule: PreferenceDataModule,
                  cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Score the held-out pairs and every listed eval set: a report per set, rewards in ``rewards/<set>.jsonl``."""
    pad = bundle.tokenizer.pad_token_id
    reports: dict[str, Any] = {}
    (output_dir / "rewards").mkdir(parents=True, exist_ok=True)
    if cfg.eval.heldout and datamodule.heldout_pairs:
        chosen, rejected = score_pairs(bundle.model, datamodule.heldout_pairs, pad, cfg.eval.batch_size)
        write_rewards(output_dir / "rewards" / "heldout.jsonl", datamodule.heldout_pairs, chosen, rejected)
        mapping = OmegaConf.to_container(cfg.data.section_mapping) if cfg.data.section_mapping else None
        reports["heldout"] = evaluation_report(chosen, rejected, [p.subset for p in datamodule.heldout_pairs],
                                               example_counts={}, subset_mapping=mapping)
    for eval_set in cfg.eval.sets:
        pairs, stats = load_pairs(eval_set.source, layout=eval_set.layout, split=eval_set.split,
                                  subset_name=eval_set.subset_name, max_rows=eval_set.max_rows,
                                  subset_key=eval_set.subset_key)
        tokenized = tokenize_pairs(pairs, pair_tokenizer, stats)
        chosen, rejected = score_pairs(bundle.model, tokenized, pad, cfg.eval.batch_size)
        write_rewards(output_dir / "rewards" / f"{eval_set.name}.jsonl", tokenized, chosen, rejected)
        rewardbench = eval_set.sections == "rewardbench"
        report = evaluation_report(chosen, rejected, [p.subset for p in tokenized],
                                   example_counts=EXAMPLE_COUNTS if rewardbench else {},
                                   subset_mapping=SUBSET_MAPPING if rewardbench else None)
        reports[eval_set.name] = {**report, "data": stats.as_dict()}
    return reports


def table3_row(reports: dict[str, Any]) -> dict[str, float]:
    """Avg + the four sections, from RewardBench when it was scored, else from the held-out set."""
    source = reports.get("rewardbench") or reports.get("heldout") or {}
    sections = source.get("sections", {})
    return {"Avg": source["Avg"], **{name: sections[name] for name in SECTIONS if name in sections}} \
        if "Avg" in source else {}
