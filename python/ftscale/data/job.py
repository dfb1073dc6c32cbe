"""One run of a step list: the units of work, the first pass, the driver's per-document state
and the record of which stage removed which document.

After the first pass every document has a global index (``bases[u] + local``), and the driver
holds, per document: uid (8 bytes), keep-preference rank (4), the stage that removed it (1) —
13 bytes; the near-dedup step adds its union-find (8) while it runs. Everything else (texts,
signatures, records) stays in the units' spill files. Decisions (removed → matched document,
similarity, leaked eval items) are kept for removed documents only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftscale.data.workdir import map_array, read_array, unit_dir
from ftscale.errors import DataError

if TYPE_CHECKING:
    from ftscale.data.io import ReadOptions, ReadUnit
    from ftscale.data.steps.base import SourceSpec, Step

STAGES = ("exact_duplicate", "near_duplicate", "contaminated")
MAX_DOCS = 2**32 - 2  # documents are u32 indices in the kernels


@dataclass(frozen=True)
class UnitTask:
    """Everything a worker needs to run one unit of one pass (picklable, small)."""

    index: int  # global unit index
    source_index: int
    unit: ReadUnit
    source: SourceSpec
    read: ReadOptions
    work: Path
    partitions: int
    batch_bytes: int
    pass_name: str  # "read" (the first pass reads the input) or a later pass's name


@dataclass
class Shared:
    """The read-only driver state a reduce task needs (Ray broadcasts it once per reduce)."""

    bases: np.ndarray  # int64, units + 1
    rank: np.ndarray  # uint32, per document
    alive: np.ndarray  # bool, per document

    def docs(self, unit: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Global document indices (uint32) of key rows."""
        return (self.bases[unit.astype(np.int64)] + local).astype(np.uint32)


@dataclass
class Removal:
    """Documents one stage removed (sorted), with what each matched."""

    stage: str
    docs: np.ndarray  # int64, sorted
    matched: np.ndarray | None = None  # int64 document each duplicates
    similarity: np.ndarray | None = None  # float32
    eval_set: list[str] | None = None
    eval_items: list[list[int]] | None = None  # leaked eval uids per removed document


