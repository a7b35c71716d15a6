"""PreferencePair → TokenizedPair: the chat template, the reward token and the truncation policy.

**Template and reward token.** Conversations are rendered with the tokenizer's chat template as is,
and a decoder's reward is read at the last token of the rendering: the token that closes the final
assistant turn. When the template closes turns with a special token of its own (right after the
content, or followed only by whitespace), nothing is added:

* Llama-3.1-Instruct: ``...<|eot_id|>`` (its EOS): the reward is read at ``<|eot_id|>``;
* Qwen2.5-Instruct: ``...<|im_end|>\n``: read at that final ``\n`` (no second ``<|im_end|>``);
* Gemma-2-it: ``...<end_of_turn>\n``: read at that final ``\n``, as Skywork's released Gemma-2 reward
  model reads it (no ``<eos>`` is appended).

Otherwise (no closing special token) rmlab appends ``{{ eos_token }}`` to the template, so the reward is
read at an EOS. Tokenizers with no template get :data:`FALLBACK_CHAT_TEMPLATE`:
``<bos|cls>role: content\n ... <eos|sep>``. The template rmlab used is exported with the model, and
``tokenizer(text, add_special_tokens=False)`` of the rendered text (what ``apply_chat_template(tokenize=True)``
does) gives the same ids, so training, evaluation and the exported model read the same token.

**Truncation** (``max_length``). The response is the part of a sequence after the prompt turns
(the longest token prefix that chosen, rejected and the rendered prompt turns, with the
template's generation prompt, share). Each sequence longer than ``max_length`` loses tokens from the
start of the conversation (after the leading BOS/CLS), so the most recent turns and the whole response
are kept. A pair whose longer response, plus the leading special token, does not fit is dropped from
training and counted as ``response_too_long``; evaluation never drops a pair: it cuts such a pair the
same way, into the response (the response's end and the reward token stay), and counts it as truncated. A
completion scored on its own (RewardBench 2: :meth:`PairTokenizer.completion`) is cut and counted likewise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from rmlab.data.formats import BadRow, PreferencePair

FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else (cls_token if cls_token else '') }}"
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{{ eos_token if eos_token else (sep_token if sep_token else '') }}"
)
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@dataclass(frozen=True)
class TokenizedPair:
    chosen_ids: list[int]
    rejected_ids: list[int]
    subset: str
    margin: Optional[float] = None
    truncated: bool = False  # evaluation only: the response did not fit max_length and lost its start

    @property
    def num_tokens(self) -> int:
        return len(self.chosen_ids) + len(self.rejected_ids)


def end_token(tokenizer: Any) -> Optional[str]:
    """The EOS token, or SEP for encoders without one."""
    return tokenizer.eos_token or tokenizer.sep_token


def closes_with_special_token(text: str, tokenizer: Any) -> bool:
    """True when ``text``, trailing whitespace aside, ends with one of the tokenizer's special tokens."""
    stripped = text.rstrip()
    specials = set(tokenizer.all_special_tokens) | {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                                                    if getattr(t, "special", False)}
    return any(token and stripped.endswith(token) for token in specials)


def reward_chat_template(tokenizer: Any, override: Optional[str] = None) -> str:
    """The template rmlab renders with: ``override``, the tokenizer's own, or the fallback; EOS appended when
    the rendered conversation does not already close with a special token (see the module docstring)."""
    template = override or getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
    closing = end_token(tokenizer)
    if closing is None:
        raise ValueError("the tokenizer has neither an eos_token nor a sep_token: set one so rewards are read at it")
    rendered = tokenizer.apply_chat_template(_PROBE, chat_template=template, tokenize=False)
    if not closes_with_special_token(rendered, tokenizer):
        template += "{{ " + ("eos_token" if tokenizer.eos_token else "sep_token") + " }}"
    return template


