"""TokenizedPairs → batches, and the LightningDataModule that owns the data's path.

A batch holds the chosen sequences then the rejected ones, ``input_ids[2B, L]``, so one forward
pass scores both. Batches are length-grouped (deterministic for a seed and epoch): pairs are
shuffled, cut into windows of ``50 × batch_size``, sorted by length inside a window and
batched, and the batch order is shuffled, with the longest batch moved first. Every batch keeps exactly ``batch_size`` pairs
(only the epoch's last may be smaller), so pairs per optimizer step are what the config says.
Under data parallelism each rank takes every ``world_size``-th batch, and the last
``len(batches) % world_size`` batches of an epoch are left out so all ranks step together.
Evaluation batches are cut longest-first into a count divisible by the world size; none is dropped.
Pairs are grouped by their longer side (``max(len(chosen), len(rejected))``), the width a batch is
padded to.

Tokenization is cached (:func:`tokenize_all`): the token ids of all pairs are stored under
``$RMLAB_TOKENIZED_CACHE`` (default ``~/.cache/rmlab/tokenized``; ``0``/``off`` disables it) in a file
named by a hash of the pairs' messages, the tokenizer (its full serialization, or its vocabulary),
the chat template, ``max_length``, the transformers/tokenizers versions and rmlab's tokenization
code, so the next job of a sweep over the same data reads the ids instead of re-tokenizing. Files
are written to a temporary name and renamed, so concurrent jobs never read a partial file; an
unreadable file is a miss and is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from rmlab.data.formats import BadRow, DataError, PreferencePair, RowStats
from rmlab.data.tokenize import PairTokenizer, TokenizedPair

log = logging.getLogger(__name__)
WINDOW_BATCHES = 50


def heldout_bucket(pair: PreferencePair) -> float:
    """A stable number in [0, 1) from the prompt turns: the split never depends on seed or row order."""
    key = "\x1f".join(turn["content"] for turn in pair.prompt).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def split_indices(pairs: Sequence[PreferencePair], val_fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic train/held-out split by a hash of the prompt (pairs sharing a prompt stay together)."""
    train, heldout = [], []
    for index, pair in enumerate(pairs):
        (heldout if heldout_bucket(pair) < val_fraction else train).append(index)
    return train, heldout


def tokenize_pairs(pairs: Sequence[PreferencePair], pair_tokenizer: PairTokenizer, stats: RowStats,
                   on_bad_row: str = "skip", results: Optional[Sequence[TokenizedPair | BadRow]] = None,
                   truncate_responses: bool = False) -> list[TokenizedPair]:
    """Tokenized pairs, bad ones counted in ``stats`` (or raised); ``results`` are precomputed ones (training
    mode). ``truncate_responses`` (evaluation): a response too long for ``max_length`` is truncated, not dropped."""
    tokenized = []
    for index, pair in enumerate(pairs):
        try:
            result = tokenize_one(pair_tokenizer, pair) if results is None else results[index]
            if isinstance(result, BadRow) and result.reason == "response_too_long" and truncate_responses:
                result = pair_tokenizer(pair, truncate_responses=True)
            if isinstance(result, BadRow):
                raise result
            tokenized.append(result)
        except BadRow as bad:
            if on_bad_row == "error":
                raise DataError(f"pair with prompt {pair.prompt[-1]['content'][:60]!r}: {bad}. Fix: raise "
                                "data.max_length, or set data.on_bad_row=skip to drop and count such pairs.") from bad
            stats.skip(bad.reason)
    return tokenized


def tokenize_one(pair_tokenizer: PairTokenizer, pair: PreferencePair) -> TokenizedPair | BadRow:
    try:
        return pair_tokenizer(pair)
    except BadRow as bad:
        return bad


# --------------------------------------------------------------------------- tokenization cache
TOKENIZATION_VERSION = 2  # bump when PairTokenizer's output for the same inputs changes (its source is hashed too)
CACHE_ENV = "RMLAB_TOKENIZED_CACHE"


def tokenized_cache_dir(setting: Any = None) -> Optional[Path]:
    """The cache directory: ``setting`` (a path; False/"off" disables), else ``$RMLAB_TOKENIZED_CACHE``,
    else ``$XDG_CACHE_HOME/rmlab/tokenized`` (``~/.cache/rmlab/tokenized``)."""
    value = os.environ.get(CACHE_ENV, "") if setting is None else setting
    if value is False or str(value).strip().lower() in ("0", "off", "false", "no", "none"):
        return None
    if value not in ("", True):
        return Path(str(value)).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rmlab" / "tokenized"


