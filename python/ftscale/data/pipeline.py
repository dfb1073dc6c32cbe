"""Running a step list: engine options, sizes from the memory budget, the units of work, the
resumable work directory, the executor, the first pass and the global steps' reduces.

``ftscale dedup`` and ``ftscale prep`` are two step lists over the same steps; both call
``run_global`` and then write their outputs from the job it returns.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftscale.data.faults import crash_at
from ftscale.errors import ConfigError, DataError

DEFAULT_MEMORY_BUDGET = 2 << 30
MIN_MEMORY_BUDGET = 256 << 20
# Resident memory of a job before any data: the interpreter, the imported modules (~85 MiB of
# heap) and the pages of the shared libraries it touches (~80 MiB, Arrow's mostly); measured
# as the peak RSS of `ftscale dedup` on a 9,000-record file: 163 MiB.
RUNTIME_RESERVE = 176 << 20
UNIT_MEMORY_BATCHES = 12  # a unit in flight holds up to ~12 batches' worth (see plan_memory)
# Reading one Parquet row group took ~2x its decoded size at the peak (measured: 42 MiB for a
# 21 MiB group, jemalloc returning freed pages); 3x leaves room for the validation copies.
PIECE_FACTOR = 3
MIN_BATCH = 2 << 20
MAX_BATCH = 128 << 20
TARGET_UNIT_BYTES = 256 << 20  # a Parquet / Arrow file is split into units of about this much input
KEY_ROW_BYTES = 22
# Conservative input bytes per document for sizing partitions (short documents give more
# key rows per byte); compressed JSONL expands ~4x.
SIZING_BYTES_PER_DOC = 256
COMPRESSED_EXPANSION = 4
ENGINE_VERSION = 1  # part of the work directory's fingerprint


@dataclass(frozen=True)
class EngineOptions:
    """How a data job runs; none of it changes what it writes."""

    executor: str = "local"  # "local" or "ray"
    workers: int | None = None  # local: threads (default: cores); ray: concurrent tasks (default: cluster CPUs)
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    work_dir: str | None = None  # default: <output>/.ftscale-work
    keep_work: bool = False
    num_threads: int | None = None  # threads of each Rust call

    def check(self) -> None:
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"--executor must be local or ray, got {self.executor!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.memory_budget_bytes < MIN_MEMORY_BUDGET:
            raise ConfigError(f"--memory-budget must be at least {MIN_MEMORY_BUDGET >> 20} MiB, got "
                              f"{self.memory_budget_bytes} bytes")


def parse_bytes(text: str | int, key: str) -> int:
    """'2GiB', '512MiB', '1.5G', '4096' → bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
             "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
    raw = str(text).strip().lower().replace("_", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    try:
        value = float(number) * units[raw[len(number):].strip()]
    except (KeyError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: expected a size like 2GiB, 512MiB or 4096 (bytes), got {text!r}")
    return int(value)


def workers_of(opts: EngineOptions) -> int:
    return int(opts.workers or os.cpu_count() or 1)


@dataclass(frozen=True)
class MemoryPlan:
    """How a job spends its memory budget (none of it changes the output)."""

    workers: int  # units (and reduce tasks) in flight at once
    batch_bytes: int  # input bytes per batch of a unit
    key_flush_bytes: int  # key rows a unit buffers before spilling them sorted by partition
    partitions: int  # key-row partitions: a reduce task holds one
    warning: str | None = None  # when the input itself cannot be read within the budget


def plan_memory(opts: EngineOptions, input_bytes: int, key_rows_per_doc: int,
                largest_piece_bytes: int = 0, runtime_bytes: int = RUNTIME_RESERVE) -> MemoryPlan:
    """Sizes that keep the job's resident memory inside ``opts.memory_budget_bytes``.

    What is left after the runtime (``runtime_bytes``: RUNTIME_RESERVE, or more for a job that
    loads a tokenizer) is shared by the workers. A unit in flight
    holds what the reader decodes at once — a whole Parquet row group or IPC record batch,
    ``largest_piece_bytes``, about PIECE_FACTOR times over — and up to ~12 times its batch (the
    records, validation copies, dedup texts, signatures, the spill, the key-row buffer, which is
    flushed at a batch's size and sorted). Workers are dropped before a batch gets below
    MIN_BATCH. A reduce task holds one partition of key rows and ~2x more for sorting;
    ``workers`` run at once within half of the data budget.
    """
    data = opts.memory_budget_bytes - runtime_bytes
    if data < UNIT_MEMORY_BATCHES * MIN_BATCH:
        raise ConfigError(f"--memory-budget {opts.memory_budget_bytes / 2**20:.0f} MiB leaves no room for data: this "
                          f"job's runtime takes ~{runtime_bytes / 2**20:.0f} MiB; give at least "
                          f"{(runtime_bytes + UNIT_MEMORY_BATCHES * MIN_BATCH) / 2**20:.0f} MiB")
    piece = PIECE_FACTOR * largest_piece_bytes
    # Ray gives each task the whole budget (a worker process per task); locally the threads share it.
    wanted = 1 if opts.executor == "ray" else workers_of(opts)
    workers = max(1, min(wanted, data // (UNIT_MEMORY_BATCHES * MIN_BATCH + piece)))
    batch_bytes = int(min(max((data // workers - piece) // UNIT_MEMORY_BATCHES, MIN_BATCH), MAX_BATCH))
    warning = None
    if piece > data:
        warning = (f"the inputs' largest row group or record batch ({largest_piece_bytes / 2**20:.0f} MiB decoded) "
                   f"needs about {(piece + runtime_bytes) / 2**20:.0f} MiB to read, more than --memory-budget "
                   f"{opts.memory_budget_bytes / 2**20:.0f} MiB allows; rewrite the input with smaller row groups "
                   "or raise the budget")
    key_bytes = input_bytes / SIZING_BYTES_PER_DOC * KEY_ROW_BYTES * max(key_rows_per_doc, 1)
    needed = math.ceil(key_bytes * 3 * workers / (data / 2))
    partitions = 1 << max(0, math.ceil(math.log2(max(needed, 2 * workers, 1))))
    return MemoryPlan(workers=workers, batch_bytes=batch_bytes, key_flush_bytes=batch_bytes,
                      partitions=min(partitions, 1 << 14), warning=warning)


def input_bytes_of(units: list[Any]) -> int:
    total = 0
    for u in units:
        compressed = str(u.path).lower().endswith((".gz", ".zst"))
        total += int(u.size_bytes) * (COMPRESSED_EXPANSION if compressed else 1)
    return total


def input_digest(paths: list[str]) -> list[list]:
    """(path, size, mtime) of every input file: a changed input invalidates the work directory."""
    files: list[list] = []
    for p in paths:
        root = Path(p)
        walk = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in walk:
            if f.is_file():
                st = f.stat()
                files.append([str(f), st.st_size, st.st_mtime_ns])
    return files


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def make_executor(opts: EngineOptions, memory: MemoryPlan) -> Any:
    if opts.executor == "ray":
        from ftscale.data.executors.ray import RayExecutor

        return RayExecutor(opts.workers, opts.memory_budget_bytes, memory.key_flush_bytes)
    from ftscale.data.executors.local import LocalExecutor

    return LocalExecutor(memory.workers, memory.key_flush_bytes)


def work_dir_for(output: Path, opts: EngineOptions) -> Path:
    return Path(opts.work_dir) if opts.work_dir else output / ".ftscale-work"


def remove_work_dir(work: Path, opts: EngineOptions) -> None:
    if not opts.keep_work and work.exists():
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class SourceInput:
    """A source as the engine reads it."""

    spec: Any  # steps.base.SourceSpec
    read: Any  # io.ReadOptions
    paths: list[str]


def plan_job(sources: list[SourceInput], output: Path, opts: EngineOptions, settings: dict[str, Any],
             key_rows_per_doc: int, stages: Any, runtime_bytes: int = RUNTIME_RESERVE) -> Any:
    """The job's units and work directory (reused when it belongs to the same job);
    ``runtime_bytes``: what the process holds besides the data (see ``plan_memory``)."""
    from ftscale.data.io import plan_units
    from ftscale.data.job import Job, UnitTask
    from ftscale.data.workdir import open_work_dir
    from ftscale.memory import use_returning_allocators

    opts.check()
    use_returning_allocators()
    units = [(s, u) for s, source in enumerate(sources)
             for u in plan_units(source.spec.name, source.paths, target_unit_bytes=TARGET_UNIT_BYTES)]
    memory = plan_memory(opts, input_bytes_of([u for _, u in units]), key_rows_per_doc,
                         max((u.largest_piece_bytes for _, u in units), default=0), runtime_bytes)
    inputs = [p for source in sources for p in source.paths]
    fp = fingerprint({"engine": ENGINE_VERSION, "settings": settings, "inputs": input_digest(inputs),
                      "partitions": memory.partitions, "batch_bytes": memory.batch_bytes})
    if memory.warning:
        stages.print(f"[yellow]warning[/yellow] {memory.warning}")
    work = open_work_dir(work_dir_for(output, opts), fp)
    tasks = [UnitTask(index=i, source_index=s, unit=unit, source=sources[s].spec, read=sources[s].read, work=work,
                      partitions=memory.partitions, batch_bytes=memory.batch_bytes, pass_name="read")
             for i, (s, unit) in enumerate(units)]
    return Job(sources=[s.spec for s in sources], tasks=tasks, executor=make_executor(opts, memory), work=work,
               num_threads=opts.num_threads)


def require_valid_records(job: Any) -> None:
    """DataError for a source none of whose records passed validation: almost always the wrong
    text or messages field, or the wrong files, and never worth deduplicating or tokenizing."""
    for spec, counts in zip(job.sources, job.source_counts().values()):
        if counts["read"] > counts["quarantined"]:
            continue
        if not counts["read"]:
            raise DataError(f"source {spec.name!r}: its files hold no records (empty, or blank lines only)")
        reasons = ", ".join(f"{r}: {n:,}" for r, n in counts["quarantined_by_reason"].items())
        if spec.pair_field is not None:
            c = spec.config
            need = (f"fields {c.prompt_field!r} (or {c.messages_field!r}), {c.chosen_field!r} and {c.rejected_field!r} "
                    "holding a prompt and two different replies")
        else:
            field = spec.messages_field or spec.text_field
            need = f"field {field!r} holding " + ("a list of chat messages" if spec.messages_field else "a non-empty string")
        raise DataError(f"source {spec.name!r}: all {counts['read']:,} records were rejected ({reasons}); each "
                        f"needs {need}: set the source's field names to the ones your data uses, or check its paths")


def run_global(job: Any, steps: list[Any], stages: Any, *, scores: bool = False) -> None:
    """The first pass over every unit, then each global step's reduce, in order."""
    with stages.stage("read", f"{len(job.tasks)} units of work, {job.executor.name} executor",
                      total=len(job.tasks)) as advance:
        job.first_pass(steps, scores=scores, on_unit=advance)
    stages.add_step_seconds(job.metas)
    require_valid_records(job)
    for step in steps:
        if step.global_step:
            crash_at(f"reduce:{step.name}")
            with stages.stage(step.name, f"{job.alive.sum():,} records"):
                step.reduce(job)
