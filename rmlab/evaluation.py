"""What is scored after training (and by ``python -m rmlab.evaluate``), where, and what it yields.

**The sets.** The held-out pairs of the training data and every ``eval.sets`` entry, loaded and tokenized
before training starts, so a bad path fails at once. Evaluation never drops a pair for its length: a pair
whose response does not fit ``data.max_length`` is truncated (:mod:`rmlab.data.tokenize`) and counted in
the set's ``truncated_pairs``.

**Where.** :class:`FinalScoring` scores every set at the end of ``fit``, before Lightning tears the
strategy down, so the model is still on its training device(s): every rank scores its share of the
batches, through the DeepSpeed engine under ZeRO-3, and the rewards are gathered
(:func:`rmlab.scoring.score_pairs`). Under ZeRO-3 the export's weights are gathered then too
(:func:`rmlab.zero.consolidated_state_dict`).

**What.** A report per set (RewardBench's rules: :mod:`rmlab.rewardbench`) and the Table 3 row, from the
set marked ``sections: rewardbench``, else from the held-out pairs.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerStatus

from rmlab.data.datamodule import tokenize_pairs
from rmlab.data.formats import RowStats, load_pairs
from rmlab.data.tokenize import PairTokenizer, TokenizedPair
from rmlab.rewardbench import EXAMPLE_COUNTS, SECTIONS, SUBSET_MAPPING, evaluation_report
from rmlab.scoring import score_pairs

HELDOUT = "heldout"


@dataclass
class EvalSet:
    """Tokenized pairs to score, and how their report is built."""

    name: str
    pairs: list[TokenizedPair]
    rewardbench: bool = False  # RewardBench's sections and weights; this set gives the Table 3 row
    section_mapping: Optional[dict[str, list[str]]] = None  # otherwise: {section: [subsets]}, weights = row counts
    data: dict[str, Any] = field(default_factory=dict)  # rows read / used / skipped of the set's source

    @property
    def truncated_pairs(self) -> int:
        return sum(pair.truncated for pair in self.pairs)


def load_eval_sets(set_configs: Sequence[Any], pair_tokenizer: PairTokenizer) -> list[EvalSet]:
    """Read and tokenize every ``eval.sets`` entry (pairs too long are truncated, never dropped)."""
    sets = []
    for config in set_configs:
        stats, pairs = RowStats(), []
        for source in [config.source] if isinstance(config.source, str) else config.source:
            pairs += load_pairs(source, layout=config.layout, split=config.split, subset_name=config.subset_name,
                                max_rows=config.max_rows, subset_key=config.subset_key, stats=stats)[0]
        if config.per_subset is not None:
            pairs = sample_per_subset(pairs, config.per_subset, config.sample_seed, stats)
        tokenized = tokenize_pairs(pairs, pair_tokenizer, stats, truncate_responses=True)
        sets.append(EvalSet(config.name, tokenized, rewardbench=config.sections == "rewardbench",
                            data=stats.as_dict()))
    return sets


def sample_per_subset(pairs: list, per_subset: int, seed: int, stats: RowStats) -> list:
    """At most ``per_subset`` pairs of each subset, a sample seeded by ``seed`` and the subset's name, in the
    set's order; the rest are counted as skipped."""
    by_subset: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_subset.setdefault(pair.subset, []).append(index)
    kept = set()
    for subset, indices in by_subset.items():
        kept.update(random.Random(f"{seed}:{subset}").sample(indices, per_subset) if len(indices) > per_subset
                    else indices)
    if len(kept) < len(pairs):
        stats.skip(f"beyond the per-subset sample (per_subset={per_subset})", len(pairs) - len(kept))
    return [pair for index, pair in enumerate(pairs) if index in kept]


def heldout_set(pairs: list[TokenizedPair], section_mapping: Optional[dict[str, list[str]]],
                stats: RowStats) -> EvalSet:
    return EvalSet(HELDOUT, pairs, section_mapping=section_mapping, data=stats.as_dict())


Rewards = dict[str, tuple[list[float], list[float]]]  # set name -> (chosen rewards, rejected rewards)


def score_sets(model: Any, sets: Sequence[EvalSet], pad_token_id: int, batch_size: int,
               device: Any = None) -> Rewards:
    """(chosen, rejected) rewards of every set (on every rank under torch.distributed)."""
    return {s.name: score_pairs(model, s.pairs, pad_token_id, batch_size, device=device) for s in sets}


