"""train(cfg): seed → model → data → module → trainer → fit → evaluate → export → metrics.json."""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rmlab.console import ProgressBar, quiet_third_party
from rmlab.data.datamodule import PreferenceDataModule
from rmlab.data.formats import RowStats, load_pairs
from rmlab.data.tokenize import PairTokenizer
from rmlab.evaluation import RB2, FinalScoring, evaluation_results, heldout_set, load_eval_sets, load_rewardbench2
from rmlab.launch import PeerLost, die_with_torchrun_agent
from rmlab.loggers import finish_logger, redact_secrets
from rmlab.model import RewardModelBundle, build_reward_model, export_reward_model
from rmlab.module import RewardModule
from rmlab.peers import PeerWatch
from rmlab.results import print_results
from rmlab.schemas import ConfigError
from rmlab.strategy import build_strategy, check_hardware, gradient_accumulation
from rmlab.zero import SaveDeepSpeedConfig


log = logging.getLogger(__name__)


def hydra_choice(group: str) -> Optional[str]:
    """The option picked for a config group (e.g. the loss name), when running under Hydra."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def set_cpu_threads(cfg: DictConfig) -> None:
    """torch's CPU threads from ``threads`` (null: torch's default). Results depend on the thread count (float
    summation order), so training and scoring both follow it and ``metrics.json`` records it."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def data_source(data_cfg: DictConfig) -> Any:
    """Rows for ``data.source``: the embedded set (always generated with seed 0) or a path / hub id."""
    if data_cfg.source == "embedded":
        from rmlab.data.embedded import generate_embedded_pairs

        return generate_embedded_pairs(data_cfg.embedded_pairs_per_category, seed=0)
    return data_cfg.source


class FirstStepTimer(pl.Callback):
    """Logs the seconds from launch to the first training step (import, model and data loading included)."""

    def __init__(self, launched_at: float) -> None:
        self.launched_at, self.seconds = launched_at, None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.seconds is None:
            self.seconds = round(time.time() - self.launched_at, 1)
            if trainer.is_global_zero:
                log.info(f"first training step {self.seconds:.1f} s after launch")


def build_logger(cfg: DictConfig) -> Any:
    """The configured logger; W&B runs are named <loss>-seed<seed> and grouped by sweep unless set."""
    if cfg.logger is None:
        return False
    defaults = {}
    if cfg.logger._target_.endswith("wandb_logger"):
        defaults["name"] = cfg.logger.name or f"{hydra_choice('loss') or 'run'}-seed{cfg.seed}"
        if cfg.logger.group is None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            defaults["group"] = Path(HydraConfig.get().sweep.dir).name
    logger = instantiate(OmegaConf.create(redact_secrets(OmegaConf.to_container(cfg.logger, resolve=True))),
                         **defaults)
    logger.log_hyperparams(redact_secrets(OmegaConf.to_container(cfg, resolve=True)))
    return logger


def pairs_loader(d: DictConfig) -> Callable[[], tuple[list, RowStats]]:
    """Loads ``(pairs, stats)``: a mixture when ``data.sources`` is set (sampled with seed 0, so the
    training seed never changes the data), else ``data.source``."""
    if d.sources:
        from rmlab.data.recipe.mixture import load_mixture

        sources = OmegaConf.to_container(d.sources, resolve=True)
        return lambda: load_mixture(sources, seed=0, total=d.mixture_total)[:2]
    return functools.partial(load_pairs, data_source(d), layout=d.layout, split=d.split, subset_name=d.subset_name,
                             max_rows=d.max_rows, subset_key=d.subset_key, margin_key=d.margin_key,
                             on_bad_row=d.on_bad_row, stats=RowStats())


def build_datamodule(cfg: DictConfig, pair_tokenizer: PairTokenizer) -> PreferenceDataModule:
    d = cfg.data
    loader = pairs_loader(d)
    return PreferenceDataModule(loader, pair_tokenizer, val_fraction=d.val_fraction, batch_size=d.batch_size,
                                eval_batch_size=cfg.eval.batch_size, on_bad_row=d.on_bad_row,
                                num_workers=d.num_workers, seed=cfg.seed)


