"""RewardModule (rmlab/module.py): the optimizer's parameter groups."""

from __future__ import annotations

import functools

import torch

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
