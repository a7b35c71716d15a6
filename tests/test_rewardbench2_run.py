"""RewardBench 2 in a run: ``python -m rmlab.evaluate eval=rewardbench2``, the scoring at the end of a fit, the
metrics.json block and the rewards file (from which the test recomputes every score), the config, and RB2's prompts
as decontamination's reference set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fit_reward_module, wandb_summary_and_exit, write_jsonl, write_topic_pairs
from test_evaluation import _score_on_rank, evaluate_in_process, saved_rewards
from test_rewardbench2 import rb2_rows, write_rb2_copy

from rmlab.rewardbench2 import SUBSETS, best_of_n_result, rb2_scores

LONG = "a long answer that goes on " * 12  # longer than data.max_length=96 with its prompt: scored on its end


def rb2_copy(directory: Path) -> tuple[Path, list[dict]]:
    """A hub-layout copy and its rows: every subset, three of its completions too long for max_length 96."""
    rows = rb2_rows(per_subset=3, ties_numbers=3)
    for index in (0, 4, len(rows) - 1):
        rows[index]["rejected"] = [LONG + str(index), *rows[index]["rejected"][1:]]
    return write_rb2_copy(directory, rows), rows


def recomputed(lines: list[dict]) -> dict[str, float]:
    """The scores from the rewards file alone, as anyone can recompute them."""
    return rb2_scores([{key: line[key] for key in ("id", "subset", "num_correct", "rewards")} for line in lines])


def test_evaluate_scores_every_completion_alone_and_writes_what_recomputes_the_scores(tmp_path, tiny_llama_dir):
    """``python -m rmlab.evaluate eval=rewardbench2`` on a local copy: the block's scores are RewardBench 2's rules
    on the written rewards; each reward is the model's on the prompt + that completion through the chat template;
    the completions too long for max_length are scored truncated and counted; no row is dropped."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    copy, rows = rb2_copy(tmp_path / "reward-bench-2")
    output_dir = tmp_path / "evaluated"
    metrics = evaluate_in_process(output_dir, "model=hf", f"model.name_or_path={tiny_llama_dir}", "eval=rewardbench2",
                                  f"eval.rewardbench2.source={copy}", "data=local", "data.max_length=96",
                                  f"data.source={write_topic_pairs(tmp_path / 'pairs.jsonl', 16)}")
    block, lines = metrics["rewardbench2"], saved_rewards(output_dir, "rewardbench2")
    assert [(line["id"], line["subset"]) for line in lines] == [(row["id"], row["subset"]) for row in rows]
    assert {key: block[key] for key in (*SUBSETS, "final")} == recomputed(lines)
    assert len({round(block[name], 6) for name in SUBSETS}) > 1  # the subsets' scores differ: each is checked
    assert block["prompts"] == {name: 6 if name == "Ties" else 3 for name in SUBSETS} and block["missing_subsets"] == []
    assert block["completions"] == sum(row["total_completions"] for row in rows) == \
        sum(len(line["rewards"]) for line in lines)
    assert block["truncated_completions"] == sum(line["truncated"] for line in lines) == 3
    assert block["data"] == {"rows_read": len(rows), "rows_used": len(rows), "rows_skipped": 0, "skipped_by_reason": {}}
    assert "heldout" in metrics["eval"]  # the held-out pairs are scored beside it
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    compared = 0
    with torch.no_grad():
        for row, line in zip(rows, lines):
            assert line.get("result", best_of_n_result(line["rewards"])) == best_of_n_result(line["rewards"])
            for text, reward in zip(row["chosen"] + row["rejected"], line["rewards"]):
                messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": text}]
                ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
                whole = ids["input_ids"][0].tolist()
                kept = whole if len(whole) <= 96 else whole[:1] + whole[-95:]  # the BOS, then the end
                compared += len(whole) > 96
                assert reward == pytest.approx(model(input_ids=torch.tensor([kept])).logits.item(), rel=1e-4, abs=1e-5)
    assert compared == 3


