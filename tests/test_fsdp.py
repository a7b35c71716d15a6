"""FSDP for real, on CPU: ``python -m rmlab strategy=fsdp strategy.allow_cpu=true``, 2 processes over gloo,
FULL_SHARD (rmlab/fsdp.py). Each rank holds half of the parameters outside the forward pass, as on GPUs (one GPU
cannot show this: FSDP falls back to NO_SHARD there). The run checkpoints after 2 steps and is resumed to 4; its
scoring goes through the root FSDP module, its export is the gathered full state dict, and it is compared with
the same run under DDP. A bf16-mixed run keeps the rotary buffers fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_topic_pairs
from probes import assert_fp32_rope, records
from two_process_runs import command, decay_line, rewards, run, tail

from rmlab.schemas import FSDPStrategyConfig
from rmlab.strategy import build_strategy

FSDP = ["strategy=fsdp", "strategy.allow_cpu=true"]
CONSTANT_LR = ["optimizer.scheduler.name=constant", "optimizer.warmup_ratio=0"]  # the same schedule for 2 or 4 steps


def test_fsdp_keeps_buffer_dtypes_and_runs_on_cpu_processes_when_allowed():
    """Lightning's FSDP mixed precision would cast the buffers to bf16 (RoPE's ``inv_freq``): rmlab's leaves them
    (``buffer_dtype=None``) and casts parameters and reductions as Lightning does."""
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy

    from rmlab.fsdp import CPUFSDPStrategy

    on_cpu, on_gpu = build_strategy(FSDPStrategyConfig(allow_cpu=True), "cpu", 4), build_strategy(
        FSDPStrategyConfig(allow_cpu=True), "gpu", 4)
    assert type(on_cpu) is CPUFSDPStrategy and not isinstance(on_gpu, CPUFSDPStrategy)
    lightning = FSDPStrategy()
    for strategy in (on_cpu, on_gpu, lightning):
        strategy.precision_plugin = FSDPPrecision("bf16-mixed")
    assert lightning.mixed_precision_config.buffer_dtype == torch.bfloat16
    for strategy in (on_cpu, on_gpu):
        mixed = strategy.mixed_precision_config
        assert (mixed.param_dtype, mixed.reduce_dtype, mixed.buffer_dtype) == (torch.bfloat16, torch.bfloat16, None)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fsdp")


@pytest.fixture(scope="module")
def data(work) -> Path:
    return write_topic_pairs(work / "pairs.jsonl", 96)


@pytest.fixture(scope="module")
def runs(work, data, tiny_llama_dir) -> dict:
    """DDP for 4 steps; FSDP for 2 steps (a checkpoint), then resumed to 4 (a constant learning rate, so the
    schedule does not depend on the number of steps)."""
    ddp_dir, fsdp_dir = work / "ddp" / "run", work / "fsdp" / "run"
    ddp = run(command(ddp_dir, tiny_llama_dir, data, "strategy=ddp", *CONSTANT_LR), ddp_dir.parent)
    first = run(command(fsdp_dir, tiny_llama_dir, data, *FSDP, *CONSTANT_LR, "trainer.max_steps=2"), fsdp_dir.parent)
    assert first.returncode == 0, tail(first)
    (fsdp_dir / "metrics.json").unlink()  # as if it had stopped after its step-2 checkpoint
    resumed = run(command(fsdp_dir, tiny_llama_dir, data, *FSDP, *CONSTANT_LR), fsdp_dir.parent)
    return {"ddp": (ddp_dir, ddp), "first": (fsdp_dir, first), "fsdp": (fsdp_dir, resumed)}


@pytest.mark.slow
def test_fsdp_shards_the_parameters_and_resumes_from_its_checkpoint(runs, tiny_llama_dir):
    from transformers import AutoModelForSequenceClassification

    run_dir, resumed = runs["fsdp"]
    assert resumed.returncode == 0, tail(resumed)
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.stdout + resumed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["optimizer_steps"] == 4 and metrics["eval"]["heldout"]["pairs"] > 0
    full = {n: p.numel() for n, p in AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir).named_parameters()}
    local = [{name: view["numel"] for name, view in record["outside"].items()} for record in records(run_dir)]
    assert [held.keys() for held in local] == [full.keys()] * 2
    for held in local:  # each rank holds its flat shard: about half of every tensor's elements, none in full
        assert sum(full.values()) // 2 - 2 <= sum(held.values()) <= sum(full.values()) // 2 + 2
        assert any(held[name] < full[name] for name in full)
    for record in records(run_dir):  # inside the root's forward, the first linear layer is whole on both ranks
        assert [view["numel"] for view in record["inside"].values()] == [full["model.layers.0.self_attn.q_proj.weight"]]


@pytest.mark.slow
def test_fsdp_matches_ddp_and_splits_weight_decay_by_the_real_shapes(runs, tiny_llama_dir):
    """Same data, seed and steps (the FSDP run resumed halfway): held-out rewards equal DDP's to 2e-4 (fp32,
    reduce-scatter and AdamW kernels round differently), the same accuracy and the same weight-decay split (by
    the parameters' shapes before FSDP flattened them; read from the flat shards it would decay nothing)."""
    (ddp_dir, ddp), (run_dir, first), (_, resumed) = runs["ddp"], runs["first"], runs["fsdp"]
    assert ddp.returncode == 0 and resumed.returncode == 0, tail(ddp) + tail(resumed)
    expected, got = rewards(ddp_dir), rewards(run_dir)
    assert [r["subset"] for r in got] == [r["subset"] for r in expected]
    for side in ("chosen", "rejected"):
        assert [r[side] for r in got] == pytest.approx([r[side] for r in expected], abs=2e-4)
    accuracy = [json.loads((d / "metrics.json").read_text())["eval"]["heldout"]["accuracy"] for d in (ddp_dir, run_dir)]
    assert accuracy[0] == accuracy[1]
    from transformers import AutoModelForSequenceClassification

    parameters = list(AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir).parameters())
    matrices = [p for p in parameters if p.ndim >= 2]
    assert decay_line(first) == decay_line(ddp) == (
        f"weight decay 0.001 on {len(matrices)} tensors ({sum(p.numel() for p in matrices)} parameters); "
        f"none on {len(parameters) - len(matrices)} tensors (biases, norms)")


