"""``python -m rmlab.evaluate``: score a trained reward model under rmlab's rules, without training.

It composes the same config as training (``model``, ``data``, ``eval``, ``trainer`` groups; ``loss``,
``optimizer``, ``logger`` and ``strategy`` are not used) and loads ``model.name_or_path``: an rmlab export, or any
``AutoModelForSequenceClassification`` checkpoint with a one-label head (hub id or local directory; a
checkpoint without such a head is refused). It scores the held-out split of ``data`` (``eval.heldout``),
every ``eval.sets`` entry and RewardBench 2 (``eval.rewardbench2``) with training's own scoring path
(:mod:`rmlab.evaluation`), on one device (``trainer.accelerator``: the GPU when there is one and it is not
``cpu``), and writes the same ``metrics.json``, ``rewards/<set>.jsonl`` and tables into its run directory. Examples::

    python -m rmlab.evaluate model=hf model.name_or_path=outputs/runs/<run>/export            # default data
    python -m rmlab.evaluate model=hf model.name_or_path=Skywork/Skywork-Reward-Llama-3.1-8B-v0.2 \\
        model.dtype=bfloat16 eval=rewardbench eval.heldout=false trainer=gpu
    python -m rmlab.evaluate model=hf model.name_or_path=outputs/runs/<run>/export eval=rewardbench2

To rescore a run's export on that run's data, pass the run's overrides again
(``<run>/.hydra/overrides.yaml``) with ``model.name_or_path=<run>/export``: the numbers equal the run's.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from rmlab.config import exit_on_user_error, register_configs, validate

register_configs()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load the model, score every set, write metrics.json and rewards/; returns the metrics."""
    import torch

    from rmlab.console import quiet_third_party
    from rmlab.data.formats import RowStats
    from rmlab.evaluation import evaluation_results, heldout_set, load_eval_sets, load_rewardbench2, score_sets
    from rmlab.data.tokenize import PairTokenizer
    from rmlab.model import build_reward_model
    from rmlab.packing import fuse_projections
    from rmlab.results import print_results
    from rmlab.train import build_datamodule, set_cpu_threads

    started = time.time()
    quiet_third_party()
    set_cpu_threads(cfg)
    if cfg.strategy.name != "auto":  # a run's own overrides may name one; scoring needs no sharding
        logging.getLogger("rmlab").warning(f"strategy={cfg.strategy.name} is not used: rmlab.evaluate scores on "
                                           "one device (a 27B model in bf16, 54 GB, fits one 80 GB GPU)")
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    bundle = build_reward_model(**OmegaConf.to_container(cfg.model, resolve=True), require_head=True)
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, cfg.data.max_length)
    sets, data = [], RowStats().as_dict()  # no training data read unless eval.heldout
    if cfg.eval.heldout:
        datamodule = build_datamodule(cfg, pair_tokenizer)
        datamodule.setup()
        mapping = OmegaConf.to_container(cfg.data.section_mapping) if cfg.data.section_mapping else None
        sets.append(heldout_set(datamodule.heldout_pairs, mapping, datamodule.stats))
        data = datamodule.stats.as_dict()
    sets += load_eval_sets(cfg.eval.sets, pair_tokenizer) + load_rewardbench2(cfg.eval.rewardbench2, pair_tokenizer)
    use_gpu = cfg.trainer.accelerator != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    model = bundle.model.to(device).eval()
    if device.type == "cpu":
        fuse_projections(model)  # as training scores on the CPU: the same kernels, the same rewards
    rewards = score_sets(model, sets, bundle.tokenizer.pad_token_id, cfg.eval.batch_size, device=device)
    results, row_set = evaluation_results(sets, rewards, output_dir / "rewards")
    metrics = {**results, "data": data,
               "run": {"mode": "evaluate", "model": cfg.model.name_or_path, "table3_set": row_set,
                       "device": str(device), "cpu_threads": torch.get_num_threads(),
                       "wall_time_s": round(time.time() - started, 1)}}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print_results(metrics, output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://rmlab.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg, training=False)
        evaluate(cfg)
    except Exception as error:
        exit_on_user_error(error)  # a config or data error: one line, no traceback


if __name__ == "__main__":
    main()
