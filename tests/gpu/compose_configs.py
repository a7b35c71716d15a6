"""Composes and validates every configuration a GPU machine runs, with Hydra, OmegaConf and rmlab.config only (no
torch): ``trainer=gpu`` with each strategy, both paper experiments and the paper's Table 3 sweep. Run by the device
script after installing the kit, and by tests/test_device_kit.py in a clean Python 3.12 environment::

    python tests/gpu/compose_configs.py
"""

from __future__ import annotations

import sys
import tempfile

from hydra import compose, initialize_config_module

from rmlab.config import register_configs, validate

MODEL = ["model=hf", "model.name_or_path=some/model"]  # the default MiniLM needs its own package
STRATEGIES = ["auto", "ddp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload", "fsdp"]
CONFIGS = [[*MODEL, "trainer=gpu", f"strategy={name}"] for name in STRATEGIES] + [
    ["+experiment=paper_gemma2_27b"], ["+experiment=paper_llama3_1_8b"], ["+sweeps=table3_paper"]]


def main() -> int:
    register_configs()
    output_dir = tempfile.mkdtemp(prefix="rmlab-compose-")
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        for overrides in CONFIGS:
            cfg = compose(config_name="config", overrides=overrides)
            cfg.paths.output_dir = output_dir  # otherwise resolved by a running Hydra app
            validate(cfg)
            print(f"composed: {' '.join(overrides)} -> strategy {cfg.strategy.name}, {cfg.trainer.precision}")
        sweep = compose(config_name="config", overrides=["+sweeps=table3_paper"], return_hydra_config=True)
        losses = sweep.hydra.sweeper.params.loss.split(",")
        assert len(losses) == 8, losses
    print(f"composed {len(CONFIGS)} configurations; the Table 3 sweep has {len(losses)} losses; torch imported: "
          f"{'torch' in sys.modules}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
