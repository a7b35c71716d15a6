"""Packed attention on CUDA (rmlab/packing.py): a variable-length kernel is there, and a packed bf16 forward and
backward through it equals the per-sequence loop and the padded forward (tests/test_packed_attention.py tests the
choice and the plumbing on CPU with stand-in kernels)."""

from __future__ import annotations

import pytest
import torch
from conftest import write_topic_pairs

import rmlab.packing as packing

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_variable_length_kernel_is_installed():
    """flash-attn's, or torch's own ``varlen_attn``: without either, packed GPU batches fall back to the loop."""
    kernel, name = packing.installed_varlen_kernel()
    assert kernel is not None, "neither flash_attn nor torch.nn.attention.varlen: packed attention loops per sequence"
    print(f"varlen kernel: {name}")


def rewards_and_gradients(model, batch, packed: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from rmlab.scoring import batch_rewards

    layout, _ = packing.packing_support(model)
    if packed:
        batch = packing.pack_batch(batch["input_ids"], batch["attention_mask"], layout)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # as bf16-mixed trains
        rewards = batch_rewards(model, {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}, layout)
    half = rewards.shape[0] // 2
    torch.nn.functional.logsigmoid(rewards[:half] - rewards[half:]).mean().neg().backward()
    return rewards.detach().float().cpu(), {n: p.grad.float().cpu() for n, p in model.named_parameters()}


def test_packed_bf16_forward_and_backward_on_the_kernel_equal_the_loop_and_padded(tiny_llama_dir, tmp_path, monkeypatch):
    from rmlab.data.datamodule import PairCollator
    from rmlab.data.formats import load_pairs
    from rmlab.data.tokenize import PairTokenizer
    from rmlab.model import build_reward_model

    bundle = build_reward_model(str(tiny_llama_dir), attn_implementation="sdpa")
    model = bundle.model.cuda().train()
    pairs = load_pairs(str(write_topic_pairs(tmp_path / "pairs.jsonl", 16)))[0]
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, 64)
    batch = PairCollator(bundle.tokenizer.pad_token_id)([pair_tokenizer(pair) for pair in pairs])
    calls = []
    kernel = packing.varlen_kernel
    monkeypatch.setattr(packing, "varlen_kernel", lambda query: calls.append(query.dtype) or kernel(query))
    on_kernel = rewards_and_gradients(model, batch, packed=True)
    assert calls and set(calls) == {torch.bfloat16}  # every layer's packed attention ran in bf16 on CUDA
    monkeypatch.setattr(packing, "varlen_kernel", lambda query: None)
    on_loop = rewards_and_gradients(model, batch, packed=True)
    padded = rewards_and_gradients(model, batch, packed=False)
    scale = padded[0].abs().max().item()
    for other in (on_loop, padded):  # a few bf16 roundings (2^-8) at the rewards' and gradients' scale
        torch.testing.assert_close(on_kernel[0], other[0], atol=8 * 2**-8 * scale, rtol=0)
        for name, grad in other[1].items():
            bound = 8 * 2**-8 * grad.abs().max().item() + 1e-6
            torch.testing.assert_close(on_kernel[1][name], grad, atol=bound, rtol=0, msg=name)
