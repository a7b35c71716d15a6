"""rmlab.model + rmlab.scoring: the reward model, its pad token, the last-token rule, export, scoring."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rmlab.data.tokenize import PairTokenizer
from rmlab.model import PAD_TOKEN, build_reward_model, ensure_distinct_pad, export_reward_model
from rmlab.scoring import score_pairs, score_sequences

CONVERSATIONS = [
    [{"role": "user", "content": "Hello world, how are you?"},
     {"role": "assistant", "content": "I am fine, thank you."}],
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Write a short poem about the sea."},
     {"role": "assistant", "content": "The sea, the sky and the mountains; the quick brown fox jumps over."},
     {"role": "user", "content": "Thanks!"},
     {"role": "assistant", "content": "Sorry, I cannot help with that request."}],
    [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "1 2 3"}],
]


def encode_all(bundle, conversations=CONVERSATIONS):
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, 4096)
    return [pair_tokenizer.encode(c) for c in conversations]


@torch.no_grad()
def single_rewards(model, sequences):
    model.eval()
    return torch.tensor([model(input_ids=torch.tensor([ids])).logits.reshape(-1)[0].item() for ids in sequences])


@torch.no_grad()
def padded_rewards(model, sequences, pad_id, side):
    model.eval()
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        if side == "right":
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        else:
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
    assert (input_ids == pad_id).any()  # the batch really is padded
    return model(input_ids=input_ids, attention_mask=mask).logits.reshape(-1)


@pytest.fixture(scope="module")
def llama_bundle(tiny_llama_dir):
    return build_reward_model(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def minilm_bundle(minilm_path):
    torch.manual_seed(0)
    return build_reward_model(minilm_path)


# --------------------------------------------------------------------------- building
def test_build_tiny_llama(llama_bundle, tiny_llama_dir):
    tok, model = llama_bundle.tokenizer, llama_bundle.model
    original = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert not llama_bundle.is_encoder
    assert tok.pad_token == "<pad>" == original.pad_token  # already distinct: kept
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.num_labels == 1
    assert model.score.out_features == 1
    assert model.get_input_embeddings().num_embeddings == len(tok) == len(original)
    assert model.training  # Lightning keeps the mode it finds
    rendered = tok.apply_chat_template(CONVERSATIONS[0], chat_template=llama_bundle.chat_template, tokenize=False)
    assert rendered.endswith(tok.eos_token + "\n")  # the template's own closing: nothing appended


def test_build_minilm_is_encoder(minilm_bundle):
    tok, model = minilm_bundle.tokenizer, minilm_bundle.model
    assert minilm_bundle.is_encoder
    assert tok.pad_token == "[PAD]" and tok.pad_token_id != tok.sep_token_id
    assert model.config.num_labels == 1 and model.classifier.out_features == 1
    assert model.config.pad_token_id == tok.pad_token_id


def test_ensure_distinct_pad_prefers_a_shipped_pad_token_then_unk(tiny_llama_dir, tiny_llama_pad_is_eos_with_unk_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == tok.eos_token_id
    assert ensure_distinct_pad(tok) is False
    assert tok.pad_token == "<pad>" and tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)
    tok = AutoTokenizer.from_pretrained(tiny_llama_pad_is_eos_with_unk_dir)  # no <pad> in its vocabulary
    assert ensure_distinct_pad(tok) is False and tok.pad_token == "<unk>"
    tok.pad_token = None
    assert ensure_distinct_pad(tok) is False and tok.pad_token == "<unk>"


def test_ensure_distinct_pad_adds_token_without_unk(tiny_llama_pad_is_eos_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_pad_is_eos_dir)
    size = len(tok)
    assert tok.pad_token_id == tok.eos_token_id and tok.unk_token is None
    assert ensure_distinct_pad(tok) is True
    assert tok.pad_token == PAD_TOKEN and tok.pad_token_id == size and len(tok) == size + 1
    assert ensure_distinct_pad(tok) is False  # idempotent


def test_build_pad_is_eos_with_unk_reuses_unk(tiny_llama_pad_is_eos_with_unk_dir):
    bundle = build_reward_model(str(tiny_llama_pad_is_eos_with_unk_dir))
    tok, model = bundle.tokenizer, bundle.model
    assert tok.pad_token == "<unk>" and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.get_input_embeddings().num_embeddings == len(tok)
    check_padding_invariance(bundle)


def test_build_pad_is_eos_without_unk_adds_pad_and_resizes(tiny_llama_pad_is_eos_dir):
    original = AutoTokenizer.from_pretrained(tiny_llama_pad_is_eos_dir)
    bundle = build_reward_model(str(tiny_llama_pad_is_eos_dir))
    tok, model = bundle.tokenizer, bundle.model
    assert tok.pad_token == PAD_TOKEN and tok.pad_token_id != tok.eos_token_id
    assert len(tok) == len(original) + 1
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id
    check_padding_invariance(bundle)


# --------------------------------------------------------------------------- the last-token rule
def check_padding_invariance(bundle):
    sequences = encode_all(bundle)
    assert len({len(s) for s in sequences}) == len(sequences)
    assert len({s[-1] for s in sequences}) == 1  # every conversation ends with the reward token
    pad = bundle.tokenizer.pad_token_id
    alone = single_rewards(bundle.model, sequences)
    right = padded_rewards(bundle.model, sequences, pad, "right")
    left = padded_rewards(bundle.model, sequences, pad, "left")
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    assert alone.std() > 1e-3  # rewards differ between conversations: the comparison is not trivial
    return alone


def test_llama_left_and_right_padding_give_unpadded_rewards(llama_bundle):
    check_padding_invariance(llama_bundle)


@torch.no_grad()
def test_llama_reward_is_read_at_the_final_eos(llama_bundle):
    model = llama_bundle.model.eval()
    ids = encode_all(llama_bundle)[2]
    hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    per_token = model.score(hidden).reshape(-1)
    reward = model(input_ids=torch.tensor([ids])).logits.reshape(-1)[0]
    torch.testing.assert_close(reward, per_token[-1], atol=1e-6, rtol=0)
    assert abs(per_token[-2] - per_token[-1]) > 1e-4


def test_minilm_right_padding_matches_single_sequences(minilm_bundle):
    sequences = encode_all(minilm_bundle)
    assert all(s[0] == minilm_bundle.tokenizer.cls_token_id and s[-1] == minilm_bundle.tokenizer.sep_token_id
               for s in sequences)
    alone = single_rewards(minilm_bundle.model, sequences)
    right = padded_rewards(minilm_bundle.model, sequences, minilm_bundle.tokenizer.pad_token_id, "right")
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    assert alone.std() > 1e-4


# --------------------------------------------------------------------------- export
def check_export_round_trip(bundle, directory):
    sequences = encode_all(bundle)
    expected = single_rewards(bundle.model, sequences)
    export_reward_model(bundle, directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template == bundle.chat_template
    assert model.config.pad_token_id == bundle.tokenizer.pad_token_id
    reloaded_ids = []
    for messages in CONVERSATIONS:
        result = tokenizer.apply_chat_template(messages, tokenize=True)
        reloaded_ids.append(list(result if isinstance(result, list) else result["input_ids"]))
    assert reloaded_ids == sequences
    got = single_rewards(model, reloaded_ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    padded = padded_rewards(model, reloaded_ids, tokenizer.pad_token_id, "right")
    torch.testing.assert_close(padded, expected, atol=1e-4, rtol=0)


def test_export_round_trip_tiny_llama(llama_bundle, tmp_path):
    check_export_round_trip(llama_bundle, tmp_path / "export")


def test_export_round_trip_minilm(minilm_bundle, tmp_path):
    check_export_round_trip(minilm_bundle, tmp_path / "export")


def test_export_round_trip_tiny_llama_without_template(tiny_llama_no_template_dir, tmp_path):
    bundle = build_reward_model(str(tiny_llama_no_template_dir))
    check_export_round_trip(bundle, tmp_path / "export")


# --------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("which", ["llama", "minilm"])
def test_score_sequences_input_order_and_one_by_one(which, request):
    bundle = request.getfixturevalue(f"{which}_bundle")
    sequences = encode_all(bundle)
    sequences = [sequences[2], sequences[0], sequences[3], sequences[1], sequences[2][:-3] + sequences[2][-1:]]
    expected = single_rewards(bundle.model, sequences)
    bundle.model.train()
    rewards = score_sequences(bundle.model, sequences, bundle.tokenizer.pad_token_id, batch_size=2)
    assert bundle.model.training  # mode restored
    assert isinstance(rewards, list) and len(rewards) == len(sequences)
    torch.testing.assert_close(torch.tensor(rewards), expected, atol=1e-5, rtol=0)
    assert len(set(round(r, 6) for r in rewards)) == len(rewards)


def test_score_pairs_splits_chosen_and_rejected(llama_bundle):
    from rmlab.data.tokenize import TokenizedPair

    sequences = encode_all(llama_bundle)
    pairs = [TokenizedPair(sequences[0], sequences[1], "a"), TokenizedPair(sequences[2], sequences[3], "b")]
    chosen, rejected = score_pairs(llama_bundle.model, pairs, llama_bundle.tokenizer.pad_token_id, batch_size=3)
    expected = single_rewards(llama_bundle.model, sequences).tolist()
    assert chosen == pytest.approx([expected[0], expected[2]], abs=1e-5)
    assert rejected == pytest.approx([expected[1], expected[3]], abs=1e-5)


def test_lora_fit_moves_only_adapters_and_head(tiny_llama_dir, tmp_path):
    """``model.lora.enabled=true`` through RewardModule and a Lightning fit (packed, fused AdamW): the adapters and
    the reward head move, every base weight stays bit for bit, and the merged export scores as the trained model."""
    pytest.importorskip("peft")
    import lightning.pytorch as pl

    from conftest import fit_reward_module, write_topic_pairs

    pl.seed_everything(0, verbose=False)
    bundle = build_reward_model(str(tiny_llama_dir), lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0,
                                                           "target_modules": "all-linear"})
    trainable = {n for n, p in bundle.model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trainable) and any("score" in n for n in trainable)
    assert not any("embed_tokens" in n or "q_proj.base_layer" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    module, trainer = fit_reward_module(bundle, write_topic_pairs(tmp_path / "pairs.jsonl", 16), gradient_clip_val=1.0)
    assert trainer.global_step == 4 and module.packing_layout is not None
    assert trainer.optimizers[0].defaults.get("fused") is True
    for name, parameter in bundle.model.named_parameters():
        moved = not torch.equal(parameter.detach(), before[name])
        assert moved == (name in trainable), name  # lora_B starts at zero: it moves only if trained
    ids = torch.tensor([[1, 30, 31, 32, 2]])
    bundle.model.eval()
    with torch.no_grad():
        expected = bundle.model(input_ids=ids).logits.item()
    export_reward_model(bundle, tmp_path / "export")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        assert reloaded(input_ids=ids).logits.item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("installed,expected", [(True, "flash_attention_2"), (False, "eager")])
def test_preset_attention_falls_back_without_flash_attn(monkeypatch, installed, expected):
    """The Gemma preset's ``flash_attention_2|eager``: flash-attention 2 only when its package is installed."""
    import importlib.util

    from rmlab.model import resolve_attention

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if installed and name == "flash_attn" else
                        None if name == "flash_attn" else real_find_spec(name, *a))
    assert resolve_attention("flash_attention_2|eager") == expected
    assert resolve_attention("sdpa") == "sdpa" and resolve_attention(None) is None


