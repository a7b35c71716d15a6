"""rmlab/evaluation.py and the scoring it drives: when and where the sets are scored, and by whom."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import OFFICIAL_EXAMPLE_COUNTS, OFFICIAL_SUBSET_MAPPING, write_jsonl, write_topic_pairs

from rmlab.data.tokenize import TokenizedPair


def lightning_fit(model_dir: Path, data: Path, root: Path, callbacks: list, ckpt_path=None, max_steps: int = 3,
                  loss=None):
    """A short in-process CPU fit of the tiny Llama with FinalScoring; returns (trainer, module, scoring, sets)."""
    import lightning.pytorch as pl
    from transformers import get_scheduler

    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.data.formats import load_pairs
    from rmlab.data.tokenize import PairTokenizer
    from rmlab.evaluation import FinalScoring, heldout_set
    from rmlab.losses import BradleyTerryLoss
    from rmlab.model import build_reward_model
    from rmlab.module import RewardModule

    pl.seed_everything(0, verbose=False)
    bundle = build_reward_model(str(model_dir))
    datamodule = PreferenceDataModule(functools.partial(load_pairs, str(data)),
                                      PairTokenizer(bundle.tokenizer, bundle.chat_template, 64), val_fraction=0.25,
                                      batch_size=4, eval_batch_size=16, seed=0)

    def sets():
        return [heldout_set(datamodule.heldout_pairs, None, datamodule.stats)]

    scoring = FinalScoring(sets, bundle.tokenizer.pad_token_id, 8)
    module = RewardModule(bundle.model, loss or BradleyTerryLoss(), functools.partial(torch.optim.AdamW, lr=1e-3),
                          functools.partial(get_scheduler, name="linear"), 0.0, max_steps)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(root), callbacks=[*callbacks, scoring],
                         enable_checkpointing=bool(callbacks), num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer, module, scoring, sets



def test_progress_bar_shows_the_running_means_of_the_epoch(tiny_llama_dir, tmp_path):
    """After each training step the bar's loss and acc are the means over all the epoch's pairs so far (batch
    losses weighted by their pairs), computed here in float64 from what the loss saw, not the last batch's."""
    import lightning.pytorch as pl

    from rmlab.losses import BradleyTerryLoss

    class RecordingLoss(BradleyTerryLoss):
        def __call__(self, chosen, rejected, margin=None):
            loss = super().__call__(chosen, rejected, margin=margin)
            self.seen.append((float(loss.detach()), chosen.detach().double(), rejected.detach().double()))
            return loss

    class BarReader(pl.Callback):
        def __init__(self):
            self.shown = []

        def on_train_batch_end(self, trainer, *args):
            metrics = trainer.progress_bar_metrics
            self.shown.append((float(metrics["loss"]), float(metrics["acc"]), recording.seen[-1]))

    recording = RecordingLoss()
    recording.seen = []
    reader = BarReader()
    data = write_topic_pairs(tmp_path / "pairs.jsonl", 40)
    lightning_fit(tiny_llama_dir, data, tmp_path / "fit", [reader], max_steps=4, loss=recording)
    assert len(reader.shown) == 4
    pairs = loss_sum = correct = 0.0
    for shown_loss, shown_acc, (batch_loss, chosen, rejected) in reader.shown:
        pairs += len(chosen)
        loss_sum += batch_loss * len(chosen)
        correct += float((chosen > rejected).sum())
        assert shown_loss == pytest.approx(loss_sum / pairs, rel=1e-5)
        assert shown_acc == pytest.approx(correct / pairs, abs=1e-7)
    assert pairs > len(reader.shown[-1][2][1])  # the last value shown is not the last batch's alone

