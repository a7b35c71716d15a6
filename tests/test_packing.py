"""Throughput machinery: packed = padded rewards, pairs per step kept, grouping, and the tokenization cache."""

from __future__ import annotations

import functools
import os
import threading

import pytest
import torch

from rmlab.data.datamodule import (
    CACHE_ENV,
    LengthGroupedBatchSampler,
    PairCollator,
    PreferenceDataModule,
    _read_tokenized,
    _write_tokenized,
    tokenization_key,
    tokenize_all,
    tokenize_pairs,
    tokenized_cache_dir,
)
from rmlab.data.formats import BadRow, DataError, PreferencePair, RowStats, load_pairs
from rmlab.data.tokenize import PairTokenizer, TokenizedPair, reward_chat_template
from rmlab.packing import (
    FusedSiblingLinear,
    SEGMENT_ATTENTION,
    PackingLayout,
    fuse_projections,
    pack_batch,
    packed_rewards,
    packing_support,
    segment_attention,
)
from rmlab.scoring import forward_rewards

TOPICS = ["tea", "maps", "rust", "bread", "chess", "birds", "clouds", "glue", "jazz", "moss"]


def make_pairs(n: int, long_every: int = 0) -> list[PreferencePair]:
    """Pairs of varied lengths (some multi-turn); every ``long_every``-th chosen response is very long."""
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = [{"role": "user", "content": f"tell me about {topic} " * (1 + i % 4) + f"number {i}"}]
        if i % 3 == 0:
            prompt = [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "sure"}] + prompt
        chosen = f"{topic} is interesting: fact {i}. " * (1 + i % 5)
        if long_every and i % long_every == 0:
            chosen = "The quick brown fox jumps over the lazy dog. " * 12
        pairs.append(PreferencePair(prompt + [{"role": "assistant", "content": chosen}],
                                    prompt + [{"role": "assistant", "content": f"no {i}"}], f"s{i % 2}"))
    return pairs


@pytest.fixture(scope="module")
def llama_bundles(tiny_llama_dir):
    from rmlab.model import build_reward_model

    return {attn: build_reward_model(str(tiny_llama_dir), attn_implementation=attn) for attn in ("sdpa", "eager")}


def padded_batch(bundle, count: int = 12, max_length: int = 160) -> dict[str, torch.Tensor]:
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, max_length)
    tokenized = [pair_tokenizer(pair) for pair in make_pairs(count)]
    return PairCollator(bundle.tokenizer.pad_token_id)(tokenized)


# --------------------------------------------------------------------------- layout
@pytest.mark.parametrize("reward_at", ["last", "first"])
def test_pack_batch_layout(reward_at):
    ids = torch.tensor([[11, 12, 13, 0], [21, 0, 0, 0], [31, 32, 0, 0], [41, 42, 43, 44]])
    mask = (ids != 0).long()
    packed = pack_batch(ids, mask, PackingLayout(reward_at, SEGMENT_ATTENTION))
    assert packed["input_ids"].tolist() == [[11, 12, 13, 21, 31, 32, 41, 42, 43, 44]]  # no padding at all
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 0, 1, 2, 3]]
    assert packed["cu_seqlens"].tolist() == [0, 3, 4, 6, 10] and packed["cu_seqlens"].dtype == torch.int32
    assert packed["segment_lengths"] == (3, 1, 2, 4) and all(type(n) is int for n in packed["segment_lengths"])
    expected = [13, 21, 32, 44] if reward_at == "last" else [11, 21, 31, 41]  # in the padded row order
    assert packed["input_ids"][0, packed["reward_index"]].tolist() == expected


