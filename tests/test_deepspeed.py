"""DeepSpeed for real, on CPU: ``python -m rmlab`` with 2 processes over gloo (``strategy.allow_cpu=true``).

Every run here is rmlab's own DeepSpeed path (Lightning's ``DeepSpeedStrategy``, with only its CUDA check
lifted): ZeRO-2, ZeRO-3 and ZeRO-3 with optimizer offload train a tiny Llama reward model, score the
held-out pairs on both ranks, export and write ``metrics.json``. They are compared with the same run
under DDP, killed and resumed, and fed a NaN on one rank. The first run in a fresh environment also
builds DeepSpeed's shared-memory op (about 30 s here), the offload run DeepSpeedCPUAdam (about 1 min).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import write_topic_pairs
from probes import assert_fp32_rope, assert_partitioned
from two_process_runs import PARTITIONED, TIMEOUT_S, child_env, command, decay_line, rewards, run, tail

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not __import__("importlib").util.find_spec("deepspeed"), reason="deepspeed extra")]
STRATEGIES = {"zero2": "deepspeed_zero2", "zero3": "deepspeed_zero3", "zero3_offload": "deepspeed_zero3_offload"}
ZERO3 = ["strategy.allow_cpu=true", PARTITIONED]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deepspeed")


@pytest.fixture(scope="module")
def data(work) -> Path:
    return write_topic_pairs(work / "pairs.jsonl", 96)


@pytest.fixture(scope="module")
def runs(work, data, tiny_llama_dir) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The same 4-step run under DDP and under each DeepSpeed option (sequential: 2 processes each)."""
    results = {}
    for name, option in {"ddp": "ddp", **STRATEGIES}.items():
        run_dir = work / name / "run"
        extra = [f"strategy={option}"] + (["strategy.allow_cpu=true"] if option.startswith("deepspeed") else []) \
            + ([PARTITIONED] if name.startswith("zero3") else [])
        results[name] = (run_dir, run(command(run_dir, tiny_llama_dir, data, *extra), run_dir.parent))
    return results


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_deepspeed_trains_evaluates_and_exports(name, runs):
    run_dir, result = runs[name]
    assert result.returncode == 0, tail(result)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["optimizer_steps"] == 4 and metrics["run"]["accumulate_grad_batches"] == 2
    assert metrics["eval"]["heldout"]["pairs"] == metrics["run"]["heldout_pairs"] > 0
    config = json.loads((run_dir / "deepspeed_config.json").read_text())  # as Lightning completed it
    assert config["gradient_accumulation_steps"] == 2 and config["gradient_clipping"] == 1.0
    assert config["zero_optimization"]["stage"] == (2 if name == "zero2" else 3)
    assert ("offload_optimizer" in config["zero_optimization"]) == (name == "zero3_offload")
    assert len(list(run_dir.rglob("metrics.json"))) == 1 and not list(run_dir.glob("*rank1*.json"))
    if name.startswith("zero3"):
        assert config["zero_optimization"]["stage3_param_persistence_threshold"] == 0
        assert_partitioned(run_dir)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_export_reproduces_the_trained_rewards(name, runs, data):
    """The export (ZeRO-3: the consolidated 16-bit state dict) loads with plain transformers, whole, and gives
    the rewards that the ranks scored through the engine."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from conftest import split_pairs
    from rmlab.data.formats import load_pairs

    run_dir, result = runs[name]
    assert result.returncode == 0, tail(result)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "export").eval()
    assert model.dtype == torch.float32 and all(p.numel() > 0 for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    _, heldout = split_pairs(load_pairs(str(data))[0], 0.15)
    saved = rewards(run_dir)
    assert len(saved) == len(heldout)
    with torch.no_grad():
        for pair, expected in zip(heldout, saved):
            for side in ("chosen", "rejected"):
                ids = tokenizer.apply_chat_template(getattr(pair, side), tokenize=True, return_dict=True,
                                                    return_tensors="pt")
                assert model(**ids).logits.item() == pytest.approx(expected[side], abs=1e-5)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_deepspeed_matches_ddp(name, runs):
    """Same data, seed, steps and optimizer: held-out rewards equal DDP's to 2e-4 (fp32; the reductions and
    AdamW kernels differ in rounding only), the same accuracy, and the same weight-decay split (ZeRO-3
    decides it by the parameters' real shapes, not their (0,) placeholders)."""
    (ddp_dir, ddp), (run_dir, result) = runs["ddp"], runs[name]
    assert ddp.returncode == 0 and result.returncode == 0, tail(ddp) + tail(result)
    expected, got = rewards(ddp_dir), rewards(run_dir)
    assert [r["subset"] for r in got] == [r["subset"] for r in expected]
    for side in ("chosen", "rejected"):
        assert [r[side] for r in got] == pytest.approx([r[side] for r in expected], abs=2e-4)
    accuracy = [json.loads((d / "metrics.json").read_text())["eval"]["heldout"]["accuracy"] for d in (ddp_dir, run_dir)]
    assert accuracy[0] == accuracy[1]
    assert decay_line(result) == decay_line(ddp) and " on 0 tensors" not in decay_line(result), decay_line(result)


def test_zero3_killed_after_a_checkpoint_resumes_to_the_same_metrics(work, data, tiny_llama_dir, runs):
    """SIGKILL once the first DeepSpeed checkpoint (a directory, linked by last.ckpt) exists; the same command
    again resumes from it and ends with the uninterrupted run's metrics."""
    reference_dir, reference = runs["zero3"]
    assert reference.returncode == 0, tail(reference)
    run_dir = work / "zero3_killed" / "run"
    args = command(run_dir, tiny_llama_dir, data, "strategy=deepspeed_zero3", *ZERO3)
    run_dir.parent.mkdir(parents=True)
    with open(run_dir.parent / "killed.log", "w") as log:
        process = subprocess.Popen(args, cwd=run_dir.parent, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        last, deadline = run_dir / "checkpoints" / "last.ckpt", time.monotonic() + TIMEOUT_S
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # both ranks
        process.wait(timeout=60)
    assert last.is_dir() and not (run_dir / "metrics.json").exists(), (run_dir.parent / "killed.log").read_text()[-3000:]
    assert_partitioned(run_dir)  # written by the killed run (at its second batch, before the checkpoint)
    resumed = run(args, run_dir.parent)
    assert resumed.returncode == 0, tail(resumed)
    assert f"resuming from {last}" in resumed.stdout + resumed.stderr
    got, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference_dir))
    assert got["eval"] == expected["eval"] and got["table3"] == expected["table3"]
    assert got["run"]["optimizer_steps"] == expected["run"]["optimizer_steps"] == 4


