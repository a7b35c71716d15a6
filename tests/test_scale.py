"""Scaling out on CPU: strategy options and DeepSpeed config dicts, batch arithmetic, plan mode, real DDP."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import write_topic_pairs
from hydra import compose, initialize_config_module

from rmlab.config import ConfigError, register_configs, validate
from rmlab.plan import build_plan, model_state_bytes
from rmlab.strategy import build_strategy, check_hardware, deepspeed_config, gradient_accumulation

register_configs()
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def compose_config(*overrides: str):
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    cfg.paths.output_dir = "/tmp/rmlab-test-output"
    return cfg


@pytest.mark.parametrize("global_batch,micro,devices,nodes,expected", [
    (128, 2, 8, 1, 8), (128, 4, 8, 4, 1), (128, 1, 8, 2, 8), (None, 4, 8, 1, 1), (32, 8, 1, 1, 4)])
def test_accumulation_is_derived_from_the_global_batch(global_batch, micro, devices, nodes, expected):
    assert gradient_accumulation(global_batch, micro, devices, nodes) == expected
    if global_batch:
        assert micro * devices * nodes * expected == global_batch


def test_accumulation_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"128 is not divisible .* = 24"):
        gradient_accumulation(128, 3, 8, 1)
    with pytest.raises(ValueError, match="set one"):
        gradient_accumulation(128, 2, 8, 1, accumulate_grad_batches=4)
    cfg = compose_config("data.global_batch_size=100", "data.batch_size=8", "trainer.devices=1")
    with pytest.raises(ConfigError, match="not divisible"):
        validate(cfg)


@pytest.mark.parametrize("option,stage,offload_opt,offload_param", [
    ("deepspeed_zero2", 2, False, False), ("deepspeed_zero3", 3, False, False),
    ("deepspeed_zero3_offload", 3, True, True)])
def test_deepspeed_options_build_their_config_dict(option, stage, offload_opt, offload_param):
    cfg = compose_config(f"strategy={option}", "trainer=gpu", "trainer.devices=8", "data.global_batch_size=128",
                         "data.batch_size=2", "trainer.gradient_clip_val=1.0")
    validate(cfg)
    ds = deepspeed_config(cfg.strategy, 2)
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == offload_opt and ("offload_param" in zero) == offload_param
    assert ds["train_micro_batch_size_per_gpu"] == 2
    # Lightning fills these from the Trainer and refuses a dict that sets gradient_accumulation_steps
    assert not {"gradient_accumulation_steps", "train_batch_size", "gradient_clipping", "bf16", "fp16"} & set(ds)
    assert zero["reduce_bucket_size"] == cfg.strategy.reduce_bucket_size
    assert ("stage3_prefetch_bucket_size" in zero) == (stage == 3)
    json.dumps(ds)  # the dict is saved as deepspeed_config.json


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed extra not installed")
def test_lightning_deepspeed_strategy_completes_the_dict_from_the_trainer():
    """Lightning's own formatting step accepts rmlab's dict and adds accumulation, clipping and precision."""
    from unittest.mock import MagicMock

    cfg = compose_config("strategy=deepspeed_zero3", "trainer=gpu")
    strategy = build_strategy(cfg.strategy, "gpu", 2)
    assert type(strategy).__name__ == "DeepSpeedStrategy"
    trainer = MagicMock(accumulate_grad_batches=8, gradient_clip_val=1.0)
    strategy._lightning_module = MagicMock(trainer=trainer)
    strategy._precision_plugin = MagicMock(precision="bf16-mixed")
    strategy._format_config()
    assert strategy.config["gradient_accumulation_steps"] == 8 and strategy.config["gradient_clipping"] == 1.0
    assert strategy.config["bf16"] == {"enabled": True} and strategy.config["train_micro_batch_size_per_gpu"] == 2


def test_strategy_options_carry_only_their_own_fields():
    assert set(compose_config("strategy=ddp").strategy) == {"name", "process_group_backend", "find_unused_parameters",
                                                            "timeout_s"}
    assert set(compose_config().strategy) == {"name"}
    assert "stage" in compose_config("strategy=deepspeed_zero2", "trainer=gpu").strategy
    with pytest.raises(Exception, match="stage"):
        compose_config("strategy=ddp", "strategy.stage=3")


def test_ddp_auto_and_fsdp_strategies_build():
    """Here, the strategies rmlab builds (FSDP trains on CPU processes in tests/test_fsdp.py)."""
    from torch.distributed.fsdp import ShardingStrategy

    assert build_strategy(compose_config().strategy, "cpu", 8) == "auto"
    ddp = build_strategy(compose_config("strategy=ddp").strategy, "cpu", 8)
    assert type(ddp).__name__ == "DDPStrategy"
    fsdp = build_strategy(compose_config("strategy=fsdp", "trainer=gpu", "strategy.sharding=SHARD_GRAD_OP").strategy,
                          "gpu", 2)
    assert type(fsdp).__name__ == "FSDPStrategy" and fsdp.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP
    assert fsdp._state_dict_type == "full"  # the export needs whole tensors on rank 0


def test_cuda_only_strategies_are_refused_on_cpu_with_the_alternative():
    with pytest.raises(ConfigError, match="strategy=ddp"):
        validate(compose_config("strategy=deepspeed_zero2"))
    deepspeed = compose_config("strategy=deepspeed_zero2", "trainer=gpu").strategy
    with pytest.raises(ValueError, match="this machine has none.*strategy=ddp.*strategy.allow_cpu=true"):
        check_hardware(deepspeed, "gpu", cuda_available=False)
    check_hardware(compose_config("strategy=ddp").strategy, "cpu", cuda_available=False)
    validate(compose_config("strategy=deepspeed_zero3", "strategy.allow_cpu=true"))  # development on CPU: allowed
    with pytest.raises(ConfigError, match="FSDP needs CUDA"):
        validate(compose_config("strategy=fsdp"))
    with pytest.raises(ConfigError, match="strategy.offload_parameters"):
        validate(compose_config("strategy=deepspeed_zero2", "trainer=gpu", "strategy.offload_parameters=true"))


@pytest.mark.parametrize("strategy", ["auto", "ddp", "fsdp"])
def test_16_bit_weights_are_refused_without_a_master_copy(strategy):
    """AdamW would update bf16 weights in place: updates below their resolution vanish (no fp32 master copy)."""
    import torch

    weight = torch.nn.Parameter(torch.full((4,), 0.02, dtype=torch.bfloat16))
    optimizer = torch.optim.AdamW([weight], lr=2e-6, weight_decay=0.0)
    for _ in range(100):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
    assert torch.equal(weight.detach(), torch.full((4,), 0.02, dtype=torch.bfloat16))  # 100 steps changed nothing
    overrides = [f"strategy={strategy}", "model=hf", "model.name_or_path=x", "model.dtype=bfloat16"]
    with pytest.raises(ConfigError, match="model.dtype.*no fp32 master copy.*bf16-mixed"):
        validate(compose_config(*overrides, *(["trainer=gpu"] if strategy == "fsdp" else [])))
    validate(compose_config(*overrides[1:], "strategy=deepspeed_zero3", "trainer=gpu"))  # DeepSpeed keeps fp32 masters
    validate(compose_config(*overrides[:-1], "trainer=gpu"))  # fp32 weights + bf16-mixed
    validate(compose_config(*overrides, *(["trainer=gpu"] if strategy == "fsdp" else [])), training=False)  # scoring


@pytest.mark.parametrize("preset,expected_billions", [("gemma2_27b", 27.2), ("llama3_1_8b", 7.50)])
def test_plan_counts_parameters_of_the_paper_presets_offline(preset, expected_billions):
    cfg = compose_config(f"model={preset}", "strategy=deepspeed_zero3", "trainer.devices=8", "plan=true",
                         "data.global_batch_size=128", "data.batch_size=2")
    plan = build_plan(cfg)
    assert plan["model"]["parameters"] / 1e9 == pytest.approx(expected_billions, rel=0.01)
    assert plan["batch"]["accumulation"] == 8 and plan["batch"]["pairs_per_optimizer_step"] == 128
    assert plan["strategy"]["deepspeed_config"]["zero_optimization"]["stage"] == 3
    assert 0 < plan["memory_gib_per_gpu"]["model_states"] < 80


@pytest.mark.parametrize("experiment,stage,lr", [("paper_gemma2_27b", 3, 1e-6), ("paper_llama3_1_8b", 2, 2e-6)])
def test_paper_experiments_plan_the_papers_recipe(experiment, stage, lr):
    """``+experiment=paper_*`` (what ``+sweeps=table3_paper`` runs) composes, validates and plans offline:
    8 GPUs, global batch 128 from micro-batches of 2 (accumulation 8), ZeRO-``stage``, bf16, the paper's lr."""
    cfg = compose_config(f"+experiment={experiment}", "plan=true")
    validate(cfg)
    plan = build_plan(cfg)
    assert plan["batch"]["devices"] == 8 and plan["batch"]["accumulation"] == 8
    assert plan["batch"]["pairs_per_optimizer_step"] == 128
    assert plan["strategy"]["deepspeed_config"]["zero_optimization"]["stage"] == stage
    assert cfg.optimizer.optimizer.lr == lr and cfg.trainer.precision == "bf16-mixed" and cfg.trainer.max_epochs == 2


