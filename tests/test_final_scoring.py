"""The scoring at the end of the fit (``FinalScoring.score``) runs each batch as training runs it: through
``trainer.strategy.predict_step``, so inside the precision plugin's autocast and through the strategy's wrapper
(the sharded runs: tests/test_deepspeed.py, tests/test_fsdp.py)."""

from __future__ import annotations

import functools
import torch

from conftest import fit_reward_module, write_topic_pairs
from rmlab.data.formats import load_pairs
from rmlab.data.tokenize import PairTokenizer
from rmlab.evaluation import EvalSet, FinalScoring
from rmlab.model import build_reward_model
from rmlab.scoring import score_pairs


def test_final_scoring_runs_inside_the_precision_plugins_autocast(tiny_llama_dir, tmp_path):
    """``trainer.precision=bf16-mixed`` (``trainer=gpu``'s): fp32 weights, bf16 compute under autocast. Scored
    outside it, the forward ran in fp32, which flash-attention refuses at the end of the fit. On the CPU's
    bf16-mixed plugin every scoring forward sees autocast, and the rewards are those of an autocast forward."""
    bundle = build_reward_model(str(tiny_llama_dir))
    data = write_topic_pairs(tmp_path / "pairs.jsonl", 12)
    tokenized = [PairTokenizer(bundle.tokenizer, bundle.chat_template, 64)(pair) for pair in load_pairs(str(data))[0]]
    scoring = FinalScoring(lambda: [EvalSet("heldout", tokenized)], bundle.tokenizer.pad_token_id, batch_size=4)
    autocast_in_scoring = []
    first_linear = next(m for m in bundle.model.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_pre_hook(
        lambda module, args: None if torch.is_grad_enabled() else autocast_in_scoring.append(
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))
    module, _ = fit_reward_module(bundle, data, precision="bf16-mixed", callbacks=[scoring])
    assert autocast_in_scoring and all(autocast_in_scoring), autocast_in_scoring
    score = functools.partial(score_pairs, module.model, tokenized, bundle.tokenizer.pad_token_id, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert scoring.rewards["heldout"] == score()
    assert scoring.rewards["heldout"] != score()  # fp32 gives other rewards: the check above can tell them apart
