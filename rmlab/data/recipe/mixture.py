"""Mixtures: several sources, each filtered, capped and weighted, into one list of pairs.

For each source, in order: read (bad rows skipped and counted) → **filters** (``max_turns``: at most this
many user turns; ``min_response_chars``: both responses at least this long, stripped; ``subsets``: only
these categories) → **cap** (at most ``cap`` pairs, a seeded sample) → **weight**.

**Weights** are shares of the mixture, normalized to sum to 1; give every source a weight, or none. With
weights, the mixture has ``N = min_i(available_i / weight_i)`` pairs (rounded down), the largest size at
which no source has to repeat a pair (``available_i`` counts pairs after filters and cap), or ``total`` if
that is smaller; source ``i`` gives ``weight_i * N`` pairs (largest-remainder rounding, so they sum to N).
So a cap bounds a source before the weights apply, and can thereby shrink the whole mixture. Without
weights every source gives all its pairs after filters and cap (``total`` then is an error).

Sampling is deterministic: source ``name`` is sampled with ``random.Random(f"{seed}:{name}")``, and the
kept pairs stay in file order. Pairs come grouped by source, in the order the sources are listed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmlab.checks import ConfigError
from rmlab.data.formats import PreferencePair, RowStats
from rmlab.data.recipe.config import FilterConfig, SourceConfig
from rmlab.data.recipe.io import Record, input_name, load_records, skip_rows


@dataclass
class MixtureSource:
    """One source's records before the filters (``loaded``) and in the mixture (``kept``), with its counts."""

    spec: SourceConfig
    name: str
    loaded: list[Record] = field(default_factory=list)
    kept: list[Record] = field(default_factory=list)
    stats: RowStats = field(default_factory=RowStats)
    counts: dict[str, Any] = field(default_factory=dict)


def as_source(spec: Any, key: str) -> SourceConfig:
    """A dict, DictConfig or SourceConfig → a checked SourceConfig (errors name ``key``)."""
    if isinstance(spec, SourceConfig):
        source = spec
    else:
        try:
            source = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SourceConfig), spec))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key}: {str(err).splitlines()[0]}. Fix: use the keys of SourceConfig "
                              "(rmlab/data/recipe/config.py), e.g. {path: pairs.jsonl, cap: 1000}.") from err
    source.check(key)
    return source


def passes(record: Record, filters: FilterConfig) -> Optional[str]:
    """None when the record passes every filter, else the skip reason."""
    pair = record.pair
    if filters.max_turns is not None and sum(t["role"] == "user" for t in pair.chosen) > filters.max_turns:
        return "filter_max_turns"
    shortest = min(len(pair.chosen[-1]["content"].strip()), len(pair.rejected[-1]["content"].strip()))
    if filters.min_response_chars is not None and shortest < filters.min_response_chars:
        return "filter_min_response_chars"
    if filters.subsets is not None and pair.subset not in filters.subsets:
        return "filter_subsets"
    return None


def sample(records: list[Record], count: int, rng: random.Random) -> list[Record]:
    """``count`` records drawn without replacement, kept in their original order."""
    if count >= len(records):
        return records
    return [records[i] for i in sorted(rng.sample(range(len(records)), count))]