@pytest.mark.parametrize("causal", [False, True])
def test_segment_attention_equals_attention_per_sequence(causal):
    """Each sequence attends only to itself, computed independently in float64 with a softmax."""
    generator = torch.Generator().manual_seed(0)
    bounds = [(0, 3), (3, 4), (4, 9)]
    query, key, value = (torch.randn(1, 2, 9, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = causal
    out, _ = segment_attention(module, query, key, value, None, scaling=0.5, segment_lengths=(3, 1, 5))
    assert out.shape == (1, 9, 2, 4)
    for start, end in bounds:
        q, k, v = (t[0, :, start:end] for t in (query, key, value))
        scores = 0.5 * q @ k.transpose(-1, -2)
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        expected = (scores.softmax(-1) @ v).transpose(0, 1)
        torch.testing.assert_close(out[0, start:end], expected)


# --------------------------------------------------------------------------- packed == padded
def test_packed_rewards_equal_padded_decoder(llama_bundles):
    """sdpa decoders are packed into one row with segment attention; the reward is read at each
    sequence's own last token."""
    bundle = llama_bundles["sdpa"]
    model = bundle.model.eval()
    layout, why = packing_support(model)
    assert layout == PackingLayout("last", SEGMENT_ATTENTION), why
    batch = padded_batch(bundle)
    packed = pack_batch(batch["input_ids"], batch["attention_mask"], layout)
    assert packed["input_ids"].numel() == batch["attention_mask"].sum()
    with torch.no_grad():
        padded = forward_rewards(model, batch["input_ids"], batch["attention_mask"])
        packed_out = packed_rewards(model, packed, layout)
        # control: one segment for the whole row attends across sequences
        crossed = dict(packed, cu_seqlens=packed["cu_seqlens"][[0, -1]], segment_lengths=(packed["input_ids"].shape[1],))
        crossed_out = packed_rewards(model, crossed, layout)
        padded_after = forward_rewards(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(packed_out, padded, atol=1e-5, rtol=0)
    assert (crossed_out - padded).abs().max() > 1e-3
    assert torch.equal(padded_after, padded)  # padded forwards are unchanged once the model has been packed


def test_eager_attention_is_not_packed(llama_bundles, minilm_path):
    """eager stays eager (Gemma-2 needs it for soft-capping): such models train on padded batches."""
    from rmlab.model import build_reward_model

    layout, why = packing_support(llama_bundles["eager"].model)
    assert layout is None and "eager" in why
    layout, why = packing_support(build_reward_model(minilm_path, attn_implementation="eager").model)
    assert layout is None and "eager" in why


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_gradients_equal_padded_decoder(llama_bundles, tiny_llama_dir, checkpointing):
    """With activation checkpointing the recomputed forward must keep the sequences apart too."""
    from rmlab.model import build_reward_model

    bundle = build_reward_model(str(tiny_llama_dir), gradient_checkpointing=True) if checkpointing \
        else llama_bundles["sdpa"]
    model = bundle.model.train()
    layout, _ = packing_support(model)
    batch = padded_batch(bundle)
    packed = pack_batch(batch["input_ids"], batch["attention_mask"], layout)
    grads = []
    for rewards in (lambda: forward_rewards(model, batch["input_ids"], batch["attention_mask"]),
                    lambda: packed_rewards(model, packed, layout)):
        model.zero_grad(set_to_none=True)
        values = rewards()
        half = values.shape[0] // 2
        torch.nn.functional.logsigmoid(values[:half] - values[half:]).mean().neg().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_rewards_equal_padded_with_lora(tiny_llama_dir):
    pytest.importorskip("peft")
    from rmlab.model import build_reward_model

    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    bundle = build_reward_model(str(tiny_llama_dir), lora=lora)
    model = bundle.model.eval()
    with torch.no_grad():  # as if trained: the adapters change the rewards
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(0))
    layout, why = packing_support(model)
    assert layout is not None, why
    assert fuse_projections(model) == 0  # LoRA-wrapped projections stay as they are
    batch = padded_batch(bundle)
    packed = pack_batch(batch["input_ids"], batch["attention_mask"], layout)
    with torch.no_grad():
        padded = forward_rewards(model, batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(packed_rewards(model, packed, layout), padded, atol=1e-5, rtol=0)


def test_packed_rewards_equal_padded_bert(minilm_path):
    """Encoders read the reward at each sequence's [CLS]; the packed row is longer than BERT's
    512 positions, which only position ids (restarting at 0) ever index."""
    from rmlab.model import build_reward_model

    bundle = build_reward_model(minilm_path, attn_implementation="sdpa")
    model = bundle.model.eval()
    layout, why = packing_support(model)
    assert layout == PackingLayout("first", SEGMENT_ATTENTION), why
    batch = padded_batch(bundle, count=24)
    packed = pack_batch(batch["input_ids"], batch["attention_mask"], layout)
    assert packed["input_ids"].shape[1] > model.config.max_position_embeddings
    with torch.no_grad():
        padded = forward_rewards(model, batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(packed_rewards(model, packed, layout), padded, atol=1e-5, rtol=0)


def test_packed_gradients_equal_padded_bert(minilm_path):
    """The last layer runs only at each [CLS]; rewards and every gradient still equal the padded model's."""
    from rmlab.model import build_reward_model

    bundle = build_reward_model(minilm_path, attn_implementation="sdpa", dropout=0.0)
    model = bundle.model.train()
    layout, _ = packing_support(model)
    batch = padded_batch(bundle)
    packed = pack_batch(batch["input_ids"], batch["attention_mask"], layout)
    grads, values = [], []
    for rewards in (lambda: forward_rewards(model, batch["input_ids"], batch["attention_mask"]),
                    lambda: packed_rewards(model, packed, layout)):
        model.zero_grad(set_to_none=True)
        values.append(rewards())
        half = values[-1].shape[0] // 2
        torch.nn.functional.logsigmoid(values[-1][:half] - values[-1][half:]).mean().neg().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(values[1], values[0], atol=1e-5, rtol=0)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_scoring_packs_and_matches_single_sequences(minilm_path):
    from rmlab.model import build_reward_model
    from rmlab.scoring import score_sequences

    bundle = build_reward_model(minilm_path, attn_implementation="sdpa")
    model = bundle.model.eval()
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, 160)
    tokenized = [pair_tokenizer(pair) for pair in make_pairs(6)]
    sequences = [t.chosen_ids for t in tokenized] + [t.rejected_ids for t in tokenized]
    scored = score_sequences(model, sequences, bundle.tokenizer.pad_token_id, batch_size=4)
    with torch.no_grad():
        single = [forward_rewards(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
                  for ids in sequences]
    torch.testing.assert_close(torch.tensor(scored), torch.tensor(single), atol=1e-5, rtol=0)


def test_models_that_cannot_be_packed_fall_back(tiny_llama_dir):
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    from rmlab.losses import BradleyTerryLoss
    from rmlab.module import RewardModule

    small = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "num_labels": 1}
    roberta = RobertaForSequenceClassification(RobertaConfig(**small))
    layout, why = packing_support(roberta)
    assert layout is None and "roberta" in why
    bert = BertForSequenceClassification(BertConfig(**small, position_embedding_type="relative_key"))
    assert packing_support(bert)[0] is None
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    module = RewardModule(roberta, BradleyTerryLoss(), optimizer, packing="auto")
    batch = {"input_ids": torch.tensor([[5, 6, 1], [5, 1, 1]]), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    assert module.prepare_batch(dict(batch)).keys() == batch.keys()  # padded as it came
    with pytest.raises(ValueError, match="cannot be packed"):
        RewardModule(roberta, BradleyTerryLoss(), optimizer, packing="on").prepare_batch(dict(batch))
    with pytest.raises(ValueError, match="packing="):
        RewardModule(roberta, BradleyTerryLoss(), optimizer, packing="yes")


# --------------------------------------------------------------------------- fused q/k/v projections
def test_fused_projections_same_parameters_rewards_and_gradients(llama_bundles):
    import copy

    bundle = llama_bundles["sdpa"]
    plain = copy.deepcopy(bundle.model).train()
    fused = copy.deepcopy(bundle.model).train()
    assert fuse_projections(fused) == 2 and fuse_projections(fused) == 0  # 2 layers; fusing twice is a no-op
    assert isinstance(fused.model.layers[0].self_attn.q_proj, FusedSiblingLinear)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()]
    batch = padded_batch(bundle)
    grads = []
    for model in (plain, fused):
        values = forward_rewards(model, batch["input_ids"], batch["attention_mask"])
        half = values.shape[0] // 2
        torch.nn.functional.logsigmoid(values[:half] - values[half:]).mean().neg().backward()
        grads.append((values.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-6, rtol=0)
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


# --------------------------------------------------------------------------- through Lightning
def fit(tiny_llama_dir, packing: str, pairs: list[PreferencePair], steps_seen: list):
    import lightning.pytorch as pl

    from rmlab.losses import BradleyTerryLoss
    from rmlab.model import build_reward_model
    from rmlab.module import RewardModule

    class Sizes(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            steps_seen.append((len(batch["reward_index"]) if "reward_index" in batch else batch["input_ids"].shape[0],
                               batch["input_ids"].numel()))

    pl.seed_everything(0, verbose=False)
    bundle = build_reward_model(str(tiny_llama_dir))
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, 160)
    datamodule = PreferenceDataModule(lambda: (pairs, RowStats()), pair_tokenizer, val_fraction=0.0, batch_size=4,
                                      eval_batch_size=4, seed=1, tokenized_cache=False)
    module = RewardModule(bundle.model, BradleyTerryLoss(), functools.partial(torch.optim.AdamW, lr=1e-3),
                          packing=packing)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                         use_distributed_sampler=False, callbacks=[Sizes()])
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


def test_packed_training_matches_padded_and_keeps_pairs_per_step(tiny_llama_dir):
    pairs = make_pairs(26)
    packed_steps, padded_steps = [], []
    packed, trainer = fit(tiny_llama_dir, "auto", pairs, packed_steps)
    padded, _ = fit(tiny_llama_dir, "off", pairs, padded_steps)
    assert packed.packing_layout is not None and padded.packing_layout is None
    # the same sequences per step (4 pairs, the epoch's last 2), fewer tokens processed when packed
    assert [s for s, _ in packed_steps] == [s for s, _ in padded_steps] == [8] * 6 + [4]
    assert trainer.global_step == 7
    assert packed.tokens_real == padded.tokens_real == sum(
        p.num_tokens for p in trainer.datamodule.train_pairs)
    assert packed.tokens_processed == sum(n for _, n in packed_steps) < padded.tokens_processed
    assert padded.tokens_processed == sum(n for _, n in padded_steps)
    for (name, a), (_, b) in zip(packed.model.named_parameters(), padded.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults.get("fused") is True  # torch's CPU default is a slow per-tensor loop
    assert isinstance(packed.model.model.layers[1].self_attn.v_proj, FusedSiblingLinear)


# --------------------------------------------------------------------------- length grouping
def test_train_batches_grouped_by_the_longer_side_deterministic(tiny_tokenizer):
    pair_tokenizer = PairTokenizer(tiny_tokenizer, reward_chat_template(tiny_tokenizer), 160)

    def batches(seed):
        dm = PreferenceDataModule(lambda: (make_pairs(90), RowStats()), pair_tokenizer, val_fraction=0.0,
                                  batch_size=8, eval_batch_size=8, seed=seed, tokenized_cache=False)
        dm.setup()
        return dm, list(dm.train_dataloader())

    dm, first = batches(5)
    assert [b["input_ids"].tolist() for b in batches(5)[1]] == [b["input_ids"].tolist() for b in first]
    assert [b["input_ids"].tolist() for b in batches(6)[1]] != [b["input_ids"].tolist() for b in first]
    assert [b["input_ids"].shape[0] for b in first] == [16] * 11 + [4]  # 8 pairs a step, the last 2
    widths = [b["input_ids"].shape[1] for b in first]
    assert widths[0] == max(widths)  # the longest batch comes first
    longer = [max(len(p.chosen_ids), len(p.rejected_ids)) for p in dm.train_pairs]
    assert widths == [max(longer[i] for i in batch) for batch in LengthGroupedBatchSampler(longer, 8, 5)]


# --------------------------------------------------------------------------- tokenization cache
@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    return tmp_path / "tokenized"


def plain(results):
    """Comparable results: a BadRow compares by its reason and message."""
    return [(r.reason, str(r)) if isinstance(r, BadRow) else r for r in results]


def datamodule(pair_tokenizer, pairs, cache, on_bad_row="skip"):
    stats = RowStats(rows_read=len(pairs), rows_used=len(pairs))
    return PreferenceDataModule(lambda: (list(pairs), RowStats(**vars(stats))), pair_tokenizer, val_fraction=0.25,
                                batch_size=4, eval_batch_size=4, on_bad_row=on_bad_row, tokenized_cache=cache)


def test_cache_hit_equals_fresh_tokenization(tiny_tokenizer, cache_dir):
    pair_tokenizer = PairTokenizer(tiny_tokenizer, reward_chat_template(tiny_tokenizer), 160)
    pairs = make_pairs(40, long_every=7)  # some responses do not fit: bad rows are cached too
    fresh = datamodule(pair_tokenizer, pairs, False)
    fresh.setup()
    truncated = sum(p.truncated for p in fresh.heldout_pairs)  # too long: dropped from training, truncated if held out
    assert fresh.tokenized_cache_hit is None and fresh.stats.skipped["response_too_long"] + truncated == 6
    assert len(fresh.train_pairs) + len(fresh.heldout_pairs) == 34 + truncated and fresh.heldout_pairs
    first = datamodule(pair_tokenizer, pairs, cache_dir)
    first.setup()
    assert first.tokenized_cache_hit is False and len(list(cache_dir.glob("*.npz"))) == 1
    second = datamodule(pair_tokenizer, pairs, cache_dir)
    second.setup()
    assert second.tokenized_cache_hit is True
    for other in (first, second):
        assert other.train_pairs == fresh.train_pairs and other.heldout_pairs == fresh.heldout_pairs
        assert other.stats.as_dict() == fresh.stats.as_dict()
    assert [f.name for f in cache_dir.iterdir()] == [next(cache_dir.glob("*.npz")).name]  # no temporary left
    with pytest.raises(DataError, match="response_too_long"):  # on_bad_row=error raises from the cache too
        datamodule(pair_tokenizer, pairs, cache_dir, on_bad_row="error").setup()


def test_cache_misses_when_an_input_changes(tiny_tokenizer, tiny_llama_dir, cache_dir):
    from conftest import build_tiny_tokenizer

    template = reward_chat_template(tiny_tokenizer)
    pairs = make_pairs(12)
    base = PairTokenizer(tiny_tokenizer, template, 48)
    key = tokenization_key(pairs, base)
    assert tokenization_key(list(pairs), PairTokenizer(tiny_tokenizer, template, 48)) == key
    other_vocab = build_tiny_tokenizer(vocab_size=300)
    changed = {
        "max_length": (pairs, PairTokenizer(tiny_tokenizer, template, 47)),
        "template": (pairs, PairTokenizer(tiny_tokenizer, template.replace("\n", " \n"), 48)),
        "rows": (pairs[:-1] + [make_pairs(13)[-1]], base),
        "row order": (pairs[::-1], base),
        "tokenizer": (pairs, PairTokenizer(other_vocab, reward_chat_template(other_vocab), 48)),
    }
    for what, (rows, pair_tokenizer) in changed.items():
        assert tokenization_key(rows, pair_tokenizer) != key, what
    results, hit = tokenize_all(pairs, base, cache_dir)
    again, hit_again = tokenize_all(pairs, base, cache_dir)
    assert (hit, hit_again) == (False, True) and plain(again) == plain(results)
    assert any(isinstance(r, BadRow) for r in results) and any(isinstance(r, TokenizedPair) for r in results)
    shorter, hit = tokenize_all(pairs, changed["max_length"][1], cache_dir)
    assert hit is False and plain(shorter) != plain(results)
    assert len(list(cache_dir.glob("*.npz"))) == 2


def test_cache_location_and_switch(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tokenized_cache_dir() == tmp_path / "xdg" / "rmlab" / "tokenized"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert tokenized_cache_dir() == tmp_path / "mine"
    for off in ("0", "off", "false"):
        monkeypatch.setenv(CACHE_ENV, off)
        assert tokenized_cache_dir() is None
    assert tokenized_cache_dir(False) is None and tokenized_cache_dir(str(tmp_path)) == tmp_path


def test_damaged_cache_is_a_miss_and_rewritten(tiny_tokenizer, cache_dir):
    pair_tokenizer = PairTokenizer(tiny_tokenizer, reward_chat_template(tiny_tokenizer), 48)
    pairs = make_pairs(10)
    results, _ = tokenize_all(pairs, pair_tokenizer, cache_dir)
    path = next(cache_dir.glob("*.npz"))
    import numpy as np

    pickled = tmp_bytes = path.with_name("pickled.npz")
    np.savez(pickled, version=np.int64(2), lengths=np.array([object()], dtype=object))  # needs pickle to load
    for damage in (b"not an npz", tmp_bytes.read_bytes()):
        path.write_bytes(damage)
        again, hit = tokenize_all(pairs, pair_tokenizer, cache_dir)
        assert hit is False and plain(again) == plain(results)
        assert plain(_read_tokenized(path, pairs)) == plain(results)  # rewritten
    pickled.unlink()


def test_concurrent_writers_leave_a_whole_file(tiny_tokenizer, tmp_path):
    pair_tokenizer = PairTokenizer(tiny_tokenizer, reward_chat_template(tiny_tokenizer), 160)
    pairs = make_pairs(30, long_every=4)
    results, _ = tokenize_all(pairs, pair_tokenizer, None)
    assert sum(isinstance(r, BadRow) for r in results) == 8
    path = tmp_path / "entry.npz"
    errors = []

    def write():
        try:
            for _ in range(20):
                _write_tokenized(path, results)
                loaded = _read_tokenized(path, pairs)
                assert loaded is not None and len(loaded) == len(pairs)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and os.listdir(tmp_path) == ["entry.npz"]
    assert plain(_read_tokenized(path, pairs)) == plain(results)


def test_tokenize_pairs_with_precomputed_results_matches(tiny_tokenizer):
    pair_tokenizer = PairTokenizer(tiny_tokenizer, reward_chat_template(tiny_tokenizer), 48)
    rows = [{"prompt": f"q {i}", "chosen": ("long " * 80) if i % 5 == 0 else f"a {i}", "rejected": f"b {i}"}
            for i in range(20)]
    pairs, stats_fresh = load_pairs(rows)
    _, stats_cached = load_pairs(rows)
    fresh = tokenize_pairs(pairs, pair_tokenizer, stats_fresh)
    results, _ = tokenize_all(pairs, pair_tokenizer, None)
    assert tokenize_pairs(pairs, pair_tokenizer, stats_cached, results=results) == fresh
    assert stats_cached.as_dict() == stats_fresh.as_dict()
