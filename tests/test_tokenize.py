"""rmlab.data.tokenize: chat template (+ fallback), EOS at the end, truncation policy."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rmlab.data.formats import BadRow, PreferencePair
from rmlab.data.tokenize import (
    FALLBACK_CHAT_TEMPLATE,
    PairTokenizer,
    TokenizedPair,
    end_token,
    reward_chat_template,
    shared_prefix_length,
    truncate_pair,
)

CONVERSATION = [{"role": "user", "content": "Hello world, how are you?"},
                {"role": "assistant", "content": "I am fine, thank you."}]
MULTI_TURN = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And the quick brown fox?"},
    {"role": "assistant", "content": "It jumps over the lazy dog."},
    {"role": "user", "content": "Write a short poem about the sea."},
    {"role": "assistant", "content": "The sea, the sky and the mountains."},
]


def ids_of(result):
    """``apply_chat_template(tokenize=True)`` returns a BatchEncoding in transformers 5, a list before."""
    if isinstance(result, list):
        return result
    return list(result["input_ids"])


def plain(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def no_template_tokenizer(tiny_llama_no_template_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_no_template_dir)


# --------------------------------------------------------------------------- templates
def test_fallback_template_for_encoder_without_template(minilm_tokenizer):
    tok = minilm_tokenizer
    assert not getattr(tok, "chat_template", None)
    assert end_token(tok) == tok.sep_token == "[SEP]"
    template = reward_chat_template(tok)
    assert template == FALLBACK_CHAT_TEMPLATE  # already ends with [SEP]: nothing appended
    text = tok.apply_chat_template(CONVERSATION, chat_template=template, tokenize=False)
    assert text == "[CLS]user: Hello world, how are you?\nassistant: I am fine, thank you.\n[SEP]"
    pair_tokenizer = PairTokenizer(tok, template, max_length=128)
    ids = pair_tokenizer.encode(CONVERSATION)
    # Independent expectation: the BERT tokenizer's own [CLS] ... [SEP] wrapping of the plain text.
    assert ids == tok("user: Hello world, how are you?\nassistant: I am fine, thank you.\n")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids.count(tok.cls_token_id) == 1 and ids.count(tok.sep_token_id) == 1
    assert pair_tokenizer.start_token_id == tok.cls_token_id
    assert pair_tokenizer.end_token_id == tok.sep_token_id


def test_template_closing_turns_with_a_special_token_is_kept(tiny_tokenizer, tiny_chat_template):
    """The tiny template closes each turn with ``</s>\n`` (as Zephyr's does): no EOS is appended, and the reward
    token is the template's own last token, the ``\n`` (as Qwen2.5's ``<|im_end|>\n`` and Gemma-2's
    ``<end_of_turn>\n``)."""
    tok = tiny_tokenizer
    assert tok.chat_template == tiny_chat_template
    template = reward_chat_template(tok)
    assert template == tiny_chat_template
    text = tok.apply_chat_template(CONVERSATION, chat_template=template, tokenize=False)
    assert text == ("<s><|user|>\nHello world, how are you?</s>\n<|assistant|>\nI am fine, thank you.</s>\n")
    pair_tokenizer = PairTokenizer(tok, template, 512)
    ids = pair_tokenizer.encode(CONVERSATION)
    expected = ([tok.bos_token_id] + plain(tok, "<|user|>\nHello world, how are you?") + [tok.eos_token_id]
                + plain(tok, "\n<|assistant|>\nI am fine, thank you.") + [tok.eos_token_id] + plain(tok, "\n"))
    assert ids == expected
    assert ids[-1] == pair_tokenizer.end_token_id == plain(tok, "\n")[0] and ids[-2] == tok.eos_token_id
    assert ids.count(tok.bos_token_id) == 1 and ids.count(tok.eos_token_id) == 2  # no second BOS, no extra EOS


def test_tiny_llama_without_template_uses_fallback(no_template_tokenizer):
    tok = no_template_tokenizer
    assert not getattr(tok, "chat_template", None)
    template = reward_chat_template(tok)
    assert template == FALLBACK_CHAT_TEMPLATE
    ids = PairTokenizer(tok, template, 512).encode(CONVERSATION)
    expected = ([tok.bos_token_id] + plain(tok, "user: Hello world, how are you?\nassistant: I am fine, thank you.\n")
                + [tok.eos_token_id])
    assert ids == expected


def test_template_already_ending_with_eos_is_unchanged(tiny_tokenizer):
    override = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    assert reward_chat_template(tiny_tokenizer, override) == override
    ids = PairTokenizer(tiny_tokenizer, override, 512).encode(CONVERSATION)
    assert ids[-1] == tiny_tokenizer.eos_token_id and ids[-2] != tiny_tokenizer.eos_token_id


def test_override_without_eos_gets_eos(tiny_tokenizer):
    override = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    template = reward_chat_template(tiny_tokenizer, override)
    assert template == override + "{{ eos_token }}"


@pytest.mark.parametrize("which", ["tiny", "tiny_no_template", "minilm"])
def test_apply_chat_template_tokenize_matches_pair_tokenizer(which, request):
    tok = {"tiny": lambda: request.getfixturevalue("tiny_tokenizer"),
           "tiny_no_template": lambda: request.getfixturevalue("no_template_tokenizer"),
           "minilm": lambda: request.getfixturevalue("minilm_tokenizer")}[which]()
    template = reward_chat_template(tok)
    pair_tokenizer = PairTokenizer(tok, template, 4096)
    for messages in (CONVERSATION, MULTI_TURN):
        expected = ids_of(tok.apply_chat_template(messages, chat_template=template, tokenize=True))
        assert pair_tokenizer.encode(messages) == expected


def test_pair_tokenizer_call_returns_tokenized_pair(tiny_tokenizer):
    pair_tokenizer = PairTokenizer(tiny_tokenizer, reward_chat_template(tiny_tokenizer), 512)
    pair = PreferencePair(MULTI_TURN, MULTI_TURN[:-1] + [{"role": "assistant", "content": "No."}], "chat", 1.5)
    out = pair_tokenizer(pair)
    assert isinstance(out, TokenizedPair)
    assert out.chosen_ids == pair_tokenizer.encode(pair.chosen)
    assert out.rejected_ids == pair_tokenizer.encode(pair.rejected)
    assert out.subset == "chat" and out.margin == 1.5
    assert out.num_tokens == len(out.chosen_ids) + len(out.rejected_ids)


def test_template_error_becomes_bad_row(tiny_tokenizer):
    strict = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}" \
             "{{ m['content'] }}{% endfor %}{{ eos_token }}"
    pair_tokenizer = PairTokenizer(tiny_tokenizer, strict, 512)
    pair = PreferencePair(MULTI_TURN, MULTI_TURN[:-1] + [{"role": "assistant", "content": "No."}])
    with pytest.raises(BadRow) as info:
        pair_tokenizer(pair)
    assert info.value.reason == "template_error"


def test_template_not_ending_in_eos_is_template_error(tiny_tokenizer):
    pair_tokenizer = PairTokenizer(tiny_tokenizer, "{% for m in messages %}{{ m['content'] }}{% endfor %}", 512)
    with pytest.raises(BadRow) as info:
        pair_tokenizer.encode(CONVERSATION)
    assert info.value.reason == "template_error"


# --------------------------------------------------------------------------- truncation (synthetic ids)
BOS, EOS = 1, 2
CHOSEN = [BOS, 10, 11, 12, 13, 20, 21, 22, EOS]  # prompt: BOS 10 11 12 13; response 20 21 22 EOS (4)
REJECTED = [BOS, 10, 11, 12, 13, 30, EOS]  # response 30 EOS (2)


def test_shared_prefix_length():
    assert shared_prefix_length(CHOSEN, REJECTED) == 5
    assert shared_prefix_length([1, 2, 3], [1, 2, 3]) == 3
    assert shared_prefix_length([1, 2, 3], [1, 2]) == 2
    assert shared_prefix_length([4], [1]) == 0
    assert shared_prefix_length([], [1]) == 0


def test_truncation_no_op_when_it_fits():
    assert truncate_pair(CHOSEN, REJECTED, 9, BOS) == (CHOSEN, REJECTED)
    assert truncate_pair(CHOSEN, REJECTED, 100, BOS) == (CHOSEN, REJECTED)


def test_truncation_cuts_prompt_from_left_keeping_bos():
    chosen, rejected = truncate_pair(CHOSEN, REJECTED, 7, BOS)
    assert chosen == [BOS, 12, 13, 20, 21, 22, EOS]
    assert rejected == REJECTED  # 7 tokens: fits already


def test_truncation_exact_boundary_response_that_exactly_fits_is_kept():
    # BOS + the longest response (4 tokens) = 5 = max_length: kept, the whole prompt after BOS is gone.
    chosen, rejected = truncate_pair(CHOSEN, REJECTED, 5, BOS)
    assert chosen == [BOS, 20, 21, 22, EOS]
    assert rejected == [BOS, 12, 13, 30, EOS]
    with pytest.raises(BadRow) as info:
        truncate_pair(CHOSEN, REJECTED, 4, BOS)
    assert info.value.reason == "response_too_long"


def test_truncation_without_start_token_cuts_plain_left():
    chosen = [10, 11, 12, 20, 21, EOS]
    rejected = [10, 11, 12, 30, EOS]
    assert truncate_pair(chosen, rejected, 4, None) == ([12, 20, 21, EOS], [11, 12, 30, EOS])
    assert truncate_pair(chosen, rejected, 3, None) == ([20, 21, EOS], [12, 30, EOS])
    with pytest.raises(BadRow):
        truncate_pair(chosen, rejected, 2, None)
    # A start id that is not at position 0 is not kept either.
    assert truncate_pair(chosen, rejected, 3, BOS) == ([20, 21, EOS], [12, 30, EOS])


def test_truncation_identical_prefix_sequences_keep_one_response_token():
    # rejected is a prefix of chosen: the response is at least the last token.
    chosen, rejected = [BOS, 10, 11, 12, EOS], [BOS, 10, 11, EOS]
    assert truncate_pair(chosen, rejected, 3, BOS) == ([BOS, 12, EOS], [BOS, 11, EOS])


def _long_prompt_pair(shared_start: str = "") -> PreferencePair:
    prompt = MULTI_TURN[:-1]
    return PreferencePair(prompt + [{"role": "assistant", "content": shared_start + "Paris is the capital."}],
                          prompt + [{"role": "assistant", "content": shared_start + "Sorry, I cannot help."}])


def test_pair_tokenizer_truncates_real_conversation(tiny_tokenizer):
    template = reward_chat_template(tiny_tokenizer)
    full = PairTokenizer(tiny_tokenizer, template, 4096)
    pair = _long_prompt_pair()
    chosen_full, rejected_full = full.encode(pair.chosen), full.encode(pair.rejected)
    response_text = "\nParis is the capital.</s>\n"
    response_ids = plain(tiny_tokenizer, response_text)
    assert chosen_full[-len(response_ids):] == response_ids
    max_length = len(response_ids) + 6
    assert len(chosen_full) > max_length and len(rejected_full) > max_length
    out = PairTokenizer(tiny_tokenizer, template, max_length)(pair)
    for truncated, original in ((out.chosen_ids, chosen_full), (out.rejected_ids, rejected_full)):
        assert len(truncated) == max_length
        assert truncated[0] == tiny_tokenizer.bos_token_id
        assert truncated[1:] == original[len(original) - max_length + 1:]
        assert truncated[-1] == full.end_token_id
    assert out.chosen_ids[-len(response_ids):] == response_ids
    # Far too small: dropped.
    with pytest.raises(BadRow) as info:
        PairTokenizer(tiny_tokenizer, template, 4)(pair)
    assert info.value.reason == "response_too_long"


def test_pair_tokenizer_truncation_keeps_cls_for_encoders(minilm_tokenizer):
    tok = minilm_tokenizer
    template = reward_chat_template(tok)
    pair = _long_prompt_pair()
    full = PairTokenizer(tok, template, 4096).encode(pair.chosen)
    out = PairTokenizer(tok, template, 16)(pair)
    assert out.chosen_ids[0] == tok.cls_token_id and out.chosen_ids[-1] == tok.sep_token_id
    assert len(out.chosen_ids) == 16 and out.chosen_ids[1:] == full[-15:]


def test_truncation_keeps_responses_that_share_their_first_words(tiny_tokenizer):
    template = reward_chat_template(tiny_tokenizer)
    shared_start = "Hello world, the quick brown fox says: "
    pair = _long_prompt_pair(shared_start)
    full = PairTokenizer(tiny_tokenizer, template, 4096)
    chosen_full, rejected_full = full.encode(pair.chosen), full.encode(pair.rejected)
    # Just enough for BOS + the part after the shared token prefix, much less than the final turn.
    max_length = 1 + max(len(chosen_full), len(rejected_full)) - shared_prefix_length(chosen_full, rejected_full) + 2
    try:
        out = PairTokenizer(tiny_tokenizer, template, max_length)(pair)
    except BadRow as bad:
        assert bad.reason == "response_too_long"
        return
    for ids, message in ((out.chosen_ids, pair.chosen[-1]), (out.rejected_ids, pair.rejected[-1])):
        assert message["content"] in tiny_tokenizer.decode(ids)
