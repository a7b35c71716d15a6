"""Scoring without gradients: rewards for token sequences, in length-sorted batches under inference_mode."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from rmlab.data.tokenize import TokenizedPair
from rmlab.packing import pack_batch, packed_rewards, packing_support


def forward_rewards(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One scalar reward per row: the sequence-classification logit."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()


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


@torch.inference_mode()
def score_sequences(model: Any, sequences: Sequence[Sequence[int]], pad_token_id: int,
                    batch_size: int = 64, max_tokens: Optional[int] = MAX_BATCH_TOKENS) -> list[float]:
    """Rewards in the input order; batches are cut from the sequences sorted by length (least padding),
    and packed into one padding-free row when the model supports it (:func:`rmlab.packing.packing_support`)."""
    device = next(model.parameters()).device
    layout, _ = packing_support(model)
    was_training = model.training
    model.eval()
    rewards = [0.0] * len(sequences)
    for chunk in length_sorted_batches([len(s) for s in sequences], batch_size, max_tokens):
        width = max(len(sequences[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            ids = sequences[index]
            input_ids[row, :len(ids)] = torch.as_tensor(ids)
            attention_mask[row, :len(ids)] = 1
        if layout is None:
            batch_rewards = forward_rewards(model, input_ids.to(device), attention_mask.to(device)).tolist()
        else:  # one padding-free row, as in training (rmlab.packing)
            packed = {k: v.to(device) for k, v in pack_batch(input_ids, attention_mask, layout).items()}
            batch_rewards = packed_rewards(model, packed, layout).tolist()
        for index, reward in zip(chunk, batch_rewards):
            rewards[index] = reward
    model.train(was_training)
    return rewards


def score_pairs(model: Any, pairs: Sequence[TokenizedPair], pad_token_id: int,
                batch_size: int = 64) -> tuple[list[float], list[float]]:
    """(chosen rewards, rejected rewards) for tokenized pairs."""
    sequences = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    rewards = score_sequences(model, sequences, pad_token_id, batch_size)
    return rewards[:len(pairs)], rewards[len(pairs):]