class FinalScoring(pl.Callback):
    """Scores the evaluation sets when ``fit`` ends, before the strategy is torn down (see module docstring).

    It runs after a fit that ended without an exception, also one resumed from a finished checkpoint (whose
    training loop is skipped): it wraps the strategy's ``teardown`` for that one call, as Lightning has no
    hook between the end of the fit stage and the teardown. ``rewards`` is then set on every rank, and
    ``consolidated_weights`` (ZeRO-3: the weights for the export) on rank 0.
    """

    def __init__(self, sets: Callable[[], list[EvalSet]], pad_token_id: int, batch_size: int) -> None:
        self.sets, self.pad_token_id, self.batch_size = sets, pad_token_id, batch_size
        self.rewards: Optional[Rewards] = None
        self.consolidated_weights: Optional[dict[str, Any]] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = trainer.strategy
        teardown = strategy.teardown

        def score_then_teardown() -> None:
            strategy.teardown = teardown
            if trainer.state.status == TrainerStatus.RUNNING:  # an exception sets INTERRUPTED first
                self.score(trainer, pl_module)
            teardown()

        strategy.teardown = score_then_teardown

    def score(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Every batch goes through ``trainer.strategy.predict_step`` (:meth:`rmlab.module.RewardModule.predict_step`),
        as training batches go through its ``training_step``: inside the precision plugin's autocast, and through
        the strategy's wrapper (the root FSDP module gathers the parameters that each rank holds a shard of)."""
        from lightning.pytorch.strategies import FSDPStrategy

        from rmlab.fsdp import full_state_dict
        from rmlab.zero import consolidated_state_dict, zero_stage

        strategy = trainer.strategy
        self.rewards = {s.name: score_pairs(pl_module.model, s.pairs, self.pad_token_id, self.batch_size,
                                            device=strategy.root_device, step=strategy.predict_step)
                        for s in self.sets()}
        if zero_stage(trainer) == 3:
            self.consolidated_weights = consolidated_state_dict(trainer)
        elif isinstance(strategy, FSDPStrategy):
            self.consolidated_weights = full_state_dict(trainer)


def set_reports(sets: Sequence[EvalSet], rewards: Rewards) -> dict[str, Any]:
    """The report of every set: accuracy, subsets, sections and Avg, the weights used, truncations, rows."""
    reports: dict[str, Any] = {}
    for eval_set in sets:
        chosen, rejected = rewards[eval_set.name]
        mapping = SUBSET_MAPPING if eval_set.rewardbench else eval_set.section_mapping
        report = evaluation_report(chosen, rejected, [p.subset for p in eval_set.pairs],
                                   example_counts=EXAMPLE_COUNTS if eval_set.rewardbench else {},
                                   subset_mapping=mapping)
        reports[eval_set.name] = {**report, "truncated_pairs": eval_set.truncated_pairs, "data": eval_set.data}
    return reports


def table3_set(sets: Sequence[EvalSet]) -> Optional[str]:
    """The set whose sections make the Table 3 row: the one marked RewardBench, else the held-out pairs (None
    when neither is scored)."""
    return next((s.name for s in sets if s.rewardbench), HELDOUT if any(s.name == HELDOUT for s in sets) else None)


def table3_row(reports: dict[str, Any], set_name: str) -> dict[str, float]:
    """Avg + the four sections of ``set_name`` (empty when it has no sections)."""
    source = reports.get(set_name, {})
    sections = source.get("sections", {})
    return {"Avg": source["Avg"], **{name: sections[name] for name in SECTIONS if name in sections}} \
        if "Avg" in source else {}


def write_rewards(directory: Path, sets: Sequence[EvalSet], rewards: Rewards) -> None:
    """``<directory>/<set>.jsonl``: one line per scored pair, in the set's order: subset, chosen and rejected reward."""
    directory.mkdir(parents=True, exist_ok=True)
    for eval_set in sets:
        chosen, rejected = rewards[eval_set.name]
        with (directory / f"{eval_set.name}.jsonl").open("w") as handle:
            for pair, chosen_reward, rejected_reward in zip(eval_set.pairs, chosen, rejected):
                handle.write(json.dumps({"subset": pair.subset, "chosen": chosen_reward,
                                         "rejected": rejected_reward}) + "\n")
