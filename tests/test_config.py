"""Composition of every config group, typed schemas and fast, precise config errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import hydra.utils
import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from rmlab.config import ConfigError, register_configs, validate

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "data", "loss", "optimizer", "trainer", "strategy", "logger", "callbacks", "eval", "paths"]

register_configs()


def compose_config(*overrides: str):
    """The composed job config, with the output dir Hydra would set."""
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    cfg.paths.output_dir = "/tmp/rmlab-test-output"
    return cfg


def local_files(cfg) -> list[str]:
    """The data and evaluation files a composed config names."""
    sources = [source["path"] for source in cfg.data.sources or []]
    for eval_set in cfg.eval.sets:
        sources += [eval_set.source] if isinstance(eval_set.source, str) else list(eval_set.source)
    return sources + [cfg.eval.rewardbench2.source] * bool(cfg.eval.rewardbench2.source)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_options_and_a_default():
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").defaults)
    chosen = {k: v for entry in defaults if isinstance(entry, dict) for k, v in entry.items()}
    for group in GROUPS + ["hydra"]:
        assert chosen[group] in options(group), group


@pytest.mark.slow
@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option, tmp_path):
    overrides = [f"{group}={option}", f"paths.data_dir={tmp_path}"]
    if group == "model" and option == "hf":
        overrides.append("model.name_or_path=some/model")
    if group == "data" and option == "local":
        overrides.append("data.source=some/dataset")  # a hub id: its existence is checked when it loads
    if group == "data" and option == "mixture":
        overrides.append("data.sources=[{path: some/dataset}]")
    if group == "strategy" and option.startswith(("deepspeed", "fsdp")):
        overrides.append("trainer=gpu")  # CUDA-only strategies are refused with trainer.accelerator=cpu
    if group == "model" and option in ("gemma2_27b", "llama3_1_8b"):  # bf16 weights need DeepSpeed's master copy
        overrides += ["strategy=deepspeed_zero3", "trainer=gpu"]
    cfg = compose_config(*overrides)
    for name in local_files(cfg):  # the files of options that read paths.data_dir (empty stand-ins here)
        if name.startswith(str(tmp_path)):
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            Path(name).touch()
    validate(cfg)
    if option == "none":
        assert not cfg[group], f"{group}=none must empty the group"


def test_loss_yaml_names_its_class_and_schema():
    """Each loss's hyperparameters have one home (rmlab/loss_params.py): the class inherits them, the option's
    schema is them plus _target_, and the YAML only names the class."""
    from rmlab import losses
    from rmlab.loss_params import LOSS_SCHEMAS

    assert sorted(LOSS_SCHEMAS) == options("loss")
    for name in options("loss"):
        cfg = compose_config(f"loss={name}").loss
        cls = getattr(losses, cfg._target_.rsplit(".", 1)[-1])
        assert losses.LOSSES[name] is cls
        assert "Δ" in (cls.__doc__ or "") or "r_c" in (cls.__doc__ or ""), f"{name}: formula missing in docstring"
        schema_fields = {f.name: f.default for f in dataclasses.fields(LOSS_SCHEMAS[name]) if f.name != "_target_"}
        assert schema_fields == {f.name: f.default for f in dataclasses.fields(cls)}, name
        assert set(OmegaConf.load(CONF_DIR / "loss" / f"{name}.yaml")) == {"defaults", "_target_"}, name
        assert hydra.utils.instantiate(cfg) == cls(), name


@pytest.mark.parametrize("override,fragment", [
    ("loss.gama=1", "gama"),           # typo in a key
    ("data.batch_sz=3", "batch_sz"),
    ("data.max_length=abc", "max_length"),  # wrong type
])
def test_typos_and_types_fail_at_composition(override, fragment):
    group = override.split(".")[0]
    extra = ["loss=focal"] if group == "loss" else []
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(*extra, override)
    assert fragment in str(info.value.__cause__ or info.value)


@pytest.mark.parametrize("overrides,key", [
    (["loss=focal", "loss.gamma=-1"], "loss.gamma"),
    (["loss=bt_temperature", "loss.temperature=0"], "loss.temperature"),
    (["optimizer.optimizer.lr=0"], "optimizer.optimizer.lr"),
    (["data.max_length=4"], "data.max_length"),
    (["data.on_bad_row=ignore"], "data.on_bad_row"),
    (["threads=0"], "threads"),
    (["data=mixture"], "data.sources"),  # else the marker source "mixture" went to the hub
    (["model.dropout=0.1"], "model.dropout"),  # dropout is off unless model.disable_dropout=false
    (["eval=rewardbench2", "eval.rewardbench2.max_rows=0"], "eval.rewardbench2.max_rows"),
    (["eval=rewardbench2", "eval.rewardbench2.source=nowhere/rb2.parquet"], "eval.rewardbench2.source"),
    (["eval.sets=[{name: rewardbench2, source: a/b}]"], "eval.sets"),  # RewardBench 2's own rewards file
])
def test_out_of_range_values_name_the_key(overrides, key):
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmlab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
def test_cli_help_cfg_and_errors_are_fast_and_clear(tmp_path):
    """Answers and errors come before torch or Lightning is imported (what keeps them under ~2 s)."""
    for args, code, fragment in [
        (["--help"], 0, "loss: bt, bt_temperature"),
        (["--cfg", "job", "loss=focal"], 0, "rmlab.losses.FocalLoss"),
        (["loss=focal", "loss.gamma=-1"], 2, "loss.gamma=-1.0 is invalid: must be a finite number >= 0"),
        (["loss=tempered_log", "loss.t=2"], 2, "loss.t=2.0 is invalid: must be a finite number > 0.0 and <= 1.0"),
        (["loss=focal", "loss.gamma=inf"], 2, "loss.gamma=inf is invalid"),
        (["loss=nope"], 1, "Available options"),
        (["data=local"], 2, "rmlab: config error: data.source is not set"),
        (["data=local", "data.source=nowhere/pairs.jsonl"], 2, "data.source='nowhere/pairs.jsonl' is invalid: no such"),
        (["eval.sets=[{name: x, source: nowhere.parquet}]"], 2, "eval.sets[x].source='nowhere.parquet' is invalid"),
        (["eval.sets=[{name: x, source: a/b, layout: chat}]"], 2, "eval.sets[x].layout='chat' is invalid"),
        (["eval.sets=[{name: x, source: a/b, sections: rewardbnch}]"], 2, "eval.sets[x].sections='rewardbnch'"),
        (["data=mixture", "data.sources=[{path: a/b, cap: 50}, {path: c/d, weight: 0.3}]"], 2,
         "data.sources[0].weight is missing: give every source a weight, or none"),
        (["data=mixture", "data.sources=[{path: a/b}]", "data.mixture_total=10"], 2,
         "data.mixture_total=10 needs weights"),
    ]:
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "rmlab", *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == code, result.stderr[-2000:]
        assert fragment in result.stdout + result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
        assert not imported & {"torch", "lightning", "transformers"}, f"{args} imported a heavy module"


@pytest.mark.slow
def test_help_lists_only_the_groups_a_user_picks_from(tmp_path):
    """The typed schemas are root configs, not a schema/* group tree: out of the listing, and not one more copy of
    Hydra's config repository per schema group when --help lists the groups (what made it slow)."""
    result = run_cli("--help", cwd=tmp_path)
    listing = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = [line.split(":")[0] for line in listing.splitlines()[2:] if ":" in line]
    assert groups == ["callbacks", "data", "eval", "experiment", "logger", "loss", "model", "optimizer", "paths",
                      "strategy", "sweeps", "tool", "trainer"]


def test_cli_finds_configs_from_any_directory_and_user_config_dirs(tmp_path):
    extra = tmp_path / "my_conf" / "loss"
    extra.mkdir(parents=True)
    (extra / "my_focal.yaml").write_text("defaults:\n  - focal\n  - _self_\ngamma: 3.0\n")
    result = run_cli("--config-dir", str(tmp_path / "my_conf"), "--cfg", "job", "loss=my_focal", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "gamma: 3.0" in result.stdout and "FocalLoss" in result.stdout


@pytest.mark.parametrize("launcher,target,n_jobs", [([], "JoblibLauncher", 2),
                                                     (["hydra.launcher.n_jobs=8"], "JoblibLauncher", 8),
                                                     (["hydra/launcher=basic"], "BasicLauncher", None)])
def test_table3_sweep_runs_two_jobs_at_a_time_unless_told_otherwise(launcher, target, n_jobs):
    """The CPU Table 3 sweep's launcher, and the overrides its comment offers (none of them may fail to compose)."""
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+sweeps=table3", *launcher], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target) and cfg.hydra.launcher.get("n_jobs") == n_jobs
    assert cfg.threads == 1 and cfg.hydra.sweeper.params.seed == "1,2,3"
