"""Row layouts → :class:`PreferencePair`, with every skipped row counted by reason.

Layouts (``data.layout``; ``auto`` picks per row):

* ``messages``: ``chosen`` / ``rejected`` are lists of ``{role, content}`` that include the prompt
  turns (Skywork-Reward-Preference-80K). Multi-turn conversations are kept whole.
* ``prompt_response``: ``prompt`` (a string or a message list), ``chosen`` / ``rejected`` (a string
  or a message list with the final assistant turn), as in TRL's preference format.
* ``hh``: Anthropic hh-rlhf transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, either full
  ``chosen`` / ``rejected`` transcripts or a ``prompt`` transcript with final-turn strings.

Sources: local ``.jsonl`` / ``.json`` / ``.parquet`` files (read here, so errors name the line),
or anything :func:`datasets.load_dataset` accepts (a hub id or a local dataset directory).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
LAYOUTS = ("auto", "messages", "prompt_response", "hh")  # data.layout, eval.sets[*].layout, tool inputs
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


class DataError(ValueError):
    """Bad input data; the message names the file and row (or line) and the fix."""


class BadRow(ValueError):
    """A row that cannot be used; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class PreferencePair:
    chosen: list[Message]  # prompt turns + the chosen final assistant turn
    rejected: list[Message]  # the same prompt turns + the rejected final assistant turn
    subset: str = "default"
    margin: Optional[float] = None

    @property
    def prompt(self) -> list[Message]:
        return self.chosen[:-1]


@dataclass
class RowStats:
    """rows_read == rows_used + sum(skipped.values()), always."""

    rows_read: int = 0
    rows_used: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] += count
        self.rows_used -= count

    def as_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "rows_used": self.rows_used,
                "rows_skipped": sum(self.skipped.values()), "skipped_by_reason": dict(sorted(self.skipped.items()))}