@dataclass
class Job:
    """The driver's state of a run. ``executor`` runs the passes and the reduce tasks."""

    sources: list[SourceSpec]
    tasks: list[UnitTask]
    executor: Any
    work: Path
    num_threads: int | None = None
    metas: list[dict[str, Any]] = field(default_factory=list)
    bases: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    uids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    removed_by: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # 0 alive, else 1 + STAGES index
    removals: list[Removal] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------------------- pass 1

    def first_pass(self, steps: list[Step], scores: bool = False, on_unit: Any = None) -> None:
        """Run the first pass over every unit (``on_unit(n)`` as units finish: a progress
        bar), then number the documents and rank them."""
        from ftscale import _core

        for step in steps:
            step.prepare(self)
        self.metas = self.executor.map_units(self.tasks, steps, on_unit)
        counts = np.array([int(m["records"]) for m in self.metas], dtype=np.int64)
        self.bases = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(self.bases[-1])
        if n > MAX_DOCS:
            raise DataError(f"{n:,} records: one run handles at most {MAX_DOCS:,}; split the sources into runs")
        self.uids = self._per_doc("uids.u64", np.uint64)
        score_values = self._per_doc("scores.f64", np.float64) if scores else None
        self.rank = _core.preference_ranks(self.uids, score_values, self.num_threads)
        self.removed_by = np.zeros(n, dtype=np.int8)

    def _per_doc(self, name: str, dtype: Any) -> np.ndarray:
        parts = [read_array(unit_dir(self.work, t.index) / name, dtype, int(m["records"]))
                 for t, m in zip(self.tasks, self.metas)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    # ----------------------------------------------------------------------------- state

    @property
    def num_docs(self) -> int:
        return int(self.bases[-1])

    @property
    def alive(self) -> np.ndarray:
        return self.removed_by == 0

    def shared(self) -> Shared:
        return Shared(bases=self.bases, rank=self.rank, alive=self.alive)

    def unit_of(self, docs: np.ndarray) -> np.ndarray:
        """Unit index of each global document index."""
        return np.searchsorted(self.bases, docs, side="right") - 1

    def remove(self, removal: Removal) -> None:
        """Record that a stage removed ``removal.docs`` (which must all be alive)."""
        docs = removal.docs
        if len(docs) and not self.alive[docs].all():
            raise AssertionError(f"{removal.stage}: a document was removed twice")  # a bug, not user error
        self.removed_by[docs] = STAGES.index(removal.stage) + 1
        self.removals.append(removal)

    def source_counts(self) -> dict[str, dict[str, Any]]:
        """Per source: read, quarantined (+ by reason), removed per stage, kept."""
        out: dict[str, dict[str, Any]] = {}
        for s, spec in enumerate(self.sources):
            by_reason: dict[str, int] = {}
            stages = np.zeros(len(STAGES) + 1, dtype=np.int64)
            read = quarantined = 0
            for u, (task, meta) in enumerate(zip(self.tasks, self.metas)):
                if task.source_index != s:
                    continue
                read += int(meta["read"])
                quarantined += int(meta["quarantined"])
                for reason, k in meta["quarantined_by_reason"].items():
                    by_reason[reason] = by_reason.get(reason, 0) + int(k)
                unit_stages = self.removed_by[self.bases[u]:self.bases[u + 1]]
                stages += np.bincount(unit_stages, minlength=len(STAGES) + 1)
            c: dict[str, Any] = {"read": read, "quarantined": quarantined,
                                 "quarantined_by_reason": dict(sorted(by_reason.items()))}
            for i, stage in enumerate(STAGES):
                c[stage] = int(stages[i + 1])
            c["kept"] = int(stages[0])
            out[spec.name] = c
        return out

    # ----------------------------------------------------------------------------- decisions

    def provenance(self, docs: np.ndarray) -> tuple[list[str], list[str], list[int]]:
        """(source, file id, row in file) of documents, read from the units' spills."""
        units = self.unit_of(docs)
        sources: list[str] = [""] * len(docs)
        files: list[str] = [""] * len(docs)
        rows = np.zeros(len(docs), dtype=np.int64)
        for u in np.unique(units):
            where = np.flatnonzero(units == u)
            task, meta = self.tasks[u], self.metas[u]
            unit_rows = map_array(unit_dir(self.work, task.index) / "rows.i64", np.int64, int(meta["records"]))
            rows[where] = unit_rows[docs[where] - self.bases[u]]
            del unit_rows
            for i in where.tolist():
                sources[i], files[i] = task.source.name, task.unit.file_id
        return sources, files, rows.tolist()

    def write_decisions(self, path: Path) -> int:
        """The decision log (see the dedup module docstring), in stage order, documents ascending
        within a stage; returns its row count."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ftscale.data.atomic import atomic_path

        final = self._chain_ends()
        with atomic_path(path) as tmp:
            with pq.ParquetWriter(tmp, DECISIONS_SCHEMA, compression="zstd") as writer:
                written = 0
                for r in self.removals:
                    for lo in range(0, len(r.docs), DECISION_ROWS_PER_GROUP):
                        sel = slice(lo, lo + DECISION_ROWS_PER_GROUP)
                        docs = r.docs[sel]
                        sources, files, rows = self.provenance(docs)
                        n = len(docs)
                        matched = r.matched[sel] if r.matched is not None else None
                        table = pa.table({
                            "uid": pa.array(self.uids[docs], pa.uint64()),
                            "source": pa.array(sources, pa.string()),
                            "file": pa.array(files, pa.string()),
                            "row": pa.array(rows, pa.int64()),
                            "reason": pa.array([r.stage] * n, pa.string()),
                            "matched_uid": pa.array(self.uids[matched] if matched is not None else [None] * n,
                                                    pa.uint64()),
                            "kept_uid": pa.array(self.uids[final(matched)] if matched is not None else [None] * n,
                                                 pa.uint64()),
                            "similarity": pa.array(r.similarity[sel] if r.similarity is not None else [None] * n,
                                                   pa.float32()),
                            "eval_set": pa.array(r.eval_set[sel] if r.eval_set is not None else [None] * n,
                                                 pa.string()),
                            "eval_items": pa.array(r.eval_items[sel] if r.eval_items is not None else [None] * n,
                                                   pa.list_(pa.uint64())),
                        }, schema=DECISIONS_SCHEMA)
                        writer.write_table(table)
                        written += n
                if not written:
                    writer.write_table(DECISIONS_SCHEMA.empty_table())
        return written

    def _chain_ends(self) -> Any:
        """The end of each matched chain: a record matched at one stage may be removed at a
        later one (an exact duplicate's representative can be a near duplicate of a third
        record); the chain ends at a kept record, or one removed as contaminated."""
        removed = [r for r in self.removals if r.matched is not None]
        if not removed:
            return lambda matched: matched
        docs = np.concatenate([r.docs for r in removed])
        nxt = np.concatenate([r.matched for r in removed])
        order = np.argsort(docs, kind="stable")
        docs, nxt = docs[order], nxt[order]

        def final(matched: np.ndarray) -> np.ndarray:
            out = matched.copy()
            for _ in range(len(STAGES)):  # chains are at most one step per stage long
                at = np.searchsorted(docs, out)
                hit = (at < len(docs)) & (docs[np.minimum(at, len(docs) - 1)] == out)
                if not hit.any():
                    break
                out[hit] = nxt[at[hit]]
            return out

        return final


def _decisions_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("uid", pa.uint64()), ("source", pa.string()), ("file", pa.string()), ("row", pa.int64()),
        ("reason", pa.string()), ("matched_uid", pa.uint64()), ("kept_uid", pa.uint64()),
        ("similarity", pa.float32()), ("eval_set", pa.string()), ("eval_items", pa.list_(pa.uint64())),
    ])


DECISIONS_SCHEMA = _decisions_schema()
DECISION_ROWS_PER_GROUP = 1 << 16  # decisions are written in row groups of this many rows
