"""RewardModule: one forward for chosen + rejected, the configured loss, and the logged statistics."""

from __future__ import annotations

from typing import Any, Callable, Optional

import random

import lightning.pytorch as pl
import numpy as np
import torch

from rmlab.scoring import forward_rewards

LossFn = Callable[..., torch.Tensor]


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
    """

    def __init__(self, model: Any | Callable[[], Any], loss_fn: LossFn, optimizer_factory: Callable[..., torch.optim.Optimizer],
                 scheduler_factory: Optional[Callable[..., Any]] = None, warmup_ratio: float = 0.0,
                 num_training_steps: int = 1, on_nonfinite: str = "stop") -> None:
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

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.model_factory()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return forward_rewards(self.model, input_ids, attention_mask)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        rewards = self(batch["input_ids"], batch["attention_mask"])
        pairs = rewards.shape[0] // 2
        chosen, rejected = rewards[:pairs], rewards[pairs:]
        loss = self.loss_fn(chosen, rejected, margin=batch.get("margin"))
        metrics = {"loss": loss.detach(), **reward_statistics(chosen.detach(), rejected.detach())}
        for keys, prog_bar in ((("loss", "accuracy"), True), (tuple(metrics)[2:], False)):
            self.log_dict({f"{stage}/{k}": metrics[k] for k in keys}, batch_size=pairs, prog_bar=prog_bar,
                          on_step=stage == "train", on_epoch=stage != "train", sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Catch a NaN/inf loss or gradient at the step it happens: stop, or skip the update and count it."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            return
        if self.on_nonfinite == "skip":
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    parameter.grad = None  # torch optimizers leave parameters without a gradient untouched
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps), reduce_fx="max")
            return
        checkpoint = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        raise FloatingPointError(
            f"non-finite loss or gradient at optimizer step {self.global_step}; last good checkpoint: {checkpoint}. "
            "Lower the learning rate or check the data; on_nonfinite=skip skips such steps and counts them.")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = collect_rng_states()  # dropout's randomness, so a resume continues exactly

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_states_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        if self._rng_states_to_restore:
            restore_rng_states(self._rng_states_to_restore)
            self._rng_states_to_restore = None

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim < 2 else decay).append(parameter)
        optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return optimizer
        total = self.num_training_steps
        scheduler = self.scheduler_factory(optimizer=optimizer, num_warmup_steps=int(self.warmup_ratio * total),
                                           num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
