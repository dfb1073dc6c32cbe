"""Running one unit of one pass through a step list: the part every executor shares.

The first pass ("read") streams the unit's input with ``read_unit``, spills what reading
quarantined, and counts; later passes start from an empty stream and their first step loads
what the first pass spilled. The unit's ``meta-<pass>.json`` is written last: a unit that has
it is finished and is not run again by a re-run of the same job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

import pyarrow as pa

from ftscale.data.faults import unit_finished
from ftscale.data.job import UnitTask
from ftscale.data.steps.base import Batch, Step, UnitContext
from ftscale.data.steps.records import write_ipc
from ftscale.data.atomic import ensure_dir
from ftscale.errors import OutputError
from ftscale.memory import release, use_returning_allocators
from ftscale.data.workdir import fresh_unit_dir, read_meta, unit_dir, write_meta

FIRST_PASS = "read"


def meta_name(pass_name: str) -> str:
    return f"meta-{pass_name}.json"


def finished(task: UnitTask) -> dict[str, Any] | None:
    """The unit's meta when this pass already finished it (a re-run reuses it)."""
    return read_meta(unit_dir(task.work, task.index), meta_name(task.pass_name))


def _read(task: UnitTask, ctx: UnitContext) -> Iterator[Batch]:
    from ftscale.data.io import read_unit

    first = 0
    by_reason: dict[str, int] = {}
    counts = {"read": 0, "records": 0, "quarantined": 0}
    quarantine_files = []
    for k, rb in enumerate(read_unit(task.unit, task.read, batch_bytes=task.batch_bytes)):
        counts["read"] += rb.read
        counts["records"] += rb.records.num_rows
        counts["quarantined"] += rb.quarantine.num_rows
        if rb.quarantine.num_rows:
            name = f"quarantine-{k:05d}.arrow"
            write_ipc(rb.quarantine, ctx.dir / name)
            quarantine_files.append(name)
            for reason, n in zip(*_value_counts(rb.quarantine.column("reason"))):
                by_reason[reason] = by_reason.get(reason, 0) + n
        yield Batch(records=rb.records, first=first)
        first += rb.records.num_rows
    ctx.meta.update(counts, quarantined_by_reason=dict(sorted(by_reason.items())), quarantine_files=quarantine_files)


def _timed(stream: Iterator[Batch], cumulative: list[float], slot: int) -> Iterator[Batch]:
    """Pass batches through, adding the time spent producing them (this step and every step
    before it) to ``cumulative[slot]``: a step's own time is its slot minus the one before."""
    while True:
        start = time.perf_counter()
        try:
            batch = next(stream)
        except StopIteration:
            cumulative[slot] += time.perf_counter() - start
            return
        cumulative[slot] += time.perf_counter() - start
        yield batch


def _value_counts(column: Any) -> tuple[list[str], list[int]]:
    counted = pa.compute.value_counts(column)
    return counted.field("values").to_pylist(), counted.field("counts").to_pylist()


class KeySink(Protocol):
    """Where a unit's key rows go: spill files (local) or the Ray Data stream (Ray)."""

    def emit(self, rows: pa.Table) -> None: ...

    def finish(self) -> dict[str, Any]:
        """Flush; returns what the unit's meta records about the key rows."""


def run_unit(task: UnitTask, steps: list[Step], sink: KeySink) -> dict[str, Any]:
    """Run one unit of one pass; returns (and writes) its meta."""
    use_returning_allocators()
    root = unit_dir(task.work, task.index)
    if task.pass_name == FIRST_PASS:
        directory = fresh_unit_dir(task.work, task.index)
    else:
        directory = ensure_dir(root / task.pass_name)
    ctx = UnitContext(unit=task.unit, index=task.index, source_index=task.source_index, source=task.source,
                      dir=directory, root=root, partitions=task.partitions, emit=sink.emit)
    stream: Iterator[Batch] = _read(task, ctx) if task.pass_name == FIRST_PASS else iter(())
    cumulative = [0.0]
    stream = _timed(stream, cumulative, 0)
    for step in steps:
        cumulative.append(0.0)
        stream = _timed(step.run(stream, ctx), cumulative, len(cumulative) - 1)
    try:
        for _ in stream:
            release()  # the batch is done: its memory goes back to the OS, not to the allocators' caches
        finished = sink.finish()
    except OSError as e:  # the readers map their own errors: what is left is a spill that could not be written
        raise OutputError(f"cannot write the work directory {task.work} ({e.strerror or e}); free space there or "
                          "choose another with --work-dir") from e
    names = ["read"] + [s.name for s in steps]
    seconds = {name: round(cumulative[i] - (cumulative[i - 1] if i else 0.0), 6) for i, name in enumerate(names)}
    if task.pass_name != FIRST_PASS:
        del seconds["read"]  # later passes start from an empty stream; their first step loads the spill
    meta = {**ctx.meta, **finished, "counters": ctx.counters, "seconds": seconds}
    write_meta(root, meta_name(task.pass_name), meta)
    if task.pass_name == FIRST_PASS:
        unit_finished()
    return meta
