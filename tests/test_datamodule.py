"""rmlab.data.datamodule: deterministic split, length-grouped batching, collation, the DataModule."""

from __future__ import annotations

import functools
import types
import random
from collections import Counter

import pytest
import torch

from rmlab.data.datamodule import (
    WINDOW_BATCHES,
    LengthGroupedBatchSampler,
    PairCollator,
    PreferenceDataModule,
    tokenize_pairs,
)
from conftest import split_pairs
from rmlab.data.formats import DataError, PreferencePair, RowStats, load_pairs
from rmlab.data.tokenize import PairTokenizer, TokenizedPair, reward_chat_template


def make_pair(prompt: str, chosen: str = "yes", rejected: str = "no", subset: str = "default", margin=None):
    turns = [{"role": "user", "content": prompt}]
    return PreferencePair(turns + [{"role": "assistant", "content": chosen}],
                          turns + [{"role": "assistant", "content": rejected}], subset, margin)


def key(pair: PreferencePair):
    return (pair.chosen[0]["content"], pair.chosen[-1]["content"], pair.rejected[-1]["content"])


def skewed_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.lognormvariate(3.5, 0.9)) + 2 for _ in range(n)]


def padding_fraction(batches, lengths) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


# --------------------------------------------------------------------------- split
def test_split_is_deterministic_and_order_independent():
    pairs = [make_pair(f"question number {i}", f"good {i}", f"bad {i}") for i in range(400)]
    train, heldout = split_pairs(pairs, 0.1)
    assert len(train) + len(heldout) == 400
    assert 20 <= len(heldout) <= 60  # ~10 %
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    train2, heldout2 = split_pairs(shuffled, 0.1)
    assert {key(p) for p in heldout2} == {key(p) for p in heldout}
    assert {key(p) for p in train2} == {key(p) for p in train}
    # the input order is kept inside each side
    assert [key(p) for p in train2] == [key(p) for p in shuffled if key(p) in {key(q) for q in train}]


def test_split_extremes_and_monotonic():
    pairs = [make_pair(f"prompt {i}") for i in range(200)]
    assert split_pairs(pairs, 0.0) == (pairs, [])
    assert split_pairs(pairs, 1.0) == ([], pairs)
    small = {key(p) for p in split_pairs(pairs, 0.1)[1]}
    large = {key(p) for p in split_pairs(pairs, 0.3)[1]}
    assert small < large  # held-out at 10 % is a strict subset of held-out at 30 %
    assert 30 <= len(large) <= 90


def test_split_keeps_pairs_of_one_prompt_together():
    pairs = [make_pair(f"shared prompt {i // 4}", f"good {i}", f"bad {i}") for i in range(400)]
    train, heldout = split_pairs(pairs, 0.2)
    train_prompts = {p.chosen[0]["content"] for p in train}
    heldout_prompts = {p.chosen[0]["content"] for p in heldout}
    assert heldout and train and not train_prompts & heldout_prompts


# --------------------------------------------------------------------------- sampler
def all_batches(sampler):
    return [list(batch) for batch in sampler]


