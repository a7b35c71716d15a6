"""Throughput layouts: padding-free packing of sequences, and fused sibling projections.

**Packing**: all sequences of a batch share one row and attend only to themselves.

A padded batch ``input_ids[S, L]`` (right padding, ``attention_mask`` marks the real tokens) is
repacked, on the host and before it moves to the device, into ``input_ids[1, T]``, ``T`` the
batch's real tokens, so every linear layer runs on real tokens only (real-token fraction 1.0):

* ``position_ids`` restart at 0 for every sequence; ``cu_seqlens`` ``[S + 1]`` (int32) holds the
  boundaries, and ``segment_lengths`` the sequences' lengths as host integers, so no step waits for the
  device to read them back.
* Attention never crosses a boundary:

  - ``flash_attention_2/3`` (decoders, GPU): transformers calls flash-attn's varlen kernel with the
    boundaries rmlab passes (``cu_seq_lens_q/k``, ``max_length_q/k``).
  - ``sdpa``: the model's attention is switched to :func:`segment_attention` (registered with
    transformers as ``rmlab_segments``). On CUDA in 16-bit it runs a variable-length kernel over the whole
    row (:func:`varlen_kernel`: flash-attn's when installed, else torch's own); elsewhere (the CPU, where
    it measured fastest) ``scaled_dot_product_attention`` on each sequence's slice (causal for decoders).
    Either way attention costs ``Σ L_i²`` rather than ``S · L_max²``, and no mask is built
    (:func:`segment_mask`). Called without boundaries (padded batches: validation, evaluation, export)
    it is transformers' own sdpa attention, unchanged.
* The reward of each sequence is read where the unpacked model reads it: decoders at their last
  token (the EOS), BERT-style encoders at their first token ([CLS]) through the pooler, dropout and
  classifier. A packed BERT runs its last layer only at each [CLS] (:func:`last_encoder_layer_at`:
  keys and values from every token, the rest at [CLS]), since the reward reads nothing else there.
  The rewards come back in the batch's row order, equal to the padded forward's
  (``tests/test_packing.py`` checks rewards and gradients for a Llama, MiniLM and LoRA).

:func:`packing_support` says whether a model can be packed; anything else (eager attention, which
Gemma-2 needs for its soft-capping, other encoder heads, RoBERTa's offset position ids, ...) falls
back to padded, length-grouped batches.

**Fused projections** (:func:`fuse_projections`): the query, key and value projections of an
attention layer read the same input, so they are computed as one GEMM of three times the width
(``[T, d] × [d, 3d]``) and split; on CPU the separate ``d × d`` products run at about half the speed
of the wider one. The parameters stay the separate ``query/key/value`` (or ``q/k/v_proj``) weights,
so checkpoints, the optimizer and exports see no difference; only the module class changes.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from rmlab.model import ENCODER_TYPES

PACKED_ENCODER_TYPES = {"bert"}  # BertPooler + Linear classifier on [CLS]; absolute position ids from 0
SEGMENT_ATTENTION = "rmlab_segments"
VARLEN_ATTENTION = {"flash_attention_2", "flash_attention_3"}


VarlenKernel = Callable[..., Optional[torch.Tensor]]  # (q, k, v [T, heads, d], cu_seqlens, max_len, causal, scale, dropout)


def _flash_attn_kernel(varlen: Callable) -> VarlenKernel:
    def run(q, k, v, cu_seqlens, max_len, causal, scale, dropout):
        return varlen(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, dropout_p=dropout, softmax_scale=scale,
                      causal=causal)
    return run


def _torch_varlen_kernel(varlen: Callable) -> VarlenKernel:
    """torch's ``varlen_attn``, whose keywords changed between releases: causal is ``window_size=(-1, 0)`` or
    ``is_causal``; grouped-query attention ``enable_gqa`` or repeated key/value heads. It has no dropout."""
    accepts = inspect.signature(varlen).parameters

    def run(q, k, v, cu_seqlens, max_len, causal, scale, dropout):
        if dropout or (scale is not None and "scale" not in accepts and scale != q.shape[-1] ** -0.5):
            return None
        options: dict[str, Any] = {"scale": scale} if "scale" in accepts else {}
        if "window_size" in accepts:
            options["window_size"] = (-1, 0) if causal else (-1, -1)
        else:
            options["is_causal"] = causal
        if k.shape[1] != q.shape[1]:
            if "enable_gqa" in accepts:
                options["enable_gqa"] = True
            else:
                k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        return varlen(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **options)
    return run


@functools.lru_cache(maxsize=1)
def installed_varlen_kernel() -> tuple[Optional[VarlenKernel], str]:
    """(kernel, name): flash-attn's ``flash_attn_varlen_func`` when installed, else torch's
    ``torch.nn.attention.varlen.varlen_attn`` (newer torch releases), else ``(None, "")``."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        pass
    else:
        return _flash_attn_kernel(flash_attn_varlen_func), "flash_attn"
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, ""
    return _torch_varlen_kernel(varlen_attn), "torch.nn.attention.varlen"


