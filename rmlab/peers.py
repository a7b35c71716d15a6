"""Lost peers: when a collective fails (a peer's socket closed) or times out (a peer froze, or NCCL waited
``strategy.timeout_s``), the surviving ranks say which ranks stopped, in one line, instead of a transport error.

Every rank of a multi-process fit bumps a counter in the launch's store (``MASTER_ADDR:MASTER_PORT``: torchrun's
agent store, or rank 0's under Lightning's launcher and srun) every :data:`INTERVAL_S` seconds from a daemon
thread. After a distributed error a surviving rank reads the counters twice, :data:`SILENCE_S` apart: the ranks
whose counters did not move are the lost ones. When the store itself is unreachable, the rank serving it
(rank 0, or node 0's torchrun agent) is the one lost.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta
from typing import Any, Optional

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)
INTERVAL_S = 1.0
SILENCE_S = 3.5 * INTERVAL_S
STORE_TIMEOUT = timedelta(seconds=10)
TRANSPORT_ERRORS = ("gloo", "nccl", "connection", "timeout", "timed out", "broken pipe", "watchdog")


def is_transport_error(error: BaseException) -> bool:
    """A failed or timed-out collective (gloo's or NCCL's error, or torch.distributed's own error types)."""
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(marker in text for marker in TRANSPORT_ERRORS)


def _key(rank: int) -> str:
    return f"rmlab/heartbeat/{rank}"


class PeerWatch(pl.Callback):
    """Heartbeats during a multi-process fit (started at ``setup``, stopped at ``teardown``), and
    :meth:`lost_peers` to name the silent ranks after a distributed error."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.world_size, self.nodes = 1, 1

    @staticmethod
    def _client() -> Any:
        from torch.distributed import TCPStore

        return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                        timeout=STORE_TIMEOUT)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size < 2 or self._thread is not None or "MASTER_PORT" not in os.environ:
            return
        self.world_size, self.nodes = trainer.world_size, trainer.num_nodes
        if trainer.is_global_zero:
            environment = type(getattr(trainer.strategy, "cluster_environment", None)).__name__
            log.info(f"{trainer.world_size} processes on {trainer.num_nodes} node(s), launched by {environment}")
        store, key = self._client(), _key(trainer.global_rank)
        store.set(f"rmlab/host/{trainer.global_rank}", f"node {trainer.node_rank}, host {socket.gethostname()}")

        def beat() -> None:
            while not self._stop.is_set():
                try:
                    store.add(key, 1)
                except Exception:  # the store is gone: the fit's own collectives report it
                    return
                self._stop.wait(INTERVAL_S)

        self._thread = threading.Thread(target=beat, name="rmlab-heartbeat", daemon=True)
        self._thread.start()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop.set()

    def lost_peers(self, error: BaseException) -> Optional[str]:
        """After ``error``: which ranks stopped (None when this was no multi-process fit or no transport error)."""
        if self._thread is None or not is_transport_error(error):
            return None
        try:  # this rank keeps beating meanwhile: the other survivors are checking too
            store = self._client()
            before = [store.add(_key(rank), 0) for rank in range(self.world_size)]
            time.sleep(SILENCE_S)
            after = [store.add(_key(rank), 0) for rank in range(self.world_size)]
            silent = [rank for rank in range(self.world_size) if after[rank] == before[rank]]
            names = [f"rank {rank} ({store.get(f'rmlab/host/{rank}').decode()})" for rank in silent]
        except Exception:  # noqa: BLE001 - any failure to reach the store means its host is gone
            address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            return f"rank 0 (node 0, which serves the launch's store at {address}) stopped answering"
        if not names:
            return None
        return f"{', '.join(names)} stopped answering ({len(names)} of {self.world_size} ranks)"
