"""Typed config schemas: one dataclass per config group, registered by :func:`rmlab.config.register_configs`.

Every group's YAML in ``conf/<group>/`` names its schema in its defaults list
(``- /schema_<group>_<name>@_here_``), so a misspelt key or a wrong type fails
at composition, naming the key. Range checks live in ``__post_init__`` and run
in :func:`rmlab.config.validate`, before anything heavy (torch, Lightning, a model) loads.
This module imports only the standard library and OmegaConf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from rmlab.checks import ConfigError, check, check_source  # noqa: F401  (ConfigError: importers' name)
from rmlab.data.formats import LAYOUTS


@dataclass
class LoraConfig:
    enabled: bool = False  # train low-rank adapters (peft); the reward head stays fully trainable
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # or a list of module names

    def __post_init__(self) -> None:
        check(self.r >= 1, "model.lora.r", "must be >= 1", self.r)
        check(0.0 <= self.dropout < 1.0, "model.lora.dropout", "must be in [0, 1)", self.dropout)


@dataclass
class ModelConfig:
    name_or_path: str = MISSING  # hub id or local directory of an AutoModelForSequenceClassification checkpoint
    tokenizer: Optional[str] = None  # defaults to name_or_path
    architecture: str = "auto"  # auto | encoder | decoder: where the reward is read
    chat_template: Optional[str] = None  # overrides the tokenizer's template (Jinja string)
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2 | "flash_attention_2|eager" (if installed)
    gradient_checkpointing: bool = False
    disable_dropout: bool = True  # train without dropout, as TRL (disable_dropout) and OpenRLHF do; false keeps it
    dropout: Optional[float] = None  # with disable_dropout=false: the config's dropout probabilities (None keeps them)
    dtype: str = "float32"  # weights as loaded: float32 | bfloat16 | float16
    arch_config: Optional[str] = None  # a config.json for plan mode when the checkpoint is not reachable
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        check(self.architecture in ("auto", "encoder", "decoder"), "model.architecture",
               "one of auto, encoder, decoder", self.architecture)
        check(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype", "one of float32, bfloat16, float16",
               self.dtype)
        if self.dropout is not None:
            check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)", self.dropout)
            check(not self.disable_dropout or self.dropout == 0.0, "model.dropout",
                  "dropout is off (model.disable_dropout=true); to train with dropout set model.disable_dropout=false",
                  self.dropout)


# --------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    source: str = MISSING  # "embedded", a .jsonl/.json/.parquet path, a local dataset dir, or a hub id
    layout: str = "auto"  # auto | messages | prompt_response | hh
    split: str = "train"  # split name for hub datasets
    subset_name: Optional[str] = None  # hub dataset config name
    max_rows: Optional[int] = None  # read only the first N rows
    val_fraction: float = 0.15
    max_length: int = 256
    batch_size: int = 8  # pairs per micro-batch (per device)
    global_batch_size: Optional[int] = None  # pairs per optimizer step; sets the gradient accumulation
    num_workers: int = 0
    on_bad_row: str = "skip"  # skip | error
    subset_key: str = "subset"  # column that names each row's subset (category)
    margin_key: Optional[str] = None  # column with a per-pair margin, if any
    embedded_pairs_per_category: int = 750
    section_mapping: Any = None  # {section: [subsets]} for the held-out score, e.g. {Chat:[a],Safety:[b]}
    sources: Any = None  # a mixture: [{path, layout, cap, weight, filters}, ...] (rmlab/data/recipe/mixture.py)
    mixture_total: Optional[int] = None  # pairs in a weighted mixture (null: the largest without repeats)

    def __post_init__(self) -> None:
        check(self.layout in LAYOUTS, "data.layout", f"one of {', '.join(LAYOUTS)}", self.layout)
        check(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)", self.val_fraction)
        check(self.max_length >= 8, "data.max_length", "must be >= 8", self.max_length)
        check(self.batch_size >= 1, "data.batch_size", "must be >= 1", self.batch_size)
        check(self.global_batch_size is None or self.global_batch_size >= self.batch_size, "data.global_batch_size",
               "must be >= data.batch_size (or null)", self.global_batch_size)
        check(self.on_bad_row in ("skip", "error"), "data.on_bad_row", "one of skip, error", self.on_bad_row)
        check(self.max_rows is None or self.max_rows >= 1, "data.max_rows", "must be >= 1 or null", self.max_rows)
        check(self.section_mapping is None or (isinstance(self.section_mapping, dict) and all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in self.section_mapping.values())),
            "data.section_mapping", "must map section names to lists of subset names", self.section_mapping)
        check(self.embedded_pairs_per_category >= 4, "data.embedded_pairs_per_category", "must be >= 4",
               self.embedded_pairs_per_category)
        check_source(self.source, "data.source")
        check(self.source != "mixture" or bool(self.sources), "data.sources",
              "data=mixture needs a list of sources, e.g. 'data.sources=[{path: a.jsonl, cap: 5000}]'", self.sources)
        if self.sources:
            from rmlab.data.recipe.mixture import checked_sources

            checked_sources(self.sources, self.mixture_total, "data.sources", "data.mixture_total")
        for index, entry in enumerate(self.sources or []):
            check_source(entry.get("path") if isinstance(entry, dict) else None, f"data.sources[{index}].path")


# --------------------------------------------------------------------------- optimizer
@dataclass
class PartialTarget:
    _target_: str = MISSING
    _partial_: bool = True


@dataclass
class AdamWConfig(PartialTarget):
    _target_: str = "torch.optim.AdamW"
    lr: float = 3e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        check(self.lr > 0, "optimizer.optimizer.lr", "must be > 0", self.lr)
        check(self.weight_decay >= 0, "optimizer.optimizer.weight_decay", "must be >= 0", self.weight_decay)


@dataclass
class SchedulerConfig(PartialTarget):
    _target_: str = "transformers.get_scheduler"
    name: str = "linear"  # any transformers SchedulerType: linear | cosine | constant_with_warmup | ...


@dataclass
class OptimizerGroupConfig:
    optimizer: AdamWConfig = field(default_factory=AdamWConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    warmup_ratio: float = 0.0  # fraction of optimizer steps spent warming up

    def __post_init__(self) -> None:
        check(0.0 <= self.warmup_ratio < 1.0, "optimizer.warmup_ratio", "must be in [0, 1)", self.warmup_ratio)


# --------------------------------------------------------------------------- trainer / strategy
@dataclass
class TrainerConfig:
    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    max_epochs: int = 1
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0
    log_every_n_steps: int = 10
    val_check_interval: Optional[float] = None
    limit_val_batches: Optional[float] = None
    num_sanity_val_steps: int = 0
    deterministic: bool = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    enable_checkpointing: bool = True  # false: Lightning adds no default checkpoint when callbacks has none

    def __post_init__(self) -> None:
        check(self.max_epochs >= 1 or self.max_steps > 0, "trainer.max_epochs", "must be >= 1 (or set max_steps)",
               self.max_epochs)
        check(self.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "must be >= 1",
               self.accumulate_grad_batches)
        check(self.num_nodes >= 1, "trainer.num_nodes", "must be >= 1", self.num_nodes)


@dataclass
class StrategyConfig:
    """``strategy=auto``: one process on one device (Lightning picks it)."""

    name: str = "auto"

    def __post_init__(self) -> None:
        check(self.name == "auto", "strategy.name", "auto for this schema", self.name)


DEFAULT_TIMEOUT_S = 600  # torch's default for NCCL; Lightning's strategies would wait 30 min for a lost node


def check_timeout(timeout_s: int) -> None:
    check(timeout_s >= 1, "strategy.timeout_s", "must be >= 1 (seconds a collective waits for every rank)", timeout_s)


@dataclass
class DDPStrategyConfig:
    """``strategy=ddp``: one process per device, gradients all-reduced."""

    name: str = "ddp"
    process_group_backend: Optional[str] = None  # null: nccl on GPU, gloo on CPU
    find_unused_parameters: bool = False
    timeout_s: int = DEFAULT_TIMEOUT_S  # a collective waiting this long for a rank fails the run (a lost node)

    def __post_init__(self) -> None:
        check(self.name == "ddp", "strategy.name", "ddp for this schema", self.name)
        check_timeout(self.timeout_s)


@dataclass
class DeepSpeedStrategyConfig:
    """``strategy=deepspeed_*``: DeepSpeed ZeRO; :func:`rmlab.strategy.deepspeed_config` builds its config dict."""

    name: str = "deepspeed"
    stage: int = 2
    offload_optimizer: bool = False  # optimizer states in CPU memory (DeepSpeedCPUAdam does the update)
    offload_parameters: bool = False  # ZeRO-3 only: parameters in CPU memory
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    allgather_bucket_size: int = 200_000_000
    reduce_bucket_size: int = 200_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    stage3_max_live_parameters: int = 1_000_000_000
    allow_cpu: bool = False  # development and CI: DeepSpeed on CPU processes over gloo (DS_ACCELERATOR=cpu)
    timeout_s: int = DEFAULT_TIMEOUT_S  # a collective waiting this long for a rank fails the run (a lost node)

    def __post_init__(self) -> None:
        check(self.name == "deepspeed", "strategy.name", "deepspeed for this schema", self.name)
        check_timeout(self.timeout_s)
        check(self.stage in (2, 3), "strategy.stage", "2 or 3 (ZeRO stage)", self.stage)
        check(not self.offload_parameters or self.stage == 3, "strategy.offload_parameters",
               "needs strategy.stage=3 (ZeRO-2 offloads only the optimizer)", self.offload_parameters)
        for key in ("allgather_bucket_size", "reduce_bucket_size", "stage3_prefetch_bucket_size"):
            check(getattr(self, key) > 0, f"strategy.{key}", "must be > 0", getattr(self, key))


@dataclass
class FSDPStrategyConfig:
    """``strategy=fsdp``: PyTorch fully sharded data parallel (:mod:`rmlab.fsdp`)."""

    name: str = "fsdp"
    sharding: str = "FULL_SHARD"  # FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
    allow_cpu: bool = False  # development and CI: FSDP on CPU processes over gloo
    timeout_s: int = DEFAULT_TIMEOUT_S  # a collective waiting this long for a rank fails the run (a lost node)

    def __post_init__(self) -> None:
        check(self.name == "fsdp", "strategy.name", "fsdp for this schema", self.name)
        check_timeout(self.timeout_s)
        check(self.sharding in ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"), "strategy.sharding",
              "one of FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD, NO_SHARD", self.sharding)


STRATEGY_SCHEMAS: dict[str, type] = {"auto": StrategyConfig, "ddp": DDPStrategyConfig,
                                     "deepspeed": DeepSpeedStrategyConfig, "fsdp": FSDPStrategyConfig}


# --------------------------------------------------------------------------- loggers
@dataclass
class WandbLoggerConfig:
    _target_: str = "rmlab.loggers.wandb_logger"
    project: str = "rmlab"
    entity: Optional[str] = None
    name: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    save_dir: str = "${paths.output_dir}"
    mode: Optional[str] = None  # online | offline | disabled; null: offline when no API key is configured

    def __post_init__(self) -> None:
        check(self.mode in (None, "online", "offline", "disabled"), "logger.mode",
               "one of online, offline, disabled or null", self.mode)


@dataclass
class CSVLoggerConfig:
    _target_: str = "lightning.pytorch.loggers.CSVLogger"
    save_dir: str = "${paths.output_dir}"
    name: str = "csv"


@dataclass
class TensorBoardLoggerConfig:
    _target_: str = "lightning.pytorch.loggers.TensorBoardLogger"
    save_dir: str = "${paths.output_dir}"
    name: str = "tensorboard"


# --------------------------------------------------------------------------- eval / paths
@dataclass
class EvalSetConfig:
    name: str = MISSING
    source: Any = MISSING  # as data.source, or a list of files read as one set (a benchmark rebuilt from several)
    layout: str = "auto"
    split: str = "train"
    subset_name: Optional[str] = None
    subset_key: str = "subset"
    max_rows: Optional[int] = None  # per source
    per_subset: Optional[int] = None  # score at most N pairs of each subset, a seeded sample (null: all)
    sample_seed: int = 0  # the per_subset sample's seed (fixed, so every run of a sweep scores the same pairs)
    sections: Optional[str] = None  # "rewardbench": RewardBench's sections, and this set gives the Table 3 row

    def __post_init__(self) -> None:
        sources = [self.source] if isinstance(self.source, str) else list(self.source)
        check(bool(sources) and all(isinstance(source, str) for source in sources), f"eval.sets[{self.name}].source",
              "a file, dataset directory or hub id, or a non-empty list of them", self.source)
        for index, source in enumerate(sources):
            check_source(source, f"eval.sets[{self.name}].source" + (f"[{index}]" if len(sources) > 1 else ""))
        check(self.per_subset is None or self.per_subset >= 1, f"eval.sets[{self.name}].per_subset",
              "must be >= 1 or null", self.per_subset)
        check(self.layout in LAYOUTS, f"eval.sets[{self.name}].layout", f"one of {', '.join(LAYOUTS)}", self.layout)
        check(self.sections in (None, "rewardbench"), f"eval.sets[{self.name}].sections", "rewardbench or null",
              self.sections)
        check(self.max_rows is None or self.max_rows >= 1, f"eval.sets[{self.name}].max_rows", "must be >= 1 or null",
              self.max_rows)


@dataclass
class RewardBench2Config:
    """RewardBench 2's prompts (rmlab/data/groups.py: the layout; rmlab/rewardbench2.py: the rules)."""

    source: Optional[str] = None  # null: not scored; allenai/reward-bench-2, a copy laid out as on the hub, a file
    split: str = "test"
    max_rows: Optional[int] = None  # only the first N rows (a quick look: not RewardBench 2's score)

    def __post_init__(self) -> None:
        check_source(self.source, "eval.rewardbench2.source")
        check(self.max_rows is None or self.max_rows >= 1, "eval.rewardbench2.max_rows", "must be >= 1 or null",
              self.max_rows)