@pytest.mark.parametrize("n, batch_size", [(203, 8), (200, 8), (1000, 4), (5, 8)])
def test_sampler_every_index_once_and_full_batches(n, batch_size):
    lengths = skewed_lengths(n)
    sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=3)
    batches = all_batches(sampler)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(len(b) == batch_size for b in batches[:-1])
    assert 1 <= len(batches[-1]) <= batch_size
    assert len(batches) == len(sampler) == -(-n // batch_size)


@pytest.mark.parametrize("n, batch_size", [(203, 8), (200, 8), (5, 8), (17, 4)])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_sampler_longest_first_none_dropped(n, batch_size, world_size):
    lengths = skewed_lengths(n)
    per_rank = [all_batches(LengthGroupedBatchSampler(lengths, batch_size, seed=3, shuffle=False, rank=r,
                                                      world_size=world_size)) for r in range(world_size)]
    flat = [i for batches in per_rank for b in batches for i in b]
    assert sorted(flat) == list(range(n))  # every held-out pair scored exactly once, on some rank
    if n >= world_size:
        assert len({len(b) for b in per_rank}) == 1  # ranks step together
    for rank, batches in enumerate(per_rank):
        assert len(batches) == len(LengthGroupedBatchSampler(lengths, batch_size, 3, False, rank, world_size))
        assert all(1 <= len(b) <= batch_size for b in batches)
    single = all_batches(LengthGroupedBatchSampler(lengths, batch_size, seed=3, shuffle=False))
    order = [i for b in single for i in b]
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    assert all(1 <= len(b) <= batch_size for b in single)
    assert len(single) >= -(-n // batch_size)
    # the seed does not matter without shuffling
    assert all_batches(LengthGroupedBatchSampler(lengths, batch_size, seed=99, shuffle=False)) == single


def test_sampler_deterministic_for_seed_and_epoch():
    lengths = skewed_lengths(300)
    first = all_batches(LengthGroupedBatchSampler(lengths, 8, seed=7))
    assert all_batches(LengthGroupedBatchSampler(lengths, 8, seed=7)) == first
    again = LengthGroupedBatchSampler(lengths, 8, seed=7)
    assert all_batches(again) == all_batches(again)  # iterating twice gives the same epoch
    assert all_batches(LengthGroupedBatchSampler(lengths, 8, seed=8)) != first
    epoch = [1]
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=7, epoch=lambda: epoch[0])
    epoch1 = all_batches(sampler)
    assert epoch1 != first
    epoch[0] = 0
    assert all_batches(sampler) == first
    other = LengthGroupedBatchSampler(lengths, 8, seed=7, epoch=lambda: 1)
    assert all_batches(other) == epoch1


def test_sampler_groups_similar_lengths_within_a_window():
    # One window (n < 50 * batch_size): batches are consecutive runs of the length-sorted order,
    # so the length ranges of two batches never interleave.
    lengths = skewed_lengths(200)
    assert 200 <= 8 * WINDOW_BATCHES
    batches = all_batches(LengthGroupedBatchSampler(lengths, 8, seed=0))
    ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    for (lo1, hi1), (lo2, hi2) in zip(ranges, ranges[1:]):
        assert hi1 <= lo2
    # the batch order itself is shuffled (not sorted by length)
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_sampler_reduces_padding_vs_random_batching():
    lengths = skewed_lengths(2000, seed=5)
    batch_size = 8
    grouped = all_batches(LengthGroupedBatchSampler(lengths, batch_size, seed=0))
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    naive = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    grouped_pad, naive_pad = padding_fraction(grouped, lengths), padding_fraction(naive, lengths)
    assert naive_pad > 0.3
    assert grouped_pad < 0.25 * naive_pad


def test_sampler_without_shuffle_sorts_by_length_descending():
    lengths = [5, 30, 10, 20, 1]
    batches = all_batches(LengthGroupedBatchSampler(lengths, 2, seed=0, shuffle=False))
    assert [i for b in batches for i in b] == [1, 3, 2, 0, 4]
    assert len(batches) == 3 and all(1 <= len(b) <= 2 for b in batches)


@pytest.mark.parametrize("n, world_size", [(203, 2), (200, 2), (203, 3), (16, 2)])
def test_sampler_rank_sharding_disjoint_equal_counts(n, world_size):
    lengths = skewed_lengths(n)
    full = all_batches(LengthGroupedBatchSampler(lengths, 8, seed=11))
    per_rank = [all_batches(LengthGroupedBatchSampler(lengths, 8, seed=11, rank=r, world_size=world_size))
                for r in range(world_size)]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1
    count = counts.pop()
    assert count == len(full) // world_size
    assert count == len(LengthGroupedBatchSampler(lengths, 8, seed=11, rank=0, world_size=world_size))
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen))  # disjoint across ranks
    assert set(seen) <= set(range(n))
    assert len(seen) >= n - (world_size - 1) * 8 - 8  # at most world_size - 1 batches left out
    # each rank's batches are batches of the single-process epoch
    full_set = {tuple(b) for b in full}
    assert all(tuple(b) in full_set for batches in per_rank for b in batches)


