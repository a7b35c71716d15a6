"""What tests inspect inside real ``python -m rmlab`` runs: a callback that writes each rank's view of its model
to ``<run dir>/probes/rank<r>.json`` (children import this module via PYTHONPATH, like tests/faults.py). It looks
at the second training batch, after a whole first forward, backward and step, when whatever a strategy keeps
resident (ZeRO-3's persistent parameters) or casts (FSDP's buffers) is so:

* ``outside``: every parameter's local element count (and, under ZeRO-3, its ``ds_status``, ``ds_persist`` and
  full count) before that batch's forward;
* ``inside``: the same for the first linear layer's parameters during that forward (a hook registered after the
  strategy's own, which gather them);
* ``rotary``: every rotary embedding's ``*inv_freq`` buffers (dtype and values).

Enable it with ``+callbacks.probe._target_=probes.Probe``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