def tokenizer_fingerprint(pair_tokenizer: PairTokenizer) -> str:
    """Everything the ids depend on besides the rows: the tokenizer, template, max_length, code and versions."""
    import tokenizers
    import transformers

    import rmlab.data.tokenize as tokenize_module

    tokenizer = pair_tokenizer.tokenizer
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the full definition: normalizer, pre-tokenizer, model (vocab + merges), added tokens
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode("utf-8"))
    parts = [TOKENIZATION_VERSION, type(tokenizer).__name__, str(tokenizer.special_tokens_map),
             pair_tokenizer.chat_template, pair_tokenizer.max_length, pair_tokenizer.start_token_id,
             pair_tokenizer.end_token_id, transformers.__version__, tokenizers.__version__,
             hashlib.sha256(Path(tokenize_module.__file__).read_bytes()).hexdigest()]
    digest.update(json.dumps(parts, default=str).encode("utf-8"))
    return digest.hexdigest()


def tokenization_key(pairs: Sequence[PreferencePair], pair_tokenizer: PairTokenizer) -> str:
    digest = hashlib.sha256(tokenizer_fingerprint(pair_tokenizer).encode())
    for pair in pairs:
        digest.update(json.dumps([pair.chosen, pair.rejected], ensure_ascii=False, sort_keys=True).encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()[:40]


def _write_tokenized(path: Path, results: Sequence[TokenizedPair | BadRow]) -> None:
    """An ``.npz`` of plain arrays (no pickle): token ids, lengths, and each bad row's index, reason and detail."""
    import numpy as np

    lengths = np.full((len(results), 2), -1, dtype=np.int64)
    bad_index, bad_reason, bad_detail, flat = [], [], [], []
    for index, result in enumerate(results):
        if isinstance(result, BadRow):
            bad_index.append(index)
            bad_reason.append(result.reason)
            bad_detail.append(str(result).split(": ", 1)[-1])
        else:
            lengths[index] = (len(result.chosen_ids), len(result.rejected_ids))
            flat += result.chosen_ids
            flat += result.rejected_ids
    arrays = {"version": np.int64(TOKENIZATION_VERSION), "lengths": lengths, "tokens": np.asarray(flat, dtype=np.int64),
              "bad_index": np.asarray(bad_index, dtype=np.int64), "bad_reason": np.asarray(bad_reason, dtype=str),
              "bad_detail": np.asarray(bad_detail, dtype=str)}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, path)  # atomic: a concurrent job sees the old file, the new one, or none
    finally:
        temporary.unlink(missing_ok=True)


def _read_tokenized(path: Path, pairs: Sequence[PreferencePair]) -> Optional[list[TokenizedPair | BadRow]]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as arrays:
            if int(arrays["version"]) != TOKENIZATION_VERSION or len(arrays["lengths"]) != len(pairs):
                return None
            flat, lengths = arrays["tokens"].tolist(), arrays["lengths"].tolist()
            bad = {int(i): (str(reason), str(detail)) for i, reason, detail in
                   zip(arrays["bad_index"], arrays["bad_reason"], arrays["bad_detail"])}
    except FileNotFoundError:
        return None
    except Exception:  # a damaged or foreign file: a miss, rewritten below
        return None
    results: list[TokenizedPair | BadRow] = []
    offset = 0
    for index, (pair, (chosen, rejected)) in enumerate(zip(pairs, lengths)):
        if index in bad:
            results.append(BadRow(*bad[index]))
            continue
        middle = offset + chosen
        results.append(TokenizedPair(flat[offset:middle], flat[middle:middle + rejected], pair.subset, pair.margin))
        offset = middle + rejected
    return results if offset == len(flat) else None


