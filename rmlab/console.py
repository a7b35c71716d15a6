"""What a run prints: one line per message, rmlab's own through the ``rmlab`` logger, no third-party noise.

Hydra's job logging (``conf/hydra/default.yaml``) sends every logger to the console (message only) and
to ``<run dir>/rmlab.log`` (with time and logger name). :func:`quiet_third_party` makes the libraries
fit that: Lightning's own console handler goes (its lines came twice), and warnings and tips that tell
a user nothing about the run are dropped. :class:`ProgressBar` shows the epoch as 1 of N, the running
mean of the epoch's training loss and accuracy, and no logger version.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar

QUIET_WARNINGS = (  # (message regex, category): third-party warnings with nothing to act on
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*", Warning),  # Lightning's own _pytree use
    (r"The anonymous setting has no effect.*", Warning),  # W&B, for a setting Lightning always passes
    (r"`is_gradient_checkpointing` is deprecated.*", FutureWarning),  # peft's call into transformers
)


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_third_party() -> None:
    """Idempotent: Lightning logs only through the root (Hydra's) handlers, minus its product tips; known
    library warnings are dropped; DeepSpeed (imported by accelerate at export) is told it is on a CPU
    machine rather than guessing it with a warning."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lightning_logger = logging.getLogger(name)
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
        lightning_logger.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLightningTips())
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


class ProgressBar(RichProgressBar):
    """Lightning's rich bar: "Epoch 1/2", the epoch's running mean loss and accuracy, no ``v_num``.

    Written to a file or a pipe (not a terminal), rich would assume 80 columns and wrap the accuracy onto a line
    of its own; there the bar gets 120."""

    def __init__(self) -> None:
        super().__init__(console_kwargs=None if sys.stdout.isatty() else {"width": 120})

    def _get_train_description(self, current_epoch: int) -> str:
        total = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else "?"
        description = f"Epoch {current_epoch + 1}/{total}"
        return f"{description:{len(self.validation_description)}}"

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
