"""Two nodes simulated on one machine: two torchrun agents (``--nnodes 2``, one process each) meeting on 127.0.0.1,
or two processes with the environment ``srun`` gives its tasks; gloo on CPU.

Every run is ``python -m rmlab`` end to end (train, score, export, ``metrics.json``), compared with the same job on
one node with two processes. DDP runs use ``faults.SlowSteps`` (0.3 s per step) so that a node can be killed or
frozen between two checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
from conftest import write_topic_pairs
from two_process_runs import child_env, rewards

pytestmark = pytest.mark.slow
TIMEOUT_S = 300
HAS_DEEPSPEED = __import__("importlib").util.find_spec("deepspeed") is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job_args(model_dir: Path, data: Path, strategy: str, *extra: str) -> list[str]:
    """96 pairs; 2 ranks × 4 pairs × accumulation 2 = 16 pairs per step; a checkpoint every 2 steps."""
    options = {"ddp": ["strategy=ddp", "loss._target_=faults.SlowSteps"],
               "zero3": ["strategy=deepspeed_zero3", "strategy.allow_cpu=true",
                         "strategy.stage3_param_persistence_threshold=0"]}[strategy]
    return ["model=hf", f"model.name_or_path={model_dir}", "data=local", f"data.source={data}", "data.max_length=64",
            "data.batch_size=4", "data.global_batch_size=16", "trainer.max_steps=4", "ckpt_every_n_steps=2",
            "logger=csv", "trainer.enable_progress_bar=false", "optimizer.optimizer.lr=1e-3", *options, *extra]


class Node:
    """One simulated node: a torchrun agent (own session, so it can be killed or frozen with its worker)."""

    def __init__(self, cwd: Path, rank: int, rendezvous: list[str], args: list[str], delay_s: float = 0.0) -> None:
        self.log_path = cwd / f"node{rank}.log"
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                   "--nproc-per-node", "1", *rendezvous, "-m", "faults", *args, "trainer.devices=1",
                   "trainer.num_nodes=2"]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=cwd, env=child_env(FAULTS_START_DELAY_S=str(delay_s)),
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            raise

    def signal(self, number: int) -> None:
        """Signal the agent's group and its worker (torchrun starts each worker in a session of its own)."""
        workers = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        for pid in [self.process.pid, *map(int, workers.split())]:
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass

    @property
    def output(self) -> str:
        return self.log_path.read_text()


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def start_two_nodes(cwd: Path, form: str, args: list[str], run_id: str = "two-nodes") -> tuple[Node, Node]:
    """``c10d``: node 0's agent serves the rendezvous store (it starts first, as on a cluster where the endpoint is
    its host). ``static``: ``--master-addr/--master-port``, no run id; node 1's worker starts 2.5 s late."""
    cwd.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if form == "c10d":
        rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id]
        first = Node(cwd, 0, rendezvous, args)
        wait_for_port(port, first.process)
        return first, Node(cwd, 1, rendezvous, args)
    rendezvous = ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    return Node(cwd, 0, rendezvous, args), Node(cwd, 1, rendezvous, args, delay_s=2.5)


def run_two_nodes(cwd: Path, form: str, args: list[str], run_id: str = "two-nodes") -> tuple[int, int]:
    nodes = start_two_nodes(cwd, form, args, run_id)
    codes = tuple(node.wait() for node in nodes)
    assert codes == (0, 0), "\n".join(node.output[-3000:] for node in nodes)
    return codes


