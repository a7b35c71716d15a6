"""Scoring without gradients: rewards for token sequences, in length-sorted batches, sharded over ranks."""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Optional, Sequence

import torch

from rmlab.data.tokenize import TokenizedPair
from rmlab.packing import PackingLayout, pack_batch, packed_rewards, packing_support

Step = Callable[[dict[str, Any], Optional[PackingLayout]], torch.Tensor]  # (batch, layout) -> rewards


def forward_rewards(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One scalar reward per row: the sequence-classification logit."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()


def batch_rewards(model: Any, batch: dict[str, Any], layout: Optional[PackingLayout]) -> torch.Tensor:
    """One reward per sequence of a padded batch (``input_ids``, ``attention_mask``) or of a packed one
    (:func:`rmlab.packing.pack_batch`, run with its ``layout``)."""
    if "reward_index" in batch:
        return packed_rewards(model, batch, layout)
    return forward_rewards(model, batch["input_ids"], batch["attention_mask"])


MAX_BATCH_TOKENS = 4096  # padded tokens per scoring batch: long sequences come in smaller batches


def length_sorted_batches(lengths: Sequence[int], batch_size: int, max_tokens: Optional[int] = MAX_BATCH_TOKENS
                          ) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most ``batch_size`` sequences and (but for a
    single sequence) ``max_tokens`` padded tokens; the activation memory of a batch stays bounded."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for index in order:
        if batches and len(batches[-1]) < batch_size and \
                (max_tokens is None or (len(batches[-1]) + 1) * lengths[index] <= max_tokens):
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def _shard_of_batches(batches: list[list[int]]) -> tuple[list[Optional[list[int]]], int, int]:
    """(this rank's batches, padded with None to an equal count on every rank; rank; world size)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    rank = torch.distributed.get_rank() if distributed else 0
    mine: list[Optional[list[int]]] = list(batches[rank::world])
    rounds = -(-len(batches) // world)
    return mine + [None] * (rounds - len(mine)), rank, world


@torch.no_grad()
def score_sequences(model: Any, sequences: Sequence[Sequence[int]], pad_token_id: int,
                    batch_size: int = 64, max_tokens: Optional[int] = MAX_BATCH_TOKENS,
                    device: Optional[torch.device] = None, step: Optional[Step] = None) -> list[float]:
    """Rewards in the input order; batches are cut from the sequences sorted by length (least padding),
    and packed into one padding-free row when the model supports it (:func:`rmlab.packing.packing_support`).

    Under ``torch.distributed`` every rank calls it with the same sequences and gets all the rewards: rank
    ``r`` scores batches ``r, r + W, ...`` and the results are summed across ranks. Every rank runs the same
    number of forward passes (a rank out of batches repeats its first one and discards it), since a ZeRO-3
    model gathers its parameters in every forward. ``step(batch, layout)`` runs one batch (default: the model's
    own forward, :func:`batch_rewards`); the final scoring passes Lightning's ``strategy.predict_step``."""
    device = device or next(model.parameters()).device
    step = step or functools.partial(batch_rewards, model)
    layout, _ = packing_support(model)
    was_training = model.training
    model.eval()
    batches = length_sorted_batches([len(s) for s in sequences], batch_size, max_tokens)
    mine, rank, world = _shard_of_batches(batches)
    rewards = torch.zeros(len(sequences), dtype=torch.float64)
    for chunk in mine:
        indices = chunk if chunk is not None else (batches[0] if batches else [])
        if not indices:
            continue
        width = max(len(sequences[i]) for i in indices)
        input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, index in enumerate(indices):
            ids = sequences[index]
            input_ids[row, :len(ids)] = torch.as_tensor(ids)
            attention_mask[row, :len(ids)] = 1
        # packed into one padding-free row, as in training (rmlab.packing), when the model can be
        batch = pack_batch(input_ids, attention_mask, layout) if layout is not None \
            else {"input_ids": input_ids, "attention_mask": attention_mask}
        scored = step({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, layout)
        if chunk is not None:
            rewards[torch.as_tensor(indices)] = scored.double().cpu()
    model.train(was_training)
    if world > 1:
        total = rewards.to(device)
        torch.distributed.all_reduce(total)  # each reward was written by exactly one rank
        rewards = total.cpu()
    return rewards.tolist()


def score_pairs(model: Any, pairs: Sequence[TokenizedPair], pad_token_id: int, batch_size: int = 64,
                device: Optional[torch.device] = None, step: Optional[Step] = None) -> tuple[list[float], list[float]]:
    """(chosen rewards, rejected rewards) for tokenized pairs (on every rank under torch.distributed)."""
    sequences = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    rewards = score_sequences(model, sequences, pad_token_id, batch_size, device=device, step=step)
    return rewards[:len(pairs)], rewards[len(pairs):]


def score_groups(model: Any, groups: Sequence[Any], pad_token_id: int, batch_size: int = 64,
                 device: Optional[torch.device] = None, step: Optional[Step] = None) -> list[list[float]]:
    """The rewards of every group's ``sequences`` (:class:`rmlab.data.groups.TokenizedGroup`: RewardBench 2's
    completions, each scored alone), group by group; all groups' sequences are batched together."""
    sequences = [ids for group in groups for ids in group.sequences]
    rewards = score_sequences(model, sequences, pad_token_id, batch_size, device=device, step=step)
    ends = list(itertools.accumulate(len(group.sequences) for group in groups))
    return [rewards[end - len(group.sequences):end] for group, end in zip(groups, ends)]