def test_rewardbench2_is_scored_at_the_end_of_a_fit_with_the_trained_weights(tmp_path, tiny_llama_dir):
    """FinalScoring scores RewardBench 2's completions when the fit ends, as it scores the pairs: the rewards are
    the trained model's, group by group, and differ from the untrained model's."""
    from rmlab.data.tokenize import PairTokenizer
    from rmlab.evaluation import FinalScoring, load_rewardbench2
    from rmlab.model import build_reward_model
    from rmlab.schemas import RewardBench2Config
    from rmlab.scoring import score_groups

    bundle = build_reward_model(str(tiny_llama_dir))
    config = RewardBench2Config(source=str(rb2_copy(tmp_path / "reward-bench-2")[0]))
    (group_set,) = load_rewardbench2(config, PairTokenizer(bundle.tokenizer, bundle.chat_template, 96))
    before = score_groups(bundle.model, group_set.groups, bundle.tokenizer.pad_token_id, 8)
    scoring = FinalScoring(lambda: [group_set], bundle.tokenizer.pad_token_id, batch_size=8)
    module, _ = fit_reward_module(bundle, write_topic_pairs(tmp_path / "pairs.jsonl", 16), callbacks=[scoring])
    after = scoring.rewards["rewardbench2"]
    assert [len(rewards) for rewards in after] == [len(group.sequences) for group in group_set.groups]
    assert after == score_groups(module.model, group_set.groups, bundle.tokenizer.pad_token_id, 8) != before


@pytest.mark.slow
def test_groups_are_scored_sharded_over_ranks_with_equal_forward_counts(tiny_llama_dir, tmp_path):
    """Two processes share RewardBench 2's completions (groups of 4 and of 9, 9 batches): 5 forwards each (ZeRO-3
    gathers parameters in every forward), and both get every group's rewards, as one process scoring them all."""
    import torch.multiprocessing as mp
    from transformers import AutoModelForSequenceClassification

    from rmlab.data.groups import TokenizedGroup
    from rmlab.scoring import length_sorted_batches, score_groups

    sizes = [4, 9, 4, 4, 9, 4]
    groups = [TokenizedGroup(str(g), "Math", 1, [[1] + [5 + (g * 7 + i * 3 + j) % 300 for j in range(2 + i % 6)] + [2]
                                                 for i in range(size)]) for g, size in enumerate(sizes)]
    assert len(length_sorted_batches([len(ids) for group in groups for ids in group.sequences], 4)) == 9
    mp.spawn(_score_on_rank, args=(2, str(tmp_path / "store"), str(tiny_llama_dir), groups, str(tmp_path),
                                   "score_groups"), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir).eval()
    alone = score_groups(model, groups, model.config.pad_token_id, batch_size=4)
    assert [r["forwards"] for r in results] == [5, 5]
    assert results[0]["rewards"] == results[1]["rewards"] == alone and [len(r) for r in alone] == sizes