def tokenize_all(pairs: Sequence[PreferencePair], pair_tokenizer: PairTokenizer,
                 cache_dir: Optional[Path]) -> tuple[list[TokenizedPair | BadRow], Optional[bool]]:
    """Each pair's TokenizedPair or BadRow, and whether they came from the cache (None: no cache)."""
    path = cache_dir / f"{tokenization_key(pairs, pair_tokenizer)}.npz" if cache_dir is not None else None
    if path is not None:
        cached = _read_tokenized(path, pairs)
        if cached is not None:
            return cached, True
    results = [tokenize_one(pair_tokenizer, pair) for pair in pairs]
    if path is not None:
        try:
            _write_tokenized(path, results)
        except OSError as err:
            log.warning(f"could not write the tokenization cache ({err}); set {CACHE_ENV}=off or to a writable "
                        "directory")
    return results, False if path is not None else None


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length, reshuffled each epoch from ``seed + epoch``; sharded by rank.

    ``epoch`` is read when iteration starts (e.g. ``lambda: trainer.current_epoch``), so a resumed
    run replays the interrupted epoch's order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, epoch: Callable[[], int] = lambda: 0) -> None:
        self.lengths, self.batch_size, self.seed, self.shuffle = list(lengths), batch_size, seed, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, epoch
        self.resume_from: Optional[tuple[int, int]] = None  # (epoch, batches consumed) from a checkpoint

    def batches(self, epoch: Optional[int] = None) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        if not self.shuffle:  # evaluation: longest first, a batch count divisible by the world size, none dropped
            order.sort(key=lambda i: -self.lengths[i])
            count = -(-len(order) // self.batch_size)
            count = min(len(order), -(-count // self.world_size) * self.world_size) if order else 0
            bounds = [len(order) * i // count for i in range(count + 1)] if count else [0]
            return [order[bounds[i]:bounds[i + 1]] for i in range(count)]
        rng = random.Random(self.seed + (self.epoch() if epoch is None else epoch))
        rng.shuffle(order)
        window = self.batch_size * WINDOW_BATCHES
        grouped = []
        for start in range(0, len(order), window):
            grouped += sorted(order[start:start + window], key=lambda i: -self.lengths[i])
        batches = [grouped[i:i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < self.batch_size else (batches, [])
        rng.shuffle(full)
        if full:  # the longest batch first: an out-of-memory shows at once, and the allocator's blocks fit the rest
            longest = max(range(len(full)), key=lambda b: max(self.lengths[i] for i in full[b]))
            full[0], full[longest] = full[longest], full[0]
        return full + last

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self.epoch(), 0
        if self.resume_from is not None:  # the first epoch after a resume
            epoch, skip = self.resume_from
            self.resume_from = None
            if skip >= len(self):  # the checkpoint closed its epoch: serve the next epoch whole
                epoch, skip = epoch + 1, 0
        batches = self.batches(epoch)
        usable = len(batches) - len(batches) % self.world_size
        return iter(batches[self.rank:usable:self.world_size][skip:])

    def __len__(self) -> int:
        return len(self.batches()) // self.world_size


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning checkpoints and restored on resume.

    ``progress()`` returns (epoch, batches of it the training loop has taken).
    """

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, consumed = self.progress()
        return {"epoch": epoch, "batches_consumed": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume_from = (state["epoch"], state["batches_consumed"])


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
                 eval_batch_size: int, on_bad_row: str = "skip", num_workers: int = 0, seed: int = 0,
                 tokenized_cache: Any = None) -> None:
        super().__init__()
        self.pairs_loader, self.pair_tokenizer = pairs_loader, pair_tokenizer
        self.val_fraction, self.batch_size, self.eval_batch_size = val_fraction, batch_size, eval_batch_size
        self.on_bad_row, self.num_workers, self.seed = on_bad_row, num_workers, seed
        self.cache_dir = tokenized_cache_dir(tokenized_cache)  # None: the env var or ~/.cache; False: no cache
        self.tokenized_cache_hit: Optional[bool] = None
        self.stats = RowStats()
        self.train_pairs: list[TokenizedPair] = []
        self.heldout_pairs: list[TokenizedPair] = []
        self.collate = PairCollator(pair_tokenizer.tokenizer.pad_token_id)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_pairs:
            return
        pairs, self.stats = self.pairs_loader()
        results, self.tokenized_cache_hit = tokenize_all(pairs, self.pair_tokenizer, self.cache_dir)
        if self.tokenized_cache_hit and (self.trainer is None or self.trainer.is_global_zero):
            log.info(f"{len(pairs)} pairs tokenized earlier, read from the cache in {self.cache_dir}")
        train, heldout = split_indices(pairs, self.val_fraction)
        self.train_pairs = tokenize_pairs([pairs[i] for i in train], self.pair_tokenizer, self.stats,
                                          self.on_bad_row, [results[i] for i in train])
        self.heldout_pairs = tokenize_pairs([pairs[i] for i in heldout], self.pair_tokenizer, self.stats,
                                            self.on_bad_row, [results[i] for i in heldout], truncate_responses=True)
        if not self.train_pairs:
            raise DataError(f"no training pairs left after filtering ({self.stats.as_dict()}). Fix: check "
                            "data.source and data.layout, or raise data.max_length.")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Still on the host: the LightningModule may repack the batch (``RewardModule.prepare_batch``)."""
        prepare = getattr(self.trainer.lightning_module, "prepare_batch", None) if self.trainer else None
        return prepare(batch) if callable(prepare) else batch

    def optimizer_steps(self, world_size: int, accumulate: int, max_epochs: int, max_steps: int) -> int:
        """Optimizer steps of the whole fit, as Lightning will take them."""
        self.setup()
        batches = len(LengthGroupedBatchSampler([0] * len(self.train_pairs), self.batch_size, 0, True, 0, world_size))
        per_epoch = -(-batches // accumulate)
        return max_steps if max_steps > 0 else per_epoch * max_epochs

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = LengthGroupedBatchSampler(
            [max(len(p.chosen_ids), len(p.rejected_ids)) for p in self.train_pairs], self.batch_size, self.seed, True,
            trainer.global_rank if trainer else 0, trainer.world_size if trainer else 1,
            epoch=lambda: trainer.current_epoch if trainer else 0)
        return ResumableDataLoader(
            self.train_pairs, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers,
            progress=lambda: (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready))

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = LengthGroupedBatchSampler([max(len(p.chosen_ids), len(p.rejected_ids)) for p in self.heldout_pairs],
                                            self.eval_batch_size,
                                            self.seed, False, trainer.global_rank if trainer else 0,
                                            trainer.world_size if trainer else 1)
        return DataLoader(self.heldout_pairs, batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=self.num_workers)
