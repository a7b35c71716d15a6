"""DeepSpeed ZeRO at run time: the CPU strategy for development and CI, loading weights into ZeRO-3
partitions, the optimizer under offload, and reading back what ZeRO partitions.

* :class:`CPUDeepSpeedStrategy` is Lightning's ``DeepSpeedStrategy`` on CPU processes (``DS_ACCELERATOR=cpu``,
  gloo), chosen by ``strategy.allow_cpu=true`` with ``trainer.accelerator=cpu``. It lifts only Lightning's
  CUDA check and gives the CPU devices indices (``cpu:0``, ``cpu:1``), which DeepSpeed's engine needs.
* :func:`build_model`: under ZeRO-3, transformers' ``HfDeepSpeedConfig`` is alive while the model is built
  (``configure_model``), so ``from_pretrained`` loads weights straight into partitions; it is dropped
  afterwards, so a plain model built later (the export) is not partitioned by a one-rank ``zero.Init``.
  The build runs inside Lightning's ``zero.Init``, which casts every floating tensor a constructor makes to
  the run's 16-bit dtype (``torch.arange`` included): the rotary embeddings' ``inv_freq`` would be computed
  in bf16 (Gemma-2-27B's angles off by about 5 rad at position 2047). :func:`recompute_rotary_buffers`
  computes them again in fp32, with DeepSpeed's constructor patches lifted.
* :func:`consolidated_state_dict`: the full 16-bit state dict of a ZeRO-3 engine, gathered layer by layer
  into rank 0's CPU memory (every rank must call it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy on CPU processes over gloo (development and CI only)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # DeepSpeedStrategy's own refuses any accelerator but CUDA

    def setup_distributed(self) -> None:
        self.parallel_devices = [torch.device("cpu", index) for index in range(len(self.parallel_devices or []))]
        super().setup_distributed()


def deepspeed_engine(trainer: Any) -> Optional[Any]:
    """The DeepSpeed engine of a fitting trainer, or None under any other strategy."""
    strategy = getattr(trainer, "strategy", None)
    return strategy.deepspeed_engine if isinstance(strategy, DeepSpeedStrategy) else None


def zero_stage(trainer: Any) -> Optional[int]:
    strategy = getattr(trainer, "strategy", None)
    if not isinstance(strategy, DeepSpeedStrategy):
        return None
    return (strategy.config or {}).get("zero_optimization", {}).get("stage")


def build_model(trainer: Any, factory: Callable[[], Any]) -> Any:
    """``factory()``; under ZeRO-3 built into partitions, with fp32 rotary buffers (see the module docstring)."""
    if zero_stage(trainer) != 3:
        return factory()
    from deepspeed.runtime.zero.partition_parameters import restore_init_context, shutdown_init_context
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    hf_config = HfDeepSpeedConfig(trainer.strategy.config)  # transformers keeps only a weak reference
    try:
        model = factory()
    finally:
        unset_hf_deepspeed_config()
        del hf_config
    shutdown_init_context()  # DeepSpeed's own pause of zero.Init's patches (it uses it to build its engine)
    try:
        recompute_rotary_buffers(model)
    finally:
        restore_init_context()
    return model


def recompute_rotary_buffers(model: torch.nn.Module) -> int:
    """Rebuild every rotary embedding's ``*inv_freq`` buffers (and ``attention_scaling``) in fp32, by building
    its module again from its config: the same code, and so the same RoPE variant (default, llama3, yarn, per
    layer type, ...), as transformers ran. Returns how many modules were rebuilt."""
    rebuilt = 0
    for module in model.modules():
        stale = {name: buffer for name, buffer in module.named_buffers(recurse=False) if name.endswith("inv_freq")}
        if not stale or getattr(module, "config", None) is None:
            continue
        fresh = type(module)(module.config)
        for name, buffer in fresh.named_buffers(recurse=False):
            if name in stale:
                setattr(module, name, buffer.to(device=stale[name].device, dtype=torch.float32))
        if hasattr(fresh, "attention_scaling"):
            module.attention_scaling = fresh.attention_scaling
        rebuilt += 1
    return rebuilt


def parameter_shape(parameter: torch.nn.Parameter) -> tuple[int, ...]:
    """The shape of a parameter as the model defines it (a ZeRO-3 placeholder is 1-D of shape (0,))."""
    return tuple(getattr(parameter, "ds_shape", parameter.shape))


def offloads_optimizer(trainer: Any) -> bool:
    """True when the trainer's DeepSpeed strategy keeps the optimizer states in CPU memory."""
    strategy = getattr(trainer, "strategy", None)
    return isinstance(strategy, DeepSpeedStrategy) and \
        "offload_optimizer" in (strategy.config or {}).get("zero_optimization", {})


def cpu_adam(factory: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """The optimizer DeepSpeed needs when it offloads the optimizer states: ``DeepSpeedCPUAdam`` with the
    settings of the configured ``torch.optim.AdamW`` (or ``Adam``) partial."""
    if not isinstance(factory, functools.partial) or factory.func not in (torch.optim.AdamW, torch.optim.Adam):
        raise ValueError("strategy.offload_optimizer=true needs optimizer.optimizer._target_=torch.optim.AdamW "
                         "(DeepSpeed then updates with DeepSpeedCPUAdam, its CPU AdamW)")
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    settings = {k: v for k, v in factory.keywords.items() if k in ("lr", "betas", "eps", "weight_decay")}
    return functools.partial(DeepSpeedCPUAdam, adamw_mode=factory.func is torch.optim.AdamW, **settings)


class SaveDeepSpeedConfig(pl.Callback):
    """Writes the DeepSpeed config as Lightning completed it to ``<run dir>/deepspeed_config.json`` (global rank 0)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and isinstance(trainer.strategy, DeepSpeedStrategy):
            self.path.write_text(json.dumps(trainer.strategy.config, indent=2, default=str))


def consolidated_state_dict(trainer: Any, prefix: str = "model.") -> Optional[dict[str, torch.Tensor]]:
    """The ZeRO-3 engine's full 16-bit state dict on rank 0's CPU (None on other ranks), keys under
    ``prefix`` of the LightningModule with the prefix removed. Every rank must call it."""
    state = deepspeed_engine(trainer)._zero3_consolidated_16bit_state_dict()
    if state is None:
        return None
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def skipped_steps(trainer: Any) -> int:
    """Optimizer steps the DeepSpeed engine skipped because its gradient norm was not finite (0 otherwise)."""
    engine = deepspeed_engine(trainer)
    return int(getattr(engine, "skipped_steps", 0)) if engine is not None else 0
