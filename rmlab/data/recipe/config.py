"""Typed schemas of the data tools (``conf/tool/*.yaml``), registered in Hydra's ConfigStore.

Each ``conf/tool/<option>.yaml`` names its schema (``- /schema_tool_<schema>@_here_``), so a misspelt
key or a wrong type fails at composition. Range checks run in ``__post_init__`` (from
``OmegaConf.to_object``), before any data is read; nested inputs are checked by the tool that holds
them, so errors name the full key (``tool.sources[1].cap``). Imports only the standard library,
Hydra and OmegaConf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from rmlab.data.formats import LAYOUTS, ROLES
from rmlab.checks import check

FORMATS = ("jsonl", "parquet")


@dataclass
class InputConfig:
    """One dataset: a .jsonl/.json/.parquet file, a local dataset directory or a hub id."""

    path: str = MISSING
    name: Optional[str] = None  # label in reports; null: "<folder>/<file stem>" (or the hub id)
    layout: str = "auto"  # auto | messages | prompt_response | hh (rmlab.data.formats)
    split: str = "train"  # hub datasets only
    subset_name: Optional[str] = None  # hub dataset config name
    subset_key: str = "subset"  # column naming each row's category
    source_key: Optional[str] = None  # column naming each row's origin (e.g. "source"); null: the input's name
    max_rows: Optional[int] = None  # read only the first N rows

    def check(self, key: str) -> None:
        check(self.layout in LAYOUTS, f"{key}.layout", f"one of {', '.join(LAYOUTS)}", self.layout)
        check(self.max_rows is None or self.max_rows >= 1, f"{key}.max_rows", "must be >= 1 or null", self.max_rows)
        check(bool(str(self.path).strip()), f"{key}.path", "must name a file, a dataset directory or a hub id",
               self.path)


@dataclass
class FilterConfig:
    """Per-source filters of a mixture, applied before its cap."""

    max_turns: Optional[int] = None  # keep conversations with at most this many user turns
    min_response_chars: Optional[int] = None  # keep pairs whose two responses both have at least this many chars
    subsets: Optional[list[str]] = None  # keep only these categories (values of subset_key)

    def check(self, key: str) -> None:
        check(self.max_turns is None or self.max_turns >= 1, f"{key}.max_turns", "must be >= 1 or null",
               self.max_turns)
        check(self.min_response_chars is None or self.min_response_chars >= 0, f"{key}.min_response_chars",
               "must be >= 0 or null", self.min_response_chars)
        check(self.subsets is None or len(self.subsets) > 0, f"{key}.subsets", "must list categories or be null",
               self.subsets)


@dataclass
class SourceConfig(InputConfig):
    """One source of a mixture (rmlab.data.recipe.mixture): an input plus its cap, weight and filters."""

    cap: Optional[int] = None  # at most this many pairs (after the filters), sampled with the seed
    weight: Optional[float] = None  # share of the mixture; give every source a weight, or none
    filters: FilterConfig = field(default_factory=FilterConfig)

    def check(self, key: str) -> None:
        super().check(key)
        check(self.cap is None or self.cap >= 1, f"{key}.cap", "must be >= 1 or null", self.cap)
        check(self.weight is None or self.weight > 0, f"{key}.weight", "must be > 0 or null", self.weight)
        self.filters.check(f"{key}.filters")


@dataclass
class ToolConfig:
    output_dir: str = "${hydra:runtime.output_dir}"  # where the dataset and the report go
    format: str = "jsonl"  # jsonl | parquet: the output dataset's format

    def __post_init__(self) -> None:
        check(self.format in FORMATS, "tool.format", "one of jsonl, parquet", self.format)


@dataclass
class StatsConfig(ToolConfig):
    sources: list[SourceConfig] = field(default_factory=list)
    tokenizer: Optional[str] = None  # tokenizer.json file or local tokenizer dir; null: whitespace words
    seed: int = 0  # sampling of caps and weights
    total: Optional[int] = None  # mixture size, with weights only (at most what the sources can supply)
    write_pairs: bool = True  # write the mixture the table describes

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.sources) > 0, "tool.sources", "list at least one source, e.g. tool.sources=[{path:a.jsonl}]",
               self.sources)
        for index, source in enumerate(self.sources):
            source.check(f"tool.sources[{index}]")
        check(self.total is None or self.total >= 1, "tool.total", "must be >= 1 or null", self.total)


@dataclass
class DecontaminateConfig(ToolConfig):
    input: InputConfig = MISSING
    eval_sets: list[InputConfig] = field(default_factory=list)  # paths may be globs: one set per file
    n_min: int = 7  # a training prompt is contaminated when it shares an n-gram with n_min <= n <= n_max
    n_max: int = 13
    roles: list[str] = field(default_factory=lambda: ["user"])  # which prompt turns are compared

    def __post_init__(self) -> None:
        super().__post_init__()
        self.input.check("tool.input")
        check(len(self.eval_sets) > 0, "tool.eval_sets", "list at least one evaluation set", self.eval_sets)
        for index, eval_set in enumerate(self.eval_sets):
            eval_set.check(f"tool.eval_sets[{index}]")
        check(self.n_min >= 1, "tool.n_min", "must be >= 1", self.n_min)
        check(self.n_max >= self.n_min, "tool.n_max", f"must be >= tool.n_min ({self.n_min})", self.n_max)
        check(len(self.roles) > 0 and set(self.roles) <= set(ROLES), "tool.roles",
               "a non-empty list of system, user, assistant", self.roles)


@dataclass
class SelectConfig(ToolConfig):
    input: InputConfig = MISSING
    score_key: str = "score"  # column with each pair's external score (e.g. an ArmoRM score)
    fractions: dict[str, float] = field(default_factory=dict)  # category -> top fraction kept
    default_fraction: float = 1.0  # for categories not in fractions
    offsets: dict[str, float] = field(default_factory=dict)  # source -> added to its scores before ranking

    def __post_init__(self) -> None:
        super().__post_init__()
        self.input.check("tool.input")
        for category, fraction in {**self.fractions, "<default>": self.default_fraction}.items():
            key = "tool.default_fraction" if category == "<default>" else f"tool.fractions.{category}"
            check(0.0 <= fraction <= 1.0, key, "must be in [0, 1]", fraction)


@dataclass
class RMFilterConfig(ToolConfig):
    input: InputConfig = MISSING
    model: str = MISSING  # directory of an exported rmlab reward model (<run dir>/export)
    max_length: int = 2048  # tokens; longer pairs are truncated as in training, unfit ones dropped
    batch_size: int = 16  # sequences per forward pass
    margin: float = 0.0  # keep a pair when chosen reward - rejected reward > margin
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        super().__post_init__()
        self.input.check("tool.input")
        check(self.max_length >= 8, "tool.max_length", "must be >= 8", self.max_length)
        check(self.batch_size >= 1, "tool.batch_size", "must be >= 1", self.batch_size)
        check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "tool.device",
               "one of auto, cpu, cuda, cuda:N", self.device)


TOOL_SCHEMAS: dict[str, type[ToolConfig]] = {
    "stats": StatsConfig,
    "decontaminate": DecontaminateConfig,
    "select": SelectConfig,
    "rm_filter": RMFilterConfig,
}


def register_tool_configs() -> None:
    """Register one schema per tool as ``schema_tool_<name>``."""
    cs = ConfigStore.instance()
    for name, node in TOOL_SCHEMAS.items():
        cs.store(name=f"schema_tool_{name}", node=node)
