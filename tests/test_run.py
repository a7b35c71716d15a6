"""A real ``python -m rmlab`` run in a subprocess: outputs, W&B offline files and the exported model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOPICS = ["tea", "maps", "rust", "bread", "chess", "birds", "clouds", "glue", "jazz", "moss", "kites", "salt"]

pytestmark = pytest.mark.slow  # real `python -m rmlab` runs in subprocesses


def write_pairs(path: Path) -> int:
    """A small two-subset dataset in the chat-messages layout, a third of it multi-turn, plus two bad rows."""
    lines = []
    for i in range(96):
        topic = TOPICS[i % len(TOPICS)]
        prompt = [{"role": "user", "content": f"tell me about {topic} number {i}"}]
        if i % 3 == 0:
            prompt = [{"role": "user", "content": f"hi, question {i}"},
                      {"role": "assistant", "content": "sure, ask away"}] + prompt
        good = {"role": "assistant", "content": f"{topic} is interesting and here is why: fact {i}"}
        bad = {"role": "assistant", "content": "no"}
        lines.append({"chosen": prompt + [good], "rejected": prompt + [bad], "subset": "a" if i % 2 else "b"})
    lines.append({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}],
                  "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
    return len(lines) + 1


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("run")
    data = tmp / "pairs.jsonl"
    rows = write_pairs(data)
    run_dir = tmp / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(NETRC=str(tmp / "no-netrc"), WANDB_DIR=str(tmp / "wandb-dir"))  # no API key anywhere
    command = [sys.executable, "-m", "rmlab", "model=hf", f"model.name_or_path={tiny_llama_dir}", "data=local",
               f"data.source={data}", "data.max_length=160", "data.batch_size=4", "data.val_fraction=0.3",
               "data.section_mapping={Chat:[a],Safety:[b]}", "optimizer.optimizer.lr=1e-3", "trainer.max_epochs=2",
               "logger.name=e2e", "logger.group=tests", "seed=3", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, data, rows, result.stdout, result.stderr


def test_run_writes_metrics_config_and_checkpoint(finished_run):
    run_dir, _, rows, stdout, _ = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    data = metrics["data"]
    assert data["rows_read"] == rows
    assert data["rows_used"] + data["rows_skipped"] == rows
    assert data["skipped_by_reason"] == {"empty_content": 1, "invalid_json": 1}
    heldout = metrics["eval"]["heldout"]
    assert heldout["pairs"] == metrics["run"]["heldout_pairs"] > 0
    assert set(metrics["table3"]) == {"Avg", "Chat", "Safety"}
    assert metrics["table3"]["Avg"] == pytest.approx((metrics["table3"]["Chat"] + metrics["table3"]["Safety"]) / 2)
    assert metrics["run"]["loss"] == "bt" and metrics["run"]["seed"] == 3
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "Chat" in stdout and "rows read" in stdout


def test_wandb_went_offline_with_config_and_summary(finished_run):
    """No API key and no WANDB_MODE: an offline run whose log holds the resolved config and the summary."""
    run_dir, *_ = finished_run
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, list(run_dir.iterdir())
    record_log = next(offline_runs[0].glob("run-*.wandb")).read_bytes()  # the records `wandb sync` uploads
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert b"rmlab.losses.BradleyTerryLoss" in record_log and b"section_mapping" in record_log
    for key, value in metrics["table3"].items():
        assert key.encode() in record_log and json.dumps(value).encode() in record_log


def test_exported_model_reproduces_rewards_with_plain_transformers(finished_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from conftest import split_pairs
    from rmlab.data.formats import load_pairs

    run_dir, data, *_ = finished_run
    export = run_dir / "export"
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    pairs, _ = load_pairs(str(data))
    _, heldout = split_pairs(pairs, 0.3)
    saved = [json.loads(line) for line in (run_dir / "rewards" / "heldout.jsonl").read_text().splitlines()]
    assert len(saved) == len(heldout) > 0
    with torch.no_grad():
        for pair, expected in zip(heldout, saved):
            for side in ("chosen", "rejected"):
                ids = tokenizer.apply_chat_template(getattr(pair, side), tokenize=True, return_dict=True,
                                                    return_tensors="pt")
                reward = model(**ids).logits.item()
                assert reward == pytest.approx(expected[side], abs=1e-4)
            assert expected["subset"] == pair.subset


def test_default_run_on_the_embedded_data_with_minilm(tmp_path):
    """``python -m rmlab`` as the README runs it (MiniLM, the embedded set), smaller, with ``logger=tensorboard``
    and ``callbacks=none``: the four Table 3 sections, a TensorBoard event file, no checkpoint anywhere, and an
    export whose rewards are the run's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from conftest import split_pairs
    from rmlab.data.embedded import generate_embedded_pairs
    from rmlab.data.formats import load_pairs

    run_dir = tmp_path / "out"
    command = [sys.executable, "-m", "rmlab", "data.embedded_pairs_per_category=24", "logger=tensorboard",
               "callbacks=none", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["table3"]) == {"Chat", "Chat Hard", "Safety", "Reasoning", "Avg"}
    rows = len(generate_embedded_pairs(24, seed=0))
    assert metrics["data"]["rows_read"] == rows == metrics["run"]["train_pairs"] + metrics["run"]["heldout_pairs"]
    assert list(run_dir.rglob("events.out.tfevents.*")) and not list(tmp_path.rglob("*.ckpt"))
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "export").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    assert model.config.model_type == "bert"
    _, heldout = split_pairs(load_pairs(generate_embedded_pairs(24, seed=0))[0], 0.15)
    saved = [json.loads(line) for line in (run_dir / "rewards" / "heldout.jsonl").read_text().splitlines()]
    assert len(saved) == len(heldout) == metrics["run"]["heldout_pairs"]
    with torch.no_grad():
        for pair, expected in list(zip(heldout, saved))[:3]:
            ids = tokenizer.apply_chat_template(pair.chosen, tokenize=True, return_dict=True, return_tensors="pt")
            assert model(**ids).logits.item() == pytest.approx(expected["chosen"], abs=1e-4)