@pytest.mark.parametrize("name_or_path", ["org/not-cached-anywhere", "/no/such/dir/model"])
def test_a_checkpoint_that_cannot_load_is_a_config_error_naming_the_key(name_or_path):
    from rmlab.schemas import ConfigError

    with pytest.raises(ConfigError, match=f"model.name_or_path={name_or_path}: cannot load it .*Fix: check"):
        build_reward_model(name_or_path)


@pytest.fixture(scope="module")
def llama_with_dropout_dir(tmp_path_factory):
    """The tiny Llama with attention dropout 0.1 (Llama has no other dropout)."""
    from conftest import build_tiny_llama, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(tokenizer)
    model.config.attention_dropout = 0.1
    directory = tmp_path_factory.mktemp("llama_dropout")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def dropout_probabilities(model) -> list[float]:
    """Every dropout probability the model can apply: its modules', its attention layers', its config's."""
    modules = [m.p for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    attention = [float(getattr(m, name)) for m in model.modules() for name in ("attention_dropout", "dropout_prob")
                 if isinstance(getattr(m, name, None), float)]
    config = [v for k, v in model.config.to_dict().items() if ("dropout" in k or "pdrop" in k) and isinstance(v, float)]
    assert modules or attention, "the model has no dropout to switch"
    return modules + attention + config


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("disable", [None, False])  # None: the composed config's default
def test_dropout_is_off_by_default_and_on_when_asked(family, disable, request):
    """``model.disable_dropout`` (default true, as TRL): every dropout module, attention dropout and config
    probability is 0, and two training-mode forwards agree; false keeps MiniLM's 0.1 / the Llama's 0.1."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from rmlab.config import register_configs

    path = request.getfixturevalue("minilm_path" if family == "bert" else "llama_with_dropout_dir")
    register_configs()
    overrides = ["model=hf", f"model.name_or_path={path}"] + ([] if disable is None else [f"model.disable_dropout={disable}"])
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        model_cfg = OmegaConf.to_container(compose("config", overrides=overrides).model, resolve=True)
    bundle = build_reward_model(**model_cfg)
    probabilities = dropout_probabilities(bundle.model)
    ids = torch.tensor([encode_all(bundle)[2]])
    bundle.model.train()
    with torch.no_grad():
        first, second = (bundle.model(input_ids=ids).logits for _ in range(2))
    if disable is None:
        assert set(probabilities) == {0.0} and torch.equal(first, second)
    else:
        assert max(probabilities) == pytest.approx(0.1) and not torch.equal(first, second)
