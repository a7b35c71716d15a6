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


def _check(obj: object, name: str, lower: float, *, strict: bool = False, upper: float | None = None) -> None:
    """Raise ValueError unless ``obj.name`` is a finite number in the allowed range."""
    value = getattr(obj, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lower if strict else value >= lower) and (upper is None or value <= upper)
    if not ok:
        allowed = f"{'>' if strict else '>='} {lower}" + ("" if upper is None else f" and <= {upper}")
        raise ValueError(f"{type(obj).__name__}: {name} must be a finite number {allowed}, got {value!r}")


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


@dataclass(frozen=True, kw_only=True)
class PairwiseRewardLoss:
    """Base class: mean of the per-pair losses ℓ_i plus optional reward centering.

    center_rewards_coefficient: c >= 0; adds c · mean((r_c + r_r)²) (TRL's option of the
    same name, from Eisenstein et al. 2023). Default 0.0 = off.
    Subclasses implement ``_pair_losses(chosen, rejected, margin) -> [B]`` on prepared inputs.
    """

    center_rewards_coefficient: float = 0.0

    def __post_init__(self) -> None:
        _check(self, "center_rewards_coefficient", 0.0)

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


@dataclass(frozen=True, kw_only=True)
class BradleyTerryLoss(PairwiseRewardLoss):
    """Bradley-Terry: ℓ = −log σ(Δ − m_i). No hyperparameters."""

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        return -F.logsigmoid(chosen - rejected - margin)


@dataclass(frozen=True, kw_only=True)
class BTTemperatureLoss(PairwiseRewardLoss):
    """Bradley-Terry with temperature: ℓ = −log σ((Δ − m_i) / T), T > 0.

    temperature T = 2.0 is assumed (the Skywork paper gives no value); T = 1 is plain BT.
    """

    temperature: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self, "temperature", 0.0, strict=True)

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        return -F.logsigmoid((chosen - rejected - margin) / self.temperature)


@dataclass(frozen=True, kw_only=True)
class FocalLoss(PairwiseRewardLoss):
    """Focal loss (Lin et al. 2017) on the BT probability, z = Δ − m_i:

        ℓ = −(1 − σ(z))^γ · log σ(z),  γ >= 0  (γ = 0 is plain BT).

    The weight is differentiated through (not detached), as in Lin et al.; it is computed as
    exp(γ · log σ(−z)). gamma = 2.0 is the value recommended by Lin et al. 2017.
    """

    gamma: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self, "gamma", 0.0)

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        z = chosen - rejected - margin
        return -torch.exp(self.gamma * F.logsigmoid(-z)) * F.logsigmoid(z)


@dataclass(frozen=True, kw_only=True)
class FocalPenaltyLoss(PairwiseRewardLoss):
    """InternLM2 focal ranking loss with log-barrier penalty, z = Δ − m_i:

        ℓ = −(1 − 2·max(σ(z) − ½, 0))^γ · log σ(z) + λ · (B(r_c) + B(r_r)),
        B(x) = −(log(b + x) + log(b − x)),

    which keeps rewards inside (−b, b). The weight equals min(1, 2σ(−z))^γ and is computed as
    exp(γ · min(0, log 2 + log σ(−z))), differentiated through.

    Beyond the bound: B is used as is for |x| <= a = (1 − ε)·b with ε = ``barrier_eps`` = 1e-3,
    and continued linearly for |x| > a:  B(x) = B(a) + B'(a)·(|x| − a),  B'(a) = 2a / (b² − a²).
    The extension is C¹, finite for any x, and its gradient sign(x)·λ·B'(a) (≈ λ / (ε·b))
    points back inside the interval.

    Defaults gamma = 2.0, penalty_coefficient λ = 0.02, bound b = 5.0 follow the InternLM2
    report (arXiv 2403.17297). ε is an implementation choice (assumed).
    """

    gamma: float = 2.0
    penalty_coefficient: float = 0.02
    bound: float = 5.0

    barrier_eps = 1e-3  # class constant, not a constructor argument

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self, "gamma", 0.0)
        _check(self, "penalty_coefficient", 0.0)
        _check(self, "bound", 0.0, strict=True)

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


@dataclass(frozen=True, kw_only=True)
class HingeLoss(PairwiseRewardLoss):
    """Hinge: ℓ = max(0, m + m_i − Δ); the data margin m_i adds to the target margin m >= 0.

    target_margin m = 1.0 is assumed (the Skywork paper gives no value; 1 is the SVM convention).
    """

    target_margin: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self, "target_margin", 0.0)

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        return F.relu(self.target_margin + margin - (chosen - rejected))


@dataclass(frozen=True, kw_only=True)
class MarginMSELoss(PairwiseRewardLoss):
    """Margin MSE: ℓ = (Δ − (m + m_i))²; the data margin m_i adds to the target margin m >= 0.

    target_margin m = 1.0 is assumed (the Skywork paper gives no value).
    """

    target_margin: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self, "target_margin", 0.0)

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        return (chosen - rejected - self.target_margin - margin).square()


@dataclass(frozen=True, kw_only=True)
class CrossEntropyLoss(PairwiseRewardLoss):
    """Pointwise binary cross-entropy, chosen labelled 1 and rejected labelled 0:

        ℓ = −log σ(r_c − m_i/2) − log σ(−(r_r + m_i/2))   (1 − σ(x) written as σ(−x)).

    Margin (our choice): half of m_i is required on each side, i.e. the chosen logit is shifted
    down and the rejected one up by m_i/2, so the pair is pushed apart by m_i around 0.
    No hyperparameters.
    """

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        half = 0.5 * margin
        return -F.logsigmoid(chosen - half) - F.logsigmoid(-(rejected + half))


@dataclass(frozen=True, kw_only=True)
class TemperedLogLoss(PairwiseRewardLoss):
    """Tempered log loss, z = Δ − m_i:

        ℓ = −log_t σ(z) = (1 − σ(z)^(1−t)) / (1 − t),   log_t(x) = (x^(1−t) − 1) / (1 − t),

    computed as −expm1((1 − t)·log σ(z)) / (1 − t). t = 1 is exactly Bradley-Terry (−log σ(z)).
    Allowed range 0 < t <= 1: for t < 1 the loss is bounded by 1/(1 − t) (robust to label
    noise); t > 1 is rejected because the loss then grows like e^((t−1)|z|) and overflows.
    t = 0.5 is assumed (the Skywork paper gives no value).
    """

    t: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self, "t", 0.0, strict=True, upper=1.0)

    def _pair_losses(self, chosen: Tensor, rejected: Tensor, margin: Tensor) -> Tensor:
        log_p = F.logsigmoid(chosen - rejected - margin)
        if self.t == 1:
            return -log_p
        return -torch.expm1((1.0 - self.t) * log_p) / (1.0 - self.t)


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