def test_plan_on_two_nodes_names_them_in_the_batch_and_the_memory(caplog):
    """2 nodes × 8 GPUs: accumulation 4 for the global batch of 128, ZeRO-3 states spread over 16 GPUs."""
    from rmlab.plan import print_plan

    one, two = (compose_config("+experiment=paper_gemma2_27b", "plan=true", f"trainer.num_nodes={n}") for n in (1, 2))
    validate(two)
    with caplog.at_level("INFO", logger="rmlab.plan"):
        plan = print_plan(two)
    assert plan["batch"]["nodes"] == 2 and plan["batch"]["accumulation"] == 4
    assert "2 pairs per micro-batch × 8 devices × 2 node(s) × 4 accumulation = 128 pairs" in caplog.text
    assert "each of the 16 devices on 2 node(s)" in caplog.text
    assert plan["memory_gib_per_gpu"]["model_states"] < build_plan(one)["memory_gib_per_gpu"]["model_states"]


def test_paper_table3_sweep_composes_for_slurm():
    """The README's ``+sweeps=table3_paper hydra/launcher=slurm``: eight losses on the Gemma recipe, each job one
    srun task per GPU (tests/test_slurm_sweep.py submits it); ``submitit_slurm`` keeps the user's own sizes."""
    from hydra import compose, initialize_config_module

    def launcher(*overrides: str):
        with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=["+sweeps=table3_paper", *overrides],
                          return_hydra_config=True)
        assert len(cfg.hydra.sweeper.params.loss.split(",")) == 8
        return cfg.hydra.launcher

    sized = launcher("hydra/launcher=slurm", "trainer.num_nodes=2")
    assert sized._target_.endswith("SlurmLauncher")
    assert (sized.nodes, sized.tasks_per_node, sized.gpus_per_node, sized.timeout_min) == (2, 8, 8, 2880)
    with pytest.raises(Exception, match=r"trainer.devices='auto': hydra/launcher=slurm .* Fix: trainer.devices="):
        launcher("hydra/launcher=slurm", "trainer.devices=auto").tasks_per_node
    own = launcher("hydra/launcher=submitit_slurm", "hydra.launcher.nodes=3", "hydra.launcher.tasks_per_node=4")
    assert (own.nodes, own.tasks_per_node, own.gpus_per_node, own.timeout_min) == (3, 4, None, 60)
    job = compose_config("+sweeps=table3_paper")
    validate(job)
    assert job.model.name_or_path == compose_config("model=gemma2_27b").model.name_or_path


