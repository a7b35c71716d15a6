"""What is scored after training (and by ``python -m rmlab.evaluate``), where, and what it yields.

**The sets.** The held-out pairs of the training data, every ``eval.sets`` entry (:class:`EvalSet`: pairs) and
RewardBench 2 when ``eval.rewardbench2`` names it (:class:`GroupSet`: prompts with groups of completions, each
completion scored on its own), loaded and tokenized before training starts, so a bad path or row fails at once.
Evaluation never drops a pair or a completion for its length: one whose response does not fit
``data.max_length`` is truncated (:mod:`rmlab.data.tokenize`) and counted (``truncated_pairs``,
``truncated_completions``).

**Where.** :class:`FinalScoring` scores every set at the end of ``fit``, before Lightning tears the
strategy down, so the model is still on its training device(s): every rank scores its share of the
batches, through the DeepSpeed engine under ZeRO-3, and the rewards are gathered
(:mod:`rmlab.scoring`). Under ZeRO-3 the export's weights are gathered then too
(:func:`rmlab.zero.consolidated_state_dict`).

**What** (:func:`evaluation_results`). A report per pair set (RewardBench's rules: :mod:`rmlab.rewardbench`), the
Table 3 row, from the set marked ``sections: rewardbench``, else from the held-out pairs, and RewardBench 2's block
(its rules: :mod:`rmlab.rewardbench2`); every set's rewards go to ``rewards/<set>.jsonl``.
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
from rmlab.data.formats import DataError, RowStats, load_pairs
from rmlab.data.groups import TokenizedGroup, load_groups, tokenize_groups
from rmlab.data.tokenize import PairTokenizer, TokenizedPair
from rmlab.rewardbench import EXAMPLE_COUNTS, SECTIONS, SUBSET_MAPPING, counts_by_subset, evaluation_report
from rmlab.rewardbench2 import NAME as RB2
from rmlab.rewardbench2 import SUBSETS as RB2_SUBSETS
from rmlab.rewardbench2 import TIES, best_of_n_result, prompt_stats, rb2_scores, ties_terms, ties_units
from rmlab.scoring import score_groups, score_pairs

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

    def score(self, model: Any, pad_token_id: int, batch_size: int, device: Any = None,
              step: Any = None) -> tuple[list[float], list[float]]:
        """(chosen rewards, rejected rewards), on every rank under torch.distributed."""
        return score_pairs(model, self.pairs, pad_token_id, batch_size, device=device, step=step)


@dataclass
class GroupSet:
    """RewardBench 2's prompts, each with its group of completions (:mod:`rmlab.data.groups`)."""

    groups: list[TokenizedGroup]
    data: dict[str, Any] = field(default_factory=dict)  # rows read / used / skipped of the source
    name: str = RB2

    def score(self, model: Any, pad_token_id: int, batch_size: int, device: Any = None,
              step: Any = None) -> list[list[float]]:
        """Every completion's reward, group by group, on every rank under torch.distributed."""
        return score_groups(model, self.groups, pad_token_id, batch_size, device=device, step=step)


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


def load_rewardbench2(config: Any, pair_tokenizer: PairTokenizer) -> list[GroupSet]:
    """``eval.rewardbench2``'s prompts, tokenized (``[]`` when its source is null); a bad row raises
    (:mod:`rmlab.data.groups`)."""
    if config.source is None:
        return []
    stats = RowStats()
    groups = tokenize_groups(load_groups(config.source, config.split, config.max_rows, stats)[0], pair_tokenizer,
                             stats)
    if not groups:
        raise DataError(f"eval.rewardbench2.source={config.source!r}: no prompt to score ({stats.as_dict()}). Fix: "
                        "point it at allenai/reward-bench-2 (split test) or a copy laid out like it.")
    return [GroupSet(groups, stats.as_dict())]


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


ScoredSet = EvalSet | GroupSet
Rewards = dict[str, Any]  # set name -> (chosen rewards, rejected rewards) of a pair set, or a GroupSet's groups'


