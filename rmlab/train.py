"""train(cfg): seed → model → data → module → trainer → fit → evaluate → export → metrics.json."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rmlab.data.datamodule import PreferenceDataModule, tokenize_pairs
from rmlab.data.formats import RowStats, load_pairs
from rmlab.data.tokenize import PairTokenizer
from rmlab.loggers import finish_logger, redact_secrets
from rmlab.evaluation import EXAMPLE_COUNTS, SECTIONS, SUBSET_MAPPING, evaluation_report
from rmlab.model import RewardModelBundle, build_reward_model, export_reward_model
from rmlab.module import RewardModule
from rmlab.report import print_results
from rmlab.scoring import score_pairs


def hydra_choice(group: str) -> Optional[str]:
    """The option picked for a config group (e.g. the loss name), when running under Hydra."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def build_strategy(cfg: DictConfig) -> Any:
    if cfg.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend=cfg.process_group_backend,
                           find_unused_parameters=cfg.find_unused_parameters)
    return cfg.name


def data_source(data_cfg: DictConfig) -> Any:
    """Rows for ``data.source``: the embedded set (always generated with seed 0) or a path / hub id."""
    if data_cfg.source == "embedded":
        from rmlab.data.embedded import generate_embedded_pairs

        return generate_embedded_pairs(data_cfg.embedded_pairs_per_category, seed=0)
    return data_cfg.source


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


class FirstStepTimer(pl.Callback):
    """Prints the seconds from launch to the first training step (import, model and data loading included)."""

    def __init__(self, launched_at: float) -> None:
        self.launched_at, self.seconds = launched_at, None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.seconds is None:
            self.seconds = round(time.time() - self.launched_at, 1)
            if trainer.is_global_zero:
                print(f"rmlab: first training step {self.seconds:.1f} s after launch", flush=True)


def build_logger(cfg: DictConfig) -> Any:
    """The configured logger; W&B runs are named <loss>-seed<seed> and grouped by sweep unless set."""
    if cfg.logger is None:
        return False
    defaults = {}
    if cfg.logger._target_.endswith("wandb_logger"):
        defaults["name"] = cfg.logger.name or f"{hydra_choice('loss') or 'run'}-seed{cfg.seed}"
        if cfg.logger.group is None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            defaults["group"] = Path(HydraConfig.get().sweep.dir).name
    logger = instantiate(cfg.logger, **defaults)
    logger.log_hyperparams(redact_secrets(OmegaConf.to_container(cfg, resolve=True)))
    return logger


def build_datamodule(cfg: DictConfig, pair_tokenizer: PairTokenizer) -> PreferenceDataModule:
    d = cfg.data
    loader = functools.partial(load_pairs, data_source(d), layout=d.layout, split=d.split,
                               subset_name=d.subset_name, max_rows=d.max_rows, subset_key=d.subset_key,
                               margin_key=d.margin_key, on_bad_row=d.on_bad_row, stats=RowStats())
    return PreferenceDataModule(loader, pair_tokenizer, val_fraction=d.val_fraction, batch_size=d.batch_size,
                                eval_batch_size=d.eval_batch_size, on_bad_row=d.on_bad_row,
                                num_workers=d.num_workers, seed=cfg.seed)


def resume_checkpoint(resume: str, output_dir: Path) -> Optional[str]:
    """``never``: none; ``auto``: ``<run dir>/checkpoints/last.ckpt`` when it exists; else the given path."""
    if resume == "never":
        return None
    if resume == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint. Fix: pass an existing .ckpt, or resume=auto.")
    return resume


def train(cfg: DictConfig, launched_at: Optional[float] = None) -> dict[str, Any]:
    """Fit, then (rank 0 only) evaluate, export and write metrics.json; returns the metrics.

    With ``resume=auto`` a run directory that already holds ``metrics.json`` is complete and is
    not trained again, and one that holds ``checkpoints/last.ckpt`` resumes from it.
    """
    launched_at = launched_at or time.time()
    output_dir = Path(cfg.paths.output_dir)
    if cfg.resume == "auto" and (output_dir / "metrics.json").is_file():
        print(f"rmlab: {output_dir} already holds metrics.json; skipping the finished run (resume=never reruns it)")
        return json.loads((output_dir / "metrics.json").read_text())
    ckpt_path = resume_checkpoint(cfg.resume, output_dir)
    if ckpt_path:
        print(f"rmlab: resuming from {ckpt_path}")
    pl.seed_everything(cfg.seed, workers=True)

    bundle = build_reward_model(**OmegaConf.to_container(cfg.model, resolve=True))
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, cfg.data.max_length)
    datamodule = build_datamodule(cfg, pair_tokenizer)
    logger = build_logger(cfg)
    timer = FirstStepTimer(launched_at)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()] + [timer]
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, strategy=build_strategy(cfg.strategy),
                          default_root_dir=str(output_dir), use_distributed_sampler=False)
    steps = datamodule.optimizer_steps(trainer.world_size, cfg.trainer.accumulate_grad_batches,
                                       cfg.trainer.max_epochs, cfg.trainer.max_steps)
    module = RewardModule(bundle.model, instantiate(cfg.loss), instantiate(cfg.optimizer.optimizer),
                          instantiate(cfg.optimizer.scheduler), cfg.optimizer.warmup_ratio, steps, cfg.on_nonfinite)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if not trainer.is_global_zero:
        return {}

    reports = evaluate_sets(bundle, pair_tokenizer, datamodule, cfg, output_dir)
    metrics = {
        "table3": table3_row(reports),
        "eval": reports,
        "data": datamodule.stats.as_dict(),
        "train": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
        "run": {"loss": hydra_choice("loss") or cfg.loss._target_.rsplit(".", 1)[-1], "seed": cfg.seed,
                "train_pairs": len(datamodule.train_pairs), "heldout_pairs": len(datamodule.heldout_pairs),
                "optimizer_steps": trainer.global_step, "skipped_nonfinite_steps": module.skipped_steps},
    }
    if cfg.export:
        export_reward_model(bundle, output_dir / "export")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))  # deterministic for a seed on CPU
    timing = {"first_step_s": timer.seconds, "wall_time_s": round(time.time() - launched_at, 1)}
    (output_dir / "timing.json").write_text(json.dumps(timing))
    if logger:
        finish_logger(logger, {**metrics["table3"], "data": metrics["data"], "eval": reports})
    print_results(metrics, output_dir)
    print(f"rmlab: first training step after {timing['first_step_s']} s, run finished after {timing['wall_time_s']} s")
    return metrics