def varlen_kernel(query: Any) -> Optional[VarlenKernel]:
    """The variable-length kernel for this query: on CUDA in fp16/bf16 (what the kernels take), if one is
    installed; None elsewhere (the per-sequence loop runs)."""
    if query.device.type != "cuda" or query.dtype not in (torch.float16, torch.bfloat16):
        return None
    return installed_varlen_kernel()[0]


def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                      segment_lengths: Optional[Sequence[int]] = None, cu_seq_lens_q: Optional[torch.Tensor] = None,
                      **kwargs: Any):
    """Attention within each packed sequence (``query [1, heads, T, head_dim]``, sequences of
    ``segment_lengths`` tokens, boundaries ``cu_seq_lens_q``); transformers' sdpa attention without them."""
    if segment_lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    causal = bool(getattr(module, "is_causal", False))
    kernel = varlen_kernel(query)
    if kernel is not None:
        out = kernel(*(t[0].transpose(0, 1) for t in (query, key, value)), cu_seq_lens_q, max(segment_lengths),
                     causal, scaling, dropout)
        if out is not None:
            return out.unsqueeze(0), None
    grouped = query.shape[1] != key.shape[1]  # grouped-query attention
    lengths = list(segment_lengths)
    # Split along the tokens of the [1, T, heads, head_dim] layout the projections produced (split, not slices:
    # the backward of a split is one concatenation, that of each slice a full-size zero tensor). The outputs then
    # concatenate straight into the [1, T, heads, head_dim] the caller wants (no transpose + contiguous copy),
    # and the gradients of q/k/v concatenate into the layout of the projections' outputs (no copy either).
    queries, keys, values = (t.transpose(1, 2).split(lengths, 1) for t in (query, key, value))
    outputs = [torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout, scale=scaling, is_causal=causal,
        enable_gqa=grouped).transpose(1, 2) for q, k, v in zip(queries, keys, values)]
    return torch.cat(outputs, dim=1), None


def segment_mask(*args: Any, **kwargs: Any) -> Optional[torch.Tensor]:
    """The mask for ``rmlab_segments``: sdpa's for padded batches; none for packed ones, which come without an
    attention mask (:func:`segment_attention` keeps their sequences apart, so the ``T × T`` mask transformers
    would build from the restarting position ids would go unused)."""
    return None if kwargs.get("attention_mask") is None else sdpa_mask(*args, **kwargs)


AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
AttentionMaskInterface.register(SEGMENT_ATTENTION, segment_mask)


def unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@dataclass(frozen=True)
class PackingLayout:
    """How a model is run packed: where its reward is read and how attention keeps sequences apart."""

    reward_at: str  # "last" (decoders) | "first" (encoders)
    attention: str  # SEGMENT_ATTENTION, or a flash-attention implementation (varlen from the position ids)


