"""The launch, in-process: the run directory's name every rank agrees on, srun's allocation against the config,
and naming the ranks that stopped (tests/test_multinode.py runs all of it with real processes)."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch

from rmlab import launch
from rmlab.peers import PeerWatch, is_transport_error

TORCHRUN_WITHOUT_ID = {"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_USE_AGENT_STORE": "True",
                       "MASTER_ADDR": "127.0.0.1"}


@pytest.fixture
def store(monkeypatch):
    """A TCPStore served here, as torchrun's agent serves one at MASTER_ADDR:MASTER_PORT."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))
    for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**TORCHRUN_WITHOUT_ID, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    return server


def test_ranks_without_a_rendezvous_id_agree_on_the_first_ranks_clock(store, monkeypatch):
    """The static rendezvous (no --rdzv-id): a rank that starts a second later takes the first rank's name."""
    clocks = iter(["2026-12-04_10-00-00", "2026-12-04_10-00-01"])
    monkeypatch.setattr(launch, "_clock", lambda: next(clocks))
    assert [launch.launch_id(), launch.launch_id()] == ["2026-12-04_10-00-00"] * 2


@pytest.mark.parametrize("env,expected", [
    ({"SLURM_JOB_ID": "4242", "TORCHELASTIC_RUN_ID": "abc"}, "slurm-4242"),
    ({"TORCHELASTIC_RUN_ID": "abc"}, "torchrun-abc"),
])
def test_a_scheduler_or_rendezvous_id_names_the_launch(env, expected, monkeypatch):
    for key in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launch.launch_id() == expected


SRUN = {"SLURM_NTASKS": "16", "SLURM_JOB_NAME": "train", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8",
        "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
        "SLURM_NODELIST": "gpu[17-18]"}


@pytest.mark.parametrize("nodes,devices,env_change,refused", [
    (2, 8, {}, None), (1, 8, {}, "trainer.num_nodes=1, but this srun allocation has 2 nodes"),
    (2, 4, {}, "trainer.devices=4, but this srun allocation runs 8 tasks per node"), (2, "auto", {}, None),
    (1, 1, {"SLURM_JOB_NAME": "interactive"}, None), (1, 1, {"SLURM_JOB_NAME": "bash"}, None)])
def test_srun_allocation_is_checked_as_lightning_checks_it(nodes, devices, env_change, refused, monkeypatch):
    """rmlab's early check refuses exactly what Lightning's SLURMEnvironment would refuse once everything loaded."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for key, value in {**SRUN, **env_change}.items():
        monkeypatch.setenv(key, value)
    message = launch.check_slurm_nodes(nodes, devices)
    assert (message is None) == (refused is None) and (refused is None or refused in message), message
    if isinstance(devices, int) and SLURMEnvironment.detect():
        if refused:
            with pytest.raises(ValueError):
                SLURMEnvironment().validate_settings(devices, nodes)
        else:
            SLURMEnvironment().validate_settings(devices, nodes)


def beat_as(store, rank: int, stop: threading.Event) -> None:
    while not stop.is_set():
        store.add(f"rmlab/heartbeat/{rank}", 1)
        stop.wait(0.2)


def test_the_silent_rank_is_named_after_a_transport_error(store, monkeypatch):
    """Ranks 0 and 2 keep beating, rank 1 stopped: a gloo error makes the watch name rank 1, with its host."""
    monkeypatch.setattr("rmlab.peers.SILENCE_S", 1.0)
    watch = PeerWatch()
    stop = threading.Event()
    trainer = SimpleNamespace(world_size=3, num_nodes=3, global_rank=0, node_rank=0, is_global_zero=False)
    watch.setup(trainer, None, "fit")
    for rank in (1, 2):
        store.set(f"rmlab/host/{rank}", f"node {rank}, host h{rank}")
    threading.Thread(target=beat_as, args=(store, 2, stop), daemon=True).start()
    store.add("rmlab/heartbeat/1", 5)  # beat once, then silence
    time.sleep(0.3)
    try:
        error = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:30364")
        assert is_transport_error(error) and not is_transport_error(ValueError("Connection closed"))
        assert watch.lost_peers(error) == "rank 1 (node 1, host h1) stopped answering (1 of 3 ranks)"
        assert watch.lost_peers(RuntimeError("CUDA out of memory")) is None  # not the transport: not a lost peer
    finally:
        stop.set()
        watch.teardown(trainer, None, "fit")