@pytest.mark.parametrize("option,on_nonfinite", [("deepspeed_zero2", "stop"), ("deepspeed_zero3", "skip")])
def test_nan_on_one_rank_stops_or_skips_on_every_rank(option, on_nonfinite, work, data, tiny_llama_dir):
    """The loss is NaN on rank 1 only, at the second optimizer step (tests/faults.py): the engine's gradient
    norm is reduced over both ranks, so both agree to stop, or to skip that update and count it."""
    run_dir = work / f"nan_{option}_{on_nonfinite}" / "run"
    partitioned = [PARTITIONED] if option.endswith("zero3") else []
    result = run(command(run_dir, tiny_llama_dir, data, f"strategy={option}", "strategy.allow_cpu=true", *partitioned,
                         "loss._target_=faults.NaNOnRankOne", f"on_nonfinite={on_nonfinite}"), run_dir.parent)
    if on_nonfinite == "stop":
        assert result.returncode != 0 and not (run_dir / "metrics.json").exists(), tail(result)
        assert "non-finite loss or gradient at optimizer step 1" in result.stdout + result.stderr, tail(result)
        return
    assert result.returncode == 0, tail(result)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["skipped_nonfinite_steps"] == 1 and metrics["run"]["optimizer_steps"] == 4
    assert all(torch.isfinite(torch.tensor([r["chosen"], r["rejected"]])).all() for r in rewards(run_dir))


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_zero3_bf16_keeps_the_rope_inverse_frequencies_in_fp32(family, work, data, tiny_llama_dir, tiny_gemma2_dir):
    """Under ZeRO-3 the model is built inside DeepSpeed's ``zero.Init``, which casts every floating tensor a
    constructor makes to the run's dtype (``torch.arange`` included): with ``trainer.precision=bf16-mixed``,
    transformers computed RoPE's ``inv_freq`` in bf16 (Gemma-2-27B's angles off by about 5.5 rad at position 2047).
    On both ranks, after a step, the buffers are fp32 and equal 1/θ^(2i/d) computed here in float64."""
    from transformers import AutoConfig

    model_dir = {"llama": tiny_llama_dir, "gemma2": tiny_gemma2_dir}[family]
    run_dir = work / f"bf16_{family}" / "run"
    result = run(command(run_dir, model_dir, data, "strategy=deepspeed_zero3", *ZERO3, "trainer.precision=bf16-mixed",
                         "trainer.max_steps=2", "callbacks=none"), run_dir.parent)
    assert result.returncode == 0, tail(result)
    config = AutoConfig.from_pretrained(model_dir)
    assert_fp32_rope(run_dir, config.rope_parameters["rope_theta"], config.head_dim)
    assert_partitioned(run_dir)
    assert json.loads((run_dir / "deepspeed_config.json").read_text())["bf16"]["enabled"]
