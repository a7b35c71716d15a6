"""The reward model: a Hugging Face ``AutoModelForSequenceClassification`` with ``num_labels=1``.

* Decoders (Llama, Gemma, Qwen, ...) read the reward at the last non-pad token, the token that closes
  the rendered conversation (:mod:`rmlab.data.tokenize`). rmlab keeps the pad token distinct from EOS so
  that rule finds it with left or right padding: a pad token the tokenizer already ships
  (``<|finetune_right_pad_id|>`` in Llama-3.x, ``<|fim_pad|>`` in Qwen2.5, ...), else UNK, else a new
  ``<|pad|>`` token. The embeddings are resized only when the tokenizer outgrows them, never shrunk
  (Qwen2.5's embedding has more rows than its tokenizer has tokens).
* Encoders (BERT family) pool their [CLS] token through the classifier; batches are right-padded.
* The reward head is freshly initialized under the run's seed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from rmlab.data.tokenize import reward_chat_template
from rmlab.schemas import ConfigError

log = logging.getLogger(__name__)
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "albert",
                 "mpnet", "modernbert", "camembert", "ernie"}
HEAD_MODULES = ("score", "classifier")  # the reward head of decoders / encoders
PAD_TOKEN = "<|pad|>"
SHIPPED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|fim_pad|>", "<pad>", "[PAD]", "<|pad|>", "<|padding|>")


@dataclass
class RewardModelBundle:
    model: Any  # PreTrainedModel (None until load_model() when deferred)
    tokenizer: Any  # PreTrainedTokenizerBase
    chat_template: str
    is_encoder: bool
    load_model: Callable[[], Any]  # the model with its pretrained weights
    empty_model: Callable[[], Any]  # the same model on the meta device: no weights read or initialized

    def model_from_state_dict(self, state_dict: dict[str, Any]) -> Any:
        """A plain model holding ``state_dict`` (e.g. a ZeRO-3 run's consolidated weights), for the export."""
        model = self.empty_model()
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model


def is_encoder_config(config: Any, architecture: str = "auto") -> bool:
    if architecture != "auto":
        return architecture == "encoder"
    return config.model_type in ENCODER_TYPES


def ensure_distinct_pad(tokenizer: Any) -> bool:
    """Give the tokenizer a pad token that is not EOS (nor BOS): one it ships (:data:`SHIPPED_PAD_TOKENS`),
    else UNK, else a new :data:`PAD_TOKEN`; returns True when a new token was added."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in (tokenizer.eos_token_id, None):
        return False
    taken = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    vocab = tokenizer.get_vocab()
    for candidate in (*SHIPPED_PAD_TOKENS, tokenizer.unk_token):
        if candidate is not None and vocab.get(candidate) is not None and vocab[candidate] not in taken:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return True


def set_dropout_probabilities(config: Any, probability: float) -> None:
    """Every dropout probability of a transformers config (``*dropout*``, ``*pdrop*``: hidden, attention,
    classifier, ...), of its text config too, set to ``probability``; ones left unset (None) stay unset."""
    for part in {id(c): c for c in (config, getattr(config, "get_text_config", lambda: config)())}.values():
        for key, value in part.to_dict().items():
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
                setattr(part, key, probability)


def resolve_attention(requested: Optional[str]) -> Optional[str]:
    """``"flash_attention_2|<fallback>"`` picks flash-attention 2 when the package is installed."""
    if requested and "|" in requested:
        preferred, fallback = requested.split("|", 1)
        return preferred if importlib.util.find_spec("flash_attn") else fallback
    return requested


def check_reward_head(name_or_path: str, trust_remote_code: bool = False) -> None:
    """Refuse a checkpoint that is not a reward model: no sequence-classification head, or not one label."""
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    architectures = config.architectures or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        found = ", ".join(architectures) or "no architectures in its config"
        raise ConfigError(f"model.name_or_path={name_or_path} has no sequence-classification head ({found}): it is "
                         "not a reward model. Fix: score an rmlab export or any AutoModelForSequenceClassification "
                         "checkpoint with one label (train one with python -m rmlab).")
    if config.num_labels != 1:
        raise ConfigError(f"model.name_or_path={name_or_path} has a {config.num_labels}-label head; a reward model "
                         "gives one score per conversation. Fix: use a checkpoint with num_labels=1.")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bar or load report from transformers while a model loads (rmlab says what matters)."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def loading_errors(name_or_path: str) -> Iterator[None]:
    """A checkpoint that cannot be found or read (no such directory, an unknown or gated hub id, no network)
    becomes a ConfigError naming ``model.name_or_path`` and the fix, instead of transformers' traceback."""
    try:
        yield
    except OSError as err:
        first_line = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(f"model.name_or_path={name_or_path}: cannot load it ({first_line}). Fix: check the local "
                          "directory or hub id, your network and HF_TOKEN (gated models), or pass a local "
                          "directory (hub ids load only with a network or from the local cache).") from err


def build_reward_model(name_or_path: str, tokenizer: Optional[str] = None, architecture: str = "auto",
                       chat_template: Optional[str] = None, trust_remote_code: bool = False,
                       attn_implementation: Optional[str] = None, gradient_checkpointing: bool = False,
                       dropout: Optional[float] = None, disable_dropout: bool = False, dtype: str = "float32",
                       arch_config: Optional[str] = None,
                       lora: Optional[dict] = None, defer_model: bool = False,
                       require_head: bool = False) -> RewardModelBundle:
    """Load tokenizer and model (a fresh 1-unit head unless the checkpoint has one); fix pad token and template.

    ``defer_model`` leaves ``bundle.model`` None and ``bundle.load_model`` to be called later, e.g. in
    ``LightningModule.configure_model`` under ZeRO-3, so weights load straight into partitions.
    ``require_head`` (scoring a trained model) refuses a checkpoint without a one-label head.
    ``arch_config`` (a config.json used by plan mode) is not needed here. ``disable_dropout`` zeroes every dropout
    probability of the config (attention dropout included) and every dropout module's ``p`` (LoRA's own dropout,
    added later, keeps ``lora["dropout"]``); else ``dropout`` (when set) replaces the config's probabilities.
    """
    with loading_errors(name_or_path):
        if require_head:
            check_reward_head(name_or_path, trust_remote_code)
        tok = AutoTokenizer.from_pretrained(tokenizer or name_or_path, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, num_labels=1)
    encoder = is_encoder_config(config, architecture)
    added_pad = ensure_distinct_pad(tok)
    tok.padding_side = "right"
    config.pad_token_id = None if added_pad else tok.pad_token_id  # a new pad id exists only after the resize
    if disable_dropout or dropout is not None:
        set_dropout_probabilities(config, 0.0 if disable_dropout else dropout)
    attention = resolve_attention(attn_implementation)

    kwargs = {"attn_implementation": attention} if attention else {}

    def finish(model: Any) -> Any:
        if len(tok) > model.get_input_embeddings().num_embeddings:  # grow for an added pad token; never shrink
            model.resize_token_embeddings(len(tok))
        model.config.pad_token_id = tok.pad_token_id
        if disable_dropout:
            for module in model.modules():
                if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                    module.p = 0.0
        model.train()  # from_pretrained returns eval mode; Lightning keeps the mode it finds
        if gradient_checkpointing and hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return with_lora(model, lora) if lora and lora.get("enabled") else model

    def load_model() -> Any:
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, config=config, trust_remote_code=trust_remote_code, dtype=getattr(torch, dtype),
                output_loading_info=True, ignore_mismatched_sizes=not require_head, **kwargs)
        replaced = [entry[0] if isinstance(entry, (tuple, list)) else entry for entry in info["mismatched_keys"]]
        new_head = sorted(key for key in [*info["missing_keys"], *replaced] if key.split(".")[0] in HEAD_MODULES)
        if new_head:
            log.info(f"reward head: new ({', '.join(new_head)}), initialized with seed {torch.initial_seed()}")
        return finish(model)

    def empty_model() -> Any:
        with torch.device("meta"):
            return finish(AutoModelForSequenceClassification.from_config(
                config, trust_remote_code=trust_remote_code, dtype=getattr(torch, dtype), **kwargs))

    template = reward_chat_template(tok, chat_template)
    return RewardModelBundle(None if defer_model else load_model(), tok, template, encoder, load_model, empty_model)


def with_lora(model: Any, lora: dict) -> Any:
    """Wrap ``model`` with peft LoRA adapters; the sequence-classification head stays fully trainable."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora["r"], lora_alpha=lora["alpha"],
                        lora_dropout=lora["dropout"], target_modules=lora["target_modules"])
    return get_peft_model(model, config)


def export_reward_model(bundle: RewardModelBundle, directory: str | Path) -> Path:
    """``save_pretrained`` the model (LoRA merged in) and the tokenizer, with the chat template rmlab used."""
    directory = Path(directory)
    bundle.tokenizer.chat_template = bundle.chat_template
    model = bundle.model
    if hasattr(model, "merge_and_unload"):  # a peft model: export plain weights that transformers loads
        model = model.merge_and_unload()
        bundle.model = model
    with quiet_transformers():
        model.save_pretrained(directory)
    bundle.tokenizer.save_pretrained(directory)
    return directory
