"""Throughput layouts: padding-free packing of sequences, and fused sibling projections.

**Packing**: several sequences share one row of the batch and attend only to themselves.

A padded batch ``input_ids[S, L]`` (right padding, ``attention_mask`` marks the real tokens) is
repacked, on the host and before it moves to the device, into ``input_ids[R, W]`` with ``R <= S``:

* :func:`plan_rows` places the sequences into rows of ``width`` tokens, first-fit decreasing
  (deterministic: ties keep the input order). ``width`` is the longest sequence of the batch when
  attention is computed densely under a mask (sdpa, eager: a row costs ``W²`` there, so rows never
  get longer than the padded batch was), and the whole batch in one row for flash-attention 2,
  whose varlen kernel never looks across sequences.
* ``position_ids`` restart at 0 for every sequence (and for the padding at the end of a row).
* Decoders get ``attention_mask=None``: transformers (5.x, ``masking_utils.find_packed_sequence_indices``)
  then builds the block-diagonal causal mask from the restarting position ids for sdpa/eager, and
  flash-attention 2 uses them as varlen boundaries. Encoders get an explicit block-diagonal
  ``[R, 1, W, W]`` mask (transformers passes 4D masks through as they are); the padding at the end
  of a row attends to itself, so no softmax row is empty (an all-masked row gives NaN, and NaN
  times a zero gradient is still NaN in the weight gradients).
* The reward of each sequence is read where the unpacked model reads it: decoders at their last
  token (the EOS), BERT-style encoders at their first token ([CLS]) through the pooler, dropout and
  classifier. The rewards come back in the batch's row order, equal to the padded forward's
  (``tests/test_packing.py`` checks it to 1e-5 for a Llama and for MiniLM).

:func:`packing_support` says whether a model can be packed; anything else (other encoder heads,
RoBERTa's offset position ids, flash-attention on an encoder, ...) falls back to the padded batch.

**Fused projections** (:func:`fuse_projections`): the query, key and value projections of an
attention layer read the same input, so they are computed as one GEMM of three times the width
(``[T, d] × [d, 3d]``) and split; on CPU the separate ``d × d`` products run at about half the speed
of the wider one. The parameters stay the separate ``query/key/value`` (or ``q/k/v_proj``) weights,
so checkpoints, the optimizer and exports see no difference; only the module class changes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from rmlab.model import ENCODER_TYPES

PACKED_ENCODER_TYPES = {"bert"}  # BertPooler + Linear classifier on [CLS]; absolute position ids from 0
MASKED_ATTENTION = {"sdpa", "eager"}
VARLEN_ATTENTION = {"flash_attention_2", "flash_attention_3"}


def unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@dataclass(frozen=True)
class PackingLayout:
    """How a model is run packed: where its reward is read and how attention is told the boundaries."""

    reward_at: str  # "last" (decoders) | "first" (encoders)
    attention: str  # the model's attention implementation
    varlen: bool  # flash-attention: one row for the whole batch

    def width(self, lengths: Sequence[int]) -> int:
        return sum(lengths) if self.varlen else max(lengths)


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
    if config.model_type in PACKED_ENCODER_TYPES:
        if getattr(base, "pooler", None) is None or not isinstance(getattr(inner, "classifier", None), torch.nn.Linear):
            return None, "no pooler + linear classifier head"
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            return None, f"position_embedding_type={config.position_embedding_type}"
        if attention not in MASKED_ATTENTION:
            return None, f"encoders are packed with a block-diagonal mask, which {attention} does not take"
        return PackingLayout("first", attention, False), ""
    if config.model_type in ENCODER_TYPES:
        return None, f"{config.model_type} encoders are not packed (only {sorted(PACKED_ENCODER_TYPES)})"
    if not hasattr(getattr(inner, "score", None), "weight"):
        return None, "no decoder reward head (`score`)"
    if attention not in MASKED_ATTENTION | VARLEN_ATTENTION:
        return None, f"attention {attention} does not read packed position ids"
    return PackingLayout("last", attention, attention in VARLEN_ATTENTION), ""


def plan_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: the sequence indices of each row (no row over ``width`` tokens)."""
    if lengths and max(lengths) > width:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit a row of {width}")
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for row, room in enumerate(free):
            if lengths[index] <= room:
                rows[row].append(index)
                free[row] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(width - lengths[index])
    return rows