def packing_support(model: Any) -> tuple[Optional[PackingLayout], str]:
    """``(layout, "")`` when the model's rewards can be computed packed, else ``(None, why not)``."""
    inner = unwrap(model)
    adapters = getattr(model, "peft_config", None) or {}
    if any(str(getattr(c, "peft_type", "")).rsplit(".", 1)[-1] != "LORA" for c in adapters.values()):
        return None, "only LoRA adapters are packed (others change the forward itself)"
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "num_labels", 1) != 1:
        return None, "not a 1-label sequence-classification model"
    attention = getattr(config, "_attn_implementation", None) or "eager"
    base = getattr(inner, "base_model", None)
    if base is None or base is inner or "position_ids" not in inspect.signature(base.forward).parameters:
        return None, "the base model takes no position_ids"
    if getattr(config, "is_encoder_decoder", False):
        return None, "encoder-decoder models are not packed"
    packed_attention = attention if attention in VARLEN_ATTENTION else SEGMENT_ATTENTION
    if attention not in VARLEN_ATTENTION | {"sdpa", SEGMENT_ATTENTION}:
        return None, f"attention {attention} is kept as asked; packing needs sdpa or flash-attention"
    if config.model_type in PACKED_ENCODER_TYPES:
        if getattr(base, "pooler", None) is None or not isinstance(getattr(inner, "classifier", None), torch.nn.Linear):
            return None, "no pooler + linear classifier head"
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            return None, f"position_embedding_type={config.position_embedding_type}"
        if config.is_decoder or config.add_cross_attention:
            return None, "BERT as a decoder or with cross-attention is not packed"
        if packed_attention != SEGMENT_ATTENTION:
            return None, f"encoders are packed through sdpa, not {attention}"
        return PackingLayout("first", packed_attention), ""
    if config.model_type in ENCODER_TYPES:
        return None, f"{config.model_type} encoders are not packed (only {sorted(PACKED_ENCODER_TYPES)})"
    if not hasattr(getattr(inner, "score", None), "weight"):
        return None, "no decoder reward head (`score`)"
    return PackingLayout("last", packed_attention), ""


def pack_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, layout: PackingLayout) -> dict[str, Any]:
    """Repack a right-padded batch (host tensors) into one row. Keys: ``input_ids``, ``position_ids``
    ``[1, T]``, ``cu_seqlens`` ``[S + 1]`` (int32 sequence boundaries), ``segment_lengths`` (the sequences'
    lengths, a tuple of host integers) and ``reward_index`` ``[S]`` (position of each sequence's reward
    token, in the input row order)."""
    real = attention_mask.bool()
    lengths = attention_mask.sum(1)
    cu_seqlens = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    position = torch.arange(input_ids.shape[1]).expand_as(input_ids)[real]  # 0.. within each sequence
    reward_index = cu_seqlens[1:] - 1 if layout.reward_at == "last" else cu_seqlens[:-1]
    return {"input_ids": input_ids[real].unsqueeze(0), "position_ids": position.unsqueeze(0),
            "cu_seqlens": cu_seqlens.to(torch.int32), "segment_lengths": tuple(lengths.tolist()),
            "reward_index": reward_index}


def last_encoder_layer_at(layer: Any, hidden: torch.Tensor, reward_index: torch.Tensor,
                          lengths: list[int]) -> torch.Tensor:
    """A BERT layer's output ``[S, d]`` at the reward positions only (each sequence's [CLS]).

    Keys and values come from every token of the sequence; queries, the attention output and the
    feed-forward only from [CLS]. The reward reads nothing else of the last layer, so this equals the
    full layer there (and so do the gradients), at a fraction of its cost."""
    attention = layer.attention.self
    tokens = hidden[0]
    heads = (-1, attention.num_attention_heads, attention.attention_head_size)
    queries = attention.query(tokens[reward_index]).view(heads).transpose(0, 1)  # [heads, S, head_dim]
    keys = attention.key(tokens).view(heads).transpose(0, 1)  # [heads, T, head_dim]
    values = attention.value(tokens).view(heads).transpose(0, 1)
    dropout = attention.dropout.p if attention.training else 0.0
    context = [torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=attention.scaling)
               for q, k, v in zip(queries.split(1, 1), keys.split(lengths, 1), values.split(lengths, 1))]
    context = torch.cat(context, 1).transpose(0, 1).reshape(len(lengths), -1)
    return layer.feed_forward_chunk(layer.attention.output(context, tokens[reward_index]))


