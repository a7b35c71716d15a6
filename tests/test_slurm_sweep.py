"""The SLURM sweep without a cluster: ``python -m rmlab --multirun +sweeps=table3_paper hydra/launcher=slurm`` runs
submitit's own SlurmExecutor against fake ``sbatch`` / ``srun`` / ``sacct`` on PATH. The tests read the sbatch script
submitit wrote, then run a job's tasks as srun would (``python -u -m submitit.core._submit <folder>`` per task, with
srun's variables on top of the environment sbatch exports: the submitting process's)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_topic_pairs

ARRAY_JOB_ID = "4242"
FAKE_SLURM = {  # sbatch records the script and its environment; srun must exist (submitit checks), never runs
    "sbatch": f'cp "$1" "$FAKE_SLURM_RECORD/script.sh"; env -0 > "$FAKE_SLURM_RECORD/env"\n'
              f'echo "Submitted batch job {ARRAY_JOB_ID}"',
    "srun": 'echo "fake srun: the test runs the tasks" >&2; exit 1',
    "sacct": 'echo "JobID|State|NodeList"',  # the job is not known yet: submitit keeps waiting for its results
}
SWEEP = ["+sweeps=table3_paper", "hydra/launcher=slurm", 'hydra.sweeper.params.loss="bt,hinge"']  # 2 of its 8 losses
JOBS = 2  # an array of 2 jobs, as the paper's 8 losses are an array of 8


def submit(tmp_path: Path, *overrides: str) -> tuple[subprocess.Popen, Path, Path]:
    """Start the sweep's launcher; return it (waiting for results), the sbatch record and the sweep dir it logged,
    once submitit has filed every job's pickle."""
    bin_dir, record = tmp_path / "fake_slurm", tmp_path / "sbatch_record"
    bin_dir.mkdir()
    record.mkdir()
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    launch_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in launch_vars}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_SLURM_RECORD=str(record), RMLAB_TOKENIZED_CACHE="off")
    with (tmp_path / "launcher.log").open("w") as log:
        launcher = subprocess.Popen([sys.executable, "-m", "rmlab", "--multirun", *SWEEP, *overrides], cwd=tmp_path,
                                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(tmp_path.glob(f"outputs/multirun/*/.submitit/{ARRAY_JOB_ID}_*/*_submitted.pkl"))) < JOBS:
        if launcher.poll() is not None or time.time() > deadline:
            launcher.kill()
            pytest.fail(f"no submission (launcher exit {launcher.wait()}):\n{(tmp_path / 'launcher.log').read_text()}")
        time.sleep(0.2)
    logged = re.search(r"sweep output dir : (\S+)", (tmp_path / "launcher.log").read_text()).group(1)
    return launcher, record, tmp_path / logged


def stop(launcher: subprocess.Popen) -> None:
    launcher.terminate()
    launcher.wait(timeout=30)


def sbatch_flags(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.MULTILINE))


def submit_command(script: str) -> list[str]:
    """The command srun runs in each task: ``<python> -u -m submitit.core._submit <folder>``."""
    (srun,) = [shlex.split(line) for line in script.splitlines() if line.startswith("srun ")]
    return srun[srun.index(sys.executable):]


@pytest.mark.slow
@pytest.mark.parametrize("num_nodes", [1, 2])
def test_paper_sweep_submits_one_task_per_gpu(tmp_path, num_nodes):
    """Each job of the paper sweep asks for trainer.num_nodes nodes of 8 tasks and 8 GPUs (Lightning's one task per
    device) for 48 h; the launcher itself runs no job (nothing loads Gemma-2-27B here)."""
    launcher, record, sweep = submit(tmp_path, f"trainer.num_nodes={num_nodes}")
    stop(launcher)
    script = (record / "script.sh").read_text()
    flags = sbatch_flags(script)
    sizes = [flags.get(key) for key in ("nodes", "ntasks-per-node", "gpus-per-node", "time", "array")]
    assert sizes == [str(num_nodes), "8", "8", "2880", "0-1%2"], script
    assert submit_command(script) == [sys.executable, "-u", "-m", "submitit.core._submit", f"{sweep}/.submitit/%j"]
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "multirun.yaml"]