def test_training_data_can_be_a_mixture(tmp_path):
    """``data=mixture`` with ``data.sources`` (the composed, validated config) feeds
    rmlab.data.recipe.load_mixture; caps and filters apply, rows stay counted."""
    from hydra import compose, initialize_config_module

    from rmlab.config import register_configs, validate
    from rmlab.train import pairs_loader

    write_pairs(tmp_path / "a.jsonl")  # 96 good pairs + 1 empty response + 1 invalid JSON line
    write_pairs(tmp_path / "b.jsonl")
    register_configs()
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "data=mixture", f"data.sources=[{{path: {tmp_path / 'a.jsonl'}, cap: 10}}, "
                            f"{{path: {tmp_path / 'b.jsonl'}, filters: {{min_response_chars: 5}}}}]"])
    cfg.paths.output_dir = str(tmp_path / "out")  # what Hydra sets in a run
    validate(cfg)
    pairs, stats = pairs_loader(cfg.data)()
    assert len(pairs) == 10 + 0  # b's rejected responses are all "no" (2 chars): filtered out
    assert stats.rows_read == 2 * 98 and stats.rows_used == len(pairs)
    assert stats.rows_used + sum(stats.skipped.values()) == stats.rows_read
    assert stats.skipped["over_cap"] == 86


NOISE = ("litlogger", "anonymous setting", "LeafSpec", "Setting accelerator to CPU", "LOAD REPORT", "Warning",
         "warnings.warn", "v_num", "Loading weights", "Writing model shards", "Traceback", "wandb:")


def test_console_output_has_no_duplicated_line_and_no_third_party_noise(finished_run):
    _, _, _, stdout, stderr = finished_run
    lines = [line.strip() for line in (stdout + stderr).splitlines() if line.strip()]
    words = [line for line in lines if any(c.isalpha() for c in line) and not line.startswith(("│", "┃", "┏", "┡", "└"))]
    repeated = {line for line in words if words.count(line) > 1}
    assert not repeated, repeated
    assert not [line for line in lines if any(noise in line for noise in NOISE)], stdout + stderr
    assert any(line.startswith("W&B: offline run in") for line in lines)
    assert any("first training step" in line for line in lines) and "Epoch 2/2" in stdout
    bar = [line for line in lines if line.startswith("Epoch 2/2")][-1]  # one line, not wrapped in a pipe
    assert re.search(r"loss: \d\.\d{3} acc: \d\.\d{3}$", bar), bar


def test_run_log_is_named_after_rmlab_and_holds_rmlabs_messages(finished_run):
    run_dir, *_ = finished_run
    log = (run_dir / "rmlab.log").read_text()
    assert "[rmlab.train][INFO] - first training step" in log and "[rmlab.module][INFO] - weight decay" in log
    assert not list(run_dir.glob("__main__*.log"))


def test_train_block_holds_epoch_means_and_matches_the_wandb_summary(finished_run):
    from conftest import wandb_summary_and_exit

    run_dir, *_ = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary, exit_code = wandb_summary_and_exit(run_dir)
    assert exit_code == 0
    train = metrics["train"]
    assert {"train/loss", "train/accuracy", "train/margin", "val/loss", "val/accuracy"} <= set(train)
    for key, value in train.items():
        assert summary[key] == pytest.approx(value, rel=1e-12), key
    # epoch means over every pair of the last epoch: an accuracy over ~67 pairs, not one 2-pair batch's 0, 0.5 or 1
    pairs = metrics["run"]["train_pairs"]
    assert round(train["train/accuracy"] * pairs) == pytest.approx(train["train/accuracy"] * pairs, abs=1e-6)