def packed_rewards(model: Any, batch: dict[str, Any], layout: PackingLayout) -> torch.Tensor:
    """One reward per sequence of a :func:`pack_batch` batch, in the order of the padded rows.

    With segment attention, the model's attention implementation becomes ``rmlab_segments`` (for good:
    a recomputing backward under gradient checkpointing must see it too; padded forwards are unchanged).
    The boundaries reach the attention as transformers' variable-length keywords, plus the host lengths."""
    inner = unwrap(model)
    base = inner.base_model
    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    longest = max(batch["segment_lengths"])
    extra: dict[str, Any] = {"cu_seq_lens_q": batch["cu_seqlens"], "cu_seq_lens_k": batch["cu_seqlens"],
                             "max_length_q": longest, "max_length_k": longest}
    if layout.attention == SEGMENT_ATTENTION:
        inner.config._attn_implementation = SEGMENT_ATTENTION
        extra["segment_lengths"] = batch["segment_lengths"]
    if layout.reward_at == "first":
        *layers, last = base.encoder.layer
        hidden = base.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids),
                                 position_ids=position_ids)
        for layer in layers:
            hidden = layer(hidden, None, **extra)
        pooled = base.pooler(last_encoder_layer_at(last, hidden, batch["reward_index"],
                                                   list(batch["segment_lengths"])).unsqueeze(1))
        dropout = getattr(inner, "dropout", None)
        logits = inner.classifier(dropout(pooled) if dropout is not None else pooled)
    else:
        hidden = base(input_ids=input_ids, attention_mask=None, position_ids=position_ids, use_cache=False,
                      **extra).last_hidden_state
        logits = inner.score(hidden[0, batch["reward_index"]])
    return logits.squeeze(-1).float()


# --------------------------------------------------------------------------- fused sibling projections
SIBLING_PROJECTIONS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


class _SiblingGroup:
    """Computes the siblings' outputs in one GEMM when the first of them is called with an input."""

    def __init__(self, linears: list[torch.nn.Linear]) -> None:
        self.linears, self.sizes = linears, [linear.out_features for linear in linears]
        self.input: Optional[torch.Tensor] = None
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.taken: list[bool] = []

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self.input is not x or self.taken[index]:
            weight = torch.cat([linear.weight for linear in self.linears])
            bias = torch.cat([linear.bias for linear in self.linears]) if self.linears[0].bias is not None else None
            self.outputs = torch.nn.functional.linear(x, weight, bias).split(self.sizes, dim=-1)
            self.input, self.taken = x, [False] * len(self.linears)
        self.taken[index] = True
        out = self.outputs[index]
        if all(self.taken):  # hold no activations past the layer
            self.input, self.outputs = None, ()
        return out


class FusedSiblingLinear(torch.nn.Linear):
    """An ``nn.Linear`` (same parameters) whose output comes from its group's single GEMM."""

    _sibling_group: _SiblingGroup
    _sibling_index: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._sibling_group.output(x, self._sibling_index)


def fuse_projections(model: Any) -> int:
    """Fuse every attention layer's plain ``nn.Linear`` q/k/v projections (same input size, all or none
    with a bias); returns how many layers were fused. LoRA-wrapped or already fused layers are left."""
    fused = 0
    for module in unwrap(model).modules():
        for names in SIBLING_PROJECTIONS:
            linears = [getattr(module, name, None) for name in names]
            if not all(type(linear) is torch.nn.Linear for linear in linears):
                continue
            if len({linear.in_features for linear in linears}) != 1 or \
                    len({linear.bias is None for linear in linears}) != 1 or \
                    len({(linear.weight.device, linear.weight.dtype) for linear in linears}) != 1:
                continue
            group = _SiblingGroup(linears)
            for index, linear in enumerate(linears):
                linear.__class__ = FusedSiblingLinear
                linear._sibling_group, linear._sibling_index = group, index
            fused += 1
    return fused
