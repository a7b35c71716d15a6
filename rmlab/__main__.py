"""``python -m rmlab``: compose the Hydra config, validate it, then train.

Only Hydra, OmegaConf and :mod:`rmlab.config` are imported here, so ``--help``,
``--cfg job`` and config errors return fast; torch and Lightning load in :func:`rmlab.train.train`.
In a multirun, a failing job writes ``failed.json`` (error and traceback) into its
directory and the sweep goes on with the next job.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rmlab.config import exit_on_user_error, register_configs, validate

LAUNCHED_AT = time.time()
register_configs()


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    runtime = HydraConfig.get().runtime
    failure = {"error": f"{type(error).__name__}: {error}".splitlines()[0], "loss": runtime.choices.get("loss"),
               "seed": cfg.seed, "traceback": traceback.format_exc()}
    Path(runtime.output_dir, "failed.json").write_text(json.dumps(failure, indent=2))
    logging.getLogger("rmlab").error(f"rmlab: job failed ({failure['error']}); traceback in "
                                     f"{runtime.output_dir}/failed.json")  # console and the job's rmlab.log


@hydra.main(version_base="1.3", config_path="pkg://rmlab.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun:
        Path(HydraConfig.get().runtime.output_dir, "failed.json").unlink(missing_ok=True)  # an earlier attempt's
    try:
        validate(cfg)
        if cfg.plan:
            from rmlab.plan import print_plan

            print_plan(cfg, Path(HydraConfig.get().runtime.output_dir))
            return None
        from rmlab.train import train

        return train(cfg, time.time() if multirun else LAUNCHED_AT).get("table3", {}).get("Avg")
    except Exception as error:
        if multirun:  # one failing job must not stop the sweep
            record_failure(cfg, error)
            return None
        exit_on_user_error(error)  # a config or data error: one line, no traceback


if __name__ == "__main__":
    main()
