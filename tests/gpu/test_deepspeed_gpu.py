"""DeepSpeed ZeRO-2/3 on one real GPU: fit, score on the GPU, export and reload, resume; and bf16-mixed fits
on one GPU without DeepSpeed (single device, FSDP) (tests/gpu/run.sh).

The same checks as tests/test_deepspeed.py on CPU, with CUDA and bf16-mixed: the tiny Llama of conftest.py
(random weights, built from a config: nothing is downloaded), 4 steps with a checkpoint every 2.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_topic_pairs

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs the deepspeed extra"),
]


def run(tmp: Path, model_dir: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    data = tmp / "pairs.jsonl"
    if not data.exists():
        write_topic_pairs(data, 128)
    command = [sys.executable, "-m", "rmlab", "model=hf", f"model.name_or_path={model_dir}", "data=local",
               f"data.source={data}", "data.max_length=64", "data.batch_size=4", "trainer=gpu", "trainer.devices=1",
               "logger=none", "trainer.max_steps=4", "ckpt_every_n_steps=2", "optimizer.optimizer.lr=1e-3",
               "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("strategy", ["deepspeed_zero2", "deepspeed_zero3"])
def test_zero_fit_score_export_reload(tmp_path, tiny_llama_dir, strategy):
    result = run(tmp_path, tiny_llama_dir, tmp_path / "run", f"strategy={strategy}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "run"
    config = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert config["zero_optimization"]["stage"] == int(strategy[-1]) and config["bf16"]["enabled"]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from conftest import split_pairs
    from rmlab.data.formats import load_pairs

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "export").eval()
    assert all(p.numel() > 0 for p in model.parameters()), "shape-(0,) parameters: ZeRO-3 weights not consolidated"
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    _, heldout = split_pairs(load_pairs(str(tmp_path / "pairs.jsonl"))[0], 0.15)
    saved = [json.loads(line) for line in (run_dir / "rewards" / "heldout.jsonl").read_text().splitlines()]
    with torch.no_grad():
        for pair, expected in zip(heldout, saved):
            ids = tokenizer.apply_chat_template(pair.chosen, tokenize=True, return_dict=True, return_tensors="pt")
            assert model(**ids).logits.float().item() == pytest.approx(expected["chosen"], abs=2e-2)  # bf16 weights
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["optimizer_steps"] == 4 and metrics["eval"]["heldout"]["pairs"] == len(heldout)


def test_zero3_resumes_from_its_deepspeed_checkpoint(tmp_path, tiny_llama_dir):
    run_dir = tmp_path / "run"
    first = run(tmp_path, tiny_llama_dir, run_dir, "strategy=deepspeed_zero3", "trainer.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_dir()
    (run_dir / "metrics.json").unlink()  # as if the run had stopped after its step-2 checkpoint
    second = run(tmp_path, tiny_llama_dir, run_dir, "strategy=deepspeed_zero3")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout + second.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["run"]["optimizer_steps"] == 4


@pytest.mark.parametrize("strategy", ["auto", "fsdp"])
def test_single_gpu_bf16_mixed_fits_with_clipping(tmp_path, tiny_llama_dir, strategy):
    """``trainer=gpu`` with one device and bf16-mixed: fused AdamW (auto), or FSDP, gradients clipped by norm
    (Lightning's own clipping stopped both at their first step; tests/test_module.py covers what runs on CPU)."""
    run_dir = tmp_path / "run"
    result = run(tmp_path, tiny_llama_dir, run_dir, f"strategy={strategy}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["run"]["optimizer_steps"] == 4