def free_slurm_job_id(first: int) -> str:
    """A job id from ``first`` on whose Lightning port (15000 + its last 4 digits) is free here."""
    for job_id in range(first, first + 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", 15000 + job_id % 10000))
            except OSError:
                continue
        return str(job_id)
    raise RuntimeError("no free port in 15000 + [job id]")


@pytest.mark.slow
def test_a_jobs_srun_tasks_train_as_ranks_in_the_launchers_sweep_dir(tmp_path, tiny_llama_dir):
    """Array job 4242, task 1 (SLURM job id 4243 or next), on 2 nodes x 1 task: both srun tasks train as the two
    ranks of one run, in the job's one directory under the sweep dir the launcher logged; no ``slurm-<id>`` dir."""
    data = write_topic_pairs(tmp_path / "pairs.jsonl", 48)
    tiny = ["model=hf", f"model.name_or_path={tiny_llama_dir}", "data=local", f"data.source={data}",
            "data.max_length=64", "data.batch_size=4", "data.global_batch_size=null", "eval=default", "strategy=ddp",
            "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2", "trainer.precision=32-true",
            "trainer.max_steps=2", "trainer.enable_progress_bar=false", "logger=none"]
    launcher, record, sweep = submit(tmp_path, *tiny)
    try:
        script = (record / "script.sh").read_text()
        flags = sbatch_flags(script)
        assert (flags["nodes"], flags["ntasks-per-node"]) == ("2", "1"), script
        exported = dict(line[len("export "):].split("=", 1) for line in script.splitlines()
                        if line.startswith("export "))
        sbatch_env = dict(entry.split("=", 1) for entry in (record / "env").read_text().split("\0") if "=" in entry)
        job_id = free_slurm_job_id(int(ARRAY_JOB_ID) + 1)
        job_env = {**sbatch_env, **exported, "SLURM_JOB_ID": job_id, "SLURM_ARRAY_JOB_ID": ARRAY_JOB_ID,
                   "SLURM_ARRAY_TASK_ID": "1", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2",
                   "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_NODELIST": "127.0.0.1",
                   "SLURM_JOB_NAME": flags["job-name"]}
        tasks, logs = [], [tmp_path / f"task{rank}.log" for rank in (0, 1)]
        for rank, path in enumerate(logs):  # one task per node: node id = global rank, local rank 0
            task_env = {**job_env, "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank), "SLURM_LOCALID": "0"}
            with path.open("w") as log:
                tasks.append(subprocess.Popen(submit_command(script), cwd=tmp_path, env=task_env, stdout=log,
                                              stderr=subprocess.STDOUT))
        codes = [task.wait(timeout=300) for task in tasks]
        assert codes == [0, 0], "\n".join(path.read_text()[-3000:] for path in logs)
        assert launcher.poll() is None  # still waiting, for array task 0 as well
    finally:
        stop(launcher)
    assert list((tmp_path / "outputs" / "multirun").iterdir()) == [sweep]
    (run,) = [p for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit"]
    assert list(tmp_path.rglob("metrics.json")) == [run / "metrics.json"]
    metrics = json.loads((run / "metrics.json").read_text())["run"]
    assert run.name.startswith("1_") and metrics["loss"] == "hinge" and metrics["optimizer_steps"] == 2
    assert list(tmp_path.rglob(".hydra")) == [run / ".hydra"]
    assert sorted(p.name for p in run.glob("*.log")) == ["rmlab.log", "rmlab_rank1.log"]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (run / "rmlab_rank1.log").read_text()
    results = sweep / ".submitit" / f"{ARRAY_JOB_ID}_1"
    for rank in (0, 1):  # what submitit hands back to the launcher: each task ran the job in that directory
        outcome, job_return = pickle.loads((results / f"{ARRAY_JOB_ID}_1_{rank}_result.pkl").read_bytes())
        assert outcome == "success" and job_return.hydra_cfg.hydra.runtime.output_dir == str(run.resolve())