def test_gemma_parameter_count_by_hand():
    """Gemma-2-27B from its architecture numbers, independently of transformers."""
    h, layers, vocab, heads, kv, head_dim, inter = 4608, 46, 256000, 32, 16, 128, 36864
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    per_layer = attention + 3 * h * inter + 4 * h
    total = vocab * h + layers * per_layer + h + h  # embeddings, layers, final norm, 1-unit score head
    cfg = compose_config("model=gemma2_27b", "plan=true")
    assert build_plan(cfg)["model"]["parameters"] == total


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed extra not installed")
@pytest.mark.parametrize("stage,offload_opt,offload_param", [(2, False, False), (2, True, False), (3, False, False),
                                                           (3, True, False), (3, True, True)])
def test_model_state_memory_matches_deepspeeds_estimators(stage, offload_opt, offload_param):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total, largest, gpus, nodes = 27_227_132_928, 1_179_648_000, 8, 2
    gpu, cpu = model_state_bytes(total, largest, stage, gpus, nodes, offload_opt, offload_param)
    if stage == 2:
        ds_cpu, ds_gpu = estimate_zero2_model_states_mem_needs(total, gpus, nodes, cpu_offload=offload_opt)
    else:
        ds_cpu, ds_gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, gpus, nodes, cpu_offload=offload_opt,
                                                                  cpu_offload_params=offload_param, zero_init=True)
    assert int(gpu) == ds_gpu and int(cpu) == ds_cpu