def resume_checkpoint(resume: str, output_dir: Path) -> Optional[str]:
    """``never``: none; ``auto``: ``<run dir>/checkpoints/last.ckpt`` when it exists; else the given path."""
    if resume == "never":
        return None
    if resume == "auto":  # last.ckpt links to the newest checkpoint; if a kill left it dangling, take the newest
        checkpoints = output_dir / "checkpoints"
        last = checkpoints / "last.ckpt"
        if last.exists():  # a file, or a directory for DeepSpeed checkpoints
            return str(last)
        saved = [p for p in checkpoints.glob("*.ckpt") if p.exists()] if checkpoints.is_dir() else []
        return str(max(saved, key=lambda p: p.stat().st_mtime)) if saved else None
    if not Path(resume).exists():
        raise ConfigError(f"resume={resume}: no such checkpoint. Fix: pass an existing .ckpt, or resume=auto.")
    return resume


def fit(trainer: Any, module: RewardModule, datamodule: PreferenceDataModule, ckpt_path: Optional[str],
        watch: PeerWatch) -> None:
    """``trainer.fit``; a collective that failed because ranks stopped answering becomes :class:`PeerLost`,
    naming them, the last checkpoint and the fix."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except Exception as error:
        lost = watch.lost_peers(error)
        if lost is None:
            raise
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        cause = re.sub(r"^\[[^\]]*\]\s*", "", first_line).split(". ")[0]  # gloo's "[file.cc:553] What. Hint."
        raise PeerLost(f"{lost} at optimizer step {trainer.global_step} ({cause}); last checkpoint: {checkpoint}. "
                       "Fix: check those nodes, then rerun the same command on every node (resume=auto continues "
                       "from the checkpoint).") from error


def release_process_group() -> None:
    """After the fit (whose end scored every set, the last collective), each rank shuts its process group down
    itself rather than leaving it to interpreter exit, where a gloo rank was once seen to abort (SIGABRT,
    "terminate called without an active exception") while rank 0 was still exporting."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def build_trainer(cfg: DictConfig, logger: Any, callbacks: list, output_dir: Path) -> Any:
    """The Lightning Trainer, with the accumulation derived from ``data.global_batch_size``."""
    devices = cfg.trainer.devices
    if not isinstance(devices, int):
        devices = max(torch.cuda.device_count(), 1) if cfg.trainer.accelerator != "cpu" else 1
    accumulation = gradient_accumulation(cfg.data.global_batch_size, cfg.data.batch_size, devices,
                                         cfg.trainer.num_nodes, cfg.trainer.accumulate_grad_batches)
    strategy = build_strategy(cfg.strategy, cfg.trainer.accelerator, cfg.data.batch_size)
    callbacks = callbacks + [SaveDeepSpeedConfig(output_dir / "deepspeed_config.json")]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(ProgressBar())
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, accumulate_grad_batches=accumulation,
                       strategy=strategy, default_root_dir=str(output_dir), use_distributed_sampler=False)


