"""Experiment loggers. W&B goes offline by itself when no API key is configured, so a run never prompts."""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse


SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
SECRET_KEY = re.compile(r"(api_?key|access_token|auth_token|hf_token|^token|secret|password|passwd)$", re.IGNORECASE)


def redact_secrets(value: Any) -> Any:
    """Replace secrets in a config tree: values of secret-looking keys, and any string holding the value
    of a secret-looking environment variable (WANDB_API_KEY, HF_TOKEN, ...)."""
    secrets = [v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 6]

    def scrub(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: scrub(v, str(k)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [scrub(v, key) for v in node]
        if isinstance(node, str) and (SECRET_KEY.search(key) and node or any(s in node for s in secrets)):
            return "***"
        return node

    return scrub(value)


def wandb_credentials_present() -> bool:
    """True when WANDB_API_KEY is set or ~/.netrc holds a key for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: Optional[str]) -> str:
    """The config's mode, else WANDB_MODE, else online with credentials and offline without."""
    return mode or os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_present() else "offline")


def wandb_logger(project: str, save_dir: str, entity: Optional[str] = None, name: Optional[str] = None,
                 group: Optional[str] = None, tags: Optional[list[str]] = None, mode: Optional[str] = None) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    resolved = resolve_wandb_mode(mode)
    return WandbLogger(project=project, entity=entity, name=name, group=group, tags=list(tags or []),
                       save_dir=save_dir, mode=resolved, offline=resolved == "offline", log_model=False)


def finish_logger(logger: Any, summary: dict[str, Any]) -> None:
    """Write the final metrics (W&B: into the run summary, Table 3 columns as keys) and close the run."""
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "summary"):
        experiment.summary.update(summary)
        logger.finalize("success")
        experiment.finish()
    else:
        logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        logger.finalize("success")