@pytest.mark.slow
def test_fsdp_export_is_the_whole_model_and_reproduces_the_rewards(runs, data):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from conftest import split_pairs
    from rmlab.data.formats import load_pairs

    run_dir, resumed = runs["fsdp"]
    assert resumed.returncode == 0, tail(resumed)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "export").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    _, heldout = split_pairs(load_pairs(str(data))[0], 0.15)
    with torch.no_grad():
        for pair, expected in zip(heldout, rewards(run_dir), strict=True):
            for side in ("chosen", "rejected"):
                ids = tokenizer.apply_chat_template(getattr(pair, side), tokenize=True, return_dict=True,
                                                    return_tensors="pt")
                assert model(**ids).logits.item() == pytest.approx(expected[side], abs=1e-5)


@pytest.mark.slow
def test_fsdp_bf16_mixed_keeps_the_rotary_buffers_in_fp32(work, data, tiny_llama_dir):
    """Lightning's FSDP mixed precision casts buffers to bf16 too: RoPE's ``inv_freq`` would then be bf16.
    rmlab's FSDP strategy leaves buffers in their own dtype; after a step both ranks hold 1/θ^(2i/d) in fp32."""
    run_dir = work / "bf16" / "run"
    result = run(command(run_dir, tiny_llama_dir, data, *FSDP, "trainer.precision=bf16-mixed", "trainer.max_steps=2",
                         "callbacks=none"), run_dir.parent)
    assert result.returncode == 0, tail(result)
    assert_fp32_rope(run_dir, theta=10000.0, head_dim=8)  # the tiny Llama: rope_theta 10000, head_dim 32 / 4
