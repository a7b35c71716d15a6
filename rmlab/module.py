"""RewardModule: one forward for chosen + rejected, the configured loss, and the logged statistics."""

from __future__ import annotations

from typing import Any, Callable, Optional

import lightning.pytorch as pl
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


class RewardModule(pl.LightningModule):
    """Trains a sequence-classification model on pairwise preferences.

    ``optimizer_factory(params)`` and ``scheduler_factory(optimizer=..., num_warmup_steps=...,
    num_training_steps=...)`` are Hydra ``_partial_`` objects.
    """

    def __init__(self, model: Any, loss_fn: LossFn, optimizer_factory: Callable[..., torch.optim.Optimizer],
                 scheduler_factory: Optional[Callable[..., Any]] = None, warmup_ratio: float = 0.0) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn
        self.optimizer_factory, self.scheduler_factory, self.warmup_ratio = (
            optimizer_factory, scheduler_factory, warmup_ratio)

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
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim < 2 else decay).append(parameter)
        optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = self.scheduler_factory(optimizer=optimizer, num_warmup_steps=int(self.warmup_ratio * total),
                                           num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
