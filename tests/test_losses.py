"""Tests for rmlab.losses against independent closed forms evaluated with mpmath (50 digits)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import hydra
import mpmath as mp
import pytest
import torch
from omegaconf import OmegaConf

import rmlab.losses as L

mp.mp.dps = 50

DELTAS = (-50.0, -5.0, 0.0, 0.3, 5.0, 50.0)
OFFSETS = (0.4, -0.3, 0.2, -0.1, 0.3, -0.2)  # r_c + r_r = 2·offset, so centering is non-trivial
MARGINS = (0.5, 0.0, 1.5, 0.25, 2.0, 0.7)


# ---------------------------------------------------------------- references (mpmath, from the formulas)
def sig(x):
    return 1 / (1 + mp.exp(-x))


def log_sig(x):
    return -mp.log1p(mp.exp(-x))


def barrier(x, b, eps=1e-3):
    a = (1 - mp.mpf(eps)) * b
    if abs(x) <= a:
        return -(mp.log(b + x) + mp.log(b - x))
    return -(mp.log(b + a) + mp.log(b - a)) + 2 * a / (b**2 - a**2) * (abs(x) - a)


def ref_pair(name: str, p: dict, rc, rr, m):
    """Per-pair loss ℓ written directly from the formula of each loss."""
    z = rc - rr - m
    if name == "bt":
        return -log_sig(z)
    if name == "bt_temperature":
        return -log_sig(z / p.get("temperature", 2.0))
    if name == "focal":
        return -((1 - sig(z)) ** p.get("gamma", 2.0)) * log_sig(z)
    if name == "focal_penalty":
        g, lam, b = p.get("gamma", 2.0), p.get("penalty_coefficient", 0.02), p.get("bound", 5.0)
        w = (1 - 2 * max(sig(z) - mp.mpf(1) / 2, 0)) ** g
        return -w * log_sig(z) + lam * (barrier(rc, b) + barrier(rr, b))
    if name == "hinge":
        return max(0, p.get("target_margin", 1.0) + m - (rc - rr))
    if name == "margin_mse":
        return (rc - rr - p.get("target_margin", 1.0) - m) ** 2
    if name == "cross_entropy":
        return -log_sig(rc - m / 2) - log_sig(-(rr + m / 2))
    if name == "tempered_log":
        t = mp.mpf(p.get("t", 0.5))
        log_t = -log_sig(z) if t == 1 else -(sig(z) ** (1 - t) - 1) / (1 - t)
        if p.get("form", "log_t") == "log_t":
            return log_t
        # Amid et al. 2019, bi-tempered binary logistic loss with t1 = t, t2 = 1 (probabilities σ(z), σ(−z))
        return log_t - (1 - sig(z) ** (2 - t) - sig(-z) ** (2 - t)) / (2 - t)
    raise KeyError(name)


def is_kink(name: str, p: dict, rc, rr, m) -> bool:
    """Points where the loss is not differentiable (gradient compared only elsewhere)."""
    z = rc - rr - m
    if name == "focal_penalty":
        return abs(z) < 1e-9
    if name == "hinge":
        return abs(p.get("target_margin", 1.0) - z) < 1e-9
    return False


def reference(name, p, rc, rr, m):
    """Mean loss (with centering) and its gradients w.r.t. r_c and r_r, all in mpmath."""
    c = mp.mpf(p.get("center_rewards_coefficient", 0.0))
    rc, rr, m = ([mp.mpf(v) for v in xs] for xs in (rc, rr, m))
    n = len(rc)
    value = sum(ref_pair(name, p, *x) for x in zip(rc, rr, m)) / n
    value += c * sum((a + b) ** 2 for a, b in zip(rc, rr)) / n
    gc, gr = [], []
    for a, b, mi in zip(rc, rr, m):
        if is_kink(name, p, a, b, mi):
            gc.append(None), gr.append(None)
            continue
        center = 2 * c * (a + b) / n
        gc.append(mp.diff(lambda x: ref_pair(name, p, x, b, mi), a) / n + center)
        gr.append(mp.diff(lambda x: ref_pair(name, p, a, x, mi), b) / n + center)
    return value, gc, gr


def run(loss, rc, rr, m=None, dtype=torch.float64):
    c = torch.tensor(rc, dtype=dtype, requires_grad=True)
    r = torch.tensor(rr, dtype=dtype, requires_grad=True)
    mt = None if m is None else torch.tensor(m, dtype=dtype)
    out = loss(c, r, mt)
    out.backward()
    return out.detach(), c.grad, r.grad


def assert_close(actual, expected, rtol, atol):
    for i, (a, e) in enumerate(zip(actual, expected)):
        if e is None:
            continue
        a, e = float(a), float(e)
        assert abs(a - e) <= atol + rtol * abs(e), f"index {i}: {a!r} vs {e!r}"


def rewards(deltas=DELTAS, offsets=OFFSETS):
    return [d / 2 + s for d, s in zip(deltas, offsets)], [-d / 2 + s for d, s in zip(deltas, offsets)]


# Hyperparameter settings per loss; focal_penalty with a wide bound so Δ = ±50 stays inside it.
CASES = [
    ("bt", {}),
    ("bt_temperature", {}),
    ("bt_temperature", {"temperature": 0.5}),
    ("focal", {}),
    ("focal", {"gamma": 0.5}),
    ("focal", {"gamma": 0.0}),
    ("focal_penalty", {"bound": 30.0}),
    ("focal_penalty", {"gamma": 1.0, "penalty_coefficient": 0.1, "bound": 40.0}),
    ("hinge", {}),
    ("hinge", {"target_margin": 0.0}),
    ("margin_mse", {}),
    ("margin_mse", {"target_margin": 2.5}),
    ("cross_entropy", {}),
    ("tempered_log", {}),
    ("tempered_log", {"t": 0.1}),
    ("tempered_log", {"t": 1.0 - 1e-4}),
    ("tempered_log", {"t": 1.0}),
    ("tempered_log", {"form": "bi_tempered"}),
    ("tempered_log", {"form": "bi_tempered", "t": 0.2}),
    ("tempered_log", {"form": "bi_tempered", "t": 1.0}),
]


# ---------------------------------------------------------------- values and gradients vs closed forms
@pytest.mark.parametrize("center", [0.0, 0.05])
@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("name,params", CASES)
def test_value_and_grad_match_closed_form(name, params, with_margin, center):
    p = {**params, "center_rewards_coefficient": center}
    loss = L.LOSSES[name](**p)
    rc, rr = rewards()
    m = list(MARGINS) if with_margin else None
    out, gc, gr = run(loss, rc, rr, m)
    value, ec, er = reference(name, p, rc, rr, m or [0.0] * len(rc))
    assert out.dtype == torch.float64
    assert_close([out], [value], rtol=1e-10, atol=1e-14)
    assert_close(gc, ec, rtol=1e-9, atol=1e-14)
    assert_close(gr, er, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name,params", CASES)
def test_float32_matches_closed_form(name, params):
    loss = L.LOSSES[name](**params)
    rc, rr = rewards()
    out, gc, gr = run(loss, rc, rr, list(MARGINS), dtype=torch.float32)
    value, ec, er = reference(name, params, rc, rr, list(MARGINS))
    assert out.dtype == torch.float32
    # Δ = ±50 is formed in float32, so allow a few ulps of 50 in the argument.
    assert_close([out], [value], rtol=1e-5, atol=1e-5)
    assert_close(gc, ec, rtol=1e-4, atol=1e-5)
    assert_close(gr, er, rtol=1e-4, atol=1e-5)


def test_pair_losses_shape_and_mean():
    rc, rr = rewards()
    c, r = torch.tensor(rc, dtype=torch.float64), torch.tensor(rr, dtype=torch.float64)
    for name, cls in L.LOSSES.items():
        per_pair = cls().pair_losses(c, r)
        assert per_pair.shape == (len(rc),), name
        torch.testing.assert_close(per_pair.mean(), cls()(c, r))
        expected = [ref_pair(name, {}, mp.mpf(a), mp.mpf(b), 0) for a, b in zip(rc, rr)]
        assert_close(per_pair, expected, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- limits
def _bt_grid():
    rc, rr = rewards()
    return tuple(torch.tensor(v, dtype=torch.float64) for v in (rc, rr, MARGINS))


def test_tempered_log_t1_is_bt_exactly():
    c, r, m = _bt_grid()
    bt = L.BradleyTerryLoss().pair_losses(c, r, m)
    assert torch.equal(L.TemperedLogLoss(t=1.0).pair_losses(c, r, m), bt)


def test_tempered_log_t_near_1_approaches_bt():
    c, r, m = _bt_grid()
    bt = L.BradleyTerryLoss().pair_losses(c, r, m)
    # ℓ_t − ℓ_BT ≈ −(1 − t)·(log σ)²/2, so the gap shrinks linearly in 1 − t.
    for eps in (1e-4, 1e-6):
        gap = (L.TemperedLogLoss(t=1.0 - eps).pair_losses(c, r, m) - bt).abs()
        assert torch.all(gap <= eps * bt.square() + 1e-12)


def test_bt_temperature_1_is_bt():
    c, r, m = _bt_grid()
    torch.testing.assert_close(L.BTTemperatureLoss(temperature=1.0)(c, r, m), L.BradleyTerryLoss()(c, r, m))


def test_focal_gamma0_is_bt():
    c, r, m = _bt_grid()
    torch.testing.assert_close(L.FocalLoss(gamma=0.0)(c, r, m), L.BradleyTerryLoss()(c, r, m))
    ranking_only = L.FocalPenaltyLoss(gamma=0.0, penalty_coefficient=0.0, bound=100.0)
    torch.testing.assert_close(ranking_only(c, r, m), L.BradleyTerryLoss()(c, r, m))


def test_focal_penalty_weight_is_one_for_wrong_order_pairs():
    """For Δ <= 0 the InternLM2 weight is 1, so without penalty the loss is BT there."""
    c = torch.tensor([-3.0, -0.5, 0.0], dtype=torch.float64)
    r = torch.zeros(3, dtype=torch.float64)
    loss = L.FocalPenaltyLoss(gamma=3.0, penalty_coefficient=0.0)
    torch.testing.assert_close(loss.pair_losses(c, r), L.BradleyTerryLoss().pair_losses(c, r))


# ---------------------------------------------------------------- margin and centering options
@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_margin_changes_loss_and_zero_margin_is_none(name):
    cls = L.LOSSES[name]
    c, r, m = _bt_grid()
    loss = cls()
    torch.testing.assert_close(loss(c, r, torch.zeros_like(c)), loss(c, r))
    assert not torch.allclose(loss.pair_losses(c, r, m), loss.pair_losses(c, r))
    if name != "margin_mse":  # one-sided losses: asking for a larger gap never lowers the loss
        assert torch.all(loss.pair_losses(c, r, m) >= loss.pair_losses(c, r) - 1e-15)
        assert loss(c, r, m) > loss(c, r)


@pytest.mark.parametrize("name", ["bt", "bt_temperature", "focal", "focal_penalty", "tempered_log"])
def test_bt_family_margin_shifts_delta(name):
    cls = L.LOSSES[name]
    c, r, m = _bt_grid()
    kw = {"bound": 100.0} if name == "focal_penalty" else {}
    if name == "focal_penalty":  # the barrier depends on r_c itself, so compare the ranking term only
        kw["penalty_coefficient"] = 0.0
    loss = cls(**kw)
    torch.testing.assert_close(loss.pair_losses(c, r, m), loss.pair_losses(c - m, r))


@pytest.mark.parametrize("name", ["hinge", "margin_mse"])
def test_data_margin_adds_to_target_margin(name):
    cls = L.LOSSES[name]
    c, r, m = _bt_grid()
    expected = cls(target_margin=0.0).pair_losses(c - 1.0 - m, r)
    torch.testing.assert_close(cls(target_margin=1.0).pair_losses(c, r, m), expected)


def test_cross_entropy_margin_splits_half_each_side():
    c, r, m = _bt_grid()
    loss = L.CrossEntropyLoss()
    torch.testing.assert_close(loss.pair_losses(c, r, m), loss.pair_losses(c - m / 2, r + m / 2))


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_centering_adds_mean_squared_sum(name):
    cls = L.LOSSES[name]
    c, r, m = _bt_grid()
    base, centered = cls()(c, r, m), cls(center_rewards_coefficient=0.3)(c, r, m)
    torch.testing.assert_close(centered - base, 0.3 * (c + r).square().mean())


# ---------------------------------------------------------------- extreme values
EXTREME_C = [1e4, -1e4, 1e4, -1e4, 0.0, 3.0, 1e4, -1e4]
EXTREME_R = [-1e4, 1e4, 1e4, -1e4, 1e4, -2.0, 0.0, 0.0]
EXTREME_M = [0.0, 5.0, 1.0, 0.5, 2.0, 1e4, 0.0, 3.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,params", CASES + [("focal_penalty", {}), ("focal_penalty", {"gamma": 0.5})])
def test_finite_for_extreme_rewards(name, params, dtype):
    for kw in (params, {**params, "center_rewards_coefficient": 0.1}):
        for margin in (None, EXTREME_M):
            out, gc, gr = run(L.LOSSES[name](**kw), EXTREME_C, EXTREME_R, margin, dtype=dtype)
            assert out.dtype == torch.float32
            assert torch.isfinite(out), (name, kw, margin)
            assert gc.dtype == dtype and gr.dtype == dtype
            assert torch.isfinite(gc).all() and torch.isfinite(gr).all(), (name, kw, margin, gc, gr)


# ---------------------------------------------------------------- focal_penalty beyond the bound
BEYOND = [-1e4, -7.0, -5.0, -4.9999, 4.996, 5.0, 6.0, 1e4]


def test_barrier_matches_documented_extension():
    loss = L.FocalPenaltyLoss()
    x = torch.tensor(BEYOND + [-4.0, 0.0, 2.5], dtype=torch.float64, requires_grad=True)
    b = loss.barrier(x)
    b.sum().backward()
    expected = [barrier(mp.mpf(v), 5.0) for v in x.tolist()]
    slopes = [mp.diff(lambda t: barrier(t, 5.0), mp.mpf(v)) for v in x.tolist()]
    assert_close(b.detach(), expected, rtol=1e-10, atol=1e-12)
    assert_close(x.grad, slopes, rtol=1e-9, atol=1e-12)


def test_barrier_is_c1_at_the_switch_point():
    loss = L.FocalPenaltyLoss(bound=2.0)
    a = (1 - loss.barrier_eps) * 2.0
    x = torch.tensor([a - 1e-9, a, a + 1e-9], dtype=torch.float64, requires_grad=True)
    v = loss.barrier(x)
    v.sum().backward()
    assert (v.max() - v.min()).item() < 1e-5
    assert (x.grad.max() - x.grad.min()).item() < 1e-3 * x.grad.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_barrier_gradient_points_inside(dtype):
    loss = L.FocalPenaltyLoss()
    x = torch.tensor(BEYOND, dtype=dtype, requires_grad=True)
    value = loss.barrier(x.float() if dtype == torch.bfloat16 else x)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(x.grad).all()
    # gradient descent moves x against the gradient, i.e. towards 0
    assert torch.equal(torch.sign(x.grad), torch.sign(x.detach()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_focal_penalty_full_gradient_points_inside_beyond_bound(dtype):
    loss = L.FocalPenaltyLoss()
    # Both rewards beyond the bound on the same side (Δ = 0), and pairs with one reward outside.
    rc = [1e4, -1e4, 6.0, -6.0, 5.0, -5.0, 1e4, 0.0]
    rr = [1e4, -1e4, 6.0, -6.0, 5.0, -5.0, 0.0, -1e4]
    out, gc, gr = run(loss, rc, rr, dtype=dtype)
    assert torch.isfinite(out) and torch.isfinite(gc).all() and torch.isfinite(gr).all()
    assert torch.all(gc[:6] * torch.tensor(rc[:6], dtype=dtype).sign() > 0)
    assert torch.all(gr[:6] * torch.tensor(rr[:6], dtype=dtype).sign() > 0)
    assert gc[6] > 0 and gr[7] < 0  # the far-out reward is pulled back
    # a reward outside the bound costs more than one just inside it
    inside = loss(torch.tensor([4.9]), torch.tensor([4.9]))
    assert loss(torch.tensor([6.0]), torch.tensor([6.0])) > inside


def test_focal_penalty_value_beyond_bound_matches_reference():
    p = {"gamma": 2.0, "penalty_coefficient": 0.02, "bound": 5.0}
    rc = [1e4, 6.0, -5.0, 4.0, 4.999]
    rr = [-1e4, 5.5, -6.0, 7.0, 0.0]
    out, gc, gr = run(L.FocalPenaltyLoss(**p), rc, rr, [0.0, 0.3, 1.0, 0.0, 0.5])
    value, ec, er = reference("focal_penalty", p, rc, rr, [0.0, 0.3, 1.0, 0.0, 0.5])
    assert_close([out], [value], rtol=1e-10, atol=1e-12)
    assert_close(gc, ec, rtol=1e-8, atol=1e-12)
    assert_close(gr, er, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "cls,kwargs,param",
    [
        (L.BTTemperatureLoss, {"temperature": 0.0}, "temperature"),
        (L.BTTemperatureLoss, {"temperature": -1.0}, "temperature"),
        (L.BTTemperatureLoss, {"temperature": float("inf")}, "temperature"),
        (L.FocalLoss, {"gamma": -0.1}, "gamma"),
        (L.FocalLoss, {"gamma": float("nan")}, "gamma"),
        (L.FocalPenaltyLoss, {"gamma": -1.0}, "gamma"),
        (L.FocalPenaltyLoss, {"penalty_coefficient": -0.01}, "penalty_coefficient"),
        (L.FocalPenaltyLoss, {"bound": 0.0}, "bound"),
        (L.FocalPenaltyLoss, {"bound": -5.0}, "bound"),
        (L.HingeLoss, {"target_margin": -1.0}, "target_margin"),
        (L.MarginMSELoss, {"target_margin": -0.5}, "target_margin"),
        (L.TemperedLogLoss, {"t": 0.0}, "t"),
        (L.TemperedLogLoss, {"t": -0.5}, "t"),
        (L.TemperedLogLoss, {"t": 1.5}, "t"),
        (L.FocalLoss, {"gamma": "2"}, "gamma"),
        (L.HingeLoss, {"target_margin": True}, "target_margin"),
    ]
    + [(c, {"center_rewards_coefficient": -0.1}, "center_rewards_coefficient") for c in L.LOSSES.values()],
)
def test_invalid_hyperparameters(cls, kwargs, param):
    with pytest.raises(ValueError, match=rf"loss\.{param}=.* is invalid: must be a finite number"):
        cls(**kwargs)


@pytest.mark.parametrize("cls", list(L.LOSSES.values()))
def test_constructor_is_keyword_only(cls):
    with pytest.raises(TypeError):
        cls(0.1)


@pytest.mark.parametrize(
    "chosen,rejected,margin",
    [
        (torch.zeros(3), torch.zeros(4), None),
        (torch.zeros(2, 3), torch.zeros(2, 3), None),
        (torch.tensor(1.0), torch.tensor(0.0), None),
        (torch.zeros(0), torch.zeros(0), None),
        (torch.zeros(3), torch.zeros(3), torch.zeros(4)),
        (torch.zeros(3), torch.zeros(3), torch.zeros(3, 1)),
    ],
)
@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_invalid_shapes(name, chosen, rejected, margin):
    loss = L.LOSSES[name]()
    with pytest.raises(ValueError):
        loss(chosen, rejected, margin)
    with pytest.raises(ValueError):
        loss.pair_losses(chosen, rejected, margin)


# ---------------------------------------------------------------- registry, docs and Hydra
def test_registry():
    assert set(L.LOSSES) == {
        "bt", "bt_temperature", "focal", "focal_penalty",
        "hinge", "margin_mse", "cross_entropy", "tempered_log",
    }
    for cls in L.LOSSES.values():
        assert issubclass(cls, L.PairwiseRewardLoss)
        assert "ℓ" in (cls.__doc__ or ""), cls  # formula documented in the class docstring


def test_constructor_signatures():
    expected = {
        "bt": {},
        "bt_temperature": {"temperature": 2.0},
        "focal": {"gamma": 2.0},
        "focal_penalty": {"gamma": 2.0, "penalty_coefficient": 0.02, "bound": 5.0},
        "hinge": {"target_margin": 1.0},
        "margin_mse": {"target_margin": 1.0},
        "cross_entropy": {},
        "tempered_log": {"t": 0.5, "form": "log_t"},
    }
    for name, cls in L.LOSSES.items():
        params = inspect.signature(cls).parameters
        defaults = {k: v.default for k, v in params.items()}
        assert defaults == {"center_rewards_coefficient": 0.0, **expected[name]}
        assert all(v.kind is inspect.Parameter.KEYWORD_ONLY for v in params.values())


def test_losses_module_does_not_import_hydra():
    source = Path(L.__file__).read_text()
    assert "import hydra" not in source and "from hydra" not in source


def test_hydra_instantiate_focal():
    loss = hydra.utils.instantiate({"_target_": "rmlab.losses.FocalLoss", "gamma": 1.0})
    assert isinstance(loss, L.FocalLoss) and loss.gamma == 1.0


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_hydra_instantiate_all_with_every_key(name):
    cls = L.LOSSES[name]
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    fields["center_rewards_coefficient"] = 0.01
    cfg = OmegaConf.create({"_target_": f"rmlab.losses.{cls.__name__}", **fields})
    loss = hydra.utils.instantiate(cfg)
    assert type(loss) is cls
    assert loss == cls(**fields)
    c, r = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.5])
    assert torch.isfinite(loss(c, r, torch.tensor([0.5, 0.0])))