def test_submitit_launcher_runs_each_job_as_its_own_submission(tmp_path, tiny_llama_dir):
    """``hydra/launcher=submitit_local``: the SLURM launcher's code path (each job pickled, submitted and run in a
    fresh process by submitit) without a cluster; both jobs finish with their own loss."""
    data = tmp_path / "pairs.jsonl"
    write_pairs(data)
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "rmlab", "--multirun", "hydra/launcher=submitit_local", "loss=bt,hinge",
               "model=hf", f"model.name_or_path={tiny_llama_dir}", "data=local", f"data.source={data}",
               "data.max_length=64", "data.batch_size=4", "logger=none", "trainer.max_steps=2",
               "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = sorted(json.loads(path.read_text())["run"]["loss"] for path in sweep.glob("*/metrics.json"))
    assert losses == ["bt", "hinge"] and len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 2


def test_a_failed_multirun_job_closes_its_wandb_run_as_failed(tmp_path, tiny_llama_dir):
    """Job 0 stops on a NaN after W&B started; its W&B run ends with exit code 1, and job 1 (same process)
    logs into a run of its own."""
    from conftest import wandb_summary_and_exit

    data = tmp_path / "pairs.jsonl"
    write_pairs(data)
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(NETRC=str(tmp_path / "no-netrc"), WANDB_DIR=str(tmp_path / "wandb-dir"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "rmlab", "--multirun", "model=hf", f"model.name_or_path={tiny_llama_dir}",
               "data=local", f"data.source={data}", "data.max_length=160", "data.batch_size=8",
               "trainer.enable_progress_bar=false", "loss._target_=faults.NaNAtThirdStep,rmlab.losses.BradleyTerryLoss",
               f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    failed, finished = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert (failed / "failed.json").is_file() and (finished / "metrics.json").is_file()
    failed_summary, failed_exit = wandb_summary_and_exit(failed)
    summary, exit_code = wandb_summary_and_exit(finished)
    assert failed_exit == 1 and exit_code == 0
    assert "eval" in summary and "train/loss" in summary and "eval" not in failed_summary


def run_ok(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def log_span(log_file: Path) -> tuple[str, str]:
    """The timestamps of a job log's first and last lines (``[YYYY-mm-dd HH:MM:SS,mmm]``)."""
    stamps = [line[1:24] for line in log_file.read_text().splitlines() if line.startswith("[20")]
    return stamps[0], stamps[-1]


def test_table3_sweep_runs_two_jobs_at_once_and_a_job_rerun_alone_matches(tmp_path, tiny_llama_dir):
    """``+sweeps=table3`` (cut to two losses) runs its jobs side by side with one thread each; a job rerun on
    its own with ``threads=1`` gives the same metrics, number for number."""
    data = tmp_path / "pairs.jsonl"
    write_pairs(data)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "WANDB_MODE": "offline",
           "WANDB_DIR": str(tmp_path / "wandb-dir")}
    common = ["model=hf", f"model.name_or_path={tiny_llama_dir}", "data=local", f"data.source={data}",
              "data.max_length=160", "data.batch_size=4", "data.val_fraction=0.3", "optimizer.optimizer.lr=1e-3",
              "data.section_mapping={Chat:[a],Safety:[b]}", "seed=2", "export=false"]
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "rmlab", "--multirun", "+sweeps=table3", "loss=bt,hinge", *common,
               f"hydra.sweep.dir={sweep}"]
    result = run_ok(command, tmp_path, env)
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [job.name.split("_")[0] for job in jobs] == ["0", "1"]
    metrics = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert [m["run"]["cpu_threads"] for m in metrics] == [1, 1]
    (start0, end0), (start1, end1) = (log_span(job / "rmlab.log") for job in jobs)
    assert start1 < end0 and start0 < end1, "the two jobs did not run at the same time"

    alone = tmp_path / "alone"
    rerun = [sys.executable, "-m", "rmlab", "loss=hinge", "threads=1", "trainer.enable_progress_bar=false", *common,
             f"hydra.run.dir={alone}"]
    run_ok(rerun, tmp_path, env)
    rerun_metrics = json.loads((alone / "metrics.json").read_text())
    for block in ("table3", "eval", "train", "data"):
        assert rerun_metrics[block] == metrics[1][block], block
    assert metrics[1]["run"]["loss"] == "hinge"
