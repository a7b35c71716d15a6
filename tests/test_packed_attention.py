"""How a packed batch attends (rmlab/packing.py): no mask is built, no boundary is read back from the device, and on
CUDA in 16-bit a variable-length kernel runs the whole row (flash-attn's, else torch's own), chosen by the query's
device and dtype. CPU has no such kernel: the kernels here are stand-ins with their real signatures that compute
attention per sequence, so the dispatch, the argument plumbing and the result are tested; tests/gpu runs them."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface

import rmlab.packing as packing
from rmlab.data.datamodule import PairCollator
from rmlab.data.formats import load_pairs
from rmlab.data.tokenize import PairTokenizer
from rmlab.packing import SEGMENT_ATTENTION, pack_batch, packed_rewards, packing_support, segment_attention
from rmlab.scoring import forward_rewards


@pytest.fixture(scope="module")
def llama(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama (sdpa) and a padded batch of 16 sequences of different lengths."""
    from conftest import write_topic_pairs
    from rmlab.model import build_reward_model

    bundle = build_reward_model(str(tiny_llama_dir), attn_implementation="sdpa")
    data = write_topic_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", 8)
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, 64)
    batch = PairCollator(bundle.tokenizer.pad_token_id)([pair_tokenizer(p) for p in load_pairs(str(data))[0]])
    return bundle.model.eval(), batch


def reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """torch 2.13's ``varlen_attn`` signature (``[T, heads, d]`` tensors), computed per sequence with sdpa."""
    bounds = cu_seq_q.tolist()
    assert cu_seq_q.dtype == torch.int32 and max_q == max_k == max(b - a for a, b in zip(bounds, bounds[1:]))
    return torch.cat([F.scaled_dot_product_attention(
        *(t[a:b].transpose(0, 1) for t in (query, key, value)), scale=scale, is_causal=tuple(window_size) == (-1, 0),
        enable_gqa=enable_gqa).transpose(0, 1) for a, b in zip(bounds, bounds[1:])])


def older_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """An older ``varlen_attn``: ``is_causal`` instead of ``window_size``, no ``scale`` nor ``enable_gqa``."""
    assert key.shape[1] == query.shape[1], "grouped heads must arrive repeated"
    return reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k,
                            window_size=(-1, 0) if is_causal else (-1, -1))


def test_packed_forwards_build_no_mask_and_read_no_boundary_back(llama, monkeypatch):
    """The packed row's boundaries come as host integers (``segment_lengths``); ``cu_seqlens`` is on the meta
    device here, so reading its values (a device sync per step on CUDA) would fail. transformers built a
    ``T × T`` sdpa mask for every packed forward, which segment attention never used: none is built now."""
    model, batch = llama
    layout, _ = packing_support(model)
    packed = pack_batch(batch["input_ids"], batch["attention_mask"], layout)
    masks = []
    original = AttentionInterface._global_mapping[SEGMENT_ATTENTION]

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, SEGMENT_ATTENTION, spy)
    with torch.no_grad():
        padded = forward_rewards(model, batch["input_ids"], batch["attention_mask"])
        masks.clear()
        got = packed_rewards(model, {**packed, "cu_seqlens": packed["cu_seqlens"].to("meta")}, layout)
    assert len(masks) == model.config.num_hidden_layers and all(mask is None for mask in masks)
    torch.testing.assert_close(got, padded, atol=1e-5, rtol=0)


def test_the_kernel_is_chosen_by_the_querys_device_and_dtype(monkeypatch):
    kernel = object()
    monkeypatch.setattr(packing, "installed_varlen_kernel", lambda: (kernel, "stand-in"))
    cuda = torch.device("cuda")  # a device object only: the choice reads .device.type and .dtype
    assert packing.varlen_kernel(SimpleNamespace(device=cuda, dtype=torch.bfloat16)) is kernel
    assert packing.varlen_kernel(SimpleNamespace(device=cuda, dtype=torch.float16)) is kernel
    assert packing.varlen_kernel(SimpleNamespace(device=cuda, dtype=torch.float32)) is None  # the kernels take 16-bit
    assert packing.varlen_kernel(torch.zeros(1, dtype=torch.bfloat16)) is None  # CPU: the per-sequence loop