# --------------------------------------------------------------------------- collator
def test_collator_layout_padding_and_mask():
    pairs = [TokenizedPair([5, 6, 7], [5, 8], "a"), TokenizedPair([9], [9, 10, 11, 12], "b")]
    batch = PairCollator(pad_token_id=0)(pairs)
    assert set(batch) == {"input_ids", "attention_mask"}  # no margins → no margin tensor
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [9, 0, 0, 0], [5, 8, 0, 0], [9, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_collator_pad_id_is_used_and_margin_tensor():
    pairs = [TokenizedPair([5, 6], [5], "a", 1.5), TokenizedPair([9], [9, 3], "b", None),
             TokenizedPair([4], [4], "c", -2.0)]
    batch = PairCollator(pad_token_id=99)(pairs)
    assert batch["input_ids"].tolist() == [[5, 6], [9, 99], [4, 99], [5, 99], [9, 3], [4, 99]]
    assert batch["margin"].dtype == torch.float32
    assert batch["margin"].tolist() == [1.5, 0.0, -2.0]


# --------------------------------------------------------------------------- the DataModule
def rows_for_datamodule(n: int = 120):
    rows = []
    for i in range(n):
        long = i % 10 == 0  # every 10th pair has a response far over max_length
        chosen = ("The quick brown fox jumps over the lazy dog. " * 6 if long else f"Paris {i}.")
        rows.append({"prompt": f"Question {i}: what is the capital of France?", "chosen": chosen,
                     "rejected": f"Sorry {i}.", "subset": "s" + str(i % 3)})
    rows.append({"prompt": "q", "chosen": "same", "rejected": "same"})  # a format-level bad row
    rows.append({"prompt": "q"})
    return rows


@pytest.fixture
def pair_tokenizer(tiny_tokenizer):
    return PairTokenizer(tiny_tokenizer, reward_chat_template(tiny_tokenizer), max_length=48)


def test_tokenize_pairs_drops_and_counts(pair_tokenizer):
    pairs, stats = load_pairs(rows_for_datamodule(30))
    tokenized = tokenize_pairs(pairs, pair_tokenizer, stats)
    d = stats.as_dict()
    assert d["rows_read"] == 32 == d["rows_used"] + d["rows_skipped"]
    assert d["skipped_by_reason"] == {"identical_responses": 1, "missing_key": 1, "response_too_long": 3}
    assert d["rows_used"] == len(tokenized) == 27
    assert all(len(p.chosen_ids) <= 48 and len(p.rejected_ids) <= 48 for p in tokenized)
    with pytest.raises(DataError, match="response_too_long"):
        tokenize_pairs(pairs, pair_tokenizer, RowStats(), on_bad_row="error")


def test_datamodule_setup_and_loaders(pair_tokenizer, tiny_tokenizer):
    rows = rows_for_datamodule(120)
    loader = functools.partial(load_pairs, rows, stats=RowStats())
    dm = PreferenceDataModule(loader, pair_tokenizer, val_fraction=0.2, batch_size=4, eval_batch_size=8, seed=3)
    dm.setup("fit")
    d = dm.stats.as_dict()
    assert d["rows_read"] == 122
    assert d["rows_read"] == d["rows_used"] + d["rows_skipped"]
    assert d["rows_used"] == len(dm.train_pairs) + len(dm.heldout_pairs)
    # 12 pairs have a response too long: dropped from training, truncated (never dropped) when held out
    truncated = sum(p.truncated for p in dm.heldout_pairs)
    assert truncated >= 1 and d["skipped_by_reason"] == {"identical_responses": 1, "missing_key": 1,
                                                         "response_too_long": 12 - truncated}
    assert 0.08 < len(dm.heldout_pairs) / d["rows_used"] < 0.35

    # the held-out set is the hash split of the loaded pairs, tokenized, long responses truncated
    pairs, _ = load_pairs(rows)
    _, heldout = split_pairs(pairs, 0.2)
    expected = [pair_tokenizer(p, truncate_responses=True) for p in heldout]
    assert dm.heldout_pairs == expected
    long_ones = [p for p in dm.heldout_pairs if p.truncated]
    assert len(long_ones) == truncated and all(max(len(p.chosen_ids), len(p.rejected_ids)) == 48 for p in long_ones)
    assert all(p.chosen_ids[-1] == p.rejected_ids[-1] == pair_tokenizer.end_token_id for p in long_ones)

    dm.setup("fit")  # idempotent
    assert dm.stats.as_dict() == d

    train_loader = dm.train_dataloader()
    batches = list(train_loader)
    assert len(batches) == len(train_loader) == -(-len(dm.train_pairs) // 4)
    seen = Counter()
    for batch in batches:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.shape == mask.shape and ids.shape[0] % 2 == 0 and "margin" not in batch
        half = ids.shape[0] // 2
        assert (ids[mask == 0] == tiny_tokenizer.pad_token_id).all()
        for row in range(ids.shape[0]):
            real = ids[row][mask[row] == 1].tolist()
            assert real[0] == tiny_tokenizer.bos_token_id and real[-1] == pair_tokenizer.end_token_id
            assert mask[row].tolist() == sorted(mask[row].tolist(), reverse=True)  # right padding
        for row in range(half):
            chosen = tuple(ids[row][mask[row] == 1].tolist())
            rejected = tuple(ids[half + row][mask[half + row] == 1].tolist())
            seen[(chosen, rejected)] += 1
    assert seen == Counter((tuple(p.chosen_ids), tuple(p.rejected_ids)) for p in dm.train_pairs)

    # a new loader for the same epoch gives the same batches; another epoch a different order
    assert [b["input_ids"].tolist() for b in dm.train_dataloader()] == [b["input_ids"].tolist() for b in batches]

    val = list(dm.val_dataloader())
    assert sum(b["input_ids"].shape[0] // 2 for b in val) == len(dm.heldout_pairs)
    widths = [b["input_ids"].shape[1] for b in val]
    assert widths == sorted(widths, reverse=True)


def test_train_batches_follow_the_trainers_epoch(pair_tokenizer):
    """The order is read from trainer.current_epoch when an epoch starts (also after a resume)."""
    rows = [{"prompt": f"q {i}", "chosen": f"a {i}", "rejected": f"b {i}"} for i in range(64)]
    dm = PreferenceDataModule(functools.partial(load_pairs, rows), pair_tokenizer, val_fraction=0.0, batch_size=4,
                              eval_batch_size=4, seed=0)
    dm.setup()
    dm.trainer = types.SimpleNamespace(current_epoch=0, global_rank=0, world_size=1)
    loader = dm.train_dataloader()
    epoch0 = [b["input_ids"].tolist() for b in loader]
    dm.trainer.current_epoch = 1
    epoch1 = [b["input_ids"].tolist() for b in loader]
    assert epoch1 != epoch0
    dm.trainer.current_epoch = 0
    assert [b["input_ids"].tolist() for b in loader] == epoch0


def test_datamodule_margins_reach_the_batch(pair_tokenizer):
    rows = [{"prompt": f"q {i}", "chosen": f"a {i}", "rejected": f"b {i}", "m": float(i)} for i in range(40)]
    loader = functools.partial(load_pairs, rows, margin_key="m")
    dm = PreferenceDataModule(loader, pair_tokenizer, val_fraction=0.0, batch_size=8, eval_batch_size=8)
    dm.setup()
    margins = sorted(m for b in dm.train_dataloader() for m in b["margin"].tolist())
    assert margins == [float(i) for i in range(40)]


def test_datamodule_with_no_training_pairs_raises(pair_tokenizer):
    rows = [{"prompt": "q", "chosen": "the quick brown fox jumps over the lazy dog " * 10, "rejected": "no"}]
    dm = PreferenceDataModule(functools.partial(load_pairs, rows), pair_tokenizer, val_fraction=0.0, batch_size=2,
                              eval_batch_size=2)
    with pytest.raises(DataError, match="no training pairs"):
        dm.setup()
