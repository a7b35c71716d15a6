"""RewardModule: one forward for chosen + rejected, the configured loss, and the logged statistics."""

from __future__ import annotations

import functools
import logging
import math
import random
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import FSDPStrategy

from rmlab.packing import PackingLayout, fuse_projections, pack_batch, packing_support
from rmlab.scoring import batch_rewards, forward_rewards
from rmlab.zero import build_model, cpu_adam, deepspeed_engine, offloads_optimizer, parameter_shape, skipped_steps

LossFn = Callable[..., torch.Tensor]
log = logging.getLogger(__name__)


def reward_statistics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy (ties count as wrong), mean margin, and reward mean/std for each side."""
    return {
        "accuracy": (chosen > rejected).float().mean(),
        "margin": (chosen - rejected).mean(),
        "reward_chosen_mean": chosen.mean(),
        "reward_chosen_std": chosen.std(unbiased=False),
        "reward_rejected_mean": rejected.mean(),
        "reward_rejected_std": rejected.std(unbiased=False),
    }


class EpochStatistics:
    """Sums over an epoch's training pairs, from which its statistics are exact: the mean loss (per-batch
    losses weighted by pairs), accuracy and margin, and each side's reward mean and (population) std."""

    SUMS = ("pairs", "loss", "correct", "margin", "chosen", "chosen_sq", "rejected", "rejected_sq")

    def __init__(self) -> None:
        self.sums = torch.zeros(len(self.SUMS), dtype=torch.float64)

    def update(self, loss: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        c, r = chosen.detach().double(), rejected.detach().double()
        batch = torch.stack([c.new_tensor(len(c)), loss.detach().double() * len(c), (c > r).double().sum(),
                             (c - r).sum(), c.sum(), c.square().sum(), r.sum(), r.square().sum()])
        self.sums = self.sums.to(batch.device) + batch

    @classmethod
    def means(cls, sums: torch.Tensor) -> dict[str, float]:
        total = dict(zip(cls.SUMS, sums.double().cpu().tolist()))
        n = max(total["pairs"], 1.0)
        out = {"loss": total["loss"] / n, "accuracy": total["correct"] / n, "margin": total["margin"] / n}
        for side in ("chosen", "rejected"):
            mean = total[side] / n
            out[f"reward_{side}_mean"] = mean
            out[f"reward_{side}_std"] = max(total[f"{side}_sq"] / n - mean * mean, 0.0) ** 0.5
        return out


def collect_rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                     has_gauss, cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RewardModule(pl.LightningModule):
    """Trains a sequence-classification model on pairwise preferences.

    ``optimizer_factory(params)`` and ``scheduler_factory(optimizer=..., num_warmup_steps=...,
    num_training_steps=...)`` are Hydra ``_partial_`` objects. ``num_training_steps`` comes from the
    data (not ``trainer.estimated_stepping_batches``, which would build the train loader before a
    checkpoint restores its position).

    ``packing`` (``auto`` | ``on`` | ``off``): with ``auto``, when the model supports it
    (:func:`rmlab.packing.packing_support`: decoders with sdpa or flash-attention, BERT encoders with
    sdpa) every batch is repacked on the host, before it moves to the device (:meth:`prepare_batch`,
    called by the datamodule), into one padding-free row (:mod:`rmlab.packing`); rewards, loss and
    pairs per step are those of the padded batch. ``on`` raises when the model cannot be packed.
    ``tokens_real`` / ``tokens_processed`` count the training tokens (padding included in the latter).
    A ``torch.optim.Adam``/``AdamW`` factory that names neither ``fused`` nor ``foreach`` gets
    ``fused=True`` when every parameter is on the CPU or a CUDA device, the strategy is single-device
    or DDP and no gradient scaler is used (torch's CPU default is a per-tensor loop, several times
    slower here); see :meth:`configure_gradient_clipping` for clipping under ``bf16-mixed``.
    ``fused_projections``: on the CPU (single-device or DDP), the q/k/v projections of each attention
    layer run as one GEMM (:func:`rmlab.packing.fuse_projections`; same parameters and results).
    """

    def __init__(self, model: Any | Callable[[], Any], loss_fn: LossFn, optimizer_factory: Callable[..., torch.optim.Optimizer],
                 scheduler_factory: Optional[Callable[..., Any]] = None, warmup_ratio: float = 0.0,
                 num_training_steps: int = 1, on_nonfinite: str = "stop", packing: str = "auto",
                 fused_projections: bool = True) -> None:
        super().__init__()
        # A callable is a deferred model, built in configure_model (ZeRO-3 loads it into partitions there).
        self.model, self.model_factory = (None, model) if callable(model) and not isinstance(model, torch.nn.Module) \
            else (model, None)
        self.loss_fn = loss_fn
        self.optimizer_factory, self.scheduler_factory, self.warmup_ratio = (
            optimizer_factory, scheduler_factory, warmup_ratio)
        self.num_training_steps = max(num_training_steps, 1)
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        self._rng_states_to_restore: Optional[dict[str, Any]] = None
        if packing not in ("auto", "on", "off"):
            raise ValueError(f"packing={packing!r}: use auto, on or off")
        self.packing = packing
        self._packing_layout: Optional[PackingLayout] = None
        self._packing_resolved = packing == "off"
        self.tokens_real = self.tokens_processed = 0
        self.fused_projections = fused_projections
        self.parameter_shapes: dict[str, tuple[int, ...]] = {}
        self.restored_metrics: dict[str, float] = {}
        self.epoch_statistics = EpochStatistics()
        self.train_epoch_means: dict[str, float] = {}
        self._restored_epoch_sums: Optional[tuple[int, torch.Tensor]] = None

    def configure_model(self) -> None:
        """Build a deferred model; note every parameter's shape before a strategy wraps the model (FSDP flattens
        its parameters into 1-D shards, ZeRO-3 leaves (0,) placeholders: :meth:`configure_optimizers`)."""
        if self.model is None:
            self.model = build_model(self._trainer, self.model_factory)
        self.parameter_shapes = {name: parameter_shape(p) for name, p in self.model.named_parameters()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return forward_rewards(self.model, input_ids, attention_mask)

    def predict_step(self, batch: dict[str, Any], layout: Optional[PackingLayout] = None) -> torch.Tensor:
        """Rewards of one scoring batch. The final scoring calls it through ``trainer.strategy.predict_step``, so
        it runs as training does: through the strategy's wrapper (the root FSDP module, which gathers the
        parameters; the DeepSpeed engine) and inside the precision plugin's autocast."""
        return batch_rewards(self.model, batch, layout)

    @property
    def packing_layout(self) -> Optional[PackingLayout]:
        """How batches are packed for this model, or None (padded batches)."""
        if not self._packing_resolved and self.model is not None:
            self._packing_layout, why = packing_support(self.model)
            self._packing_resolved = True
            if self._packing_layout is None and self.packing == "on":
                raise ValueError(f"packing=on, but this model cannot be packed: {why}")
        return self._packing_layout

    def prepare_batch(self, batch: Any) -> Any:
        """Repack a padded batch (still on the host) when packing is on; count the training tokens.

        :class:`~rmlab.data.datamodule.PreferenceDataModule` calls it from ``on_before_batch_transfer``
        (a hook of the module itself would make Lightning warn whenever a datamodule is passed)."""
        if not isinstance(batch, dict) or "attention_mask" not in batch:
            return batch
        layout = self.packing_layout
        real, processed = int(batch["attention_mask"].sum()), batch["input_ids"].numel()
        if layout is not None:
            packed = pack_batch(batch["input_ids"], batch["attention_mask"], layout)
            processed = packed["input_ids"].numel()
            batch = {**packed, **{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}}
        if self._trainer is not None and self.trainer.training:
            self.tokens_real += real
            self.tokens_processed += processed
        return batch

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        rewards = batch_rewards(self.model, batch, self.packing_layout)
        pairs = rewards.shape[0] // 2
        chosen, rejected = rewards[:pairs], rewards[pairs:]
        loss = self.loss_fn(chosen, rejected, margin=batch.get("margin"))
        metrics = {"loss": loss.detach(), **reward_statistics(chosen.detach(), rejected.detach())}
        training = stage == "train"
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, batch_size=pairs, prog_bar=False,
                      on_step=training, on_epoch=not training, sync_dist=not training)
        if training:  # the bar shows the epoch so far (this rank), not the last batch
            self.epoch_statistics.update(loss, chosen, rejected)
            pairs_so_far, loss_sum, correct = self.epoch_statistics.sums[:3]  # tensors: no device sync per step
            self.log_dict({"loss": loss_sum / pairs_so_far, "acc": correct / pairs_so_far}, prog_bar=True,
                          logger=False, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_start(self) -> None:
        self.epoch_statistics = EpochStatistics()

    def _epoch_sums(self) -> torch.Tensor:
        """The sums of this epoch's pairs so far, over every rank (a collective: all ranks call it)."""
        return self.trainer.strategy.reduce(self.epoch_statistics.sums.to(self.device), reduce_op="sum").cpu()

    @staticmethod
    def _train_means(total: torch.Tensor) -> dict[str, float]:
        return {f"train/{k}": v for k, v in EpochStatistics.means(total).items()} if float(total[0]) else {}

    def on_train_epoch_end(self) -> None:
        """The epoch's training statistics over all its pairs: what metrics.json and the W&B summary hold."""
        self.train_epoch_means = self._train_means(self._epoch_sums()) or self.train_epoch_means

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Catch a NaN/inf loss or gradient before the update: stop, or skip the update and count it.

        Under DeepSpeed the gradients live in the engine's partitions; its own check decides (see
        :meth:`optimizer_step`)."""
        if deepspeed_engine(self._trainer) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or all_finite(grads):
            return
        if self.on_nonfinite == "stop":
            self._stop_nonfinite()
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None  # torch optimizers leave parameters without a gradient untouched
        self._count_skipped_step()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Under DeepSpeed: the engine skips an update whose gradient norm is not finite (the norm is reduced
        over all ranks, so they agree); rmlab then stops, or counts the skipped step."""
        skipped_before = skipped_steps(self._trainer)
        super().optimizer_step(*args, **kwargs)
        if skipped_steps(self._trainer) > skipped_before:
            if self.on_nonfinite == "stop":
                self._stop_nonfinite()
            self._count_skipped_step()

    def _count_skipped_step(self) -> None:
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), reduce_fx="max")

    def _stop_nonfinite(self) -> None:
        checkpoint = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        raise FloatingPointError(
            f"non-finite loss or gradient at optimizer step {self.global_step}; last good checkpoint: {checkpoint}. "
            "Lower the learning rate or check the data; on_nonfinite=skip skips such steps and counts them.")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = collect_rng_states()  # dropout's randomness, so a resume continues exactly
        # every rank runs this (a collective); rank 0's copy is written: all ranks' pairs of the epoch so far
        total = self._epoch_sums()
        checkpoint["epoch_sums"] = (self.current_epoch, total)
        checkpoint["logged_metrics"] = {**self.final_metrics(), **self._train_means(total)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_states_to_restore = checkpoint.get("rng_states")
        self.restored_metrics = checkpoint.get("logged_metrics", {})
        self._restored_epoch_sums = checkpoint.get("epoch_sums")

    def final_metrics(self) -> dict[str, float]:
        """The run's training metrics: the last epoch's statistics over all its pairs (``train/*``), the last
        validation (``val/*``), the last learning rate and the skipped steps; restored ones included."""
        logged = {k: float(v) for k, v in self.trainer.callback_metrics.items()
                  if v.numel() == 1 and (k.startswith("val/") or k in ("train/lr", "train/skipped_steps"))}
        metrics = {**self.restored_metrics, **logged, **self.train_epoch_means}
        return dict(sorted(metrics.items()))  # one order, resumed or not

    def on_fit_start(self) -> None:
        if self.fused_projections and self._plain_strategy() and \
                all(p.device.type == "cpu" for p in self.model.parameters()):
            fuse_projections(self.model)

    def _plain_strategy(self) -> bool:
        """Single-device or DDP: parameters are whole tensors on their device (not ZeRO/FSDP shards)."""
        name = type(self.trainer.strategy).__name__ if self._trainer is not None else "SingleDeviceStrategy"
        return name in ("SingleDeviceStrategy", "DDPStrategy")

    def on_train_start(self) -> None:
        """After a checkpoint is restored (a resume inside an epoch gets no ``on_train_epoch_start``)."""
        if self._rng_states_to_restore:
            restore_rng_states(self._rng_states_to_restore)
            self._rng_states_to_restore = None
        restored, self._restored_epoch_sums = self._restored_epoch_sums, None
        if restored is not None and restored[0] == self.current_epoch and self.trainer.is_global_zero:
            self.epoch_statistics.sums = restored[1]  # resumed inside this epoch: all ranks' pairs so far

    def configure_optimizers(self) -> Any:
        """AdamW with weight decay on matrices only (biases, norms: none), decided by each parameter's shape
        in the model (not a ZeRO-3 placeholder's or an FSDP shard's: :meth:`configure_model`);
        DeepSpeedCPUAdam when DeepSpeed offloads the optimizer."""
        decay, no_decay, size = [], [], 0
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                shape = self.parameter_shapes.get(name) or parameter_shape(parameter)
                (no_decay if len(shape) < 2 else decay).append(parameter)
                size += math.prod(shape) if len(shape) >= 2 else 0
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self._trainer is None or self.trainer.is_global_zero:
            rate = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", "(the optimizer's default)")
            log.info(f"weight decay {rate} on {len(decay)} tensors ({size} parameters); none on {len(no_decay)} "
                     "tensors (biases, norms)")
        if offloads_optimizer(self._trainer):
            optimizer = cpu_adam(self.optimizer_factory)(groups)
        elif self._can_fuse(decay + no_decay):
            optimizer = self.optimizer_factory(groups, fused=True)
        else:
            optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        total = self.num_training_steps
        scheduler = self.scheduler_factory(optimizer=optimizer, num_warmup_steps=int(self.warmup_ratio * total),
                                           num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
                                    gradient_clip_algorithm: Optional[str] = None) -> None:
        """Two cases where Lightning's own clipping refuses what rmlab selects:

        * FSDP: clipping by norm must go through the root FSDP module (the norm over every rank's shards),
          which Lightning's plugin cannot reach; rmlab calls it.
        * ``bf16-mixed`` with a fused optimizer: Lightning refuses, since with fp16's loss scaling the gradients
          would still be scaled when clipped. bf16 has no scaler (and under fp16 rmlab does not fuse:
          :meth:`_can_fuse`), so the gradients are the true ones and are clipped as in fp32."""
        plugin, strategy = self.trainer.precision_plugin, self.trainer.strategy
        if isinstance(strategy, FSDPStrategy) and gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            strategy.model.clip_grad_norm_(gradient_clip_val)
        elif isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val or 0.0, gradient_clip_algorithm or "norm")
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _can_fuse(self, parameters: list[torch.nn.Parameter]) -> bool:
        factory = self.optimizer_factory
        if not isinstance(factory, functools.partial) or factory.func not in (torch.optim.Adam, torch.optim.AdamW):
            return False
        if {"fused", "foreach"} & set(factory.keywords):
            return False
        if getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) is not None:
            return False  # fp16: a fused optimizer unscales inside its step, after clipping has seen scaled gradients
        return self._plain_strategy() and bool(parameters) and all(
            p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
            for p in parameters)


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when no element is NaN/inf: one norm pass (a finite norm has finite elements); only when a
    norm is not finite (a NaN/inf, or a huge finite gradient overflowing it) are the elements checked."""
    total = getattr(torch.nn.utils, "get_total_norm", None)
    if total is not None and bool(torch.isfinite(total(tensors, 2.0, foreach=None))):
        return True
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())