@dataclass
class EvalConfig:
    heldout: bool = True  # score the held-out part of the training data
    sets: list[EvalSetConfig] = field(default_factory=list)
    rewardbench2: RewardBench2Config = field(default_factory=RewardBench2Config)  # scored beside the sets
    batch_size: int = 64  # pairs per batch when scoring without gradients (validation and the final scoring)

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "eval.batch_size", "must be >= 1", self.batch_size)
        names = [eval_set.name for eval_set in self.sets]
        check(len(set(names)) == len(names) and not {"heldout", "rewardbench2"} & set(names), "eval.sets",
              "names must be unique and neither 'heldout' nor 'rewardbench2' (each set writes rewards/<name>.jsonl)",
              names)
        check(sum(eval_set.sections == "rewardbench" for eval_set in self.sets) <= 1, "eval.sets",
              "at most one set may have sections: rewardbench (it gives the Table 3 row)", names)


@dataclass
class PathsConfig:
    output_dir: str = "${hydra:runtime.output_dir}"
    data_dir: str = "data"  # where data configs that name local files look (e.g. paths.data_dir=../shared/data)


# --------------------------------------------------------------------------- top level
@dataclass
class RMLabConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    loss: Any = MISSING  # one of rmlab.loss_params.LOSS_SCHEMAS, by the loss option's YAML
    optimizer: OptimizerGroupConfig = MISSING
    trainer: TrainerConfig = MISSING
    strategy: Any = MISSING  # one of STRATEGY_SCHEMAS, by the strategy option's YAML
    logger: Any = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    eval: EvalConfig = MISSING
    paths: PathsConfig = MISSING
    seed: int = 42
    export: bool = True
    ckpt_every_n_steps: Optional[int] = None  # checkpoint cadence; null saves at the end of each epoch
    on_nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss or gradient does
    resume: str = "auto"  # auto | never | <path to a .ckpt>
    threads: Optional[int] = None  # torch's CPU threads per process (null: torch's default, one per core)
    plan: bool = False  # print the plan (parameters, batch arithmetic, DeepSpeed config, memory) and exit

    def __post_init__(self) -> None:
        from rmlab.strategy import gradient_accumulation

        devices = self.trainer.devices if isinstance(self.trainer.devices, int) else None
        if devices is not None:  # "auto" devices are checked once the trainer knows its world size
            try:
                gradient_accumulation(self.data.global_batch_size, self.data.batch_size, devices,
                                      self.trainer.num_nodes, self.trainer.accumulate_grad_batches)
            except ValueError as err:
                raise ConfigError(str(err)) from err
        if not self.plan:
            from rmlab.launch import check_slurm_nodes
            from rmlab.strategy import check_hardware

            try:
                check_hardware(self.strategy, self.trainer.accelerator)
            except ValueError as err:
                raise ConfigError(str(err)) from err
            mismatch = check_slurm_nodes(self.trainer.num_nodes, self.trainer.devices)
            if mismatch:
                raise ConfigError(mismatch)
        check(self.on_nonfinite in ("stop", "skip"), "on_nonfinite", "one of stop, skip", self.on_nonfinite)
        check(self.ckpt_every_n_steps is None or self.ckpt_every_n_steps >= 1, "ckpt_every_n_steps",
               "must be >= 1 or null", self.ckpt_every_n_steps)
        check(self.threads is None or self.threads >= 1, "threads", "must be >= 1 or null", self.threads)
