"""The local executor: one machine, all cores, memory bounded by ``--memory-budget``.

Units run in a pool of threads (reading Parquet/Arrow, the tokenizers and the Rust kernels
release the GIL; the kernels share one rayon pool). Each unit spills its key rows as Arrow IPC
files holding one record batch per partition, sorted by partition when a unit's buffer fills
(``KEY_FLUSH`` of the budget) or the unit ends; a reduce task reads batch ``p`` of every file
(memory-mapped) and so holds one partition. Reduce tasks and other parallel work run in the
same pool. How many workers, and the sizes of batches, key buffers and partitions, come from
the memory budget (``pipeline.plan_memory``); beyond those, the driver holds its per-document
state (``ftscale.data.job``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ftscale.data.executors.unit import finished, run_unit
from ftscale.data.job import UnitTask
from ftscale.data.steps.base import KEY_SCHEMA, KIND_LEAK, Step
from ftscale.data.workdir import unit_dir
from ftscale.errors import DataError
from ftscale.memory import release

class SpillingSink:
    """Key rows of one unit → ``keys-<kind>-<run>.arrow`` files, one batch per partition."""

    def __init__(self, directory: Path, partitions: int, flush_bytes: int) -> None:
        self.directory = directory
        self.partitions = partitions
        self.flush_bytes = flush_bytes
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.files: dict[str, list[str]] = {}

    def emit(self, rows: pa.Table) -> None:
        self.buffer.append(rows)
        self.buffered += rows.nbytes
        if self.buffered >= self.flush_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        table = pa.concat_tables(self.buffer)
        self.buffer, self.buffered = [], 0
        kinds = table.column("kind").to_numpy()
        for kind in np.unique(kinds).tolist():
            rows = table.filter(pa.array(kinds == kind))
            parts = 1 if kind == KIND_LEAK else self.partitions
            # Partitions fit in 16 bits (at most 2**14): numpy sorts them with a radix sort.
            p = rows.column("p").to_numpy().astype(np.uint16)
            order = np.argsort(p, kind="stable")
            rows = rows.take(pa.array(order))
            bounds = np.searchsorted(p[order], np.arange(parts + 1))
            name = f"keys-{kind}-{len(self.files.get(str(kind), [])):04d}.arrow"
            with pa.OSFile(str(self.directory / name), "wb") as f, pa.ipc.new_file(f, KEY_SCHEMA) as w:
                for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                    part = rows.slice(lo, hi - lo)
                    w.write_batch(pa.RecordBatch.from_arrays([c.combine_chunks() for c in part.columns],
                                                             schema=KEY_SCHEMA))
            self.files.setdefault(str(kind), []).append(name)

    def finish(self) -> dict[str, Any]:
        self._flush()
        return {"key_files": self.files}


def key_files(tasks: list[UnitTask], metas: list[dict[str, Any]], kind: int) -> list[Path]:
    """The key-row files of ``kind`` that the first pass's units spilled, in unit order."""
    files = []
    for task, meta in zip(tasks, metas):
        for name in meta.get("key_files", {}).get(str(kind), []):
            files.append(unit_dir(task.work, task.index) / name)
    return files


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int, key_flush_bytes: int) -> None:
        self.workers = max(1, int(workers))
        self.key_flush_bytes = int(key_flush_bytes)
        self._tasks: list[UnitTask] = []
        self._metas: list[dict[str, Any]] = []

    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ftscale-unit")

    def map_units(self, tasks: list[UnitTask], steps: list[Step],
                  on_unit: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Run every unit (a finished one is read back); ``on_unit(1)`` after each, from the
        worker thread that ran it (a progress bar over units)."""
        def one(task: UnitTask) -> dict[str, Any]:
            done = finished(task)
            if done is None:
                sink = SpillingSink(unit_dir(task.work, task.index), task.partitions, self.key_flush_bytes)
                done = run_unit(task, steps, sink)
            if on_unit is not None:
                on_unit(1)
            return done

        with self._pool() as pool:
            metas = list(pool.map(one, tasks))
        if tasks and tasks[0].pass_name == "read":
            self._tasks, self._metas = tasks, metas
        return metas

    def reduce_partitions(self, kind: int, fn: Callable[[pa.Table, Any], pa.Table], shared: Any) -> pa.Table:
        """``fn(rows of one partition, shared)`` for every partition of key rows of ``kind``;
        the results concatenated (in partition order)."""
        files = key_files(self._tasks, self._metas, kind)
        parts = 1 if kind == KIND_LEAK else (self._tasks[0].partitions if self._tasks else 1)

        def one(p: int) -> pa.Table:
            batches = []
            for path in files:
                try:
                    reader = pa.ipc.open_file(pa.memory_map(str(path)))
                    if reader.num_record_batches != parts:
                        raise DataError(f"work file {path} has {reader.num_record_batches} partitions, expected {parts}")
                    batches.append(reader.get_batch(p))
                except (OSError, pa.ArrowException) as e:
                    raise DataError(f"work file {path} cannot be read ({e}); delete the work directory and re-run") from e
            result = fn(pa.Table.from_batches(batches, schema=KEY_SCHEMA), shared)
            release()
            return result

        with self._pool() as pool:
            results = list(pool.map(one, range(parts)))
        return _concat(results)

    def parallel(self, fn: Callable[[Any, Any], pa.Table], items: list[Any], shared: Any,
                 on_item: Callable[[int], None] | None = None) -> pa.Table:
        """``fn(item, shared)`` for every item; the results concatenated in item order;
        ``on_item(1)`` after each."""
        def one(item: Any) -> pa.Table:
            result = fn(item, shared)
            release()
            if on_item is not None:
                on_item(1)
            return result

        with self._pool() as pool:
            return _concat(list(pool.map(one, items)))

    def close(self) -> None:
        pass


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t is not None]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables)