def test_sets_are_scored_before_the_strategy_tears_the_model_down(tiny_llama_dir, tmp_path):
    """Lightning's teardown moves the model off its training device (GPU -> CPU): every scoring forward must come
    before it, and score the model as trained."""
    import lightning.pytorch as pl

    events: list[str] = []

    class Watch(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            teardown = trainer.strategy.teardown

            def recorded():
                events.append("teardown")
                teardown()

            trainer.strategy.teardown = recorded
            pl_module.model.base_model.register_forward_hook(  # packed or padded, every forward runs the base model
                lambda *_: events.append("train" if pl_module.model.training else "eval"))

    data = write_topic_pairs(tmp_path / "pairs.jsonl", 48)
    trainer, module, scoring, sets = lightning_fit(tiny_llama_dir, data, tmp_path, [Watch()])
    assert "teardown" in events and "eval" in events
    assert events.index("teardown") > max(i for i, e in enumerate(events) if e == "eval"), events
    heldout = sets()[0]
    from rmlab.scoring import score_pairs

    assert scoring.rewards["heldout"] == score_pairs(module.model, heldout.pairs, 0 + module.model.config.pad_token_id)


def test_a_fit_resumed_from_its_final_checkpoint_still_scores(tiny_llama_dir, tmp_path):
    """The training loop is skipped (nothing left to train), yet the sets are scored with the trained weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = write_topic_pairs(tmp_path / "pairs.jsonl", 48)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _, _, first, _ = lightning_fit(tiny_llama_dir, data, tmp_path, [checkpoint])
    trainer, _, again, _ = lightning_fit(tiny_llama_dir, data, tmp_path, [], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 3 and again.rewards == first.rewards


def _score_on_rank(rank: int, world: int, store: str, model_dir: str, items: list, out: str,
                   scorer: str = "score_sequences") -> None:
    """One of two gloo ranks: score all items together (``rmlab.scoring.<scorer>``: sequences, or RewardBench 2's
    groups with ``score_groups``), count this rank's forward passes."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from transformers import AutoModelForSequenceClassification

    from rmlab import scoring

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    forwards = []
    model.base_model.register_forward_hook(lambda *_: forwards.append(1))
    rewards = getattr(scoring, scorer)(model, items, model.config.pad_token_id, batch_size=4)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rewards": rewards, "forwards": len(forwards)}))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_scoring_is_sharded_over_ranks_with_equal_forward_counts(tiny_llama_dir, tmp_path):
    """Two processes score 9 batches: 5 and 5 forwards (one repeated, for ZeRO-3's collective gathers), and
    both get every reward, equal to one process scoring them all."""
    import torch.multiprocessing as mp
    from transformers import AutoModelForSequenceClassification

    from rmlab.scoring import length_sorted_batches, score_sequences

    sequences = [[1] + [5 + (i * 7 + j) % 300 for j in range(3 + i % 11)] + [2] for i in range(36)]
    assert len(length_sorted_batches([len(s) for s in sequences], 4)) == 9
    mp.spawn(_score_on_rank, args=(2, str(tmp_path / "store"), str(tiny_llama_dir), sequences, str(tmp_path)),
             nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir).eval()
    alone = score_sequences(model, sequences, model.config.pad_token_id, batch_size=4)
    assert [r["forwards"] for r in results] == [5, 5]
    assert results[0]["rewards"] == results[1]["rewards"] == alone


def pairs_of(*subsets: str, truncated: int = 0) -> list[TokenizedPair]:
    return [TokenizedPair([1, 5 + i, 2], [1, 9, 2], subset, truncated=i < truncated) for i, subset in enumerate(subsets)]


def test_table3_row_comes_from_the_set_marked_rewardbench_whatever_its_name():
    from rmlab.evaluation import EvalSet, heldout_set, set_reports, table3_row, table3_set
    from rmlab.data.formats import RowStats

    heldout = heldout_set(pairs_of("chat", "chat"), {"Chat": ["chat"]}, RowStats())
    marked = EvalSet("rb_filtered", pairs_of("alpacaeval-easy", "hep-go", "xstest-should-respond", truncated=1),
                     rewardbench=True)
    other = EvalSet("rewardbench", pairs_of("x", "y"))  # named so, but not marked: not Table 3's source
    rewards = {"heldout": ([1.0, 1.0], [0.0, 0.0]), "rb_filtered": ([1.0, 0.0, 1.0], [0.0, 1.0, 0.0]),
               "rewardbench": ([0.0, 0.0], [1.0, 1.0])}
    reports = set_reports([heldout, marked, other], rewards)
    assert table3_set([heldout, other, marked]) == "rb_filtered" and table3_set([heldout, other]) == "heldout"
    assert table3_set([other]) is None  # eval.heldout=false and no RewardBench set: no Table 3 row
    row = table3_row(reports, "rb_filtered")
    assert row == {"Avg": pytest.approx((1.0 + 0.0 + 1.0) / 3), "Chat": 1.0, "Safety": 1.0, "Reasoning": 0.0}
    assert reports["rb_filtered"]["truncated_pairs"] == 1 and reports["heldout"]["truncated_pairs"] == 0
    assert "sections" not in reports["rewardbench"] and table3_row(reports, "rewardbench") == {}
    assert reports["rb_filtered"]["subset_weights"] == {"alpacaeval-easy": 100, "xstest-should-respond": 250,
                                                         "hep-go": 164}
    assert math.isclose(reports["heldout"]["Avg"], 1.0)


# --------------------------------------------------------------------------- python -m rmlab.evaluate
@pytest.mark.slow
def test_evaluate_cli_scores_an_export_exactly_as_its_training_run(tmp_path, tiny_llama_dir):
    """Train, then score the export with ``python -m rmlab.evaluate`` and the run's own overrides: the same
    reports, Table 3 row and rewards, to the bit."""
    import subprocess
    import sys

    import yaml

    data = write_topic_pairs(tmp_path / "pairs.jsonl", 64)
    run_dir, eval_dir = tmp_path / "run", tmp_path / "evaluated"
    overrides = ["model=hf", f"model.name_or_path={tiny_llama_dir}", "data=local", f"data.source={data}",
                 "data.max_length=48", "data.batch_size=4", "data.section_mapping={Chat:[a],Safety:[b]}",
                 "logger=none", "trainer.enable_progress_bar=false", "optimizer.optimizer.lr=1e-3",
                 "threads=1"]  # as a sweep job runs; rescoring follows it too
    trained = subprocess.run([sys.executable, "-m", "rmlab", *overrides, f"hydra.run.dir={run_dir}"],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    saved = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    again = [o for o in saved if not o.startswith(("model.name_or_path=", "hydra."))]
    evaluated = subprocess.run([sys.executable, "-m", "rmlab.evaluate", *again, "strategy=ddp",
                                f"model.name_or_path={run_dir / 'export'}", f"hydra.run.dir={eval_dir}"],
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "strategy=ddp is not used: rmlab.evaluate scores on one device" in evaluated.stdout  # said, not ignored
    train_metrics, eval_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, eval_dir))
    assert eval_metrics["eval"] == train_metrics["eval"] and eval_metrics["table3"] == train_metrics["table3"]
    assert set(train_metrics["table3"]) == {"Avg", "Chat", "Safety"}
    assert train_metrics["run"]["cpu_threads"] == eval_metrics["run"]["cpu_threads"] == 1
    assert (eval_dir / "rewards" / "heldout.jsonl").read_bytes() == (run_dir / "rewards" / "heldout.jsonl").read_bytes()
    assert not (eval_dir / "checkpoints").exists() and not (eval_dir / "export").exists()  # nothing trained


def evaluate_in_process(output_dir: Path, *overrides: str) -> dict:
    """``python -m rmlab.evaluate <overrides>`` in this process (composed and validated as its ``main`` does, on one
    thread, no logger); returns the metrics.json it wrote."""
    from hydra import compose, initialize_config_module

    from rmlab.config import validate
    from rmlab.evaluate import evaluate

    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "logger=none", "threads=1",
                                                        f"paths.output_dir={output_dir}"])
    validate(cfg, training=False)
    evaluate(cfg)
    return json.loads((output_dir / "metrics.json").read_text())


