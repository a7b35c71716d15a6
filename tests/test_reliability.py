"""Reliability: crash + resume, failing sweep jobs, non-finite steps, determinism, secrets, bad data.

The end-to-end checks run the real CLI (``python -m rmlab``) in subprocesses on the tiny random Llama
of ``conftest.py`` and a 160-pair JSONL file; runs are shared through module-scoped fixtures and, where
they do not depend on each other, started concurrently. Crashes are real: ``SIGKILL`` of the training
process. The non-finite and checkpoint-cadence checks run Lightning in-process (fast).

Tests marked ``xfail(strict=True, reason="BUG: ...")`` reproduce bugs found while writing this file; each
must keep failing until the bug is fixed (then drop the marker).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

N_PAIRS = 160
BATCH_SIZE = 4
VAL_FRACTION = 0.15  # the DataConfig default
SEED = 42  # the config default
TIMEOUT_S = 600
POLL_S = 0.02

# The command of every CLI run here, as ``key=value`` overrides (later dicts replace keys; Hydra rejects a key
# given twice on one command line).
BASE_OVERRIDES = {
    "model": "hf", "data": "local", "data.max_length": "64", "data.batch_size": str(BATCH_SIZE),
    "logger": "none", "trainer.max_epochs": "2", "ckpt_every_n_steps": "5", "optimizer.optimizer.lr": "1e-3",
    "trainer.enable_progress_bar": "false",
}


# --------------------------------------------------------------------------- helpers
def write_pairs(path: Path, n: int = N_PAIRS) -> Path:
    """``n`` valid chat-layout pairs of varied length, two subsets."""
    lines = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"tell me about topic {i} and the sea"}]
        answer = f"here is a helpful answer about {i}: " + "word " * (i % 7)
        chosen = prompt + [{"role": "assistant", "content": answer}]
        rejected = prompt + [{"role": "assistant", "content": "no"}]
        lines.append(json.dumps({"chosen": chosen, "rejected": rejected, "subset": "a" if i % 2 else "b"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def child_env(**extra: str) -> dict[str, str]:
    """The test process's offline environment without any W&B or secret-looking variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WANDB_") and k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def rmlab_command(*override_dicts: dict[str, str], multirun: bool = False) -> list[str]:
    merged: dict[str, str] = {}
    for overrides in (BASE_OVERRIDES, *override_dicts):
        merged.update(overrides)
    return [sys.executable, "-m", "rmlab", *(["--multirun"] if multirun else []),
            *(f"{key}={value}" for key, value in merged.items())]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def tail(self) -> str:
        return f"rc={self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def run_all(*jobs: tuple[list[str], Path], env: Optional[dict[str, str]] = None) -> list[Result]:
    """Run the commands concurrently (each ``(command, cwd)``); outputs go through files, not pipes."""
    started = []
    for number, (command, cwd) in enumerate(jobs):
        cwd.mkdir(parents=True, exist_ok=True)
        out, err = (open(cwd / f"job{number}.{name}", "w+") for name in ("stdout", "stderr"))
        started.append((subprocess.Popen(command, cwd=cwd, env=env or child_env(), stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL), out, err))
    results = []
    for process, out, err in started:
        try:
            process.wait(timeout=TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        out.seek(0), err.seek(0)
        results.append(Result(process.returncode, out.read(), err.read()))
        out.close(), err.close()
    return results


def run_one(command: list[str], cwd: Path, env: Optional[dict[str, str]] = None) -> Result:
    return run_all((command, cwd), env=env)[0]


@dataclass
class Kill:
    """A run SIGKILLed once ``condition(last.ckpt)`` held, and the same command run again to completion."""

    killed: Result
    metrics_at_kill: bool
    checkpoints_at_kill: list[str]
    ckpt_at_kill: dict[str, Any]  # loaded with weights_only=True after the kill
    load_errors: list[str] = field(default_factory=list)  # failed loads of last.ckpt while the run wrote it
    resumed: Optional[Result] = None


def kill_when(command: list[str], run_dir: Path, cwd: Path, condition: Callable[[dict], bool],
              delay_s: float) -> Kill:
    """Start ``command``; poll ``run_dir/checkpoints/last.ckpt`` until ``condition`` holds for it, wait ``delay_s``,
    SIGKILL the process, then load the checkpoint it left with ``weights_only=True``."""
    last = run_dir / "checkpoints" / "last.ckpt"
    cwd.mkdir(parents=True, exist_ok=True)
    out, err = open(cwd / "killed.stdout", "w+"), open(cwd / "killed.stderr", "w+")
    process = subprocess.Popen(command, cwd=cwd, env=child_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline, errors = time.monotonic() + TIMEOUT_S, []
    try:
        while True:
            assert process.poll() is None, "the run ended before it could be killed: " + \
                (cwd / "killed.stdout").read_text()[-2000:] + (cwd / "killed.stderr").read_text()[-2000:]
            assert time.monotonic() < deadline, "timed out waiting for last.ckpt"
            if last.is_file():
                try:  # the file is replaced while we read it: a failed load is retried (and recorded)
                    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
                except FileNotFoundError:  # the link was being moved to the next step<N>.ckpt: no file to be partial
                    continue
                except Exception as error:  # noqa: BLE001
                    errors.append(repr(error))
                else:
                    if condition(checkpoint):
                        break
            time.sleep(POLL_S)
        time.sleep(delay_s)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out.seek(0), err.seek(0)
    killed = Result(process.returncode, out.read(), err.read())
    out.close(), err.close()
    # Lightning saves checkpoints through an fsspec transaction (`_atomic_save`: write a temporary file, then
    # move it over last.ckpt), so a kill, even in the middle of a save, leaves the previous complete file.
    # (The move is an atomic rename only when tempfile.gettempdir() and the run directory share a filesystem;
    # across filesystems shutil.move copies into last.ckpt in place. Here both are under the same /tmp.)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    return Kill(killed, (run_dir / "metrics.json").exists(), sorted(p.name for p in last.parent.iterdir()),
                ckpt, errors)


def all_files(*roots: Path) -> list[Path]:
    return [path for root in roots if root.exists() for path in root.rglob("*") if path.is_file()]


def files_containing(needle: bytes, *roots: Path) -> list[str]:
    return [str(path) for path in all_files(*roots) if needle in path.read_bytes()]


# --------------------------------------------------------------------------- shared inputs
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def data_file(work) -> Path:
    return write_pairs(work / "pairs.jsonl")


@pytest.fixture(scope="module")
def base(tiny_llama_dir, data_file) -> dict[str, str]:
    return {"model.name_or_path": str(tiny_llama_dir), "data.source": str(data_file)}


@pytest.fixture(scope="module")
def batches_per_epoch(data_file) -> int:
    from conftest import split_pairs
    from rmlab.data.formats import load_pairs

    train, _ = split_pairs(load_pairs(str(data_file))[0], VAL_FRACTION)
    return math.ceil(len(train) / BATCH_SIZE)


# --------------------------------------------------------------------------- 1 + 4: reference runs
@pytest.fixture(scope="module")
def reference(work, base) -> dict[str, Any]:
    """Two uninterrupted runs of the same command in different run directories, run concurrently."""
    dirs = [work / "reference" / "run", work / "twin" / "run"]
    results = run_all(*((rmlab_command(base, {"hydra.run.dir": str(d)}), d.parent) for d in dirs))
    for result in results:
        assert result.returncode == 0, result.tail()
    return {"dir": dirs[0], "twin_dir": dirs[1], "metrics": (dirs[0] / "metrics.json").read_bytes(),
            "twin_metrics": (dirs[1] / "metrics.json").read_bytes(), "stdout": results[0].stdout}


@pytest.mark.slow
def test_identical_runs_give_byte_identical_metrics(reference):
    assert reference["metrics"] == reference["twin_metrics"]
    metrics = json.loads(reference["metrics"])
    assert metrics["run"]["optimizer_steps"] > 0 and metrics["train"], metrics["run"]


# --------------------------------------------------------------------------- 1: SIGKILL + resume
def resume(kill: Kill, command: list[str], run_dir: Path) -> None:
    """The same command again, in the same run directory."""
    kill.resumed = run_one(command, run_dir.parent)
    assert kill.resumed.returncode == 0, kill.resumed.tail()


@pytest.fixture(scope="module")
def killed_first_epoch(work, base, reference) -> tuple[Kill, Path]:
    """Killed shortly after last.ckpt first appears (first epoch), then the same command again."""
    run_dir = work / "killed0" / "run"
    command = rmlab_command(base, {"hydra.run.dir": str(run_dir)})
    kill = kill_when(command, run_dir, run_dir.parent, lambda ckpt: True, delay_s=0.2)
    resume(kill, command, run_dir)
    return kill, run_dir


@pytest.fixture(scope="module")
def killed_second_epoch(work, base, reference) -> tuple[Kill, Path]:
    """Killed once last.ckpt holds a second-epoch state, then the same command again."""
    run_dir = work / "killed1" / "run"
    command = rmlab_command(base, {"hydra.run.dir": str(run_dir)})
    kill = kill_when(command, run_dir, run_dir.parent, lambda ckpt: ckpt["epoch"] >= 1, delay_s=0.05)
    resume(kill, command, run_dir)
    return kill, run_dir


@pytest.mark.slow
@pytest.mark.parametrize("which, epoch", [("killed_first_epoch", 0), ("killed_second_epoch", 1)])
def test_sigkill_then_same_command_resumes_to_identical_metrics(which, epoch, request, reference):
    kill, run_dir = request.getfixturevalue(which)
    assert kill.killed.returncode == -signal.SIGKILL, kill.killed.tail()
    assert not kill.metrics_at_kill, "the run finished before the kill; nothing was interrupted"
    total_steps = json.loads(reference["metrics"])["run"]["optimizer_steps"]
    assert kill.ckpt_at_kill["epoch"] == epoch and 0 < kill.ckpt_at_kill["global_step"] < total_steps
    resumed = kill.resumed
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.stdout, resumed.tail()
    assert (run_dir / "metrics.json").read_bytes() == reference["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["killed_first_epoch", "killed_second_epoch"])
def test_checkpoint_left_by_sigkill_is_complete_and_weights_only(which, request):
    """Lightning writes checkpoints atomically (an fsspec transaction: temporary file, then a move), and
    last.ckpt links to the newest, so neither the file left by the kill nor any version read while the run wrote it is partial;
    every part of it loads with ``weights_only=True`` (RNG states included)."""
    kill, _ = request.getfixturevalue(which)
    names = sorted(kill.checkpoints_at_kill)  # last.ckpt (a link) and the one step<N>.ckpt kept: no stray files
    assert len(names) == 2 and names[0] == "last.ckpt" and names[1].startswith("step"), names
    assert kill.load_errors == []
    assert {"state_dict", "optimizer_states", "loops", "rng_states"} <= set(kill.ckpt_at_kill)


@pytest.fixture(scope="module")
def resume_variants(work, base, reference) -> dict[str, Any]:
    """resume=never and resume=auto in copies of the finished reference run, resume=<missing path>, and
    resume=<a checkpoint carrying a pickle payload>; run concurrently."""
    never_dir, auto_dir = work / "never" / "run", work / "auto" / "run"
    for target in (never_dir, auto_dir):
        shutil.copytree(reference["dir"], target)
    before = {name: (d / "metrics.json").stat().st_mtime_ns for name, d in (("never", never_dir), ("auto", auto_dir))}
    missing = work / "no-such-dir" / "last.ckpt"
    payload_marker = work / "payload-ran"
    evil = work / "evil.ckpt"
    checkpoint = torch.load(reference["dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["extra"] = MkdirOnUnpickle(str(payload_marker))
    torch.save(checkpoint, evil)
    time.sleep(0.01)  # mtime resolution
    jobs = {
        "never": (rmlab_command(base, {"resume": "never", "hydra.run.dir": str(never_dir)}), never_dir.parent),
        "auto": (rmlab_command(base, {"hydra.run.dir": str(auto_dir)}), auto_dir.parent),
        "missing": (rmlab_command(base, {"resume": str(missing), "hydra.run.dir": str(work / "missing" / "run")}),
                    work / "missing"),
        "evil": (rmlab_command(base, {"resume": str(evil), "hydra.run.dir": str(work / "evil" / "run")}),
                 work / "evil"),
    }
    results = dict(zip(jobs, run_all(*jobs.values())))
    return {"results": results, "never_dir": never_dir, "auto_dir": auto_dir, "before": before,
            "missing": missing, "evil": evil, "marker": payload_marker}


class MkdirOnUnpickle:
    """Pickles as a call to ``os.mkdir(path)``: unpickling it with ``weights_only=False`` runs that call."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.slow
def test_resume_never_retrains_a_finished_run(resume_variants, reference):
    result, run_dir = resume_variants["results"]["never"], resume_variants["never_dir"]
    assert result.returncode == 0, result.tail()
    assert "resuming from" not in result.stdout and "already holds" not in result.stdout
    assert "first training step" in result.stdout
    assert (run_dir / "metrics.json").stat().st_mtime_ns > resume_variants["before"]["never"]
    assert (run_dir / "metrics.json").read_bytes() == reference["metrics"]  # trained from scratch again


@pytest.mark.slow
def test_resume_auto_skips_a_finished_run(resume_variants, reference):
    result, run_dir = resume_variants["results"]["auto"], resume_variants["auto_dir"]
    assert result.returncode == 0, result.tail()
    assert "already holds metrics.json" in result.stdout
    assert "first training step" not in result.stdout and "resuming from" not in result.stdout
    assert (run_dir / "metrics.json").stat().st_mtime_ns == resume_variants["before"]["auto"]
    assert (run_dir / "metrics.json").read_bytes() == reference["metrics"]


@pytest.mark.slow
def test_resume_from_a_missing_checkpoint_fails_clearly(resume_variants):
    result = resume_variants["results"]["missing"]
    assert result.returncode != 0
    assert f"resume={resume_variants['missing']}: no such checkpoint" in result.stderr, result.tail()
    assert "Fix:" in result.stderr and "resume=auto" in result.stderr
    assert not (resume_variants["missing"].parent.parent / "missing" / "run" / "metrics.json").exists()


def test_resume_auto_skips_a_dangling_last_link(tmp_path):
    """A kill between removing the old checkpoint and relinking leaves last.ckpt pointing nowhere: resume takes
    the newest checkpoint that exists (a file, or a DeepSpeed checkpoint directory)."""
    from rmlab.train import resume_checkpoint

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.ckpt").symlink_to(checkpoints / "step9.ckpt")  # removed already
    older, newer = checkpoints / "step3.ckpt", checkpoints / "step6.ckpt"
    older.write_bytes(b"old")
    newer.mkdir()
    os.utime(older, (1, 1))
    assert resume_checkpoint("auto", tmp_path) == str(newer)
    assert resume_checkpoint("auto", tmp_path / "elsewhere") is None


@pytest.mark.slow
def test_resume_loads_checkpoints_with_weights_only(resume_variants):
    """``trainer.fit(..., weights_only=True)``: a checkpoint that carries a pickled call is refused, and the call
    never runs (the SIGKILL tests show that rmlab's own checkpoints do load that way)."""
    result, marker = resume_variants["results"]["evil"], resume_variants["marker"]
    assert result.returncode != 0, result.tail()
    assert "Weights only load failed" in result.stderr or "weights_only" in result.stderr, result.tail()
    assert not marker.exists()
    torch.load(resume_variants["evil"], map_location="cpu", weights_only=False)  # the payload is live ...
    assert marker.is_dir()  # ... so only weights_only=True kept it from running


# --------------------------------------------------------------------------- 1: resume at epoch boundaries (in-process)
def build_bundle(model_dir: Path, seed: int = SEED):
    import lightning.pytorch as pl

    from rmlab.model import build_reward_model

    pl.seed_everything(seed, verbose=False)
    return build_reward_model(str(model_dir))


def build_datamodule(bundle, data: Path, seed: int = SEED, batch_size: int = BATCH_SIZE):
    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.data.formats import load_pairs
    from rmlab.data.tokenize import PairTokenizer

    return PreferenceDataModule(functools.partial(load_pairs, str(data)),
                                PairTokenizer(bundle.tokenizer, bundle.chat_template, 64), val_fraction=VAL_FRACTION,
                                batch_size=batch_size, eval_batch_size=32, seed=seed)


def build_module(bundle, datamodule, epochs: int, loss_fn=None, on_nonfinite: str = "stop"):
    from transformers import get_scheduler

    from rmlab.losses import BradleyTerryLoss
    from rmlab.module import RewardModule

    steps = datamodule.optimizer_steps(1, 1, epochs, -1)
    return RewardModule(bundle.model, loss_fn or BradleyTerryLoss(), functools.partial(torch.optim.AdamW, lr=1e-3),
                        functools.partial(get_scheduler, name="linear"), 0.0, steps, on_nonfinite)


def build_trainer(epochs: int, callbacks: list, root: Path, **kwargs):
    """A CPU trainer that writes nothing but what the given callbacks write (under ``root``)."""
    import lightning.pytorch as pl

    from lightning.pytorch.callbacks import ModelCheckpoint

    options = dict(default_root_dir=str(root), accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   use_distributed_sampler=False, gradient_clip_val=1.0,
                   enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def fit(model_dir: Path, data: Path, root: Path, epochs: int, callbacks: list = (), ckpt_path: Optional[str] = None,
        **kwargs):
    bundle = build_bundle(model_dir)
    datamodule = build_datamodule(bundle, data)
    module = build_module(bundle, datamodule, epochs)
    trainer = build_trainer(epochs, list(callbacks), root, **kwargs)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    return trainer, state, module.final_metrics()  # what metrics.json records


@pytest.fixture(scope="module")
def checkpointed_fit(work, tiny_llama_dir, data_file, batches_per_epoch) -> dict[str, Any]:
    """An uninterrupted 2-epoch in-process fit that saves checkpoints at the last batch of each epoch and every
    7 steps (its final weights and logged metrics are the reference for resuming from any of them)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    directory = work / "inprocess-ckpts"
    callbacks = [ModelCheckpoint(dirpath=directory, filename="b{step}", auto_insert_metric_name=False,
                                 every_n_train_steps=batches_per_epoch, save_top_k=-1),
                 ModelCheckpoint(dirpath=directory, filename="m{step}", auto_insert_metric_name=False,
                                 every_n_train_steps=7, save_top_k=-1),
                 ModelCheckpoint(dirpath=directory, filename="e{step}", auto_insert_metric_name=False,
                                 save_on_train_epoch_end=False, save_top_k=-1)]  # as conf/callbacks/default.yaml
    trainer, state, metrics = fit(tiny_llama_dir, data_file, directory, 2, callbacks)
    assert trainer.global_step == 2 * batches_per_epoch
    return {"dir": directory, "state": state, "metrics": metrics, "steps": trainer.global_step}


def resume_in_process(checkpointed_fit, name: str, tiny_llama_dir, data_file):
    path = checkpointed_fit["dir"] / f"{name}.ckpt"
    assert path.is_file(), sorted(p.name for p in checkpointed_fit["dir"].iterdir())
    return fit(tiny_llama_dir, data_file, checkpointed_fit["dir"], 2, [], ckpt_path=str(path))


@pytest.mark.parametrize("step", [7, 42])  # mid first epoch, mid second epoch
def test_resume_mid_epoch_matches_uninterrupted_fit(step, checkpointed_fit, tiny_llama_dir, data_file):
    trainer, state, metrics = resume_in_process(checkpointed_fit, f"m{step}", tiny_llama_dir, data_file)
    assert trainer.global_step == checkpointed_fit["steps"]
    assert all(torch.equal(state[k], v) for k, v in checkpointed_fit["state"].items())
    assert metrics == checkpointed_fit["metrics"]


def test_resume_from_checkpoint_at_last_batch_of_epoch(checkpointed_fit, tiny_llama_dir, data_file,
                                                       batches_per_epoch):
    trainer, state, _ = resume_in_process(checkpointed_fit, f"b{batches_per_epoch}", tiny_llama_dir, data_file)
    assert trainer.global_step == checkpointed_fit["steps"], "steps of the second epoch are missing"
    assert all(torch.equal(state[k], v) for k, v in checkpointed_fit["state"].items())


def test_resume_from_final_checkpoint_keeps_logged_metrics(checkpointed_fit, tiny_llama_dir, data_file,
                                                           batches_per_epoch):
    """A kill during the final evaluation or export resumes from the epoch-end checkpoint, which rmlab saves
    after validation: the resumed run trains no more and records the same metrics."""
    trainer, state, metrics = resume_in_process(checkpointed_fit, f"e{2 * batches_per_epoch}", tiny_llama_dir,
                                                data_file)
    assert trainer.global_step == checkpointed_fit["steps"]
    assert all(torch.equal(state[k], v) for k, v in checkpointed_fit["state"].items())
    assert metrics == checkpointed_fit["metrics"]


def compose_config(*overrides: str):
    from hydra import compose, initialize_config_module

    from rmlab.config import register_configs

    register_configs()
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def save_recorder():
    import lightning.pytorch as pl

    class SaveRecorder(pl.Callback):
        """Records ``trainer.global_step`` at every checkpoint save."""

        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            self.steps.append(trainer.global_step)

    return SaveRecorder()


def test_default_checkpoint_callback_saves_at_every_epoch_end(work, tiny_llama_dir, data_file):
    from hydra.utils import instantiate

    directory = work / "default-cadence"
    cfg = compose_config(f"paths.output_dir={directory}")
    assert cfg.ckpt_every_n_steps is None
    recorder = save_recorder()
    trainer, *_ = fit(tiny_llama_dir, data_file, directory, 3, [instantiate(cfg.callbacks.checkpoint), recorder],
                      limit_train_batches=3)
    assert trainer.global_step == 9
    assert recorder.steps[:2] == [3, 6], f"checkpoints were saved at steps {recorder.steps}"


# --------------------------------------------------------------------------- 2: multirun with a failing job
@pytest.fixture(scope="module")
def sweep(work, base, tiny_llama_dir) -> dict[str, Any]:
    """A sweep whose second model path does not exist yet: job 0 trains, job 1 fails. The report is taken; then
    the missing model is put in place and the same sweep command runs again."""
    from rmlab.report import build_report

    sweep_dir, late_model = work / "sweep", work / "late-model"
    overrides = {**base, "trainer.max_epochs": "1", "model.name_or_path": f"{tiny_llama_dir},{late_model}",
                 "hydra.sweep.dir": str(sweep_dir)}
    command = rmlab_command(overrides, multirun=True)
    first = run_one(command, work / "sweep-cwd")
    state: dict[str, Any] = {"dir": sweep_dir, "first": first}
    metrics = list(sweep_dir.rglob("metrics.json"))
    failed = list(sweep_dir.rglob("failed.json"))
    state.update(metrics=metrics, failed=failed, first_layout={
        "good_has_failed_json": any((m.parent / "failed.json").exists() for m in metrics),
        "bad_has_metrics_json": any((f.parent / "metrics.json").exists() for f in failed)})
    if len(metrics) == 1 and len(failed) == 1:
        state["failure"] = json.loads(failed[0].read_text())
        state["metrics_bytes"] = metrics[0].read_bytes()
        state["metrics_mtime"] = metrics[0].stat().st_mtime_ns
    state["report"] = run_one([sys.executable, "-m", "rmlab.report", str(sweep_dir)], work / "sweep-cwd")
    state["report_md"] = (sweep_dir / "table3.md").read_text() if (sweep_dir / "table3.md").is_file() else ""
    state["flat_report"] = build_report(flattened_copy(sweep_dir, work / "sweep-flat-1"))
    shutil.copytree(tiny_llama_dir, late_model)
    state["second"] = run_one(command, work / "sweep-cwd")
    state["flat_report_after_rerun"] = build_report(flattened_copy(sweep_dir, work / "sweep-flat-2"))
    return state


def flattened_copy(sweep_dir: Path, target: Path) -> Path:
    """The sweep's job directories copied to ``<target>/<job num>_job`` (the one-level layout the report reads)."""
    target.mkdir()
    shutil.copy(sweep_dir / "multirun.yaml", target)
    for hydra_dir in sweep_dir.rglob(".hydra"):
        job = hydra_dir.parent
        number = job.relative_to(sweep_dir).parts[0].split("_", 1)[0]
        shutil.copytree(job, target / f"{number}_job", ignore=shutil.ignore_patterns("checkpoints", "export"))
    return target


@pytest.mark.slow
def test_sweep_goes_on_after_a_failing_job(sweep):
    first = sweep["first"]
    assert first.returncode == 0, first.tail()
    assert len(sweep["metrics"]) == 1 and len(sweep["failed"]) == 1, (sweep["metrics"], sweep["failed"])
    good, bad = sweep["metrics"][0].parent, sweep["failed"][0].parent
    assert good != bad
    assert sweep["first_layout"] == {"good_has_failed_json": False, "bad_has_metrics_json": False}
    failure = sweep["failure"]
    assert failure["error"] and "\n" not in failure["error"]
    assert failure["traceback"].startswith("Traceback (most recent call last)")
    error_type = failure["error"].split(":", 1)[0]  # the traceback's last line qualifies it (rmlab.schemas.…)
    assert failure["traceback"].rstrip().splitlines()[-1].split(":", 1)[0].rsplit(".", 1)[-1] == error_type
    assert str(sweep["dir"].parent / "late-model") in failure["error"]  # it names what was missing
    assert "rmlab: job failed" in first.stdout and "failed.json" in first.stdout
    assert "rmlab: job failed" in (bad / "rmlab.log").read_text()  # in the failed job's own log too


@pytest.mark.slow
def test_sweep_failure_is_readable_by_the_report(sweep):
    """With the job directories one level below the sweep directory, the report shows the failed job with the
    first line of its error and the finished one as ok."""
    jobs = {job.name: job for job in sweep["flat_report"].jobs}
    assert jobs["0_job"].status == "ok"
    assert jobs["1_job"].status == "failed"
    assert jobs["1_job"].detail == sweep["failure"]["error"]


@pytest.mark.slow
def test_report_cli_lists_the_failed_job_with_its_error(sweep):
    report = sweep["report"]
    assert report.returncode == 0, report.tail()
    assert f"failed: {sweep['failure']['error']}" in sweep["report_md"], sweep["report_md"]
    assert "missing:" not in sweep["report_md"] and "no job directory" not in sweep["report_md"]


@pytest.mark.slow
def test_rerunning_the_sweep_skips_the_finished_job(sweep):
    second = sweep["second"]
    assert second.returncode == 0, second.tail()
    assert second.stdout.count("already holds metrics.json") == 1, second.stdout[-3000:]
    assert sweep["metrics"][0].stat().st_mtime_ns == sweep["metrics_mtime"]
    assert sweep["metrics"][0].read_bytes() == sweep["metrics_bytes"]
    assert (sweep["failed"][0].parent / "metrics.json").is_file()  # the job that failed ran again, now fine


@pytest.mark.slow
def test_a_job_fixed_on_rerun_is_no_longer_reported_failed(sweep):
    jobs = {job.name: job for job in sweep["flat_report_after_rerun"].jobs}
    assert jobs["1_job"].status == "ok", jobs["1_job"]


# --------------------------------------------------------------------------- 3: non-finite loss (in-process)
class NonFiniteAt:
    """Bradley-Terry loss, multiplied by ``value`` (NaN/inf) on the given 0-based calls (= training steps here)."""

    def __init__(self, steps: set[int], value: float) -> None:
        from rmlab.losses import BradleyTerryLoss

        self.loss, self.steps, self.value, self.calls = BradleyTerryLoss(), steps, value, 0

    def __call__(self, chosen, rejected, margin=None):
        loss = self.loss(chosen, rejected, margin=margin)
        call, self.calls = self.calls, self.calls + 1
        return loss * self.value if call in self.steps else loss


def param_watch():
    import lightning.pytorch as pl

    class ParamWatch(pl.Callback):
        """Per training step: whether any parameter changed."""

        def __init__(self) -> None:
            self.changed: list[bool] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.before = [p.detach().clone() for p in module.parameters()]

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.changed.append(any(not torch.equal(b, p) for b, p in zip(self.before, module.parameters())))

    return ParamWatch()


def nonfinite_fit(tiny_llama_dir, data_file, root: Path, on_nonfinite: str, bad_steps: set[int], value: float,
                  steps: int = 6):
    bundle = build_bundle(tiny_llama_dir)
    datamodule = build_datamodule(bundle, data_file)
    module = build_module(bundle, datamodule, 1, NonFiniteAt(bad_steps, value), on_nonfinite)
    watch = param_watch()
    trainer = build_trainer(1, [watch], root, max_steps=steps, limit_val_batches=0)
    return trainer, module, watch, datamodule


def test_nonfinite_loss_stops_with_the_step(tiny_llama_dir, data_file, tmp_path):
    trainer, module, watch, datamodule = nonfinite_fit(tiny_llama_dir, data_file, tmp_path, "stop", {2}, float("nan"))
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at optimizer step 2\b"):
        trainer.fit(module, datamodule=datamodule)
    assert watch.changed == [True, True]  # two good steps, then the stop before the bad update


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_loss_skip_leaves_parameters_untouched(value, tiny_llama_dir, data_file, tmp_path):
    trainer, module, watch, datamodule = nonfinite_fit(tiny_llama_dir, data_file, tmp_path, "skip", {2, 4}, value)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 6
    assert module.skipped_steps == 2
    assert watch.changed == [True, True, False, True, False, True]
    assert all(bool(p.isfinite().all()) for p in module.parameters())


# --------------------------------------------------------------------------- 4: seeds
@pytest.fixture(scope="module")
def llama_bundle(tiny_llama_dir):
    return build_bundle(tiny_llama_dir)


def train_batches(bundle, data: Path, seed: int, epoch: int = 0) -> list[list[int]]:
    """The training batches (pair indices) the datamodule serves in ``epoch`` for ``seed``."""
    datamodule = build_datamodule(bundle, data, seed=seed)
    datamodule.setup()
    sampler = datamodule.train_dataloader().batch_sampler
    sampler.epoch = lambda: epoch
    return list(sampler)


def test_seed_changes_the_batch_order(llama_bundle, data_file):
    first, again, other = (train_batches(llama_bundle, data_file, seed) for seed in (1, 1, 2))
    assert first == again
    assert first != other
    assert sorted(i for batch in first for i in batch) == sorted(i for batch in other for i in batch)
    assert train_batches(llama_bundle, data_file, 1, epoch=1) != first  # and each epoch is reshuffled


@pytest.fixture(scope="module")
def base_lm_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """The tiny Llama as a causal LM (no reward head), as reward models are usually started from."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny_llama_lm")
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(directory)
    return directory


def test_seed_changes_the_reward_head_initialization(base_lm_dir):
    heads = [build_bundle(base_lm_dir, seed).model.score.weight.detach().clone() for seed in (1, 1, 2)]
    assert torch.equal(heads[0], heads[1])
    assert not torch.equal(heads[0], heads[2])
    assert float(heads[0].abs().sum()) > 0


# --------------------------------------------------------------------------- 5: secrets
FAKE_WANDB_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 hex characters, the shape of a W&B API key
FAKE_HF_TOKEN = "hf_" + "FakeTokenForReliabilityTests" + "x" * 6


@pytest.fixture(scope="module")
def secret_run(work, base) -> dict[str, Any]:
    """A run with the W&B logger offline, secrets in the environment, and a config value interpolating one."""
    assert len(FAKE_WANDB_KEY) == 40
    root = work / "secrets"
    run_dir, wandb_home = root / "run", root / "wandb-home"
    env = child_env(WANDB_API_KEY=FAKE_WANDB_KEY, WANDB_MODE="offline", HF_TOKEN=FAKE_HF_TOKEN,
                    WANDB_DIR=str(wandb_home / "dir"), WANDB_CACHE_DIR=str(wandb_home / "cache"),
                    WANDB_CONFIG_DIR=str(wandb_home / "config"), WANDB_DATA_DIR=str(wandb_home / "data"),
                    NETRC=str(root / "no-netrc"))
    overrides = {**base, "logger": "wandb", "trainer.max_epochs": "1", "logger.tags": "[${oc.env:HF_TOKEN}]",
                 "hydra.run.dir": str(run_dir)}
    result = run_one(rmlab_command(overrides), root / "cwd", env=env)
    assert result.returncode == 0, result.tail()
    return {"run_dir": run_dir, "roots": [run_dir, wandb_home], "result": result}


@pytest.mark.slow
def test_secret_run_wrote_wandb_offline_files(secret_run):
    run_dir = secret_run["run_dir"]
    records = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(records) == 1, all_files(run_dir)
    data = records[0].read_bytes()
    assert b"rmlab.losses.BradleyTerryLoss" in data  # the (redacted) config was logged
    assert "${oc.env:HF_TOKEN}" in (run_dir / ".hydra" / "config.yaml").read_text()  # stored unresolved


@pytest.mark.slow
def test_wandb_api_key_is_written_nowhere(secret_run):
    assert files_containing(FAKE_WANDB_KEY.encode(), *secret_run["roots"]) == []
    assert FAKE_WANDB_KEY not in secret_run["result"].output


@pytest.mark.slow
def test_interpolated_secret_is_written_nowhere(secret_run):
    assert files_containing(FAKE_HF_TOKEN.encode(), *secret_run["roots"]) == []
    assert FAKE_HF_TOKEN not in secret_run["result"].output


def test_redact_secrets(monkeypatch):
    from rmlab.loggers import redact_secrets

    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to be matched inside other strings
    config = {
        "model": {"name_or_path": "meta/llama", "tokenizer": "meta/llama", "hf_token": "anything"},
        "logger": {"tags": [FAKE_HF_TOKEN, "plain"], "name": f"run-{FAKE_WANDB_KEY}", "api_key": "k",
                   "project": "rmlab"},
        "data": {"max_length": 64, "note": "abc", "num_tokens": 5, "source": "x.jsonl"},
        "auth": {"password": "hunter2", "secret": "s", "token": "t", "access_token": "a", "empty_api_key": ""},
    }
    snapshot = json.loads(json.dumps(config))
    redacted = redact_secrets(config)
    assert config == snapshot  # the input is not modified
    assert redacted["model"] == {"name_or_path": "meta/llama", "tokenizer": "meta/llama", "hf_token": "***"}
    assert redacted["logger"] == {"tags": ["***", "plain"], "name": "***", "api_key": "***", "project": "rmlab"}
    assert redacted["data"] == config["data"]
    assert redacted["auth"] == {"password": "***", "secret": "***", "token": "***", "access_token": "***",
                                "empty_api_key": ""}
    assert FAKE_HF_TOKEN not in json.dumps(redacted) and FAKE_WANDB_KEY not in json.dumps(redacted)


# --------------------------------------------------------------------------- 6: trust_remote_code
@pytest.mark.parametrize("model", ["hf", "minilm"])
def test_trust_remote_code_defaults_to_false(model):
    from rmlab.model import build_reward_model

    cfg = compose_config(f"model={model}", *(["model.name_or_path=some/model"] if model == "hf" else []))
    assert cfg.model.trust_remote_code is False
    assert inspect.signature(build_reward_model).parameters["trust_remote_code"].default is False


# --------------------------------------------------------------------------- 7: bad data via the CLI
@pytest.fixture(scope="module")
def bad_data_runs(work, base, data_file) -> dict[str, Any]:
    root = work / "bad-data"
    root.mkdir()
    lines = data_file.read_text().splitlines()
    bad_line = 21
    bad = root / "bad-row.jsonl"
    bad.write_text("\n".join(lines[:bad_line - 1] + ["{not json"] + lines[bad_line - 1:40]) + "\n")
    missing = root / "missing.jsonl"
    empty = root / "all-bad.jsonl"
    empty.write_text('{not json\n[1, 2]\n{"chosen": "only one side"}\n')
    sources = {"bad_row": (bad, {"data.on_bad_row": "error"}), "missing": (missing, {}), "empty": (empty, {})}
    jobs = [(rmlab_command(base, {"data.source": str(path), "hydra.run.dir": str(root / name / "run"), **extra}),
             root / name) for name, (path, extra) in sources.items()]
    results = dict(zip(sources, run_all(*jobs)))
    return {"results": results, "bad": bad, "bad_line": bad_line, "missing": missing, "empty": empty}


def one_line_error(result: Result, kind: str, code: int) -> str:
    """A user's error: exit ``code`` and one ``rmlab: <kind>:`` line on stderr, no Python traceback."""
    assert result.returncode == code, result.tail()
    assert "Traceback" not in result.output, result.tail()
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"rmlab: {kind}:")]
    assert len(lines) == 1, result.tail()
    return lines[0]


@pytest.mark.slow
def test_bad_row_with_on_bad_row_error_names_file_and_line(bad_data_runs):
    line = one_line_error(bad_data_runs["results"]["bad_row"], "data error", 1)
    assert f"{bad_data_runs['bad']}:{bad_data_runs['bad_line']}: invalid_json" in line
    assert "data.on_bad_row=skip" in line


@pytest.mark.slow
def test_missing_data_file_is_a_config_error_before_anything_loads(bad_data_runs):
    line = one_line_error(bad_data_runs["results"]["missing"], "config error", 2)
    assert f"data.source='{bad_data_runs['missing']}' is invalid: no such file" in line


@pytest.mark.slow
def test_empty_dataset_after_filtering_is_a_clear_error(bad_data_runs):
    line = one_line_error(bad_data_runs["results"]["empty"], "data error", 1)
    assert "no training pairs left after filtering" in line
    assert "'rows_read': 3" in line and "'rows_used': 0" in line and "Fix:" in line
