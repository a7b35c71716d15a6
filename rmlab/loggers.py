"""Experiment loggers. W&B goes offline by itself when no API key is configured, so a run never prompts."""

from __future__ import annotations

import logging
import netrc
import os
import re
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse


log = logging.getLogger(__name__)
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
    """Lightning's WandbLogger in the resolved mode; W&B's own console lines are silenced and rmlab says
    in one line where the run is (and how to upload it, offline)."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    resolved = resolve_wandb_mode(mode)
    logger = WandbLogger(project=project, entity=entity, name=name, group=group, tags=list(tags or []),
                         save_dir=save_dir, mode=resolved, offline=resolved == "offline", log_model=False,
                         settings=wandb.Settings(silent=True))
    logger._wandb_init.pop("anonymous", None)  # Lightning always passes it, and W&B warns that it does nothing
    if resolved == "offline":
        log.info(f"W&B: offline run in {save_dir}/wandb (upload it with: wandb sync {save_dir}/wandb/offline-run-*)")
    elif resolved == "online":
        log.info(f"W&B: online run in project {entity + '/' if entity else ''}{project}")
    return logger


def finish_logger(logger: Any, summary: dict[str, Any], failed: bool = False) -> None:
    """Write the final metrics (W&B: into the run summary, Table 3 columns as keys) and close the run; a
    failed run is closed as failed (W&B exit code 1)."""
    started = getattr(logger, "_experiment", True) is not None  # a failed run may have failed before W&B started
    experiment = getattr(logger, "experiment", None) if started else None
    if hasattr(experiment, "summary"):
        experiment.summary.update(summary)
        logger.finalize("failed" if failed else "success")
        experiment.finish(exit_code=1 if failed else 0)
        return
    if not failed:
        logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    logger.finalize("failed" if failed else "success")
