"""Sequence packing and mixture planning (the Rust planners, with NumPy in and out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ftscale import _core
from ftscale.errors import ConfigError

STRATEGIES = ("bfd", "ffd", "greedy")
OVERLONG_POLICIES = ("split", "truncate", "drop")


@dataclass(frozen=True)
class PackPlan:
    """bin_of: the row of each input document; efficiency: filled tokens / (rows · seq_len).

    Rows are numbered in creation order; ``rows()`` lists each row's documents in the
    order they were placed.
    """

    bin_of: np.ndarray
    bin_tokens: np.ndarray
    num_bins: int
    efficiency: float
    seq_len: int
    row_offsets: np.ndarray
    row_docs: np.ndarray

    def rows(self) -> list[np.ndarray]:
        return [self.row_docs[self.row_offsets[i]:self.row_offsets[i + 1]] for i in range(self.num_bins)]


def _lengths(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ConfigError("lengths must be a 1-D sequence of token counts")
    if len(arr) and (arr.min() < 0 or arr.max() > np.iinfo(np.uint32).max):
        raise ConfigError("lengths must be non-negative 32-bit token counts")
    return np.ascontiguousarray(arr, dtype=np.uint32)


def pack(lengths: Sequence[int] | np.ndarray, seq_len: int, strategy: str = "bfd") -> PackPlan:
    """Pack documents (token lengths, each 1..seq_len) into rows of ``seq_len`` tokens.

    strategy: "bfd" (best-fit decreasing, default), "ffd" (first-fit decreasing) or "greedy"
    (input order, a new row when the next document does not fit). Deterministic.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
    out = _core.pack(_lengths(lengths), int(seq_len), strategy)
    return PackPlan(
        bin_of=out["bin_of"], bin_tokens=out["bin_tokens"], num_bins=out["num_bins"],
        efficiency=out["efficiency"], seq_len=int(seq_len), row_offsets=out["row_offsets"],
        row_docs=out["row_docs"],
    )


@dataclass(frozen=True)
class Pieces:
    """Slices of documents after the over-long policy: document index, first token, length."""

    doc: np.ndarray
    start: np.ndarray
    length: np.ndarray
    stats: dict


def apply_overlong(lengths: Sequence[int] | np.ndarray, seq_len: int, policy: str) -> Pieces:
    """Cut documents longer than ``seq_len``: "split" into consecutive pieces (CPT),
    "truncate" to the first ``seq_len`` tokens, or "drop"; counts go to ``stats``."""
    if policy not in OVERLONG_POLICIES:
        raise ConfigError(f"overlong policy must be one of {', '.join(OVERLONG_POLICIES)}, got {policy!r}")
    out = _core.apply_overlong(_lengths(lengths), int(seq_len), policy)
    return Pieces(doc=out["doc"], start=out["start"], length=out["len"], stats=out["stats"])


@dataclass(frozen=True)
class MixtureSource:
    name: str
    lengths: np.ndarray
    weight: float
    families: np.ndarray | None = None
    max_repeat: float | None = None


@dataclass(frozen=True)
class MixturePlan:
    """picks: (source index, document index) in mixed order; sources: per-source summary."""

    pick_source: np.ndarray
    pick_doc: np.ndarray
    sources: list[dict]
    total_tokens: int


def plan_mixture(
    sources: Sequence[MixtureSource],
    target_tokens: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    temperature: float = 1.0,
    max_repeat: float = 4.0,
    family_cap: float | None = None,
) -> MixturePlan:
    """Sample whole documents from each source so that token shares follow the weights
    (``w ** (1/temperature)``, normalised), no source repeats more than ``max_repeat`` times
    (the excess goes to the other sources) and no task family exceeds ``family_cap`` of its
    source. A pure function of (sources, settings, seed, epoch)."""
    out = _core.plan_mixture(
        [s.name for s in sources], [_lengths(s.lengths) for s in sources], [float(s.weight) for s in sources],
        [None if s.families is None else np.ascontiguousarray(s.families, dtype=np.uint32) for s in sources],
        [s.max_repeat for s in sources], int(target_tokens), float(temperature), float(max_repeat),
        family_cap, int(seed), int(epoch),
    )
    return MixturePlan(pick_source=out["pick_source"], pick_doc=out["pick_doc"], sources=out["sources"],
                       total_tokens=out["total_tokens"])
