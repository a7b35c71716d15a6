"""Scoring without gradients: rewards for token sequences, in length-sorted batches under inference_mode."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rmlab.data.tokenize import TokenizedPair


def forward_rewards(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One scalar reward per row: the sequence-classification logit."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()


@torch.inference_mode()
def score_sequences(model: Any, sequences: Sequence[Sequence[int]], pad_token_id: int,
                    batch_size: int = 64) -> list[float]:
    """Rewards in the input order; batches are cut from the sequences sorted by length (least padding)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    rewards = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            ids = sequences[index]
            input_ids[row, :len(ids)] = torch.as_tensor(ids)
            attention_mask[row, :len(ids)] = 1
        batch_rewards = forward_rewards(model, input_ids.to(device), attention_mask.to(device)).tolist()
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
