"""Config errors and the range checks that raise them: the one place every schema (``rmlab.schemas``, the losses'
``rmlab.loss_params``, the data tools' ``rmlab.data.recipe.config``) takes them from. Standard library only."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value is out of range; the message names the key and the fix."""


def check(condition: bool, key: str, rule: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid: {rule}. Fix it on the command line, e.g. {key}=<value>.")


FILE_SUFFIXES = (".jsonl", ".json", ".parquet")  # rmlab.data.formats reads these itself; anything else: datasets


def check_source(source: Any, key: str) -> None:
    """A source that names a data file must exist (a directory or hub id is checked when it loads)."""
    if isinstance(source, str) and source.lower().endswith(FILE_SUFFIXES):
        check(Path(source).expanduser().is_file(), key, "no such file (relative paths start at the directory you "
              "run from); point it at an existing .jsonl/.json/.parquet file, a dataset directory or a hub id", source)
