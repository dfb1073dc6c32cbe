"""One interface for the data steps: streams of Arrow record batches, one unit of work at a time.

A *unit* is a deterministic slice of one source's input (a file, or a range of Parquet row
groups; ``ftscale.data.io.plan_units``). An executor runs a step list over every unit, each
step a generator over the unit's batches (the shape of datatrove's ``PipelineStep``)::

    read_unit(unit)  →  step_1.run(batches, ctx)  →  step_2.run(...)  →  ...

Per-record steps (hash, sign, scan, tokenize, split, write) transform, annotate or spill
batches. A global step (exact dedup, near dedup, decontamination) is split in two: its ``run``
emits *key rows* ``(kind, partition, a, b, unit, local)`` through ``ctx.emit``, and its
``reduce`` decides over all units which documents go. The executor groups key rows by
partition (a prefix of a uniform hash): locally from spill files, or with a Ray Data groupby,
so a reduce holds one partition at a time. A step never knows where it runs.

Documents are numbered after the first pass: unit ``u``'s document ``i`` is ``bases[u] + i``
(units in source order, then unit order). Every decision depends only on documents' uids,
scores and contents, never on partition, thread or worker counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from ftscale.data.io import ReadUnit
    from ftscale.data.job import Job

# Kinds of key rows.
KIND_EXACT = 0  # a, b = high, low half of the 128-bit normalised-text hash
KIND_BAND = 1  # a = LSH band key, b = band
KIND_LOOSE_BAND = 2  # the audit's loose banding: a = key, b = band
KIND_LEAK = 3  # a = eval set, b = leaked eval item (contaminated records only)
KIND_NAMES = {KIND_EXACT: "exact", KIND_BAND: "band", KIND_LOOSE_BAND: "loose-band", KIND_LEAK: "leak"}

# 22 bytes per key row (Arrow, no nulls); a document emits 1 exact row, one row per band, and
# one per loose band when auditing.
KEY_SCHEMA = pa.schema([
    ("kind", pa.uint8()), ("p", pa.uint32()), ("a", pa.uint64()), ("b", pa.uint64()),
    ("unit", pa.uint32()), ("local", pa.uint32()),
])


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition of uniform 64-bit keys: their top 32 bits modulo ``partitions`` (uint32)."""
    return ((keys >> np.uint64(32)) % np.uint64(partitions)).astype(np.uint32)


def key_rows(kind: int, p: np.ndarray, a: np.ndarray, b: np.ndarray, unit: int, local: np.ndarray) -> pa.Table:
    n = len(local)
    return pa.Table.from_arrays([
        pa.array(np.full(n, kind, np.uint8)), pa.array(p.astype(np.uint32, copy=False)),
        pa.array(a.astype(np.uint64, copy=False)), pa.array(b.astype(np.uint64, copy=False)),
        pa.array(np.full(n, unit, np.uint32)), pa.array(local.astype(np.uint32, copy=False)),
    ], schema=KEY_SCHEMA)


@dataclass
class SourceSpec:
    """What the steps need to know about one source."""

    name: str
    text_field: str = "text"
    messages_field: str | None = None  # set: chat records (the dedup text is their contents)
    kind: str = "cpt"  # prep: cpt, sft or preference; dedup: the records are written back as they are
    config: Any = None  # prep: the SourceConfig
    pair_field: str | None = None  # set: preference pairs (the dedup text is the prompt and the chosen reply)


@dataclass
class Batch:
    """A batch of one unit's records on its way through the steps.

    records: provenance columns (uid, source, file, row) and the source's own columns.
    first: unit-local index of the first record (its document index is ``bases[u] + first``).
    derived: values computed once per batch and shared by later steps (the dedup texts).
    """

    records: pa.Table
    first: int
    derived: dict[str, Any] = field(default_factory=dict)

    @property
    def local(self) -> np.ndarray:
        """Unit-local document indices of the records (uint32)."""
        return np.arange(self.first, self.first + self.records.num_rows, dtype=np.uint32)


@dataclass
class UnitContext:
    """Where a unit runs: its work directory, its place in the job, and the key-row sink."""

    unit: ReadUnit
    index: int  # global unit index
    source_index: int
    source: SourceSpec
    dir: Path  # where this pass writes for the unit (created by the executor)
    root: Path  # the unit's work directory (the first pass's spills)
    partitions: int  # key-row partitions of this job
    emit: Callable[[pa.Table], None]
    counters: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # what steps record about the unit (meta.json)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + int(n)


class Step:
    """A data step. ``run`` streams one unit's batches; ``reduce`` (global steps only) runs
    once over all units after the first pass; ``prepare`` runs once on the driver before it."""

    name = "step"
    global_step = False

    def prepare(self, job: Job) -> None:
        """Driver-side set-up shared by every unit (e.g. an eval index built once)."""

    def run(self, batches: Iterator[Batch], ctx: UnitContext) -> Iterator[Batch]:
        yield from batches

    def reduce(self, job: Job) -> None:
        """Decide over all units (global steps)."""