class PairTokenizer:
    """Renders and tokenizes pairs under one template and ``max_length``."""

    def __init__(self, tokenizer: Any, chat_template: str, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_length = max_length
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        self.start_token_id = start
        self.end_token_id = self.render_ids(_PROBE)[-1]  # the reward token: every conversation ends with it

    def render_ids(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[int]:
        text = self.tokenizer.apply_chat_template(list(messages), chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def encode(self, messages: Sequence[dict]) -> list[int]:
        ids = self.render_ids(messages)
        if not ids or ids[-1] != self.end_token_id:
            raise BadRow("template_error", "the rendered conversation does not end with the template's closing "
                         f"token (id {self.end_token_id}), where the reward is read")
        return ids

    def __call__(self, pair: PreferencePair, truncate_responses: bool = False) -> TokenizedPair:
        """The pair's ids; a response too long for ``max_length`` raises ``BadRow("response_too_long")``,
        or, with ``truncate_responses`` (evaluation, which never drops a pair), is cut like the rest of
        the conversation (its start goes, the end and the reward token stay) and marked ``truncated``."""
        (chosen, rejected), prompt = self._render([pair.chosen, pair.rejected], pair.prompt)
        prompt_length = min(shared_prefix_length(chosen, rejected), shared_prefix_length(chosen, prompt))
        kept, truncated = self._cut(chosen, rejected, prompt_length, truncate_responses)
        return TokenizedPair(*kept, pair.subset, pair.margin, truncated=truncated)

    def completion(self, prompt: Sequence[dict], response: str) -> tuple[list[int], bool]:
        """``(ids, truncated)`` of the prompt turns + one assistant ``response``, scored on its own (RewardBench 2):
        cut as an evaluation pair is, never dropped; ``truncated`` when the response itself lost its start."""
        (ids,), prompt_ids = self._render([[*prompt, {"role": "assistant", "content": response}]], prompt)
        (kept, _), truncated = self._cut(ids, ids, shared_prefix_length(ids, prompt_ids), truncate_responses=True)
        return kept, truncated

    def _render(self, conversations: Sequence[Sequence[dict]], prompt: Sequence[dict]
                ) -> tuple[list[list[int]], list[int]]:
        """The ids of each conversation and of the prompt turns with the generation prompt."""
        try:
            return [self.encode(conversation) for conversation in conversations], \
                self.render_ids(prompt, add_generation_prompt=True)
        except BadRow:
            raise
        except Exception as err:  # e.g. a template that rejects this role order
            raise BadRow("template_error", str(err)[:200]) from err

    def _cut(self, chosen: list[int], rejected: list[int], prompt_length: int, truncate_responses: bool
             ) -> tuple[tuple[list[int], list[int]], bool]:
        """(the truncated ids, whether a response was cut into); see :func:`truncate_pair`."""
        try:
            return truncate_pair(chosen, rejected, self.max_length, self.start_token_id, prompt_length), False
        except BadRow:
            if not truncate_responses:
                raise
            return truncate_pair(chosen, rejected, self.max_length, self.start_token_id, prompt_length,
                                 keep_long_responses=True), True


def shared_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def truncate_pair(chosen: list[int], rejected: list[int], max_length: int, start_token_id: Optional[int],
                  prompt_length: Optional[int] = None, keep_long_responses: bool = False) -> tuple[list[int], list[int]]:
    """Apply the module's truncation policy; raise ``BadRow("response_too_long")`` when it cannot, unless
    ``keep_long_responses``: then the cut goes on into the response (its end and the reward token stay).

    ``prompt_length`` (tokens of the prompt turns) defaults to the prefix chosen and rejected share.
    """
    keep = 1 if start_token_id is not None and chosen and chosen[0] == start_token_id else 0
    if prompt_length is None:
        prompt_length = shared_prefix_length(chosen, rejected)
    prompt_length = min(prompt_length, len(chosen) - 1, len(rejected) - 1)
    longest_response = max(len(chosen), len(rejected)) - prompt_length
    if keep + longest_response > max_length and not keep_long_responses:
        raise BadRow("response_too_long",
                     f"a response of {longest_response} tokens does not fit max_length={max_length}")

    def cut(ids: list[int]) -> list[int]:
        excess = len(ids) - max_length
        return ids if excess <= 0 else ids[:keep] + ids[keep + excess:]

    return cut(chosen), cut(rejected)