def train(cfg: DictConfig, launched_at: Optional[float] = None) -> dict[str, Any]:
    """Fit and score the evaluation sets (every rank), then (rank 0) export and write metrics.json.

    With ``resume=auto`` a run directory that already holds ``metrics.json`` is complete and is
    not trained again, and one that holds ``checkpoints/last.ckpt`` resumes from it.
    """
    launched_at = launched_at or time.time()
    die_with_torchrun_agent()
    quiet_third_party()
    output_dir = Path(cfg.paths.output_dir)
    check_hardware(cfg.strategy, cfg.trainer.accelerator, torch.cuda.is_available())
    if cfg.resume == "auto" and (output_dir / "metrics.json").is_file():
        log.info(f"{output_dir} already holds metrics.json; skipping the finished run (resume=never reruns it)")
        return json.loads((output_dir / "metrics.json").read_text())
    ckpt_path = resume_checkpoint(cfg.resume, output_dir)
    if ckpt_path:
        log.info(f"resuming from {ckpt_path}")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    set_cpu_threads(cfg)

    zero3 = cfg.strategy.name == "deepspeed" and cfg.strategy.stage == 3
    bundle = build_reward_model(**OmegaConf.to_container(cfg.model, resolve=True), defer_model=zero3)
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, cfg.data.max_length)
    datamodule = build_datamodule(cfg, pair_tokenizer)
    datamodule.setup()  # read and tokenize now: a data error stops the run before the logger and trainer start
    eval_sets = [*load_eval_sets(cfg.eval.sets, pair_tokenizer), *load_rewardbench2(cfg.eval.rewardbench2,
                                                                                 pair_tokenizer)]
    mapping = OmegaConf.to_container(cfg.data.section_mapping) if cfg.data.section_mapping else None

    def sets_to_score() -> list:
        heldout = [heldout_set(datamodule.heldout_pairs, mapping, datamodule.stats)] \
            if cfg.eval.heldout and datamodule.heldout_pairs else []
        return heldout + eval_sets

    logger = build_logger(cfg)
    try:
        timer = FirstStepTimer(launched_at)
        scoring = FinalScoring(sets_to_score, bundle.tokenizer.pad_token_id, cfg.eval.batch_size)
        watch = PeerWatch()
        callbacks = [instantiate(callback) for callback in cfg.callbacks.values()] + [timer, scoring, watch]
        trainer = build_trainer(cfg, logger, callbacks, output_dir)
        steps = datamodule.optimizer_steps(trainer.world_size, trainer.accumulate_grad_batches,
                                           cfg.trainer.max_epochs, cfg.trainer.max_steps)
        module = RewardModule(bundle.model or bundle.load_model, instantiate(cfg.loss),
                              instantiate(cfg.optimizer.optimizer), instantiate(cfg.optimizer.scheduler),
                              cfg.optimizer.warmup_ratio, steps, cfg.on_nonfinite)
        fit(trainer, module, datamodule, ckpt_path, watch)
        release_process_group()
        if not trainer.is_global_zero:
            return {}
        if scoring.rewards is None:
            raise RuntimeError("the fit ended without scoring the evaluation sets")
        weights = scoring.consolidated_weights
        bundle.model = module.model if weights is None else bundle.model_from_state_dict(weights)
        metrics = finish_run(cfg, bundle, sets_to_score(), scoring.rewards, datamodule, trainer, module, output_dir)
    except BaseException:
        if logger:
            finish_logger(logger, {}, failed=True)  # the next job of a multirun must not log into this run
        raise
    timing = {"first_step_s": timer.seconds, "wall_time_s": round(time.time() - launched_at, 1)}
    (output_dir / "timing.json").write_text(json.dumps(timing))
    if logger:
        finish_logger(logger, {**metrics["table3"], **metrics["train"],
                               **{key: metrics[key] for key in ("data", "eval", RB2) if key in metrics}})
    print_results(metrics, output_dir)
    first = "no training step" if timer.seconds is None else f"first training step after {timer.seconds} s"
    log.info(f"{first}, run finished after {timing['wall_time_s']} s")
    return metrics


def finish_run(cfg: DictConfig, bundle: RewardModelBundle, sets: list, rewards: dict, datamodule: PreferenceDataModule,
               trainer: Any, module: RewardModule, output_dir: Path) -> dict:
    """Reports, rewards files, the export and ``metrics.json`` (deterministic for a seed on CPU)."""
    results, row_set = evaluation_results(sets, rewards, output_dir / "rewards")
    metrics = {
        **results,
        "data": datamodule.stats.as_dict(),
        "train": module.final_metrics(),
        "run": {"loss": hydra_choice("loss") or cfg.loss._target_.rsplit(".", 1)[-1], "seed": cfg.seed,
                "table3_set": row_set, "train_pairs": len(datamodule.train_pairs),
                "heldout_pairs": len(datamodule.heldout_pairs), "optimizer_steps": trainer.global_step,
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "skipped_nonfinite_steps": module.skipped_steps, "cpu_threads": torch.get_num_threads()},
    }
    if cfg.export:
        export_reward_model(bundle, output_dir / "export")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
