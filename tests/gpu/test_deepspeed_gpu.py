"""Fits on one real GPU (tests/gpu/device_run.sh): DeepSpeed ZeRO-2 and ZeRO-3 (every parameter partitioned) fit,
score on the GPU, export and reload; ZeRO-3 resumes from its checkpoint; Gemma-2 with eager attention (soft-capping,
a 16-token sliding window) and gradient checkpointing under ZeRO-3; bf16-mixed on one device without DeepSpeed
(single device, FSDP). Every bf16 run keeps RoPE's ``inv_freq`` in fp32 (tests/probes.py).

The same paths as tests/test_deepspeed.py and tests/test_fsdp.py on CPU, with CUDA and bf16, on conftest.py's tiny
random models (nothing is downloaded), 4 steps with a checkpoint every 2.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import split_pairs, write_topic_pairs
from probes import assert_fp32_rope, assert_partitioned
from two_process_runs import PARTITIONED, child_env

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs the deepspeed extra"),
]
BF16_UNIT = 2.0 ** -8  # bf16 keeps 8 significant bits: each rounding is off by at most this fraction


def run(tmp: Path, model_dir: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    data = tmp / "pairs.jsonl"
    if not data.exists():
        write_topic_pairs(data, 128)
    command = [sys.executable, "-m", "rmlab", "model=hf", f"model.name_or_path={model_dir}", "data=local",
               f"data.source={data}", "data.max_length=64", "data.batch_size=4", "trainer=gpu", "trainer.devices=1",
               "logger=none", "trainer.max_steps=4", "ckpt_every_n_steps=2", "optimizer.optimizer.lr=1e-3",
               "trainer.enable_progress_bar=false", "+callbacks.probe._target_=probes.Probe",
               f"hydra.run.dir={run_dir}", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=child_env())  # 20-40 s a run


def bf16_tolerance(rewards: list[float]) -> float:
    """Eight bf16 roundings at the rewards' scale. The GPU scores in bf16 (packed, its own kernels) and the check
    reloads the export in fp32 on the CPU: every product and sum of the GPU's forward is rounded to 8 bits, so the
    two differ by a few units of ``2^-8 · |reward|`` (the review measured up to 4: 0.079 at |reward| about 5).
    The former abs=2e-2 was below one bf16 step there (0.031 between 4 and 8)."""
    return 8 * BF16_UNIT * max(abs(r) for r in rewards)


def assert_export_reproduces(run_dir: Path, data: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rmlab.data.formats import load_pairs

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "export", dtype=torch.float32).eval()
    assert all(p.numel() > 0 for p in model.parameters()), "shape-(0,) parameters: ZeRO-3 weights not consolidated"
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    _, heldout = split_pairs(load_pairs(str(data))[0], 0.15)
    saved = [json.loads(line) for line in (run_dir / "rewards" / "heldout.jsonl").read_text().splitlines()]
    tolerance = bf16_tolerance([r[side] for r in saved for side in ("chosen", "rejected")])
    with torch.no_grad():
        for pair, expected in zip(heldout, saved, strict=True):
            for side in ("chosen", "rejected"):
                ids = tokenizer.apply_chat_template(getattr(pair, side), tokenize=True, return_dict=True,
                                                    return_tensors="pt")
                assert model(**ids).logits.item() == pytest.approx(expected[side], abs=tolerance)


@pytest.mark.parametrize("strategy", ["deepspeed_zero2", "deepspeed_zero3"])
def test_zero_fit_score_export_reload(tmp_path, tiny_llama_dir, strategy):
    run_dir = tmp_path / "run"
    zero3 = strategy.endswith("zero3")
    result = run(tmp_path, tiny_llama_dir, run_dir, f"strategy={strategy}", *([PARTITIONED] if zero3 else []))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert config["zero_optimization"]["stage"] == int(strategy[-1]) and config["bf16"]["enabled"]
    assert_fp32_rope(run_dir, theta=10000.0, head_dim=8, ranks=(0,))
    if zero3:
        assert_partitioned(run_dir, ranks=(0,))
    assert_export_reproduces(run_dir, tmp_path / "pairs.jsonl")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["optimizer_steps"] == 4 and metrics["eval"]["heldout"]["pairs"] > 0


def test_zero3_resumes_from_its_deepspeed_checkpoint(tmp_path, tiny_llama_dir):
    run_dir = tmp_path / "run"
    first = run(tmp_path, tiny_llama_dir, run_dir, "strategy=deepspeed_zero3", PARTITIONED, "trainer.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_dir()
    (run_dir / "metrics.json").unlink()  # as if the run had stopped after its step-2 checkpoint
    second = run(tmp_path, tiny_llama_dir, run_dir, "strategy=deepspeed_zero3", PARTITIONED)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout + second.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["run"]["optimizer_steps"] == 4


def test_gemma2_eager_under_zero3_with_checkpointing(tmp_path, tiny_gemma2_dir):
    """The paper's Gemma-2 recipe without flash-attention: eager attention (soft-capping; the 16-token sliding
    window is shorter than the 64-token sequences), gradient checkpointing, ZeRO-3, bf16."""
    run_dir = tmp_path / "run"
    result = run(tmp_path, tiny_gemma2_dir, run_dir, "strategy=deepspeed_zero3", PARTITIONED,
                 "model.attn_implementation=eager", "model.gradient_checkpointing=true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_fp32_rope(run_dir, theta=10000.0, head_dim=16, ranks=(0,))
    assert_partitioned(run_dir, ranks=(0,))
    assert_export_reproduces(run_dir, tmp_path / "pairs.jsonl")


@pytest.mark.parametrize("strategy", ["auto", "fsdp"])
def test_single_gpu_bf16_mixed_fits_with_clipping(tmp_path, tiny_llama_dir, strategy):
    """``trainer=gpu`` with one device and bf16-mixed: fused AdamW (auto), or FSDP, gradients clipped by norm
    (Lightning's own clipping stopped both at their first step), scored under autocast, buffers in fp32."""
    run_dir = tmp_path / "run"
    result = run(tmp_path, tiny_llama_dir, run_dir, f"strategy={strategy}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["run"]["optimizer_steps"] == 4
    assert_fp32_rope(run_dir, theta=10000.0, head_dim=8, ranks=(0,))
    assert_export_reproduces(run_dir, tmp_path / "pairs.jsonl")