def saved_rewards(output_dir: Path, set_name: str) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "rewards" / f"{set_name}.jsonl").read_text().splitlines()]


def test_evaluate_with_eval_rewardbench_takes_table3_from_the_filtered_split(tmp_path, tiny_llama_dir):
    """``eval=rewardbench`` on a local copy of allenai/reward-bench laid out as on the hub (``data/<split>-*``
    files): only the ``filtered`` split is scored, and Table 3's row is RewardBench's official formula on the
    written rewards (per-subset accuracy, sections weighted by the official counts), not the held-out row."""
    rows = []
    for members in OFFICIAL_SUBSET_MAPPING.values():
        for index, subset in enumerate(members[::2]):  # math-prm (weight 984, not its row count) among them
            for number in range(3):  # the answers alternate sides: the subsets' accuracies differ (checked below)
                answer = f"Here is a careful answer, part {number}."
                chosen, rejected = ("No.", answer) if (index + number) % 2 else (answer, "No.")
                rows.append({"prompt": f"Question {number} from {subset}?", "chosen": chosen, "rejected": rejected,
                             "chosen_model": "gpt-4", "rejected_model": "llama-2-7b", "subset": subset,
                             "id": len(rows)})
    (tmp_path / "reward-bench" / "data").mkdir(parents=True)
    write_jsonl(tmp_path / "reward-bench" / "data" / "filtered-00000-of-00001.jsonl", rows)
    write_jsonl(tmp_path / "reward-bench" / "data" / "raw-00000-of-00001.jsonl",
                rows + [{**rows[0], "id": len(rows), "subset": "alpacaeval-easy"}])  # raw: a superset
    data = write_topic_pairs(tmp_path / "pairs.jsonl", 16)
    output_dir = tmp_path / "evaluated"
    metrics = evaluate_in_process(output_dir, "model=hf", f"model.name_or_path={tiny_llama_dir}", "eval=rewardbench",
                                  f"eval.sets.0.source={tmp_path / 'reward-bench'}", "data=local",
                                  f"data.source={data}", "data.section_mapping={Chat:[a],Safety:[b]}")
    scored = saved_rewards(output_dir, "rewardbench")
    assert [line["subset"] for line in scored] == [row["subset"] for row in rows]  # the filtered rows, in order
    outcomes: dict[str, list[bool]] = {}
    for line in scored:
        outcomes.setdefault(line["subset"], []).append(line["chosen"] > line["rejected"])
    accuracy = {subset: sum(wins) / len(wins) for subset, wins in outcomes.items()}
    expected = {}
    for section, members in OFFICIAL_SUBSET_MAPPING.items():
        present = [subset for subset in members if subset in accuracy]
        assert len({accuracy[subset] for subset in present}) > 1, section  # so the weights matter
        expected[section] = sum(OFFICIAL_EXAMPLE_COUNTS[subset] * accuracy[subset] for subset in present) / \
            sum(OFFICIAL_EXAMPLE_COUNTS[subset] for subset in present)
    assert metrics["run"]["table3_set"] == "rewardbench" and "Avg" in metrics["eval"]["heldout"]
    assert metrics["table3"] == pytest.approx({"Avg": sum(expected.values()) / 4, **expected}, rel=1e-12)
    assert metrics["eval"]["rewardbench"]["data"]["rows_used"] == len(rows)


