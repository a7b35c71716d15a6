"""The reward token, family by family: the same token in training batches, in evaluation and in the export.

Tokenizers mimic Llama-3.1-Instruct, Qwen2.5-Instruct, a Qwen2.5 base tokenizer (pad == EOS, an embedding
larger than the tokenizer) and Gemma-2-it: their special tokens, roles and chat templates
(tests/conftest.py::FAMILIES), each with a tiny random Llama body.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_family_tokenizer, build_tiny_llama

from rmlab.data.datamodule import PreferenceDataModule
from rmlab.data.formats import PreferencePair, RowStats
from rmlab.data.tokenize import PairTokenizer
from rmlab.model import build_reward_model, export_reward_model
from rmlab.packing import pack_batch, packing_support
from rmlab.scoring import score_sequences

# family: (the closing tokens of a conversation, last = the reward token; the pad token rmlab picks)
EXPECTED = {
    "llama3.1": (["<|eot_id|>"], "<|finetune_right_pad_id|>"),
    "qwen2.5": (["<|im_end|>", "\n"], "<|endoftext|>"),
    "qwen2.5-base": (["<|im_end|>", "\n"], "<|fim_pad|>"),
    "gemma2": (["<end_of_turn>", "\n"], "<pad>"),
}
EXTRA_ROWS = {"qwen2.5-base": 24}  # Qwen2.5's embedding (151936 rows) is larger than its tokenizer (151665)
CONVERSATION = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris is the capital of France."},
                {"role": "user", "content": "Thank you."},
                {"role": "assistant", "content": "I can help with that."}]


def token_ids(tokenizer, pieces: list[str]) -> list[int]:
    special = {str(t) for t in tokenizer.added_tokens_decoder.values()}
    return [tokenizer.convert_tokens_to_ids(p) if p in special else
            tokenizer(p, add_special_tokens=False)["input_ids"][0] for p in pieces]


@pytest.fixture(scope="module", params=list(EXPECTED))
def family(request, tmp_path_factory) -> tuple[str, Path]:
    directory = tmp_path_factory.mktemp(request.param.replace(".", "_"))
    tokenizer = build_family_tokenizer(request.param)
    build_tiny_llama(tokenizer, extra_rows=EXTRA_ROWS.get(request.param, 0)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return request.param, directory


@pytest.fixture(scope="module")
def bundle(family):
    torch.manual_seed(0)
    return build_reward_model(str(family[1]))


def test_template_is_used_as_is_and_the_conversation_closes_once(family, bundle):
    name, directory = family
    closing, pad = EXPECTED[name]
    tokenizer = bundle.tokenizer
    assert bundle.chat_template == build_family_tokenizer(name).chat_template  # nothing appended
    ids = PairTokenizer(tokenizer, bundle.chat_template, 4096).encode(CONVERSATION)
    expected_tail = token_ids(tokenizer, closing)
    assert ids[-len(expected_tail):] == expected_tail
    turn_end = expected_tail[0]
    assert ids.count(turn_end) == len(CONVERSATION) + (name.startswith(("llama", "qwen")))  # + the system turn
    assert bundle.tokenizer.bos_token is None or ids.count(bundle.tokenizer.bos_token_id) == 1


def test_pad_token_is_one_the_tokenizer_ships_and_embeddings_keep_their_size(family, bundle):
    name, directory = family
    _, pad = EXPECTED[name]
    original = build_family_tokenizer(name)
    assert bundle.tokenizer.pad_token == pad and bundle.tokenizer.pad_token_id != bundle.tokenizer.eos_token_id
    assert len(bundle.tokenizer) == len(original)  # no token added
    rows = bundle.model.get_input_embeddings().num_embeddings
    assert rows == len(original) + EXTRA_ROWS.get(name, 0)  # not resized, never shrunk
    assert bundle.model.config.pad_token_id == bundle.tokenizer.pad_token_id


def test_training_evaluation_and_export_read_the_same_token(family, bundle, tmp_path):
    name, _ = family
    reward_token = token_ids(bundle.tokenizer, EXPECTED[name][0])[-1]
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, 256)
    assert pair_tokenizer.end_token_id == reward_token
    pairs = [PreferencePair(CONVERSATION[:-1] + [{"role": "assistant", "content": f"Answer {i}: Paris."}],
                            CONVERSATION[:-1] + [{"role": "assistant", "content": "No."}], "s") for i in range(8)]
    datamodule = PreferenceDataModule(lambda: (pairs, RowStats(8, 8)), pair_tokenizer, val_fraction=0.01,
                                      batch_size=4, eval_batch_size=4, tokenized_cache=False)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    last = batch["attention_mask"].sum(1) - 1  # training, padded: each row's last real token
    assert (batch["input_ids"][torch.arange(len(last)), last] == reward_token).all()
    layout, why = packing_support(bundle.model)
    assert layout is not None, why
    packed = pack_batch(batch["input_ids"], batch["attention_mask"], layout)  # training, packed
    assert (packed["input_ids"][0, packed["reward_index"]] == reward_token).all()

    sequences = [p.chosen_ids for p in datamodule.train_pairs] + [p.rejected_ids for p in datamodule.train_pairs]
    scored = score_sequences(bundle.model, sequences, bundle.tokenizer.pad_token_id)  # evaluation
    export = export_reward_model(bundle, tmp_path / "export")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    with torch.no_grad():
        for pair, chosen_ids, reward in zip(pairs, sequences, scored):
            ids = tokenizer.apply_chat_template(pair.chosen, tokenize=True, return_dict=True, return_tensors="pt")
            assert ids["input_ids"][0].tolist() == chosen_ids and chosen_ids[-1] == reward_token
            assert model(**ids).logits.item() == pytest.approx(reward, abs=1e-5)
