"""PyTorch FSDP at run time: Lightning's ``FSDPStrategy`` with the model's own buffer dtypes, its CPU variant for
development and CI, and the full state dict for the export.

* :class:`FSDPStrategy`: under ``bf16-mixed`` (``16-mixed``) Lightning asks FSDP to cast the buffers to bf16 as
  well as the parameters, which turns the rotary embeddings' ``inv_freq`` into bf16 (RoPE angles off by radians
  at a few thousand positions). Here the buffers keep the dtype the model gave them (``buffer_dtype=None``);
  parameters and gradient reductions still run in the 16-bit dtype.
* :class:`CPUFSDPStrategy`: FSDP on CPU processes over gloo (``strategy.allow_cpu=true`` with
  ``trainer.accelerator=cpu``), sharded as on GPUs. FSDP runs on CPU when told its device (``device_id=cpu``);
  Lightning passes the device's index, which a CPU device has not, and FSDP then refuses. Full state dicts
  (checkpoints, the export) are gathered without ``offload_to_cpu``: on a CPU device torch's offload keeps a
  view of the storage it then frees (the next read crashed the process).
* :func:`full_state_dict`: the whole model's state dict on rank 0 (every rank must call it), for the export.

Outside the root FSDP module's forward, each rank holds only its flat shard of the parameters: rmlab scores
through the root (Lightning's ``strategy.predict_step``), reads the parameters' shapes for the weight-decay split
before the model is wrapped (:meth:`rmlab.module.RewardModule.configure_model`), and clips through the root.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Optional

import lightning.pytorch.strategies.fsdp as lightning_fsdp
import torch
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's FSDP strategy; under mixed precision the buffers keep their own dtype."""

    @property
    def mixed_precision_config(self) -> Optional[Any]:
        config = super().mixed_precision_config
        return None if config is None else dataclasses.replace(config, buffer_dtype=None)


class CPUFSDPStrategy(FSDPStrategy):
    """FSDP on CPU processes over gloo (development and CI only)."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                           mixed_precision=self.mixed_precision_config,
                                           sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                           **self.kwargs)
        return super()._setup_model(wrapped)  # Lightning keeps a wrapped model and adds the rest

    def lightning_module_state_dict(self) -> dict[str, Any]:
        with _full_state_dicts_without_offload():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        with _full_state_dicts_without_offload():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
        with _full_state_dicts_without_offload():
            return super().load_checkpoint(checkpoint_path, weights_only)


@contextlib.contextmanager
def _full_state_dicts_without_offload() -> Iterator[None]:
    """Lightning's full-state-dict context (its one source for saving and loading), with ``offload_to_cpu=False``."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, FullyShardedDataParallel
    from torch.distributed.fsdp import StateDictType

    def context(module: torch.nn.Module, world_size: int, rank0_only: bool = True) -> Any:
        return FullyShardedDataParallel.state_dict_type(
            module, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))

    lightning_context = lightning_fsdp._get_full_state_dict_context
    lightning_fsdp._get_full_state_dict_context = context
    try:
        yield
    finally:
        lightning_fsdp._get_full_state_dict_context = lightning_context


def full_state_dict(trainer: Any, prefix: str = "model.") -> Optional[dict[str, torch.Tensor]]:
    """The FSDP model's full state dict on rank 0's CPU (None on other ranks), keys under ``prefix`` of the
    LightningModule with the prefix removed. Every rank must call it."""
    state = trainer.strategy.lightning_module_state_dict()  # state_dict_type="full": gathered to rank 0
    if not trainer.is_global_zero:
        return None
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