# --------------------------------------------------------------------------- reading rows
def read_rows(source: str | Sequence[dict], split: str = "train", subset_name: Optional[str] = None,
              max_rows: Optional[int] = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)``: location is ``file:line`` or ``source[row]``; invalid JSON yields a BadRow.

    ``source`` may also be rows already in memory (e.g. the embedded dataset)."""
    if not isinstance(source, str):
        yield from ((f"rows[{index}]", row) for index, row in enumerate(source[:max_rows]))
        return
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet") or path.is_file():
        if not path.is_file():
            raise DataError(f"{source}: no such file. Fix: point data.source at an existing "
                            ".jsonl/.json/.parquet file, a dataset directory or a hub id.")
        rows: Iterable[tuple[str, Any]] = _read_file(path, suffix)
    else:
        rows = _read_hub(source, split, subset_name)
    for index, item in enumerate(rows):
        if max_rows is not None and index >= max_rows:
            return
        yield item


def _read_file(path: Path, suffix: str) -> Iterator[tuple[str, Any]]:
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            for index, row in enumerate(pq.read_table(path).to_pylist()):
                yield f"{path}[row {index}]", row
            return
        with path.open(encoding="utf-8") as handle:
            if suffix == ".json":
                data = json.load(handle)
                if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
                    data = next((v for v in data.values() if isinstance(v, list)), None)
                if not isinstance(data, list):
                    raise DataError(f"{path}: expected a JSON list of rows (or JSON Lines in a .jsonl file).")
                for index, row in enumerate(data):
                    yield f"{path}[row {index}]", row
                return
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"{path}:{number}", BadRow("invalid_json", f"{err.msg} at column {err.colno}")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err}). Fix: check the file's permissions and that it is UTF-8.") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} ({err.msg}). "
                        "Fix: repair the file, or save it as JSON Lines (.jsonl) so bad lines can be skipped.") from err
    except Exception as err:  # pyarrow errors
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: cannot read as {suffix} ({err}). Fix: check the file format.") from err


def _read_hub(source: str, split: str, subset_name: Optional[str]) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(source, subset_name, split=split)
    except Exception as err:
        raise DataError(f"{source}: cannot load with datasets.load_dataset (split={split!r}): {err}. Fix: check "
                        "data.source / data.split, your network and HF_TOKEN, or download it and pass a local file.") from err
    for index, row in enumerate(dataset):
        yield f"{source}[{split} row {index}]", row


# --------------------------------------------------------------------------- rows → pairs
def to_pair(row: Any, layout: str = "auto", subset_key: str = "subset", margin_key: Optional[str] = None,
            default_subset: str = "default") -> PreferencePair:
    """Convert one row to a validated pair, or raise :class:`BadRow`."""
    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, dict):
        raise BadRow("not_an_object", f"expected a JSON object, got {type(row).__name__}")
    layout = _detect_layout(row) if layout == "auto" else layout
    for key in ("chosen", "rejected") + (("prompt",) if layout == "prompt_response" else ()):
        if row.get(key) is None:
            raise BadRow("missing_key", f"no {key!r} (layout {layout})")
    if layout == "messages":
        chosen, rejected = _messages(row["chosen"], "chosen"), _messages(row["rejected"], "rejected")
    elif layout == "hh":
        if row.get("prompt") is not None:  # a prompt transcript + the final turns as plain strings
            prompt = _hh_turns(row["prompt"])
            chosen = prompt + _as_reply(_stripped(row["chosen"]), "chosen")
            rejected = prompt + _as_reply(_stripped(row["rejected"]), "rejected")
        else:  # full transcripts
            chosen, rejected = _hh_turns(row["chosen"]), _hh_turns(row["rejected"])
    else:
        prompt = as_prompt(row["prompt"])
        chosen = prompt + _as_reply(row["chosen"], "chosen")
        rejected = prompt + _as_reply(row["rejected"], "rejected")
    for conversation in (chosen, rejected):
        _check_turns(conversation)
    if chosen[:-1] != rejected[:-1]:
        raise BadRow("prompt_mismatch", "the prompt turns of chosen and rejected differ")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise BadRow("identical_responses", "chosen and rejected responses are identical")
    subset = row.get(subset_key)
    margin = row.get(margin_key) if margin_key else None
    if margin_key and not isinstance(margin, (int, float)):
        raise BadRow("bad_margin", f"{margin_key!r} must be a number, got {margin!r}")
    return PreferencePair(chosen, rejected, str(subset) if subset not in (None, "") else default_subset,
                          None if margin is None else float(margin))


def _detect_layout(row: dict) -> str:
    if "prompt" not in row and isinstance(row.get("chosen"), list):
        return "messages"
    transcript = row.get("prompt") if "prompt" in row else row.get("chosen")
    if isinstance(transcript, str) and transcript.lstrip("\n").startswith("Human:"):
        return "hh"
    return "prompt_response"


def _messages(value: Any, key: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise BadRow("bad_messages", f"{key!r} must be a non-empty list of {{role, content}} messages")
    messages = []
    for turn in value:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise BadRow("bad_messages", f"{key!r} has a message without role/content: {str(turn)[:80]}")
        messages.append({"role": turn["role"], "content": turn["content"]})
    return messages


def as_prompt(value: Any) -> list[Message]:
    if isinstance(value, list):
        return _messages(value, "prompt")
    return [{"role": "user", "content": value}]


def _as_reply(value: Any, key: str) -> list[Message]:
    if isinstance(value, list):
        messages = _messages(value, key)
        if len(messages) != 1:
            raise BadRow("bad_messages", f"{key!r} must hold exactly the final assistant turn")
        return messages
    return [{"role": "assistant", "content": value}]


def _stripped(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _hh_turns(text: Any) -> list[Message]:
    """Split an hh-rlhf transcript ``"\n\nHuman: ...\n\nAssistant: ..."`` into messages."""
    if not isinstance(text, str):
        raise BadRow("non_string_content", f"hh transcript must be a string, got {type(text).__name__}")
    parts = _HH_TURN.split(text.lstrip("\n"))
    if len(parts) < 3 or parts[0].strip():
        raise BadRow("bad_transcript", "a transcript must start with 'Human:' and hold '\\n\\nAssistant:' turns")
    turns = [{"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
             for speaker, content in zip(parts[1::2], parts[2::2])]
    if len(turns) > 1 and turns[-1]["role"] == "assistant" and not turns[-1]["content"] and text.rstrip(" ").endswith(":"):
        turns.pop()  # a prompt transcript ends with an empty "Assistant:" cue
    return turns


def _check_turns(conversation: list[Message]) -> None:
    for turn in conversation:
        if turn["role"] not in ROLES:
            raise BadRow("unknown_role", f"role {turn['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(turn["content"], str):
            raise BadRow("non_string_content", f"content must be a string, got {type(turn['content']).__name__}")
        if not turn["content"].strip():
            raise BadRow("empty_content", f"empty {turn['role']} turn")
    if any(t["role"] == "system" for t in conversation[1:]):
        raise BadRow("roles_out_of_order", "a system message may only come first")
    roles = [t["role"] for t in conversation if t["role"] != "system"]
    # Consecutive turns of one role occur in real data (hh-rlhf) and are kept.
    if not roles or roles[0] != "user" or roles[-1] != "assistant":
        raise BadRow("roles_out_of_order", f"a conversation must start with user and end with assistant, got {roles}")


def load_pairs(source: str | Sequence[dict], *, layout: str = "auto", split: str = "train", subset_name: Optional[str] = None,
               max_rows: Optional[int] = None, subset_key: str = "subset", margin_key: Optional[str] = None,
               on_bad_row: str = "skip", stats: Optional[RowStats] = None) -> tuple[list[PreferencePair], RowStats]:
    """Read and convert every row; ``on_bad_row="error"`` raises at the first bad row, naming where it is."""
    stats = stats or RowStats()
    pairs = []
    for location, row in read_rows(source, split, subset_name, max_rows):
        stats.rows_read += 1
        stats.rows_used += 1
        try:
            pairs.append(to_pair(row, layout, subset_key, margin_key))
        except BadRow as bad:
            if on_bad_row == "error":
                raise DataError(f"{location}: {bad}. Fix: repair or remove this row, "
                                "or set data.on_bad_row=skip to skip and count bad rows.") from bad
            stats.skip(bad.reason)
    return pairs, stats
