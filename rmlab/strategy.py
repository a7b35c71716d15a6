"""Distribution strategies (single device, DDP, DeepSpeed ZeRO-2/3 with offload, FSDP) and the batch arithmetic.

The DeepSpeed config dict is built here from the typed fields of ``conf/strategy/deepspeed_*.yaml``.
Lightning completes it at fit time from the Trainer (``gradient_accumulation_steps`` from the
accumulation, ``gradient_clipping`` from ``trainer.gradient_clip_val``, ``bf16``/``fp16`` from
``trainer.precision``), so each of those has one source; the completed dict is saved as
``<run dir>/deepspeed_config.json``. This module imports no torch or Lightning at import time, so
config validation and plan mode stay fast; the DeepSpeed run-time pieces live in :mod:`rmlab.zero`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Optional

CUDA_ONLY = {"deepspeed": "DeepSpeed", "fsdp": "FSDP"}


def gradient_accumulation(global_batch_size: Optional[int], micro_batch_size: int, devices: int,
                          num_nodes: int, accumulate_grad_batches: int = 1) -> int:
    """Accumulation steps so that micro-batch × devices × nodes × accumulation == global batch size."""
    if global_batch_size is None:
        return accumulate_grad_batches
    per_step = micro_batch_size * devices * num_nodes
    if accumulate_grad_batches != 1:
        raise ValueError("data.global_batch_size and trainer.accumulate_grad_batches are both set: set one. "
                         "rmlab derives the accumulation from data.global_batch_size.")
    if global_batch_size % per_step:
        raise ValueError(
            f"data.global_batch_size={global_batch_size} is not divisible by data.batch_size ({micro_batch_size}) "
            f"× devices ({devices}) × nodes ({num_nodes}) = {per_step}. Fix: pick a global batch that is a multiple "
            f"of {per_step}, or change data.batch_size / trainer.devices.")
    return global_batch_size // per_step


def deepspeed_config(strategy: Any, micro_batch_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for ``strategy`` (a ``DeepSpeedStrategyConfig``), as DeepSpeed's JSON schema
    names it; Lightning adds the accumulation, clipping and precision keys (see the module docstring)."""
    zero: dict[str, Any] = {
        "stage": strategy.stage,
        "overlap_comm": strategy.overlap_comm,
        "contiguous_gradients": strategy.contiguous_gradients,
        "allgather_bucket_size": strategy.allgather_bucket_size,
        "reduce_bucket_size": strategy.reduce_bucket_size,
    }
    if strategy.stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": strategy.stage3_prefetch_bucket_size,
            "stage3_param_persistence_threshold": strategy.stage3_param_persistence_threshold,
            "stage3_max_live_parameters": strategy.stage3_max_live_parameters,
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    pin_memory = not strategy.allow_cpu  # pinned host memory needs an accelerator
    if strategy.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if strategy.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def check_hardware(strategy: Any, accelerator: str, cuda_available: Optional[bool] = None) -> None:
    """Refuse a CUDA-only strategy on a machine (or accelerator setting) without CUDA, saying what to use.

    DeepSpeed or FSDP with ``strategy.allow_cpu=true`` and ``trainer.accelerator=cpu`` is allowed (development, CI).
    ``cuda_available=None`` checks only the configuration (no torch import)."""
    if strategy.name not in CUDA_ONLY:
        return
    if strategy.allow_cpu and accelerator == "cpu":
        return
    if accelerator == "cpu" or cuda_available is False:
        option = "deepspeed_*" if strategy.name == "deepspeed" else strategy.name
        development = f" (To develop {CUDA_ONLY[strategy.name]} code on CPU processes: strategy.allow_cpu=true.)"
        raise ValueError(
            f"strategy={option}: {CUDA_ONLY[strategy.name]} needs CUDA GPUs, and "
            f"{'trainer.accelerator=cpu' if accelerator == 'cpu' else 'this machine has none'}. "
            "Fix: use strategy=auto (one process) or strategy=ddp (several CPU processes, gloo), "
            f"or run on a GPU node with trainer=gpu.{development}")


def build_strategy(strategy: Any, accelerator: str, micro_batch_size: int) -> Any:
    """The Lightning strategy object (or the string ``auto``) for a strategy config; every multi-process one gets
    ``strategy.timeout_s`` as its process group's timeout (how long a collective waits for a lost rank)."""
    if strategy.name == "auto":
        return "auto"
    timeout = timedelta(seconds=strategy.timeout_s)
    if strategy.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend=strategy.process_group_backend,
                           find_unused_parameters=strategy.find_unused_parameters, timeout=timeout)
    if strategy.name == "deepspeed":
        config = deepspeed_config(strategy, micro_batch_size)
        if strategy.allow_cpu and accelerator == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is first imported
            from rmlab.zero import CPUDeepSpeedStrategy

            return CPUDeepSpeedStrategy(config=config, timeout=timeout)
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(config=config, timeout=timeout)
    from rmlab.fsdp import CPUFSDPStrategy, FSDPStrategy

    fsdp = CPUFSDPStrategy if strategy.allow_cpu and accelerator == "cpu" else FSDPStrategy
    return fsdp(sharding_strategy=strategy.sharding, state_dict_type="full", timeout=timeout)