def test_flash_attn_then_torchs_varlen_then_none(monkeypatch):
    """flash-attn's kernel when installed, else torch's ``varlen_attn`` when this torch has it, else none."""
    calls = []
    flash = types.ModuleType("flash_attn")
    flash.flash_attn_varlen_func = lambda *args, **kwargs: calls.append((args, kwargs))
    monkeypatch.setitem(sys.modules, "flash_attn", flash)
    packing.installed_varlen_kernel.cache_clear()
    try:
        kernel, name = packing.installed_varlen_kernel()
        assert name == "flash_attn"
        q = torch.zeros(5, 4, 8)
        kernel(q, q, q, "cu", 3, True, 0.25, 0.1)
        assert calls == [((q, q, q, "cu", "cu", 3, 3), {"dropout_p": 0.1, "softmax_scale": 0.25, "causal": True})]
        monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed
        packing.installed_varlen_kernel.cache_clear()
        assert packing.installed_varlen_kernel()[1] == "torch.nn.attention.varlen"  # torch 2.13 has it
        monkeypatch.setitem(sys.modules, "torch.nn.attention.varlen", None)  # a torch without it
        packing.installed_varlen_kernel.cache_clear()
        assert packing.installed_varlen_kernel() == (None, "")
    finally:
        packing.installed_varlen_kernel.cache_clear()


@pytest.mark.parametrize("varlen", [reference_varlen, older_varlen], ids=["window_size", "is_causal"])
@pytest.mark.parametrize("causal", [True, False])
def test_torchs_varlen_kernel_equals_attention_per_sequence(varlen, causal):
    """Both keyword generations of torch's ``varlen_attn``; grouped-query heads (4 query heads, 2 key/value)."""
    kernel = packing._torch_varlen_kernel(varlen)
    generator = torch.Generator().manual_seed(0)
    lengths = (3, 1, 5)
    query = torch.randn(1, 4, 9, 8, generator=generator, dtype=torch.float64)
    key, value = (torch.randn(1, 2, 9, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    module = SimpleNamespace(is_causal=causal)
    expected, _ = segment_attention(module, query, key, value, None, segment_lengths=lengths)  # the loop (CPU)
    cu_seqlens = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    got = kernel(*(t[0].transpose(0, 1) for t in (query, key, value)), cu_seqlens, 5, causal, None, 0.0)
    torch.testing.assert_close(got.unsqueeze(0), expected)
    assert kernel(query[0], key[0], value[0], cu_seqlens, 5, causal, None, 0.1) is None  # no dropout: the loop runs


def test_a_packed_forward_on_the_kernel_equals_the_padded_forward(llama, monkeypatch):
    """The whole path as on CUDA: every layer's attention runs the kernel (torch's, here a stand-in) on the
    row's int32 boundaries, and the rewards equal the padded model's."""
    model, batch = llama
    calls = []
    kernel = packing._torch_varlen_kernel(reference_varlen)
    monkeypatch.setattr(packing, "varlen_kernel", lambda query: lambda *args: calls.append(args[3:6]) or kernel(*args))
    layout, _ = packing_support(model)
    packed = pack_batch(batch["input_ids"], batch["attention_mask"], layout)
    with torch.no_grad():
        padded = forward_rewards(model, batch["input_ids"], batch["attention_mask"])
        got = packed_rewards(model, packed, layout)
    torch.testing.assert_close(got, padded, atol=1e-5, rtol=0)
    assert len(calls) == model.config.num_hidden_layers
    assert all(cu is packed["cu_seqlens"] and longest == max(packed["segment_lengths"]) and causal
               for cu, longest, causal in calls)
