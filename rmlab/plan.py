"""Plan mode (``python -m rmlab ... plan=true``): check a cluster config on a laptop, load no weights.

It composes the config, builds the batch arithmetic and the DeepSpeed config dict, counts the
parameters from the architecture on the meta device, and estimates per-GPU memory:

* model states, with the formulas of DeepSpeed's own estimators
  (``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``:
  bf16 params and grads plus fp32 Adam states, partitioned per ZeRO stage and offload);
* activations per micro-batch (2 × pairs sequences): 34·s·b·h bytes per layer, plus 5·a·s²·b
  for eager attention (Korthikanti et al. 2022, bf16, no tensor parallelism); with gradient
  checkpointing, 2·s·b·h per layer plus one layer's full activations. An estimate, not a bound.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from rmlab.strategy import deepspeed_config, gradient_accumulation

log = logging.getLogger(__name__)

GIB = 2**30


@dataclass
class ParameterCount:
    total: int
    largest_layer: int
    hidden_size: int
    num_layers: int
    num_heads: int
    model_class: str


def count_parameters(name_or_path: str, arch_config: Optional[str], trust_remote_code: bool = False) -> ParameterCount:
    """Parameters of the reward model (1-unit head) built on the meta device from its config only."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    source = arch_config or name_or_path
    try:
        config = AutoConfig.from_pretrained(source, num_labels=1, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise SystemExit(f"rmlab plan: cannot read the architecture of {source!r} ({str(err).splitlines()[0]}). "
                         "Offline? Pass model.arch_config=/path/to/config.json (the presets ship theirs).") from err
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ParameterCount(total, largest, text.hidden_size, text.num_hidden_layers, text.num_attention_heads,
                          type(model).__name__)


def model_state_bytes(total: int, largest_layer: int, stage: Optional[int], gpus_per_node: int, nodes: int,
                      offload_optimizer: bool, offload_parameters: bool) -> tuple[float, float]:
    """(GPU bytes per device, CPU bytes per node) for params, grads and Adam states, as DeepSpeed's
    estimators compute them (ZeRO-3 with zero.Init, which rmlab uses through HfDeepSpeedConfig)."""
    gpus = gpus_per_node * nodes
    buffer = 1.5  # DeepSpeed's additional_buffer_factor
    if stage == 3:
        largest = 4 * largest_layer
        if offload_optimizer and offload_parameters:
            return largest, total * 18 / nodes * buffer
        if offload_optimizer:
            return largest + int(2 * total / gpus), total * 16 / nodes * buffer
        return largest + int(18 * total / gpus), largest_layer * 4 * gpus_per_node * buffer
    if stage == 2:
        if offload_optimizer:
            return 2 * total, total * max(4 * gpus, 16) * buffer
        return 2 * total + int(18 * total / gpus), total * 4 * gpus_per_node * buffer
    return 20 * total, 0.0  # DDP: every device holds bf16 params + 18 bytes/param of grads and fp32 states


def activation_bytes(count: ParameterCount, pairs: int, seq_len: int, checkpointing: bool, flash: bool) -> float:
    sequences = 2 * pairs
    per_layer = 34 * seq_len * sequences * count.hidden_size
    if not flash:
        per_layer += 5 * count.num_heads * seq_len**2 * sequences
    if checkpointing:
        return count.num_layers * 2 * seq_len * sequences * count.hidden_size + per_layer
    return count.num_layers * per_layer


def build_plan(cfg: DictConfig) -> dict[str, Any]:
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    nodes = cfg.trainer.num_nodes
    accumulation = gradient_accumulation(cfg.data.global_batch_size, cfg.data.batch_size, devices, nodes,
                                         cfg.trainer.accumulate_grad_batches)
    strategy = cfg.strategy
    deepspeed = strategy.name == "deepspeed"
    ds_config = deepspeed_config(strategy, cfg.data.batch_size) if deepspeed else None
    count = count_parameters(cfg.model.name_or_path, cfg.model.arch_config, cfg.model.trust_remote_code)
    stage = strategy.stage if deepspeed else None
    gpu_states, cpu_states = model_state_bytes(count.total, count.largest_layer, stage, devices, nodes,
                                               deepspeed and strategy.offload_optimizer,
                                               deepspeed and strategy.offload_parameters)
    attention = str(cfg.model.attn_implementation or "")
    activations = activation_bytes(count, cfg.data.batch_size, cfg.data.max_length, cfg.model.gradient_checkpointing,
                                   flash=attention.startswith("flash") or attention == "sdpa")
    return {
        "model": {"name_or_path": cfg.model.name_or_path, "class": count.model_class, "parameters": count.total,
                  "largest_layer_parameters": count.largest_layer},
        "batch": {"pairs_per_micro_batch": cfg.data.batch_size, "devices": devices, "nodes": nodes,
                  "accumulation": accumulation, "pairs_per_optimizer_step": cfg.data.batch_size * devices * nodes
                  * accumulation, "max_length": cfg.data.max_length},
        "strategy": {"name": strategy.name, "zero_stage": stage, "deepspeed_config": ds_config},
        "memory_gib_per_gpu": {"model_states": gpu_states / GIB, "activations": activations / GIB,
                               "total": (gpu_states + activations) / GIB},
        "cpu_memory_gib_per_node": cpu_states / GIB,
    }


def print_plan(cfg: DictConfig, output_dir: Optional[Path] = None) -> dict[str, Any]:
    plan = build_plan(cfg)
    model, batch, memory = plan["model"], plan["batch"], plan["memory_gib_per_gpu"]
    stage = plan["strategy"]["zero_stage"]
    log.info(f"rmlab plan: {model['class']} from {model['name_or_path']}: {model['parameters'] / 1e9:.2f}B parameters "
          f"(largest layer {model['largest_layer_parameters'] / 1e6:.0f}M)")
    gpus = batch["devices"] * batch["nodes"]
    log.info(f"  strategy {plan['strategy']['name']}{f' ZeRO-{stage}' if stage else ''} on {batch['nodes']} node(s) × "
          f"{batch['devices']} device(s) = {gpus} device(s)")
    log.info(f"  batch: {batch['pairs_per_micro_batch']} pairs per micro-batch × {batch['devices']} devices × "
          f"{batch['nodes']} node(s) × {batch['accumulation']} accumulation = {batch['pairs_per_optimizer_step']} "
          "pairs per optimizer step")
    log.info(f"  per-GPU memory (estimate, each of the {gpus} devices on {batch['nodes']} node(s)): model states "
          f"{memory['model_states']:.1f} GiB + activations "
          f"{memory['activations']:.1f} GiB = {memory['total']:.1f} GiB; CPU for offload/init "
          f"{plan['cpu_memory_gib_per_node']:.1f} GiB per node")
    if plan["strategy"]["deepspeed_config"]:
        log.info("  DeepSpeed config: " + json.dumps(plan["strategy"]["deepspeed_config"]) + " (Lightning adds "
              f"gradient_accumulation_steps={batch['accumulation']}, gradient_clipping from trainer.gradient_clip_val, "
              "and bf16/fp16 from trainer.precision)")
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "plan.json").write_text(json.dumps(plan, indent=2))
    return plan