def score_sets(model: Any, sets: Sequence[ScoredSet], pad_token_id: int, batch_size: int,
               device: Any = None) -> Rewards:
    """The rewards of every set (on every rank under torch.distributed)."""
    return {s.name: s.score(model, pad_token_id, batch_size, device=device) for s in sets}


class FinalScoring(pl.Callback):
    """Scores the evaluation sets when ``fit`` ends, before the strategy is torn down (see module docstring).

    It runs after a fit that ended without an exception, also one resumed from a finished checkpoint (whose
    training loop is skipped): it wraps the strategy's ``teardown`` for that one call, as Lightning has no
    hook between the end of the fit stage and the teardown. ``rewards`` is then set on every rank, and
    ``consolidated_weights`` (ZeRO-3: the weights for the export) on rank 0.
    """

    def __init__(self, sets: Callable[[], list[ScoredSet]], pad_token_id: int, batch_size: int) -> None:
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
        self.rewards = {s.name: s.score(pl_module.model, self.pad_token_id, self.batch_size,
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


def scored_groups(group_set: GroupSet, rewards: list[list[float]]) -> list[dict[str, Any]]:
    """The groups as :func:`rmlab.rewardbench2.rb2_scores` takes them: id, subset, num_correct, rewards."""
    return [{"id": group.id, "subset": group.subset, "num_correct": group.num_correct, "rewards": scored}
            for group, scored in zip(group_set.groups, rewards)]


def rewardbench2_report(group_set: GroupSet, rewards: list[list[float]]) -> dict[str, Any]:
    """metrics.json's ``rewardbench2`` block: the subsets' scores and ``final``, prompts per subset, the Ties
    score's terms, completions (truncated ones counted), the subsets missing and the rows read."""
    groups = scored_groups(group_set, rewards)
    counts = counts_by_subset(group["subset"] for group in groups)
    report: dict[str, Any] = {**rb2_scores(groups), "prompts": {name: counts[name] for name in RB2_SUBSETS
                                                                if name in counts}}
    if TIES in counts:
        terms = ties_terms(ties_units([group for group in groups if group["subset"] == TIES]))
        report["ties_terms"] = {name: float(value) for name, value in terms.items()}
    return {**report, "completions": sum(len(group["rewards"]) for group in groups),
            "truncated_completions": sum(group.truncated for group in group_set.groups),
            "missing_subsets": [name for name in RB2_SUBSETS if name not in counts], "data": group_set.data}


def write_group_rewards(directory: Path, group_set: GroupSet, rewards: list[list[float]]) -> None:
    """``<directory>/rewardbench2.jsonl``: one line per prompt, in the dataset's order: id, subset, num_correct, the
    rewards of its completions (chosen first), its truncated completions, and its result (``result``: 1/k or 0;
    a Ties prompt: ``accurate``). :func:`rmlab.rewardbench2.rb2_scores` of the lines gives the scores again."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"{group_set.name}.jsonl").open("w") as handle:
        for group, line in zip(group_set.groups, scored_groups(group_set, rewards)):
            outcome = {"accurate": prompt_stats(line["rewards"], group.num_correct).accurate} \
                if group.subset == TIES else {"result": best_of_n_result(line["rewards"])}
            handle.write(json.dumps({**line, "truncated": group.truncated, **outcome}) + "\n")


def evaluation_results(sets: Sequence[ScoredSet], rewards: Rewards, directory: Path) -> tuple[dict[str, Any],
                                                                                           Optional[str]]:
    """(metrics.json's evaluation blocks, the set that gave the Table 3 row): ``table3``, ``eval`` (every pair
    set's report) and ``rewardbench2`` when it was scored; each set's rewards are written into ``directory``."""
    pair_sets = [s for s in sets if isinstance(s, EvalSet)]
    reports = set_reports(pair_sets, rewards)
    write_rewards(directory, pair_sets, rewards)
    row_set = table3_set(pair_sets)
    results = {"table3": table3_row(reports, row_set), "eval": reports}
    for group_set in (s for s in sets if isinstance(s, GroupSet)):
        results[group_set.name] = rewardbench2_report(group_set, rewards[group_set.name])
        write_group_rewards(directory, group_set, rewards[group_set.name])
    return results, row_set
