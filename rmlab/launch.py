"""One launch, one run directory: what every rank of a ``torchrun`` / ``srun`` launch agrees on before Hydra
picks its output directory, and how the launcher's environment must match the config.

* :func:`launch_id` names the run directory (``outputs/runs/<launch id>``) the same way on every rank:
  the SLURM job (``slurm-<job id>``); else the torchrun rendezvous id
  (``torchrun-<id>``); else, for a torchrun launch without one (the static ``--master-addr/--master-port``
  form, or c10d without ``--rdzv-id``), the first rank's clock, agreed through the store that torchrun's agent
  serves at ``MASTER_ADDR:MASTER_PORT`` (so a worker that starts a second later still joins the first's
  directory); else the clock.
* :func:`global_rank` is the rank before any trainer exists (torchrun's ``RANK``, srun's ``SLURM_PROCID``).
* :func:`check_slurm_nodes` refuses a ``trainer.num_nodes`` (or ``trainer.devices``) that the srun allocation
  contradicts, before anything loads; Lightning would refuse it only once the model and data had loaded.

Standard library only (torch's store client is imported for the agreement alone), so config errors stay fast.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any, Optional

STORE_KEY = "rmlab/launch_id"
STORE_TIMEOUT = timedelta(seconds=60)


class PeerLost(RuntimeError):
    """Ranks of a multi-process fit stopped answering (:mod:`rmlab.peers`); the message names them and the fix."""


def _clock() -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def _agreed_through_torchrun_store(candidate: str) -> str:
    """The first value any rank of this torchrun launch offered (the agent's store lives as long as the launch)."""
    from torch.distributed import TCPStore

    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=STORE_TIMEOUT)
    return store.compare_set(STORE_KEY, "", candidate).decode()


def launch_id() -> str:
    """The name of this launch's run directory, equal on every rank (see the module docstring)."""
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id != "none":
        return f"torchrun-{run_id}"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("MASTER_PORT"):
        return _agreed_through_torchrun_store(_clock())
    return _clock()


def die_with_torchrun_agent() -> None:
    """Under torchrun, die (SIGKILL) when this worker's agent dies. torchrun starts its workers in sessions of their
    own, so a worker whose agent was killed would train on as an orphan: its node's peers would then wait at the
    end in torchrun's exit barrier (300 s) and report success. With this, a lost agent is a lost node (Linux). Not
    SIGTERM: Lightning's handler for it lets the worker go on into its next collective."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    agent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != agent:  # the agent died before the call
        os.kill(os.getpid(), signal.SIGKILL)


def global_rank() -> int:
    """The global rank before any trainer exists: torchrun's RANK, else srun's SLURM_PROCID (not a per-node local
    rank). The one place rmlab reads a rank from the environment; later code asks ``trainer.is_global_zero``."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def slurm_tasks() -> Optional[dict[str, Optional[int]]]:
    """The srun allocation's nodes and tasks per node, when Lightning will run under SLURM (its
    ``SLURMEnvironment.detect`` rule: ``SLURM_NTASKS`` set and the job not an interactive shell), else None."""
    if "SLURM_NTASKS" not in os.environ or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    nodes, per_node = os.environ.get("SLURM_NNODES", ""), os.environ.get("SLURM_NTASKS_PER_NODE", "")
    return {"nodes": int(nodes) if nodes.isdigit() else None,
            "tasks_per_node": int(per_node) if per_node.isdigit() else None}


def check_slurm_nodes(num_nodes: int, devices: Any) -> Optional[str]:
    """Why the srun allocation contradicts ``trainer.num_nodes`` / an integer ``trainer.devices`` (None: it does
    not): Lightning's ``SLURMEnvironment.validate_settings`` rule (one process per task), checked before the model and
    data load rather than after."""
    slurm = slurm_tasks()
    if slurm is None:
        return None
    if slurm["nodes"] is not None and slurm["nodes"] != num_nodes:
        return (f"trainer.num_nodes={num_nodes}, but this srun allocation has {slurm['nodes']} nodes "
                f"(SLURM_NNODES). Fix: trainer.num_nodes={slurm['nodes']}, or srun/sbatch --nodes={num_nodes}.")
    if isinstance(devices, int) and slurm["tasks_per_node"] is not None and slurm["tasks_per_node"] != devices:
        return (f"trainer.devices={devices}, but this srun allocation runs {slurm['tasks_per_node']} tasks per node "
                f"(SLURM_NTASKS_PER_NODE; one task per device). Fix: trainer.devices={slurm['tasks_per_node']}, "
                f"or --ntasks-per-node={devices}.")
    return None