def one_node(cwd: Path, args: list[str]) -> Path:
    """The same job on one node, two processes (torchrun --standalone)."""
    cwd.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "rmlab",
               *args, "trainer.devices=2", "hydra.run.dir=run"]
    result = subprocess.run(command, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd / "run"


def only_run_dir(cwd: Path) -> Path:
    runs = sorted((cwd / "outputs" / "runs").iterdir())
    assert len(runs) == 1, f"the launch split into {runs}"
    return runs[0]


def assert_like_one_node(run_dir: Path, reference: Path) -> None:
    """Same held-out accuracy and rewards within 1e-6 of one node with two processes (same world size, ranks and
    data order: only the transport differs), the same optimizer steps."""
    got, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert got["eval"]["heldout"]["accuracy"] == expected["eval"]["heldout"]["accuracy"]
    assert got["run"]["optimizer_steps"] == expected["run"]["optimizer_steps"] == 4
    for side in ("chosen", "rejected"):
        assert [r[side] for r in rewards(run_dir)] == pytest.approx([r[side] for r in rewards(reference)], abs=1e-6)


def assert_global_rank_zero_wrote_alone(cwd: Path, run_dir: Path, deepspeed: bool) -> None:
    """One metrics.json, export, deepspeed_config.json and .hydra in the whole tree, all in the run dir; the other
    rank's log there, named by its global rank; one CSV log."""
    for name in ("metrics.json", "export", ".hydra") + (("deepspeed_config.json",) if deepspeed else ()):
        assert [p.parent for p in cwd.rglob(name)] == [run_dir], name
    assert sorted(p.name for p in cwd.rglob("rmlab*.log")) == ["rmlab.log", "rmlab_rank1.log"]
    assert (run_dir / "rmlab_rank1.log").is_file() and len(list(run_dir.rglob("metrics.csv"))) == 1


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("multinode")


@pytest.fixture(scope="module")
def data(work) -> Path:
    return write_topic_pairs(work / "pairs.jsonl", 96)


@pytest.fixture(scope="module")
def references(work, data, tiny_llama_dir) -> dict[str, Path]:
    strategies = ["ddp", "zero3"] if HAS_DEEPSPEED else ["ddp"]
    return {name: one_node(work / f"one_node_{name}", job_args(tiny_llama_dir, data, name)) for name in strategies}


@pytest.fixture(scope="module")
def two_nodes(work, data, tiny_llama_dir):
    """``two_nodes(form, strategy)``: the directory of that two-node launch, run once per module."""
    done: dict[tuple[str, str], Path] = {}

    def launch(form: str, strategy: str) -> Path:
        if (form, strategy) not in done:
            cwd = work / f"{form}_{strategy}"
            run_two_nodes(cwd, form, job_args(tiny_llama_dir, data, strategy))
            done[form, strategy] = cwd
        return done[form, strategy]

    return launch


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("zero3", marks=pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="deepspeed extra"))])
@pytest.mark.parametrize("form", ["c10d", "static"])
def test_two_nodes_give_one_run_dir_and_the_one_node_results(form, strategy, two_nodes, references):
    cwd = two_nodes(form, strategy)
    run_dir = only_run_dir(cwd)
    assert run_dir.name.startswith("torchrun-two-nodes" if form == "c10d" else "20")
    assert_global_rank_zero_wrote_alone(cwd, run_dir, deepspeed=strategy == "zero3")
    assert_like_one_node(run_dir, references[strategy])
    assert "2 processes on 2 node(s), launched by TorchElasticEnvironment" in (run_dir / "rmlab.log").read_text()


def test_a_lost_node_stops_node_zero_with_one_line_and_a_rerun_resumes(work, data, tiny_llama_dir, two_nodes):
    """SIGKILL to node 1's agent once the first checkpoint exists (its worker dies with it: rmlab.launch); node 0
    stops within 120 s naming rank 1; the same command on both nodes resumes and ends as an uninterrupted run."""
    cwd, args = work / "lost_node", job_args(tiny_llama_dir, data, "ddp")
    node0, node1 = start_two_nodes(cwd, "c10d", args, run_id="lost")
    last = cwd / "outputs" / "runs" / "torchrun-lost" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + TIMEOUT_S
    while not last.exists() and node0.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(node1.process.pid, signal.SIGKILL)  # the agent only
    killed_at = time.monotonic()
    code = node0.wait(timeout=120)
    stopped_after = time.monotonic() - killed_at
    node1.wait(timeout=60)
    lines = [line for line in node0.output.splitlines() if line.startswith("rmlab: lost peers:")]
    assert code != 0 and len(lines) == 1, node0.output[-4000:]
    assert "rank 1 (node 1, host " in lines[0] and str(last) in lines[0] and "rerun the same command" in lines[0]
    print(f"node 1 killed; node 0 exited {code} after {stopped_after:.1f} s: {lines[0]}")
    run_two_nodes(cwd, "c10d", args, run_id="lost")  # the same command again: the same run dir
    run_dir = only_run_dir(cwd)
    assert f"resuming from {last}" in (run_dir / "rmlab.log").read_text()
    uninterrupted = only_run_dir(two_nodes("c10d", "ddp"))
    got, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, uninterrupted))
    assert got["eval"] == expected["eval"] and got["table3"] == expected["table3"]