def weighted_quotas(available: Sequence[int], weights: Sequence[float], total: Optional[int]) -> list[int]:
    """Per-source counts: the largest mixture without repeats (or ``total``), split by weight."""
    shares = [w / sum(weights) for w in weights]
    size = math.floor(min(a / s for a, s in zip(available, shares)) + 1e-9)
    size = size if total is None else min(size, total)
    exact = [s * size for s in shares]
    quotas = [math.floor(x + 1e-9) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[:size - sum(quotas)]:
        quotas[i] += 1
    return quotas


def filtered_source(spec: SourceConfig, name: str, key: str, seed: int) -> MixtureSource:
    """One source read, filtered and capped."""
    source = MixtureSource(spec, name)
    source.loaded, _ = load_records(spec, key, source.stats)
    for record in source.loaded:
        reason = passes(record, spec.filters)
        if reason:
            source.stats.skip(reason)
        else:
            source.kept.append(record)
    after_filters = len(source.kept)
    if spec.cap is not None and after_filters > spec.cap:
        source.stats.skip("over_cap", after_filters - spec.cap)
        source.kept = sample(source.kept, spec.cap, random.Random(f"{seed}:{name}"))
    source.counts = {"path": spec.path, "rows_read": source.stats.rows_read, "pairs": len(source.loaded),
                     "after_filters": after_filters, "after_cap": len(source.kept), "cap": spec.cap,
                     "weight": spec.weight}
    return source


def checked_sources(sources: Sequence[Any], total: Optional[int], key: str = "sources",
                    total_key: str = "total") -> list[SourceConfig]:
    """The sources as checked SourceConfigs, before any file is read (config validation calls it too): at least
    one, distinct names, a weight for every source or none, and weights when ``total`` is set. Errors name
    ``key`` / ``total_key``."""
    specs = [as_source(spec, f"{key}[{i}]") for i, spec in enumerate(sources)]
    if not specs:
        raise ConfigError(f"{key}=[] is invalid: list at least one source, e.g. [{{path: pairs.jsonl}}].")
    names = [input_name(spec) for spec in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"source names {names} repeat. Fix: give each source a distinct name ({key}[i].name).")
    weighted = [spec.weight is not None for spec in specs]
    if any(weighted) and not all(weighted):
        raise ConfigError(f"{key}[{weighted.index(False)}].weight is missing: give every source a weight, or none.")
    if total is not None and not all(weighted):
        raise ConfigError(f"{total_key}={total} needs weights: set {key}[i].weight for every source, "
                          f"or {total_key}=null.")
    return specs


def build_mixture(sources: Sequence[Any], seed: int, total: Optional[int] = None
                  ) -> tuple[list[MixtureSource], RowStats]:
    """Read, filter, cap and weight every source; see the module docstring."""
    specs = checked_sources(sources, total)
    names = [input_name(spec) for spec in specs]
    weighted = [spec.weight is not None for spec in specs]
    mixture = [filtered_source(spec, name, f"sources[{i}]", seed) for i, (spec, name) in enumerate(zip(specs, names))]
    if all(weighted):
        quotas = weighted_quotas([len(s.kept) for s in mixture], [s.spec.weight for s in mixture], total)
        for source, quota in zip(mixture, quotas):
            skip_rows(source.stats, "mixture_weight", len(source.kept) - quota)
            source.kept = sample(source.kept, quota, random.Random(f"{seed}:{source.name}:weight"))
    size, stats = sum(len(source.kept) for source in mixture), RowStats()
    for source in mixture:
        source.counts.update(selected=len(source.kept), fraction=len(source.kept) / size if size else 0.0,
                             skipped=dict(sorted(source.stats.skipped.items())))
        stats.rows_read += source.stats.rows_read
        stats.rows_used += source.stats.rows_used
        stats.skipped.update(source.stats.skipped)
    return mixture, stats


def load_mixture(sources: Sequence[Mapping[str, Any] | SourceConfig], seed: int, total: Optional[int] = None
                 ) -> tuple[list[PreferencePair], RowStats, dict[str, dict[str, Any]]]:
    """The mixture's pairs (grouped by source, in list order), its row counts, and its composition.

    ``composition[name]`` holds ``path, rows_read, pairs, after_filters, after_cap, cap, weight, selected,
    fraction, skipped``; ``stats`` sums every source (``rows_read == rows_used + skipped``).
    """
    mixture, stats = build_mixture(sources, seed, total)
    pairs = [record.pair for source in mixture for record in source.kept]
    return pairs, stats, {source.name: source.counts for source in mixture}
