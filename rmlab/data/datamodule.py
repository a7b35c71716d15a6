"""TokenizedPairs → batches, and the LightningDataModule that owns the data's path.

A batch holds the chosen sequences then the rejected ones, ``input_ids[2B, L]``, so one forward
pass scores both. Batches are length-grouped (deterministic for a seed and epoch): pairs are
shuffled, cut into windows of ``50 × batch_size``, sorted by length inside a window and
batched, and the batch order is shuffled. Every batch keeps exactly ``batch_size`` pairs
(only the epoch's last may be smaller), so pairs per optimizer step are what the config says.
Under data parallelism each rank takes every ``world_size``-th batch, and the last
``len(batches) % world_size`` batches of an epoch are left out so all ranks step together.
Evaluation batches are cut longest-first into a count divisible by the world size; none is dropped.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable, Iterator, Optional, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from rmlab.data.formats import BadRow, DataError, PreferencePair, RowStats
from rmlab.data.tokenize import PairTokenizer, TokenizedPair

WINDOW_BATCHES = 50


def heldout_bucket(pair: PreferencePair) -> float:
    """A stable number in [0, 1) from the prompt turns: the split never depends on seed or row order."""
    key = "\x1f".join(turn["content"] for turn in pair.prompt).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def split_pairs(pairs: Sequence[PreferencePair], val_fraction: float) -> tuple[list, list]:
    """Deterministic train/held-out split by a hash of the prompt (pairs sharing a prompt stay together)."""
    train, heldout = [], []
    for pair in pairs:
        (heldout if heldout_bucket(pair) < val_fraction else train).append(pair)
    return train, heldout


def tokenize_pairs(pairs: Sequence[PreferencePair], pair_tokenizer: PairTokenizer, stats: RowStats,
                   on_bad_row: str = "skip") -> list[TokenizedPair]:
    tokenized = []
    for pair in pairs:
        try:
            tokenized.append(pair_tokenizer(pair))
        except BadRow as bad:
            if on_bad_row == "error":
                raise DataError(f"pair with prompt {pair.prompt[-1]['content'][:60]!r}: {bad}. Fix: raise "
                                "data.max_length, or set data.on_bad_row=skip to drop and count such pairs.") from bad
            stats.skip(bad.reason)
    return tokenized


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length, reshuffled each epoch from ``seed + epoch``; sharded by rank.

    ``epoch`` is read when iteration starts (e.g. ``lambda: trainer.current_epoch``), so a resumed
    run replays the interrupted epoch's order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, epoch: Callable[[], int] = lambda: 0) -> None:
        self.lengths, self.batch_size, self.seed, self.shuffle = list(lengths), batch_size, seed, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, epoch
        self.skip_next = 0  # batches of the next epoch already consumed before a resume

    def batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        if not self.shuffle:  # evaluation: longest first, a batch count divisible by the world size, none dropped
            order.sort(key=lambda i: -self.lengths[i])
            count = -(-len(order) // self.batch_size)
            count = min(len(order), -(-count // self.world_size) * self.world_size) if order else 0
            bounds = [len(order) * i // count for i in range(count + 1)] if count else [0]
            return [order[bounds[i]:bounds[i + 1]] for i in range(count)]
        rng = random.Random(self.seed + self.epoch())
        rng.shuffle(order)
        window = self.batch_size * WINDOW_BATCHES
        grouped = []
        for start in range(0, len(order), window):
            grouped += sorted(order[start:start + window], key=lambda i: -self.lengths[i])
        batches = [grouped[i:i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < self.batch_size else (batches, [])
        rng.shuffle(full)
        return full + last

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        usable = len(batches) - len(batches) % self.world_size
        skip, self.skip_next = self.skip_next, 0
        return iter(batches[self.rank:usable:self.world_size][skip:])

    def __len__(self) -> int:
        return len(self.batches()) // self.world_size


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning checkpoints and restored on resume.

    ``consumed()`` returns how many batches of the current epoch the training loop has taken.
    """

    def __init__(self, *args: Any, consumed: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumed = consumed

    def state_dict(self) -> dict[str, int]:
        return {"batches_consumed": self.consumed()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.skip_next = state["batches_consumed"]


class PairCollator:
    """Pads chosen-then-rejected sequences to the batch's longest (right padding)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
        sequences = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if any(p.margin is not None for p in pairs):
            batch["margin"] = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)
        return batch


class PreferenceDataModule(pl.LightningDataModule):
    """Reads, splits and tokenizes once; serves length-grouped train batches and the held-out pairs."""

    def __init__(self, pairs_loader: Callable[[], tuple[list[PreferencePair], RowStats]], pair_tokenizer: PairTokenizer, *, val_fraction: float, batch_size: int,
                 eval_batch_size: int, on_bad_row: str = "skip", num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.pairs_loader, self.pair_tokenizer = pairs_loader, pair_tokenizer
        self.val_fraction, self.batch_size, self.eval_batch_size = val_fraction, batch_size, eval_batch_size
        self.on_bad_row, self.num_workers, self.seed = on_bad_row, num_workers, seed
        self.stats = RowStats()
        self.train_pairs: list[TokenizedPair] = []
        self.heldout_pairs: list[TokenizedPair] = []
        self.collate = PairCollator(pair_tokenizer.tokenizer.pad_token_id)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_pairs:
            return
        pairs, self.stats = self.pairs_loader()
        train, heldout = split_pairs(pairs, self.val_fraction)
        self.train_pairs = tokenize_pairs(train, self.pair_tokenizer, self.stats, self.on_bad_row)
        self.heldout_pairs = tokenize_pairs(heldout, self.pair_tokenizer, self.stats, self.on_bad_row)
        if not self.train_pairs:
            raise DataError(f"no training pairs left after filtering ({self.stats.as_dict()}). Fix: check "
                            "data.source and data.layout, or raise data.max_length.")


    def optimizer_steps(self, world_size: int, accumulate: int, max_epochs: int, max_steps: int) -> int:
        """Optimizer steps of the whole fit, as Lightning will take them."""
        self.setup()
        batches = len(LengthGroupedBatchSampler([0] * len(self.train_pairs), self.batch_size, 0, True, 0, world_size))
        per_epoch = -(-batches // accumulate)
        return max_steps if max_steps > 0 else per_epoch * max_epochs

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = LengthGroupedBatchSampler(
            [p.num_tokens for p in self.train_pairs], self.batch_size, self.seed, True,
            trainer.global_rank if trainer else 0, trainer.world_size if trainer else 1,
            epoch=lambda: trainer.current_epoch if trainer else 0)
        return ResumableDataLoader(
            self.train_pairs, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers,
            consumed=lambda: trainer.fit_loop.epoch_loop.batch_progress.current.ready if trainer else 0)

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = LengthGroupedBatchSampler([p.num_tokens for p in self.heldout_pairs], self.eval_batch_size,
                                            self.seed, False, trainer.global_rank if trainer else 0,
                                            trainer.world_size if trainer else 1)
        return DataLoader(self.heldout_pairs, batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=self.num_workers)