def test_evaluate_scores_bfloat16_weights_without_the_heldout_set(tmp_path, tiny_llama_dir):
    """README's recipe for a released model, on the CPU: ``model.dtype=bfloat16 eval.heldout=false`` with one
    ``eval.sets`` entry. Every reward is a bf16 forward's output, within 2% (bf16 keeps 8 significant bits: 0.4% a
    rounding) of an fp32 transformers forward of the same conversation; the training data is neither read nor scored."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = write_topic_pairs(tmp_path / "mine.jsonl", 12)
    output_dir = tmp_path / "evaluated"
    metrics = evaluate_in_process(output_dir, "model=hf", f"model.name_or_path={tiny_llama_dir}",
                                  "model.dtype=bfloat16", "eval.heldout=false",
                                  f"eval.sets=[{{name: mine, source: {source}}}]")
    assert list(metrics["eval"]) == ["mine"] and not (output_dir / "rewards" / "heldout.jsonl").exists()
    assert metrics["data"]["rows_read"] == 0 and metrics["table3"] == {} and metrics["run"]["table3_set"] is None
    scored = saved_rewards(output_dir, "mine")
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    assert len(scored) == len(rows)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        for row, line in zip(rows, scored):
            for side in ("chosen", "rejected"):
                ids = tokenizer.apply_chat_template(row[side], tokenize=True, return_dict=True, return_tensors="pt")
                assert line[side] == float(torch.tensor(line[side]).bfloat16())  # bf16 logits, not fp32 ones
                assert line[side] == pytest.approx(model(**ids).logits.item(), rel=0.02)


@pytest.mark.parametrize("kind", ["three_labels", "no_head"])
def test_evaluate_refuses_a_model_that_is_not_a_one_label_reward_model(kind, tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from rmlab.model import build_reward_model
    from rmlab.schemas import ConfigError

    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, num_labels=3, pad_token_id=tiny_tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config) if kind == "three_labels" else LlamaForCausalLM(config)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    expected = "has a 3-label head" if kind == "three_labels" else "no sequence-classification head"
    with pytest.raises(ConfigError, match=expected):
        build_reward_model(str(tmp_path), require_head=True)
    build_reward_model(str(tmp_path))  # training may start from it: a fresh one-label head


def test_an_eval_set_scores_every_row_truncating_those_too_long(tmp_path, tiny_tokenizer):
    """RewardBench's denominator is a subset's row count: a pair whose response does not fit max_length is
    scored truncated (its end and the reward token kept) and counted, never dropped."""
    from omegaconf import OmegaConf

    from rmlab.data.tokenize import PairTokenizer, reward_chat_template
    from rmlab.evaluation import load_eval_sets
    from rmlab.schemas import EvalSetConfig

    rows = [{"prompt": f"question {i}", "chosen": ("a long answer " * 40) if i % 3 == 0 else f"answer {i}",
             "rejected": f"no {i}", "subset": "s"} for i in range(9)]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pair_tokenizer = PairTokenizer(tiny_tokenizer, reward_chat_template(tiny_tokenizer), 48)
    config = OmegaConf.structured(EvalSetConfig(name="mine", source=str(path)))
    (eval_set,) = load_eval_sets([config], pair_tokenizer)
    assert len(eval_set.pairs) == 9 and eval_set.data["rows_used"] == 9 and eval_set.data["rows_skipped"] == 0
    assert eval_set.truncated_pairs == 3
    for pair in eval_set.pairs:
        assert len(pair.chosen_ids) <= 48 and pair.chosen_ids[-1] == pair_tokenizer.end_token_id


def test_an_eval_set_read_from_several_files_samples_each_subset_and_counts_the_rest(tmp_path, tiny_tokenizer):
    """A benchmark rebuilt from several files is one set; ``per_subset`` keeps a seeded sample of each subset (the
    same pairs in every run), in file order, and counts the others as skipped: rows read = used + skipped."""
    from test_config import compose_config

    from rmlab.config import validate
    from rmlab.data.tokenize import PairTokenizer, reward_chat_template
    from rmlab.evaluation import load_eval_sets

    def write(name: str, subsets: dict) -> str:
        rows = [{"prompt": f"{subset} {i}", "chosen": "yes", "rejected": "no", "subset": subset}
                for subset, count in subsets.items() for i in range(count)]
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(tmp_path / name)

    files = [write("a.jsonl", {"big": 30, "small": 2}), write("b.jsonl", {"other": 12})]
    pair_tokenizer = PairTokenizer(tiny_tokenizer, reward_chat_template(tiny_tokenizer), 48)

    def load(seed: int):
        cfg = compose_config(f"eval.sets=[{{name: rb, source: [{files[0]}, {files[1]}], per_subset: 10, "
                             f"sample_seed: {seed}}}]")
        validate(cfg)
        (eval_set,) = load_eval_sets(cfg.eval.sets, pair_tokenizer)
        return eval_set

    eval_set = load(0)
    counts = {s: sum(p.subset == s for p in eval_set.pairs) for s in ("big", "small", "other")}
    assert counts == {"big": 10, "small": 2, "other": 10}
    assert eval_set.data == {"rows_read": 44, "rows_used": 22, "rows_skipped": 22,
                             "skipped_by_reason": {"beyond the per-subset sample (per_subset=10)": 22}}
    order = [p.subset for p in eval_set.pairs]
    assert order == sorted(order, key=["big", "small", "other"].index)  # file order kept
    assert [p.chosen_ids for p in load(0).pairs] == [p.chosen_ids for p in eval_set.pairs]
    assert [p.chosen_ids for p in load(1).pairs] != [p.chosen_ids for p in eval_set.pairs]  # another sample
