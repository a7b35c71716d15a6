"""What tests inspect inside real ``python -m rmlab`` runs: a callback that writes each rank's view of its model
to ``<run dir>/probes/rank<r>.json`` (children import this module via PYTHONPATH, like tests/faults.py). It looks
at the second training batch, after a whole first forward, backward and step, when whatever a strategy keeps
resident (ZeRO-3's persistent parameters) or casts (FSDP's buffers) is so:

* ``outside``: every parameter's local element count (and, under ZeRO-3, its ``ds_status``, ``ds_persist`` and
  full count) before that batch's forward;
* ``inside``: the same for the first linear layer's parameters during that forward (a hook registered after the
  strategy's own, which gather them);
* ``rotary``: every rotary embedding's ``*inv_freq`` buffers (dtype and values).

Enable it with ``+callbacks.probe._target_=probes.Probe``; :func:`records` reads the records back and
:func:`assert_partitioned` checks a ZeRO-3 run's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch

PROBED_BATCH = 1


def _parameter_view(parameter: torch.nn.Parameter) -> dict[str, Any]:
    view: dict[str, Any] = {"numel": parameter.numel()}
    if hasattr(parameter, "ds_status"):
        view.update(ds_status=parameter.ds_status.name, ds_persist=bool(parameter.ds_persist),
                    ds_numel=parameter.ds_numel)
    return view


class Probe(pl.Callback):
    def __init__(self) -> None:
        self.record: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx != PROBED_BATCH:
            return
        model = pl_module.model
        self.record["outside"] = {name: _parameter_view(p) for name, p in model.named_parameters()}
        self.record["rotary"] = {f"{module_name}.{name}": {"dtype": str(buffer.dtype),
                                                           "values": buffer.double().cpu().tolist()}
                                 for module_name, module in model.named_modules()
                                 for name, buffer in module.named_buffers(recurse=False) if name.endswith("inv_freq")}
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))

        def inside(module: torch.nn.Module, args: Any) -> None:
            self.record["inside"] = {name: _parameter_view(p) for name, p in module.named_parameters()}
            handle.remove()

        handle = linear.register_forward_pre_hook(inside)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == PROBED_BATCH:
            path = Path(trainer.default_root_dir) / "probes" / f"rank{trainer.global_rank}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(self.record))


def records(run_dir: Path, ranks: Sequence[int] = (0, 1)) -> list[dict[str, Any]]:
    """The probe's record of each rank."""
    return [json.loads((run_dir / "probes" / f"rank{rank}.json").read_text()) for rank in ranks]


def assert_partitioned(run_dir: Path, ranks: Sequence[int] = (0, 1)) -> None:
    """A ZeRO-3 run at its second batch, on every rank: no parameter is persistent, none is held whole outside a
    forward pass, and the first linear layer's are gathered whole inside one."""
    for record in records(run_dir, ranks):
        assert all(not p["ds_persist"] and p["numel"] == 0 and p["ds_status"] == "NOT_AVAILABLE"
                   for p in record["outside"].values()), record["outside"]
        assert all(p["ds_status"] == "AVAILABLE" and p["numel"] == p["ds_numel"] > 0
                   for p in record["inside"].values()), record["inside"]


def inv_freq_reference(theta: float, head_dim: int) -> list[float]:
    """RoPE's inverse frequencies 1 / theta^(2i/d), i = 0 .. d/2 - 1, in float64 (the paper's definition)."""
    return [1.0 / theta ** (2 * i / head_dim) for i in range(head_dim // 2)]


def assert_fp32_rope(run_dir: Path, theta: float, head_dim: int, ranks: Sequence[int] = (0, 1)) -> None:
    """Every rank's rotary buffers are fp32 and equal :func:`inv_freq_reference` (to fp32's resolution)."""
    expected = inv_freq_reference(theta, head_dim)
    for record in records(run_dir, ranks):
        assert record["rotary"], "no rotary buffer recorded"
        for name, buffer in record["rotary"].items():
            assert buffer["dtype"] == "torch.float32", (name, buffer["dtype"])
            assert max(abs(v / e - 1) for v, e in zip(buffer["values"], expected, strict=True)) < 1e-6, name
