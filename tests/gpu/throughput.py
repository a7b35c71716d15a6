"""Training throughput on one GPU (tests/gpu/device_run.sh runs it after tests/gpu):

* rmlab's loop (``trainer=gpu``: bf16-mixed, fused AdamW) on a ~0.5B Llama-architecture reward model built from a
  config with random weights, on synthetic pairs of varied lengths, packed and padded: real tokens/s and MFU, the
  model FLOPs of the real tokens (``6 N T`` plus causal attention ``6 d Σ L²`` per layer) per second against the
  H200's dense bf16 peak (989 TFLOP/s);
* the packed attention alone (forward + backward of every layer's shapes on one packed row): the variable-length
  kernel rmlab runs on CUDA against one sdpa call on the block-diagonal causal mask and the per-sequence loop;
* TRL's RewardTrainer at its best (length-grouped, no activation checkpointing, bf16) on the same token ids, when
  the image has what it needs (the kit carries TRL but not pyarrow and pandas).

``--tiny`` runs a 2-layer model for a few steps on whatever device there is (the dry run's check in CI).
Results: ``--out`` (JSON) and one line per measurement on stdout.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TESTS_DIR = Path(__file__).resolve().parents[1]
H200_BF16_DENSE_FLOPS = 989e12
FULL = {"hidden_size": 1024, "intermediate_size": 5120, "num_hidden_layers": 24, "num_attention_heads": 16,
        "num_key_value_heads": 8, "pairs": 768, "pairs_per_step": 8, "max_length": 1024, "warmup_steps": 8}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "pairs": 48, "pairs_per_step": 4, "max_length": 128, "warmup_steps": 2}


def build_model_dir(size: dict[str, Any], directory: Path) -> Path:
    """A random Llama reward model with tests/conftest.py's offline tokenizer (400 tokens; ids fit any vocab)."""
    sys.path.insert(0, str(TESTS_DIR))
    from conftest import build_tiny_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
                         **{k: v for k, v in size.items() if k in LlamaConfig().to_dict()})
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def synthetic_pairs(count: int, max_length: int, seed: int = 0) -> list:
    """Pairs whose sequences run from 32 tokens to ``max_length`` (log-normal, median about a third of it), like
    preference data: a shared prompt, two answers of different lengths."""
    from rmlab.data.formats import PreferencePair

    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dog answer question helpful assistant number".split()

    def text(tokens: int) -> str:  # the tokenizer makes about one token of 3 characters
        return " ".join(rng.choice(words) for _ in range(max(1, tokens * 3 // 5)))

    def length() -> int:
        return int(min(max(32, rng.lognormvariate(math.log(max_length / 3), 0.6)), max_length - 16))

    pairs = []
    for index in range(count):
        prompt = [{"role": "user", "content": f"{index}: " + text(length() // 3)}]
        pairs.append(PreferencePair(prompt + [{"role": "assistant", "content": text(length() // 2)}],
                                    prompt + [{"role": "assistant", "content": text(length() // 3)}]))
    return pairs


def model_flops(config: Any, lengths: list[int]) -> float:
    """Training FLOPs of sequences of ``lengths`` real tokens: 6 N T (N: non-embedding parameters) plus causal
    attention's score and value products, forward and backward (6 · d · L² per layer and sequence)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv = hidden * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config.intermediate_size
    return 6 * layers * per_layer * sum(lengths) + 6 * layers * hidden * sum(n * n for n in lengths)


def train(model_dir: Path, pairs: list, size: dict[str, Any], packing: str, steps: int, device: str) -> dict[str, Any]:
    """rmlab's loop for ``steps`` optimizer steps; the clock runs from the end of warm-up to the last step."""
    import lightning.pytorch as pl

    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.data.formats import RowStats
    from rmlab.data.tokenize import PairTokenizer
    from rmlab.losses import BradleyTerryLoss
    from rmlab.model import build_reward_model
    from rmlab.module import RewardModule

    bundle = build_reward_model(str(model_dir), attn_implementation="sdpa", dropout=0.0)
    datamodule = PreferenceDataModule(lambda: (pairs, RowStats(rows_read=len(pairs), rows_used=len(pairs))),
                                      PairTokenizer(bundle.tokenizer, bundle.chat_template, size["max_length"]),
                                      val_fraction=0.0, batch_size=size["pairs_per_step"], eval_batch_size=16, seed=0,
                                      tokenized_cache=False)
    module = RewardModule(bundle.model, BradleyTerryLoss(), functools.partial(torch.optim.AdamW, lr=1e-5),
                          packing=packing)
    lengths: list[int] = []

    class Clock(pl.Callback):
        started = tokens_at_start = None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == size["warmup_steps"]:
                torch.cuda.synchronize() if device == "cuda" else None
                self.started, self.tokens_at_start = time.perf_counter(), pl_module.tokens_real
            if batch_idx >= size["warmup_steps"]:
                mask = batch.get("attention_mask")
                lengths.extend(batch["segment_lengths"] if "segment_lengths" in batch else mask.sum(1).tolist())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            torch.cuda.synchronize() if device == "cuda" else None
            self.seconds = time.perf_counter() - self.started

    clock = Clock()
    trainer = pl.Trainer(accelerator=device, devices=1, precision="bf16-mixed" if device == "cuda" else "32-true",
                         max_steps=size["warmup_steps"] + steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                         use_distributed_sampler=False, callbacks=[clock])
    trainer.fit(module, datamodule=datamodule)
    real = module.tokens_real - clock.tokens_at_start
    flops = model_flops(bundle.model.config, lengths)
    return {"packing": packing, "steps": steps, "seconds": clock.seconds, "real_tokens_per_s": real / clock.seconds,
            "model_tflops_per_s": flops / clock.seconds / 1e12,
            "mfu": flops / clock.seconds / H200_BF16_DENSE_FLOPS if device == "cuda" else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def attention_kernels(size: dict[str, Any], lengths: list[int], device: str, repeats: int) -> dict[str, Any]:
    """Forward + backward time of one layer's attention over a packed row of ``lengths``, three ways."""
    from rmlab.packing import installed_varlen_kernel, segment_attention

    heads, kv_heads = size["num_attention_heads"], size["num_key_value_heads"]
    head_dim, total = size["hidden_size"] // heads, sum(lengths)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, total, head_dim, device=device, dtype=dtype, generator=generator, requires_grad=True)
    k, v = (torch.randn(1, kv_heads, total, head_dim, device=device, dtype=dtype, generator=generator,
                        requires_grad=True) for _ in range(2))
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    position = torch.arange(total, device=device)
    block_mask = (segment[:, None] == segment[None, :]) & (position[:, None] >= position[None, :])
    module = type("Attention", (), {"is_causal": True})()
    kernel, kernel_name = installed_varlen_kernel()
    ways = {"per-sequence sdpa loop": lambda: segment_attention(module, q, k, v, None, segment_lengths=lengths)[0],
            "one sdpa call, block-diagonal mask": lambda: torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=block_mask, enable_gqa=True).transpose(1, 2)}
    if kernel is not None and device == "cuda":
        ways[f"varlen kernel ({kernel_name})"] = lambda: kernel(
            *(t[0].transpose(0, 1) for t in (q, k, v)), cu_seqlens, max(lengths), True, None, 0.0).unsqueeze(0)
    results, reference = {}, None
    for name, run in ways.items():
        out = run()
        reference = out.detach().float() if reference is None else reference
        timings = []
        for _ in range(repeats):
            torch.cuda.synchronize() if device == "cuda" else None
            started = time.perf_counter()
            run().float().sum().backward()
            torch.cuda.synchronize() if device == "cuda" else None
            timings.append(time.perf_counter() - started)
        results[name] = {"ms": 1e3 * sorted(timings)[len(timings) // 2],
                         "max_abs_diff_vs_loop": (out.detach().float() - reference).abs().max().item()}
    return {"tokens": total, "sequences": len(lengths), "dtype": str(dtype), **results}


def trl_best(model_dir: Path, pairs: list, size: dict[str, Any], steps: int, device: str) -> dict[str, Any]:
    """TRL's RewardTrainer at its best on the same token ids (rmlab's chat template), timed after warm-up."""
    missing = [name for name in ("trl", "datasets", "pyarrow", "pandas") if importlib.util.find_spec(name) is None]
    if missing:
        return {"skipped": f"not installed here: {', '.join(missing)}"}
    import transformers
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from rmlab.data.tokenize import PairTokenizer, reward_chat_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pair_tokenizer = PairTokenizer(tokenizer, reward_chat_template(tokenizer), size["max_length"])
    tokenized = [pair_tokenizer(pair) for pair in pairs]
    dataset = Dataset.from_dict({"chosen_ids": [p.chosen_ids for p in tokenized],
                                 "rejected_ids": [p.rejected_ids for p in tokenized],
                                 "length": [max(len(p.chosen_ids), len(p.rejected_ids)) for p in tokenized]})

    class Clock(transformers.TrainerCallback):
        started = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == size["warmup_steps"]:
                torch.cuda.synchronize() if device == "cuda" else None
                self.started = time.perf_counter()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            torch.cuda.synchronize() if device == "cuda" else None
            self.seconds = time.perf_counter() - self.started

    clock = Clock()
    args = RewardConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=size["pairs_per_step"],
                        learning_rate=1e-5, max_steps=size["warmup_steps"] + steps, max_length=size["max_length"],
                        bf16=device == "cuda", use_cpu=device != "cuda", report_to="none", save_strategy="no",
                        disable_tqdm=True, seed=0, train_sampling_strategy="group_by_length",
                        activation_checkpointing=False, remove_unused_columns=False)
    counted = {"real": 0}
    trainer = RewardTrainer(model=str(model_dir), args=args, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[clock])
    collate = trainer.data_collator

    def counting(examples: list) -> dict:
        batch = collate(examples)
        counted["real"] += int(batch["attention_mask"].sum()) if clock.started is not None else 0
        return batch

    trainer.data_collator = counting
    trainer.train()
    return {"steps": steps, "seconds": clock.seconds, "real_tokens_per_s": counted["real"] / clock.seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=80, help="timed optimizer steps per configuration")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, a few steps (the dry run)")
    args = parser.parse_args()
    size, steps = (TINY, 3) if args.tiny else (FULL, args.steps)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                               "torch": torch.__version__, "size": size}
    model_dir = build_model_dir(size, Path(tempfile.mkdtemp(prefix="rmlab-throughput-")))
    pairs = synthetic_pairs(size["pairs"], size["max_length"])
    for packing in ("auto", "off"):
        results[f"rmlab_{'packed' if packing == 'auto' else 'padded'}"] = row = train(
            model_dir, pairs, size, packing, steps, device)
        print(f"THROUGHPUT rmlab {row['packing']}: {row['real_tokens_per_s']:.0f} real tokens/s, "
              f"{row['model_tflops_per_s']:.1f} TFLOP/s, MFU {row['mfu']}", flush=True)
    lengths = [min(size["max_length"], 32 + (97 * i) % size["max_length"]) for i in range(2 * size["pairs_per_step"])]
    results["attention"] = attention_kernels(size, lengths, device, repeats=3 if args.tiny else 20)
    print(f"THROUGHPUT attention: {json.dumps(results['attention'])}", flush=True)
    results["trl_best"] = trl_best(model_dir, pairs, size, steps, device)
    print(f"THROUGHPUT trl best: {json.dumps(results['trl_best'])}", flush=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
