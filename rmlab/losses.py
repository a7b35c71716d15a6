"""Pairwise reward-model losses of Skywork-Reward (arXiv 2410.18451), Table 3.

Notation
    r_c, r_r  rewards of the chosen / rejected response of a pair, 1-D tensors of shape [B]
    Δ         r_c − r_r
    m_i       optional per-pair margin from the data (Llama-2 style), shape [B]; 0 if absent
    σ         logistic function σ(x) = 1 / (1 + e^(−x)); note 1 − σ(x) = σ(−x)

A loss is called as ``loss(chosen_rewards, rejected_rewards, margin=None)`` and returns the
mean over pairs of its per-pair loss ℓ_i (given in each class docstring) plus, when the
shared option ``center_rewards_coefficient`` c is > 0, TRL's centering term
c · mean((r_c + r_r)²).

Hyperparameters (defaults and allowed ranges) have one home, :mod:`rmlab.loss_params`; each loss here
inherits its ``*Params`` dataclass, and ``conf/loss/<name>.yaml`` names the class.

Numerics: inputs are upcast to at least float32 and every log σ is computed with
``F.logsigmoid``, so loss and gradient stay finite for |Δ| and |r| of 1e4 and beyond,
also for bfloat16 inputs. The result has dtype float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rmlab.loss_params import (FocalPenaltyParams, FocalParams, LossParams, MarginParams, TemperatureParams,
                               TemperedLogParams)


def _prepare(chosen: Tensor, rejected: Tensor, margin: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes; upcast to >= float32; turn a missing margin into zeros."""
    if chosen.ndim != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            "chosen_rewards and rejected_rewards must be 1-D tensors of the same shape [B], "
            f"got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    if chosen.numel() == 0:
        raise ValueError("chosen_rewards and rejected_rewards must not be empty")
    if margin is not None and margin.shape != chosen.shape:
        raise ValueError(
            f"margin must be None or have shape {tuple(chosen.shape)}, got {tuple(margin.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(chosen.dtype, rejected.dtype), torch.float32)
    chosen, rejected = chosen.to(dtype), rejected.to(dtype)
    margin = torch.zeros_like(chosen) if margin is None else margin.to(dtype)
    return chosen, rejected, margin


class PairwiseRewardLoss:
    """Mixin of every loss: the mean of the per-pair losses ℓ_i plus optional reward centering.

    The hyperparameters, their defaults and ranges come from :mod:`rmlab.loss_params` (each loss inherits its
    ``*Params`` dataclass). Subclasses implement ``_pair_losses(chosen, rejected, margin) -> [B]`` on
    prepared inputs.
    """

    center_rewards_coefficient: float

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        raise NotImplementedError

    def pair_losses(
        self, chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None
    ) -> Tensor:
        """Per-pair losses ℓ_i, shape [B], without the centering term."""
        return self._pair_losses(*_prepare(chosen_rewards, rejected_rewards, margin))

    def __call__(
        self, chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None
    ) -> Tensor:
        chosen, rejected, margin = _prepare(chosen_rewards, rejected_rewards, margin)
        loss = self._pair_losses(chosen, rejected, margin).mean()
        if self.center_rewards_coefficient > 0:
            loss = loss + self.center_rewards_coefficient * (chosen + rejected).square().mean()
        return loss


@dataclass
class BradleyTerryLoss(LossParams, PairwiseRewardLoss):
    """Bradley-Terry: ℓ = −log σ(Δ − m_i). No hyperparameters."""

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        return -F.logsigmoid(chosen - rejected - margin)


@dataclass
class BTTemperatureLoss(TemperatureParams, PairwiseRewardLoss):
    """Bradley-Terry with temperature: ℓ = −log σ((Δ − m_i) / T), T > 0; T = 1 is plain BT.

    The Skywork paper gives no T: the default is assumed (:class:`rmlab.loss_params.TemperatureParams`).
    """

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        return -F.logsigmoid((chosen - rejected - margin) / self.temperature)


@dataclass
class FocalLoss(FocalParams, PairwiseRewardLoss):
    """Focal loss (Lin et al. 2017) on the BT probability, z = Δ − m_i:

        ℓ = −(1 − σ(z))^γ · log σ(z),  γ >= 0  (γ = 0 is plain BT).

    The weight is differentiated through (not detached), as in Lin et al.; it is computed as
    exp(γ · log σ(−z)). The default γ is Lin et al.'s recommended value (:class:`rmlab.loss_params.FocalParams`).
    """

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        z = chosen - rejected - margin
        return -torch.exp(self.gamma * F.logsigmoid(-z)) * F.logsigmoid(z)


@dataclass
class FocalPenaltyLoss(FocalPenaltyParams, PairwiseRewardLoss):
    """InternLM2 focal ranking loss with log-barrier penalty, z = Δ − m_i:

        ℓ = −(1 − 2·max(σ(z) − ½, 0))^γ · log σ(z) + λ · (B(r_c) + B(r_r)),
        B(x) = −(log(b + x) + log(b − x)),

    which keeps rewards inside (−b, b). The weight equals min(1, 2σ(−z))^γ and is computed as
    exp(γ · min(0, log 2 + log σ(−z))), differentiated through.

    Beyond the bound: B is used as is for |x| <= a = (1 − ε)·b with ε = ``barrier_eps`` = 1e-3,
    and continued linearly for |x| > a:  B(x) = B(a) + B'(a)·(|x| − a),  B'(a) = 2a / (b² − a²).
    The extension is C¹, finite for any x, and its gradient sign(x)·λ·B'(a) (≈ λ / (ε·b))
    points back inside the interval.

    Sources: the InternLM2 technical report (arXiv 2403.17297, §4.2.1, "Loss Function") gives the ranking
    term with γ = 2, the barrier with b = 5 and the total L_ranking + λ·L_penalty with λ = 0.02: rmlab's
    defaults (:class:`rmlab.loss_params.FocalPenaltyParams`). Its public training code (XTuner, ``xtuner/model/reward.py``) differs in two ways, noted
    here because a reader may compare: ``penalty_weight`` defaults to 0.01 there, and rewards are clamped
    to [−b + ε, b − ε] before the barrier, so outside the bound the penalty is flat and its gradient zero:
    a reward that has left the interval is never pushed back. rmlab keeps the report's λ and the linear
    continuation above, whose gradient points back inside (ε is rmlab's choice).
    """

    barrier_eps = 1e-3  # class constant, not a constructor argument

    def barrier(self, x: Tensor) -> Tensor:
        """Log barrier B(x), linearly continued beyond ±(1 − ε)·b (see class docstring)."""
        b = self.bound
        a = (1.0 - self.barrier_eps) * b
        slope = 2.0 * a / (b * b - a * a)
        inner = x.clamp(-a, a)
        return -(torch.log(b + inner) + torch.log(b - inner)) + slope * (F.relu(x - a) + F.relu(-x - a))

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        z = chosen - rejected - margin
        log_weight = (math.log(2.0) + F.logsigmoid(-z)).clamp(max=0.0)
        ranking = -torch.exp(self.gamma * log_weight) * F.logsigmoid(z)
        return ranking + self.penalty_coefficient * (self.barrier(chosen) + self.barrier(rejected))


@dataclass
class HingeLoss(MarginParams, PairwiseRewardLoss):
    """Hinge: ℓ = max(0, m + m_i − Δ); the data margin m_i adds to the target margin m >= 0.

    The Skywork paper gives no m: the default is assumed (:class:`rmlab.loss_params.MarginParams`).
    """

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        return F.relu(self.target_margin + margin - (chosen - rejected))


@dataclass
class MarginMSELoss(MarginParams, PairwiseRewardLoss):
    """Margin MSE: ℓ = (Δ − (m + m_i))²; the data margin m_i adds to the target margin m >= 0.

    The Skywork paper gives no m: the default is assumed (:class:`rmlab.loss_params.MarginParams`).
    """

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        return (chosen - rejected - self.target_margin - margin).square()


@dataclass
class CrossEntropyLoss(LossParams, PairwiseRewardLoss):
    """Pointwise binary cross-entropy, chosen labelled 1 and rejected labelled 0:

        ℓ = −log σ(r_c − m_i/2) − log σ(−(r_r + m_i/2))   (1 − σ(x) written as σ(−x)).

    Margin (our choice): half of m_i is required on each side, i.e. the chosen logit is shifted
    down and the rejected one up by m_i/2, so the pair is pushed apart by m_i around 0.
    No hyperparameters.

    Table 3's caption calls its losses "loss functions that optimize the margin between chosen and
    rejected responses"; this one does not: each reward is pushed toward its own label, independently
    of the other, so it also fixes where rewards sit (chosen > 0 > rejected). It is kept pointwise because
    that is what "cross-entropy" (Goodfellow et al. 2016, cited in Table 3) means without a pair, and a
    pairwise cross-entropy on σ(Δ) would be Bradley-Terry itself, already a row of the table. Its low
    Chat score in the paper (74.9) is consistent with this absolute, not relative, objective.
    """

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        half = 0.5 * margin
        return -F.logsigmoid(chosen - half) - F.logsigmoid(-(rejected + half))


@dataclass
class TemperedLogLoss(TemperedLogParams, PairwiseRewardLoss):
    """Tempered log loss, z = Δ − m_i, with the tempered logarithm log_t(x) = (x^(1−t) − 1) / (1 − t):

    ``form=log_t`` (default):       ℓ = −log_t σ(z) = (1 − σ(z)^(1−t)) / (1 − t)
    ``form=bi_tempered``:           ℓ = −log_t σ(z) − (1 − σ(z)^(2−t) − σ(−z)^(2−t)) / (2 − t)

    The first is the generalized cross-entropy of the BT probability (Zhang & Sabuncu 2018, q = 1 − t);
    the second is Amid et al. 2019's bi-tempered binary logistic loss with t1 = t and t2 = 1 (its
    probabilities are then σ(±z)), whose second term makes it the Bregman divergence of the tempered
    log. Both equal Bradley-Terry (−log σ(z)) at t = 1 and are bounded for t < 1 (the first by
    1/(1 − t)), which makes them robust to mislabelled pairs; t > 1 is refused (the loss then grows like
    e^((t−1)|z|)). Computed from log σ: σ(z)^a = exp(a · log σ(z)).

    Source: Table 3 cites "Carvalho et al. 2010" for this loss. That reference could not be traced (no
    2010 paper by Carvalho defining a tempered log loss was found in the sources available to us), so the
    default is the plainest reading of "tempered log loss", −log_t of the pair probability, and the
    Bregman form is kept as an option. The paper gives no t: the default is assumed
    (:class:`rmlab.loss_params.TemperedLogParams`).
    """

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        z = chosen - rejected - margin
        log_p = F.logsigmoid(z)
        if self.t == 1:
            return -log_p
        loss = -torch.expm1((1.0 - self.t) * log_p) / (1.0 - self.t)
        if self.form == "bi_tempered":
            power = 2.0 - self.t
            loss = loss - (1.0 - torch.exp(power * log_p) - torch.exp(power * F.logsigmoid(-z))) / power
        return loss


LOSSES: dict[str, type[PairwiseRewardLoss]] = {
    "bt": BradleyTerryLoss,
    "bt_temperature": BTTemperatureLoss,
    "focal": FocalLoss,
    "focal_penalty": FocalPenaltyLoss,
    "hinge": HingeLoss,
    "margin_mse": MarginMSELoss,
    "cross_entropy": CrossEntropyLoss,
    "tempered_log": TemperedLogLoss,
}
