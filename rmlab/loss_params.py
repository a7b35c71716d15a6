"""The hyperparameters of every loss: their one home (default, allowed range), with no torch import.

Each ``*Params`` dataclass holds a loss's hyperparameters and checks their ranges in ``__post_init__``.
The loss classes in :mod:`rmlab.losses` inherit them (so ``FocalLoss()`` has these defaults and
``FocalLoss(gamma=-1)`` is refused by the same check), and the config schema of each ``loss=<name>``
option is the same dataclass plus ``_target_`` (:data:`LOSS_SCHEMAS`), so ``loss.gamma=-1`` or
``loss.t=2`` is refused before torch, data or a model loads. Changing a default is a one-line change here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, make_dataclass
from typing import Any, Optional

from omegaconf import MISSING

from rmlab.checks import check


def check_number(owner: Any, name: str, lower: float, *, strict: bool = False, upper: Optional[float] = None) -> None:
    """Refuse ``owner.<name>`` unless it is a finite number in the range (the key is named ``loss.<name>``)."""
    value = getattr(owner, name)
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    in_range = number and (value > lower if strict else value >= lower) and (upper is None or value <= upper)
    rule = f"must be a finite number {'>' if strict else '>='} {lower}" + ("" if upper is None else f" and <= {upper}")
    check(in_range, f"loss.{name}", rule, value)


@dataclass(kw_only=True)
class LossParams:
    """Shared by every loss: ``center_rewards_coefficient`` c >= 0 adds c · mean((r_c + r_r)²) (TRL's
    option of that name, from Eisenstein et al. 2023); 0 = off."""

    center_rewards_coefficient: float = 0.0

    def __post_init__(self) -> None:
        check_number(self, "center_rewards_coefficient", 0.0)


@dataclass(kw_only=True)
class TemperatureParams(LossParams):
    temperature: float = 2.0  # T > 0; assumed (the Skywork paper gives no value); T = 1 is plain BT

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "temperature", 0.0, strict=True)


@dataclass(kw_only=True)
class FocalParams(LossParams):
    gamma: float = 2.0  # γ >= 0; Lin et al. 2017's recommended value; γ = 0 is plain BT

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "gamma", 0.0)


@dataclass(kw_only=True)
class FocalPenaltyParams(FocalParams):
    penalty_coefficient: float = 0.02  # λ >= 0; the InternLM2 report's value (its XTuner code defaults to 0.01)
    bound: float = 5.0  # b > 0; the InternLM2 report's barrier keeps rewards inside (−b, b)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "penalty_coefficient", 0.0)
        check_number(self, "bound", 0.0, strict=True)


@dataclass(kw_only=True)
class MarginParams(LossParams):
    target_margin: float = 1.0  # m >= 0; assumed (the Skywork paper gives no value); 1 is the SVM convention

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "target_margin", 0.0)


TEMPERED_FORMS = ("log_t", "bi_tempered")


@dataclass(kw_only=True)
class TemperedLogParams(LossParams):
    t: float = 0.5  # 0 < t <= 1 (bounded loss for t < 1; t = 1 is BT); assumed (the Skywork paper gives no value)
    form: str = "log_t"  # log_t | bi_tempered (Amid et al. 2019, with its second term): see rmlab.losses

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "t", 0.0, strict=True, upper=1.0)
        check(self.form in TEMPERED_FORMS, "loss.form", f"one of {', '.join(TEMPERED_FORMS)}", self.form)


def _schema(option: str, params: type) -> type:
    """The config schema of ``loss=<option>``: the loss's parameters plus ``_target_`` (named in its YAML)."""
    return make_dataclass(f"LossSchema_{option}", [("_target_", str, MISSING)], bases=(params,))


LOSS_SCHEMAS: dict[str, type] = {
    "bt": _schema("bt", LossParams),
    "bt_temperature": _schema("bt_temperature", TemperatureParams),
    "focal": _schema("focal", FocalParams),
    "focal_penalty": _schema("focal_penalty", FocalPenaltyParams),
    "hinge": _schema("hinge", MarginParams),
    "margin_mse": _schema("margin_mse", MarginParams),
    "cross_entropy": _schema("cross_entropy", LossParams),
    "tempered_log": _schema("tempered_log", TemperedLogParams),
}