@pytest.mark.slow
def test_plan_cli_is_offline_and_fast(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "rmlab", "model=gemma2_27b", "strategy=deepspeed_zero3",
                             "trainer.devices=8", "plan=true", f"hydra.run.dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "27.23B parameters" in result.stdout and "ZeRO-3" in result.stdout
    assert json.loads((tmp_path / "plan.json").read_text())["batch"]["devices"] == 8
    missing = subprocess.run([sys.executable, "-m", "rmlab", "model=hf", "model.name_or_path=org/not-cached",
                              "plan=true", f"hydra.run.dir={tmp_path}/b"], capture_output=True, text=True,
                             timeout=120, env=env)
    assert missing.returncode != 0 and "model.arch_config" in missing.stderr


@pytest.mark.slow
def test_srun_ranks_share_the_slurm_jobs_run_dir(tmp_path):
    """Under ``srun`` every rank resolves ``outputs/runs/slurm-<job id>``; rank 1 logs to its own file and writes
    no ``.hydra/`` (plan mode: no trainer, so this is the launch-time resolution alone)."""
    run_dir = tmp_path / "outputs" / "runs" / "slurm-4242"
    for rank in (1, 0):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLURM_JOB_ID": "4242", "SLURM_PROCID": str(rank)}
        env.pop("RANK", None)
        result = subprocess.run([sys.executable, "-m", "rmlab", "model=gemma2_27b", "strategy=deepspeed_zero3",
                                 "trainer.devices=8", "plan=true"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (run_dir / "plan.json").is_file() and (run_dir / ".hydra").is_dir() == (rank == 0)
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["rmlab.log", "rmlab_rank1.log"]
    assert [p.name for p in (tmp_path / "outputs" / "runs").iterdir()] == ["slurm-4242"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_two_process_ddp_fit_writes_one_run_dir(tmp_path, tiny_llama_dir, launcher):
    """Both launchers: one run dir, and the held-out pairs and an extra evaluation set (21 pairs: the ranks get
    unequal shares) scored across the ranks, each in its own order, as the export scores them."""
    data, extra = tmp_path / "pairs.jsonl", tmp_path / "extra.jsonl"
    write_topic_pairs(data, 96)
    write_topic_pairs(extra, 21)
    args = ["model=hf", f"model.name_or_path={tiny_llama_dir}", "data=local", f"data.source={data}",
            "data.max_length=64", "data.batch_size=4", "strategy=ddp", "trainer.devices=2", "logger=csv",
            "trainer.enable_progress_bar=false", f"eval.sets=[{{name: extra, source: {extra}}}]"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    if launcher == "lightning":
        command = [sys.executable, "-m", "rmlab", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "rmlab", *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run_dirs = [p for p in (tmp_path / "outputs" / "runs").iterdir()]
    assert len(run_dirs) == 1, run_dirs
    run = run_dirs[0]
    assert len(list(tmp_path.rglob("metrics.json"))) == 1 and len(list(tmp_path.rglob(".hydra"))) == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["optimizer_steps"] > 0 and metrics["eval"]["heldout"]["pairs"] > 0
    from transformers import AutoModelForSequenceClassification

    from conftest import split_pairs
    from rmlab.data.formats import load_pairs
    from rmlab.model import build_reward_model
    from rmlab.data.tokenize import PairTokenizer
    from rmlab.scoring import score_pairs

    bundle = build_reward_model(str(run / "export"))
    assert isinstance(bundle.model, AutoModelForSequenceClassification._model_mapping[type(bundle.model.config)])
    _, heldout = split_pairs(load_pairs(str(data))[0], 0.15)
    assert metrics["eval"]["extra"]["pairs"] == 21
    for pairs, set_name in ((heldout, "heldout"), (load_pairs(str(extra))[0], "extra")):
        saved = [json.loads(line) for line in (run / "rewards" / f"{set_name}.jsonl").read_text().splitlines()]
        tokenized = [PairTokenizer(bundle.tokenizer, bundle.chat_template, 64)(p) for p in pairs]
        chosen, rejected = score_pairs(bundle.model, tokenized, bundle.tokenizer.pad_token_id)
        assert chosen == pytest.approx([r["chosen"] for r in saved], abs=1e-4), set_name
        assert rejected == pytest.approx([r["rejected"] for r in saved], abs=1e-4), set_name


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed extra not installed")
@pytest.mark.parametrize("global_zero", [True, False])
def test_only_global_rank_zero_writes_the_deepspeed_config(tmp_path, global_zero):
    """Under srun every node has a local rank 0; the config is written by the global rank 0 only."""
    from types import SimpleNamespace

    from rmlab.zero import SaveDeepSpeedConfig

    strategy = build_strategy(compose_config("strategy=deepspeed_zero2", "trainer=gpu").strategy, "gpu", 2)
    path = tmp_path / "deepspeed_config.json"
    SaveDeepSpeedConfig(path).on_fit_start(SimpleNamespace(is_global_zero=global_zero, strategy=strategy), None)
    assert path.exists() == global_zero
    if global_zero:
        assert json.loads(path.read_text())["zero_optimization"]["stage"] == 2