def test_a_frozen_node_fails_the_run_after_strategy_timeout_s(work, data, tiny_llama_dir):
    """SIGSTOP to node 1 (agent and worker: its sockets stay open, as with a hung GPU): node 0's collective waits
    ``strategy.timeout_s`` (here 15 s, not the 10-minute default), then node 0 exits naming rank 1."""
    cwd = work / "frozen_node"
    node0, node1 = start_two_nodes(cwd, "static", job_args(tiny_llama_dir, data, "ddp", "strategy.timeout_s=15"))
    checkpoints = cwd / "outputs" / "runs"
    deadline = time.monotonic() + TIMEOUT_S
    while not list(checkpoints.glob("*/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    node1.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        code = node0.wait(timeout=120)
    finally:
        node1.signal(signal.SIGKILL)
    stopped_after = time.monotonic() - frozen_at
    lines = [line for line in node0.output.splitlines() if line.startswith("rmlab: lost peers:")]
    assert code != 0 and len(lines) == 1 and "rank 1 (node 1" in lines[0], node0.output[-4000:]
    assert "time" in lines[0].lower() and 15 <= stopped_after < 60, (stopped_after, lines[0])


def srun_env(job_id: str, rank: int, nodes: int = 2) -> dict[str, str]:
    """What ``srun --nodes 2 --ntasks-per-node 1`` sets for task ``rank`` (one task per node)."""
    return child_env(SLURM_JOB_ID=job_id, SLURM_JOB_NAME="rmlab", SLURM_PROCID=str(rank), SLURM_LOCALID="0",
                     SLURM_NODEID=str(rank), SLURM_NTASKS="2", SLURM_NNODES=str(nodes), SLURM_JOB_NUM_NODES=str(nodes),
                     SLURM_NTASKS_PER_NODE="1", SLURM_TASKS_PER_NODE="1(x2)", SLURM_NODELIST="127.0.0.1",
                     SLURM_JOB_NODELIST="127.0.0.1", SLURM_STEP_NUM_NODES=str(nodes), SLURM_STEP_NUM_TASKS="2")


def slurm_job_id() -> str:
    """A job id whose port, as Lightning derives it (its last 4 digits + 15000), is free here."""
    start = 15000 + os.getpid() % 9000
    for port in [*range(start, 25000), *range(15000, start)]:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return f"77{port - 15000:04d}"
    raise AssertionError("no free port in 15000-24999")


def srun(cwd: Path, job_id: str, args: list[str], nodes: int = 2, timeout: Optional[float] = TIMEOUT_S
         ) -> list[subprocess.CompletedProcess]:
    cwd.mkdir(parents=True, exist_ok=True)
    tasks = [subprocess.Popen([sys.executable, "-m", "rmlab", *args], cwd=cwd, env=srun_env(job_id, rank, nodes),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
             for rank in (0, 1)]
    return [subprocess.CompletedProcess(task.args, task.wait(timeout), task.communicate()[0], "") for task in tasks]


def test_srun_tasks_on_two_nodes_train_as_one_job(work, data, tiny_llama_dir, references):
    """Lightning's SLURMEnvironment takes the ranks from srun's variables; the job's one run dir is slurm-<job id>."""
    cwd, job_id = work / "slurm", slurm_job_id()
    results = srun(cwd, job_id, job_args(tiny_llama_dir, data, "ddp", "trainer.devices=1", "trainer.num_nodes=2"))
    assert [r.returncode for r in results] == [0, 0], "\n".join(r.stdout[-3000:] for r in results)
    run_dir = only_run_dir(cwd)
    assert run_dir.name == f"slurm-{job_id}"
    assert_global_rank_zero_wrote_alone(cwd, run_dir, deepspeed=False)
    assert_like_one_node(run_dir, references["ddp"])
    assert "2 processes on 2 node(s), launched by SLURMEnvironment" in (run_dir / "rmlab.log").read_text()


def test_srun_refuses_a_num_nodes_that_contradicts_the_allocation(work, tiny_llama_dir, data):
    """trainer.num_nodes=1 in a 2-node allocation: one line naming both numbers, before anything loads."""
    started = time.monotonic()
    results = srun(work / "slurm_mismatch", slurm_job_id(), job_args(tiny_llama_dir, data, "ddp", "trainer.devices=1"),
                   timeout=60)
    for result in results:
        lines = result.stdout.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stdout[-2000:]
        assert "trainer.num_nodes=1, but this srun allocation has 2 nodes" in lines[0]
    assert time.monotonic() - started < 10