@pytest.mark.slow
def test_a_run_scores_rewardbench2_and_its_export_rescored_gives_the_same(tmp_path, tiny_llama_dir):
    """``python -m rmlab eval=rewardbench2``: metrics.json's block, the rewards file, the console table, the W&B
    summary (an offline run: RewardBench 2's subset names under ``rewardbench2``); then ``python -m rmlab.evaluate``
    on the export with the run's overrides writes the same block and rewards."""
    copy, _ = rb2_copy(tmp_path / "reward-bench-2")
    data = write_topic_pairs(tmp_path / "pairs.jsonl", 32)
    run_dir, eval_dir = tmp_path / "run", tmp_path / "evaluated"
    overrides = ["model=hf", f"model.name_or_path={tiny_llama_dir}", "data=local", f"data.source={data}",
                 "data.max_length=96", "data.batch_size=4", "trainer.enable_progress_bar=false",
                 "eval=rewardbench2", f"eval.rewardbench2.source={copy}", "threads=1"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(NETRC=str(tmp_path / "no-netrc"), WANDB_DIR=str(tmp_path / "wandb-dir"))  # W&B goes offline
    trained = subprocess.run([sys.executable, "-m", "rmlab", *overrides, f"hydra.run.dir={run_dir}"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "rewardbench2: 21 prompts" in trained.stdout and "Precise IF" in trained.stdout
    summary, exit_code = wandb_summary_and_exit(run_dir)
    block = json.loads((run_dir / "metrics.json").read_text())["rewardbench2"]
    assert exit_code == 0 and {key: summary["rewardbench2"][key] for key in (*SUBSETS, "final")} == \
        {key: block[key] for key in (*SUBSETS, "final")}
    evaluated = subprocess.run([sys.executable, "-m", "rmlab.evaluate", *overrides,
                                f"model.name_or_path={run_dir / 'export'}", f"hydra.run.dir={eval_dir}"],
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    train_metrics, eval_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, eval_dir))
    assert train_metrics["rewardbench2"] == eval_metrics["rewardbench2"]
    assert {key: train_metrics["rewardbench2"][key] for key in (*SUBSETS, "final")} == \
        recomputed(saved_rewards(run_dir, "rewardbench2"))
    assert (run_dir / "rewards" / "rewardbench2.jsonl").read_bytes() == \
        (eval_dir / "rewards" / "rewardbench2.jsonl").read_bytes()


@pytest.mark.slow
def test_a_bad_local_copy_ends_the_command_with_one_line(tmp_path, tiny_llama_dir):
    rows = rb2_rows(per_subset=1, ties_numbers=1)
    rows[1]["num_correct"] = 9
    copy = write_rb2_copy(tmp_path / "reward-bench-2", rows)
    result = subprocess.run([sys.executable, "-m", "rmlab.evaluate", "model=hf", f"model.name_or_path={tiny_llama_dir}",
                             "eval=rewardbench2", "eval.heldout=false", f"eval.rewardbench2.source={copy}",
                             f"hydra.run.dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("rmlab: data error:")]
    assert "[test row 1]: num_correct=9 is larger than the group (4 completions" in line and "Fix:" in line, line


def test_decontamination_takes_rewardbench2s_prompts_as_the_reference_set(tmp_path):
    """``tool=decontaminate`` with RewardBench 2 (a copy laid out as on the hub) as ``tool.eval_sets``: every prompt
    is a reference (by subset), and a training prompt sharing 9 words with one is removed."""
    from rmlab.data.recipe.config import DecontaminateConfig, InputConfig
    from rmlab.data.recipe.decontaminate import run

    rows = rb2_rows(per_subset=2, ties_numbers=1)
    rows[0]["prompt"] = "Which river runs through the old city of Prague and on to Dresden?"
    copy = write_rb2_copy(tmp_path / "reward-bench-2", rows)
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": "Tell me which river runs through the old city of Prague, please.", "chosen": "The Vltava.",
         "rejected": "The Nile."},
        {"prompt": "A question of its own, with nothing shared at all.", "chosen": "Yes.", "rejected": "No."}])
    (tmp_path / "out").mkdir()  # Hydra makes the run directory
    report = run(DecontaminateConfig(input=InputConfig(path=str(train)), output_dir=str(tmp_path / "out"),
                                     eval_sets=[InputConfig(path=str(copy), split="test", name="rewardbench2")]))
    assert report["eval_rows"] == {"rows_read": len(rows), "rows_used": len(rows), "rows_skipped": 0,
                                   "skipped_by_reason": {}}
    by_subset = {row["eval_subset"]: row for row in report["evaluation"]}
    assert set(by_subset) == {f"rewardbench2/{subset}" for subset in SUBSETS}
    assert by_subset["rewardbench2/Factuality"]["eval_prompts_matched"] == 1
    assert report["totals"]["eval_prompts"] == len({row["prompt"] for row in rows})
    assert report["totals"]["contaminated_pairs"] == 1 and report["totals"]["eval_prompts_matched"] == 1
    assert [json.loads(line)["chosen"] for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()] == \
        ["Yes."]
