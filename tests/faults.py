"""Faults that tests inject into real ``python -m rmlab`` runs (children import this module via PYTHONPATH)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rmlab.losses import BradleyTerryLoss

_training_calls = [0]


@dataclass(kw_only=True)
class NaNOnRankOne(BradleyTerryLoss):
    """Bradley-Terry, but NaN on global rank 1 only, at its third training micro-batch (the second optimizer
    step with accumulation 2): the other rank's own gradients stay finite, so only a rank-agreed check stops."""

    def __call__(self, chosen_rewards, rejected_rewards, margin=None):
        loss = super().__call__(chosen_rewards, rejected_rewards, margin)
        if not torch.is_grad_enabled():  # validation and scoring
            return loss
        _training_calls[0] += 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return loss * float("nan") if rank == 1 and _training_calls[0] == 3 else loss


@dataclass(kw_only=True)
class NaNAtThirdStep(BradleyTerryLoss):
    """Bradley-Terry, but NaN at the third training micro-batch of the process (every rank)."""

    def __call__(self, chosen_rewards, rejected_rewards, margin=None):
        loss = super().__call__(chosen_rewards, rejected_rewards, margin)
        if torch.is_grad_enabled():
            _training_calls[0] += 1
            if _training_calls[0] == 3:
                return loss * float("nan")
        return loss
