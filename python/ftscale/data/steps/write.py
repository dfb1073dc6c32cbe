"""Writing what survived: kept records into Parquet parts (``ftscale dedup``), and each
source's quarantine. Parts are cut every ``rows_per_part`` kept records of a source, in
document order, so the files are the same whatever the units, workers or executor; each part
is one task reading the spilled batches of the units it spans (memory: one row group).

Every record batch is conformed to its source's unified schema first (``io.unify``): a column
whose types clash across batches is JSON text in every batch, as if the source had been read
in one piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ftscale.data.steps.records import read_ipc, records_path, unit_batches
from ftscale.data.workdir import unit_dir

if TYPE_CHECKING:
    from ftscale.data.job import Job

# Target size of a row group in written Parquet, by the source's mean record size; a constant (never
# the memory budget) so that the files are the same whatever the budget. A writer holds ~2 of them.
ROW_GROUP_BYTES = 16 << 20
QUARANTINE_ROW_GROUP_ROWS = 8192  # a quarantined record keeps at most 10,000 characters of raw input
WRITTEN_SCHEMA = pa.schema([("path", pa.string()), ("rows", pa.int64()), ("bytes", pa.int64())])


@dataclass(frozen=True)
class Segment:
    """Kept records ``skip .. skip + take`` (counted among the unit's kept records) of a unit."""

    unit_dir: str
    meta: dict[str, Any]
    alive: bytes  # np.packbits of the unit's alive flags
    skip: int
    take: int


@dataclass(frozen=True)
class PartTask:
    path: str  # output file
    schema: Any  # io.SourceSchema of the source
    segments: list[Segment]
    row_group_rows: int


def source_schema(job: Job, source_index: int) -> Any:
    """The unified schema of a source's spilled record batches."""
    from ftscale.data.io import unify

    schemas = []
    for task, meta in zip(job.tasks, job.metas):
        if task.source_index == source_index:
            d = unit_dir(task.work, task.index)
            schemas.extend(pa.ipc.open_file(pa.memory_map(str(records_path(d, k)))).schema
                           for k in range(len(meta["batch_rows"])))
    return unify(schemas)


def row_group_rows(job: Job, source_index: int) -> int:
    """Rows per written row group: ROW_GROUP_BYTES at the source's mean spilled record size."""
    total_bytes = total_rows = 0
    for task, meta in zip(job.tasks, job.metas):
        if task.source_index == source_index:
            d = unit_dir(task.work, task.index)
            total_bytes += sum(records_path(d, k).stat().st_size for k in range(len(meta["batch_rows"])))
            total_rows += int(meta["records"])
    mean = total_bytes / total_rows if total_rows else 1
    return int(np.clip(ROW_GROUP_BYTES // max(mean, 1), 16, 1 << 20))


def plan_parts(job: Job, source_index: int, out_dir: Path, rows_per_part: int) -> list[PartTask]:
    """One task per output part of a source's kept records."""
    schema = source_schema(job, source_index)
    rg_rows = row_group_rows(job, source_index)
    alive = job.alive
    units = []  # (unit dir, meta, alive flags, kept count)
    for u, (task, meta) in enumerate(zip(job.tasks, job.metas)):
        if task.source_index == source_index:
            flags = alive[job.bases[u]:job.bases[u + 1]]
            units.append((str(unit_dir(task.work, task.index)), meta, flags, int(flags.sum())))
    total = sum(k for *_, k in units)
    parts = []
    for k, lo in enumerate(range(0, max(total, 1), rows_per_part)):
        hi = min(lo + rows_per_part, total)
        segments, start = [], 0
        for d, meta, flags, kept in units:
            a, b = max(lo, start), min(hi, start + kept)
            if a < b:
                segments.append(Segment(d, meta, np.packbits(flags).tobytes(), a - start, b - a))
            start += kept
        parts.append(PartTask(str(out_dir / f"part-{k:05d}.parquet"), schema, segments, rg_rows))
    return parts


class RowGroupWriter:
    """Writes a stream of tables as row groups of exactly ``rows`` rows (the last one shorter),
    so a file's bytes depend on its rows, not on how they were batched on the way."""

    def __init__(self, writer: Any, schema: pa.Schema, rows: int) -> None:
        self.writer, self.schema, self.rows = writer, schema, rows
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.written = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= self.rows:
            merged = pa.concat_tables(self.pending)
            cut = merged.num_rows - merged.num_rows % self.rows
            self.writer.write_table(merged.slice(0, cut), row_group_size=self.rows)
            self.written += cut
            rest = merged.slice(cut)
            self.pending, self.pending_rows = [rest], rest.num_rows

    def close(self) -> int:
        """Write what is left (an empty file gets one empty row group); returns the rows written."""
        if self.pending_rows or self.written == 0:
            tail = pa.concat_tables(self.pending) if self.pending else self.schema.empty_table()
            self.writer.write_table(tail, row_group_size=self.rows)
            self.written += tail.num_rows
        return self.written


def write_part(task: PartTask, _shared: Any) -> pa.Table:
    """Write one part (atomically); returns its path, rows and bytes."""
    import pyarrow.parquet as pq

    from ftscale.data.atomic import atomic_path
    from ftscale.data.io import conform

    path = Path(task.path)
    schema = task.schema.schema
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        groups = RowGroupWriter(writer, schema, task.row_group_rows)
        for table in _kept_records(task.segments):
            groups.write(conform(table, task.schema))
        rows = groups.close()
    return pa.table({"path": [task.path], "rows": [rows], "bytes": [path.stat().st_size]}, schema=WRITTEN_SCHEMA)


def _kept_records(segments: list[Segment]) -> Any:
    """The kept records of the segments, in order, batch by batch."""
    for seg in segments:
        flags = np.unpackbits(np.frombuffer(seg.alive, np.uint8))[:int(seg.meta["records"])].astype(bool)
        skip, take = seg.skip, seg.take
        for first, table in unit_batches(Path(seg.unit_dir), seg.meta):
            keep = np.flatnonzero(flags[first:first + table.num_rows])
            if skip >= len(keep):
                skip -= len(keep)
                continue
            keep = keep[skip:skip + take]
            skip = 0
            take -= len(keep)
            yield table.take(pa.array(keep))
            if take == 0:
                break


def write_quarantine(job: Job, source_index: int, path: Path, extra: list[Path] = ()) -> int:
    """A source's quarantine: what reading rejected (unit by unit), then ``extra`` files
    (what a later pass rejected, e.g. tokenization). Returns its row count."""
    import pyarrow.parquet as pq

    from ftscale.data.atomic import atomic_path
    from ftscale.data.io import QUARANTINE_SCHEMA

    files = []
    for task, meta in zip(job.tasks, job.metas):
        if task.source_index == source_index:
            files.extend(unit_dir(task.work, task.index) / name for name in meta["quarantine_files"])
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, QUARANTINE_SCHEMA, compression="zstd") as writer:
        groups = RowGroupWriter(writer, QUARANTINE_SCHEMA, QUARANTINE_ROW_GROUP_ROWS)
        for f in [*files, *extra]:
            groups.write(read_ipc(f).cast(QUARANTINE_SCHEMA))
        return groups.close()
