"""RewardModule (rmlab/module.py): the optimizer's parameter groups, and clipping under mixed precision."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest

import torch

from conftest import fit_reward_module, write_topic_pairs
from rmlab.losses import BradleyTerryLoss
from rmlab.module import RewardModule


def groups_of(model: torch.nn.Module) -> list[set[str]]:
    module = RewardModule(model, BradleyTerryLoss(), functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-3))
    optimizer = module.configure_optimizers()
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in optimizer.param_groups]


def as_zero3_placeholders(model: torch.nn.Module) -> torch.nn.Module:
    """What ZeRO-3 leaves in a module after partitioning: every parameter a (0,) placeholder with ``ds_shape``."""
    for parameter in model.parameters():
        parameter.ds_shape = parameter.shape
        parameter.data = torch.empty(0)
    return model


def test_weight_decay_goes_to_the_same_parameters_under_zero3(tiny_llama_dir):
    from transformers import AutoModelForSequenceClassification

    plain = groups_of(AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir))
    zero3 = groups_of(as_zero3_placeholders(AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir)))
    assert zero3 == plain
    decayed, not_decayed = plain
    assert "score.weight" in decayed and "model.embed_tokens.weight" in decayed and len(decayed) == 16
    assert all("norm" in name for name in not_decayed) and len(not_decayed) == 5


def test_epoch_statistics_are_exact_over_all_pairs():
    """Sums over batches of different sizes give the epoch's statistics over its pairs (float64 by hand)."""
    from rmlab.module import EpochStatistics

    batches = [([1.0, 2.0, -1.0], [0.5, 2.5, -2.0], 0.7), ([3.0], [1.0], 0.2), ([0.0, 0.0], [0.0, 1.0], 1.1)]
    stats = EpochStatistics()
    for chosen, rejected, loss in batches:
        stats.update(*(torch.tensor(v, dtype=torch.float64) for v in (loss, chosen, rejected)))
    means = EpochStatistics.means(stats.sums)
    chosen = [c for b in batches for c in b[0]]
    rejected = [r for b in batches for r in b[1]]
    n = len(chosen)

    def std(values):
        mean = sum(values) / len(values)
        return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5

    assert means["loss"] == pytest.approx((0.7 * 3 + 0.2 * 1 + 1.1 * 2) / n, rel=1e-12)
    assert means["accuracy"] == pytest.approx(3 / 6) and means["margin"] == pytest.approx((sum(chosen) - sum(rejected)) / n)
    assert means["reward_chosen_std"] == pytest.approx(std(chosen), rel=1e-12)
    assert means["reward_rejected_mean"] == pytest.approx(sum(rejected) / n, rel=1e-12)
    assert means["reward_rejected_std"] == pytest.approx(std(rejected), rel=1e-12)


def test_progress_bar_counts_epochs_from_one_and_hides_the_logger_version():
    from types import SimpleNamespace

    from rmlab.console import ProgressBar

    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=2)
    assert bar._get_train_description(0).strip() == "Epoch 1/2"
    import lightning.pytorch as pl

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pl.callbacks.RichProgressBar, "get_metrics", lambda self, t, m: {"v_num": "x1", "loss": 0.5})
        assert bar.get_metrics(None, None) == {"loss": 0.5}


def test_bf16_mixed_clips_the_gradients_of_the_fused_optimizer(tiny_llama_dir, tmp_path, monkeypatch):
    """``trainer.precision=bf16-mixed`` (what ``trainer=gpu`` sets) with rmlab's fused AdamW and gradient clipping:
    Lightning's refusal to clip for a fused optimizer stopped the first step. bf16 scales nothing, so the
    gradients are clipped to the total norm asked for, every step."""
    import lightning.pytorch as pl

    from rmlab.model import build_reward_model

    norms = []  # (total norm before, after) of each clipping
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        before = clip(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in parameters if p.grad is not None]))
        norms.append((float(before), float(after)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    pl.seed_everything(0, verbose=False)
    bundle = build_reward_model(str(tiny_llama_dir))
    _, trainer = fit_reward_module(bundle, write_topic_pairs(tmp_path / "pairs.jsonl", 12), precision="bf16-mixed",
                                   gradient_clip_val=0.05)
    assert trainer.optimizers[0].defaults.get("fused") is True
    assert trainer.global_step == len(norms) == 3
    for before, after in norms:
        assert before > 0.05 and after == pytest.approx(0.05, rel=1e-4)


@pytest.mark.parametrize("scaler,fused", [(None, True), (object(), None)])
def test_no_fused_optimizer_when_fp16_scales_the_loss(tiny_llama_dir, scaler, fused):
    """Under fp16 a fused optimizer would unscale its gradients only inside its step, after clipping saw them
    scaled: rmlab then leaves torch's default (Lightning unscales first)."""
    import lightning.pytorch as pl
    from transformers import AutoModelForSequenceClassification

    module = RewardModule(AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir), BradleyTerryLoss(),
                          functools.partial(torch.optim.AdamW, lr=1e-3))
    module._trainer = SimpleNamespace(strategy=pl.strategies.SingleDeviceStrategy("cpu"), is_global_zero=True,
                                      precision_plugin=SimpleNamespace(scaler=scaler))
    assert module.configure_optimizers().defaults.get("fused") is fused


def test_fsdp_clips_by_norm_through_its_root_module(tiny_llama_dir):
    """Lightning's FSDP plugin refuses to clip by norm (it cannot reach the root FSDP module): the default
    ``trainer.gradient_clip_val=1.0`` stopped every ``strategy=fsdp`` run at its first step. Here the root module
    only records the call; tests/test_fsdp.py clips for real (2 CPU processes, equal to DDP's clipped run)."""
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy

    calls = []
    strategy = FSDPStrategy()
    strategy.model = SimpleNamespace(clip_grad_norm_=calls.append)
    module = RewardModule(torch.nn.Linear(2, 1), BradleyTerryLoss(), functools.partial(torch.optim.AdamW, lr=1e-3))
    module._trainer = SimpleNamespace(strategy=strategy, precision_plugin=FSDPPrecision("bf16-mixed"))
    optimizer = torch.optim.AdamW(module.model.parameters())
    module.configure_gradient_clipping(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    assert calls == [0.5]