def pack_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, layout: PackingLayout,
               pad_token_id: int) -> dict[str, torch.Tensor]:
    """Repack a right-padded batch (host tensors). Keys: ``input_ids``, ``position_ids`` ``[R, W]``,
    ``segment_ids`` ``[R, W]`` (the sequence index, ``-1`` on padding), ``reward_index`` ``[S]``
    (flat position of each sequence's reward token, in the input row order)."""
    lengths = attention_mask.sum(1).tolist()
    width = layout.width(lengths)
    rows = plan_rows(lengths, width)
    starts = [0] * len(lengths)
    row_of = [0] * len(lengths)
    filled = []
    for row, members in enumerate(rows):
        offset = 0
        for index in members:
            starts[index], row_of[index] = offset, row
            offset += lengths[index]
        filled.append(offset)
    real = attention_mask.bool()
    length_t = torch.tensor(lengths, dtype=torch.long)
    first = torch.tensor(row_of, dtype=torch.long) * width + torch.tensor(starts, dtype=torch.long)
    position = torch.arange(input_ids.shape[1]).expand_as(input_ids)[real]  # 0.. within each sequence
    sequence = torch.arange(len(lengths)).repeat_interleave(length_t)
    target = first[sequence] + position
    packed_ids = torch.full((len(rows) * width,), pad_token_id, dtype=input_ids.dtype)
    packed_ids[target] = input_ids[real]
    # padding at a row's end restarts at 0 too: a segment of its own, never merged into the last sequence
    positions = (torch.arange(width) - torch.tensor(filled).unsqueeze(1)).clamp(min=0).reshape(-1)
    positions[target] = position
    segments = torch.full((len(rows) * width,), -1, dtype=torch.long)
    segments[target] = sequence
    reward_index = first + (length_t - 1 if layout.reward_at == "last" else 0)
    return {"input_ids": packed_ids.view(len(rows), width), "position_ids": positions.view(len(rows), width),
            "segment_ids": segments.view(len(rows), width), "reward_index": reward_index}


def block_diagonal_mask(segment_ids: torch.Tensor, attention: str, dtype: torch.dtype) -> torch.Tensor:
    """``[R, 1, W, W]``: a token attends to the tokens of its own sequence (padding to its row's padding)."""
    allowed = (segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)).unsqueeze(1)
    if attention == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)


def packed_rewards(model: Any, batch: dict[str, torch.Tensor], layout: PackingLayout) -> torch.Tensor:
    """One reward per sequence of a :func:`pack_batch` batch, in the order of the padded rows."""
    inner = unwrap(model)
    base = inner.base_model
    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    if layout.reward_at == "first":
        dtype = next(base.parameters()).dtype
        mask = block_diagonal_mask(batch["segment_ids"], layout.attention, dtype)
        hidden = base(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        chosen = hidden.reshape(-1, hidden.shape[-1])[batch["reward_index"]]
        pooled = base.pooler(chosen.unsqueeze(1))
        dropout = getattr(inner, "dropout", None)
        logits = inner.classifier(dropout(pooled) if dropout is not None else pooled)
    else:
        hidden = base(input_ids=input_ids, attention_mask=None, position_ids=position_ids,
                      use_cache=False).last_hidden_state
        logits = inner.score(hidden.reshape(-1, hidden.shape[-1])[batch["reward_index"]])
    return logits.squeeze(-1).float()


def real_token_fraction(lengths: Sequence[int], layout: Optional[PackingLayout]) -> tuple[int, int]:
    """(real tokens, processed tokens) of one batch: padded to its longest, or packed per ``layout``."""
    if not lengths:
        return 0, 0
    if layout is None:
        return sum(lengths), len(lengths) * max(lengths)
    width = layout.width(lengths)
    return sum(lengths), len(plan_rows(lengths, width)) * width


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
