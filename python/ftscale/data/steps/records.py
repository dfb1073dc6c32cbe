"""The records between the two passes: ``SpillRecords`` keeps a unit's valid records (and
per document its uid, file row and keep score) in the work directory at the end of the first
pass; ``unit_batches`` streams them back for the second pass and the writers.

Held per unit while spilling: one batch. On disk: the records as Arrow IPC (uncompressed, so
the second pass maps them instead of decoding), 16 bytes per document (+8 with a keep score).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ftscale.data.steps.base import Batch, SourceSpec, Step, UnitContext
from ftscale.data.workdir import ArrayAppender
from ftscale.errors import ConfigError, DataError


def dedup_texts(batch: Batch, source: SourceSpec) -> Any:
    """One string per record, as dedup sees it (computed once per batch, shared by steps)."""
    texts = batch.derived.get("dedup_texts")
    if texts is None:
        from ftscale.data.texts import record_texts

        texts = record_texts(batch.records, source.text_field, source.messages_field, source.pair_field)
        batch.derived["dedup_texts"] = texts
    return texts


def records_path(unit_dir: Path, k: int) -> Path:
    return unit_dir / f"records-{k:05d}.arrow"


def write_ipc(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)


def read_ipc(path: Path) -> pa.Table:
    """An Arrow IPC file of the work directory, memory-mapped (zero-copy)."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"work file {path} cannot be read ({e}); delete the work directory and re-run") from e


class SpillRecords(Step):
    """Keep every record of the unit for the second pass; record per-document uid and row
    (and the keep score when the keep rule is ``max:COLUMN``)."""

    name = "spill records"

    def __init__(self, score_column: str | None = None) -> None:
        self.score_column = score_column

    def run(self, batches: Iterator[Batch], ctx: UnitContext) -> Iterator[Batch]:
        from ftscale.data.texts import column_or_none

        uids = ArrayAppender(ctx.dir / "uids.u64", np.uint64)
        rows = ArrayAppender(ctx.dir / "rows.i64", np.int64)
        scores = ArrayAppender(ctx.dir / "scores.f64", np.float64) if self.score_column else None
        sizes: list[int] = []
        try:
            for k, batch in enumerate(batches):
                table = batch.records
                write_ipc(table, records_path(ctx.dir, k))
                uids.append(table.column("uid").to_numpy())
                rows.append(table.column("row").to_numpy())
                if scores is not None:
                    values = column_or_none(table, self.score_column) if table.num_rows else np.zeros(0)
                    if values is None:
                        raise ConfigError(f"keep rule max:{self.score_column}: source {ctx.source.name!r} has no "
                                          f"column {self.score_column!r}")
                    scores.append(values)
                sizes.append(table.num_rows)
                yield batch
        finally:
            for appender in (uids, rows, scores):
                if appender is not None:
                    appender.close()
        ctx.meta["batch_rows"] = sizes


def unit_batches(unit_dir: Path, meta: dict[str, Any]) -> Iterator[tuple[int, pa.Table]]:
    """(unit-local index of the first record, records) of each spilled batch, in order."""
    first = 0
    for k, n in enumerate(meta["batch_rows"]):
        table = read_ipc(records_path(unit_dir, k))
        if table.num_rows != n:
            raise DataError(f"work file {records_path(unit_dir, k)} holds {table.num_rows} records, expected {n}; "
                            "delete the work directory and re-run")
        yield first, table
        first += n
