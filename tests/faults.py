"""Faults that tests inject into real ``python -m rmlab`` runs (children import this module via PYTHONPATH).

``python -m faults <overrides>`` is ``python -m rmlab <overrides>`` started ``$FAULTS_START_DELAY_S`` seconds late
(a node whose worker starts slowly).
"""

from __future__ import annotations

import os
import runpy
import time
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


@dataclass(kw_only=True)
class SlowSteps(BradleyTerryLoss):
    """Bradley-Terry, 0.3 s slower per training micro-batch: a test can act between two checkpointed steps."""

    def __call__(self, chosen_rewards, rejected_rewards, margin=None):
        if torch.is_grad_enabled():
            time.sleep(0.3)
        return super().__call__(chosen_rewards, rejected_rewards, margin)


if __name__ == "__main__":
    time.sleep(float(os.environ.get("FAULTS_START_DELAY_S", "0")))
    runpy.run_module("rmlab", run_name="__main__", alter_sys=True)
