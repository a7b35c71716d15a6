"""Distribution strategies (auto, DDP, DeepSpeed ZeRO-2/3 with offload, FSDP) and the batch arithmetic.

The DeepSpeed config dict is built here from typed fields (``conf/strategy/*.yaml``) and saved in
the run directory; Lightning's ``DeepSpeedStrategy(config=...)`` uses it as is. This module imports
no torch or Lightning at import time, so config validation and plan mode stay fast.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

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


def deepspeed_config(strategy: Any, micro_batch_size: int, accumulation: int, world_size: int, precision: str,
                     gradient_clip_val: Optional[float]) -> dict[str, Any]:
    """The DeepSpeed config dict for ``strategy`` (a ``StrategyConfig``), as DeepSpeed's JSON schema names it."""
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
    if strategy.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if strategy.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch_size * accumulation * world_size,
        "gradient_clipping": gradient_clip_val or 0.0,
        "bf16": {"enabled": precision.startswith("bf16")},
        "fp16": {"enabled": precision.startswith("16")},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def check_hardware(strategy_name: str, accelerator: str, cuda_available: bool) -> None:
    """Refuse a CUDA-only strategy on a machine (or accelerator setting) without CUDA, saying what to use."""
    if strategy_name not in CUDA_ONLY:
        return
    if accelerator == "cpu" or not cuda_available:
        raise ValueError(
            f"strategy={strategy_name}: {CUDA_ONLY[strategy_name]} needs CUDA GPUs, and "
            f"{'trainer.accelerator=cpu' if accelerator == 'cpu' else 'this machine has none'}. "
            "Fix: use strategy=auto (one process) or strategy=ddp (several CPU processes, gloo), "
            "or run on a GPU node with trainer=gpu.")


def build_strategy(strategy: Any, ds_config: Optional[dict[str, Any]]) -> Any:
    """The Lightning strategy object (or the string ``auto``)."""
    if strategy.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend=strategy.process_group_backend,
                           find_unused_parameters=strategy.find_unused_parameters)
    if strategy.name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(config=ds_config)
    if strategy.name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(sharding_strategy=strategy.fsdp_sharding, state_dict_type="full")
    return "auto"


@contextlib.contextmanager
def gathered_parameters(model: Any, zero_stage: Optional[int]) -> Iterator[None]:
    """Under ZeRO-3, gather the full parameters on every rank (all ranks must enter); otherwise a no-op."""
    if zero_stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield
