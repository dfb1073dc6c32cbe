"""The work directory of a data job: what the first pass spills, per unit, for the global
steps and the second pass; and what makes a re-run resume instead of redo.

Layout (``<output>/.ftscale-work/`` unless given)::

    job.json                     fingerprint of the job (config, tokenizer, inputs, engine version)
    units/u000042/               one directory per unit of work
        meta-read.json           first pass finished: counts, batch sizes, step counters (written last)
        records-00000.arrow      the unit's valid records, one Arrow IPC file per read batch
        quarantine-00000.arrow   records rejected while reading (only when there are any)
        uids.u64, rows.i64       per document: uid, row in its file (little-endian)
        scores.f64               per document: keep score (``keep: max:COLUMN`` only)
        sigs.u32                 per document: MinHash signature (near dedup)
        texts.bin, texts.off     dedup texts and their u64 offsets (near dedup with text verification)
        keys-<kind>-<run>.arrow  key rows, one record batch per partition (local executor)
        <pass>/ + meta-<pass>.json   what a later pass wrote for the unit (e.g. tokens)

A unit without meta-read.json was interrupted: it is wiped and redone; likewise for a later
pass and its meta.
Spill files are not fsynced (a killed process loses nothing the kernel has; a power failure
costs a re-run), the outputs are. Nothing read back is trusted: sizes are checked against
the counts in meta.json, which is itself checked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ftscale.data.atomic import ensure_dir, write_json
from ftscale.errors import DataError, OutputError

WORK_DIR_NAME = ".ftscale-work"
JOB_FILE = "job.json"
WORK_FORMAT_VERSION = 1  # bump when the spill layout changes: old work directories are redone


def unit_dir(work: Path, index: int) -> Path:
    return work / "units" / f"u{index:06d}"


def open_work_dir(work: Path, fingerprint: str) -> Path:
    """The work directory for a job with ``fingerprint``: kept when it belongs to the same job
    (so finished units are reused), emptied when it belongs to another ftscale job. A directory
    that is not an ftscale work directory is never emptied: it must be new or empty."""
    job = work / JOB_FILE
    if job.is_file():
        try:
            same = json.loads(job.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(work)
    elif work.is_dir() and any(work.iterdir()):
        raise OutputError(f"work directory {work} is not empty and is not an ftscale work directory (no {JOB_FILE}); "
                          "give --work-dir a new or empty directory")
    elif work.exists() and not work.is_dir():
        raise OutputError(f"work directory {work} is a file; give --work-dir a directory")
    ensure_dir(work)
    write_json({"fingerprint": fingerprint, "format_version": WORK_FORMAT_VERSION}, job)
    return work


def read_meta(directory: Path, name: str = "meta.json") -> dict[str, Any] | None:
    """A finished unit's meta (``name`` in its directory), or None when it did not finish."""
    path = directory / name
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format_version") != WORK_FORMAT_VERSION:
        return None
    return meta


def write_meta(directory: Path, name: str, meta: dict[str, Any]) -> None:
    write_json({**meta, "format_version": WORK_FORMAT_VERSION}, directory / name)


def fresh_unit_dir(work: Path, index: int) -> Path:
    """An empty directory for a unit about to run (a partial one from a killed run is wiped)."""
    d = unit_dir(work, index)
    if d.exists():
        shutil.rmtree(d)
    return ensure_dir(d)


def _checked(path: Path, dtype: Any, count: int) -> np.dtype:
    dtype = np.dtype(dtype).newbyteorder("<")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"work file {path} is missing ({e.strerror or e}); delete the work directory and re-run") from e
    if size != count * dtype.itemsize:
        raise DataError(f"work file {path} holds {size} bytes, expected {count * dtype.itemsize}; delete the work "
                        "directory and re-run")
    return dtype


def read_array(path: Path, dtype: Any, count: int) -> np.ndarray:
    """A spilled little-endian array of exactly ``count`` items (DataError otherwise)."""
    dtype = _checked(path, dtype, count)
    return np.fromfile(path, dtype=dtype, count=count) if count else np.zeros(0, dtype)


def map_array(path: Path, dtype: Any, count: int) -> np.ndarray:
    """The same, memory-mapped: for reading a few items of a large spill."""
    dtype = _checked(path, dtype, count)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)


class ArrayAppender:
    """Appends arrays to a raw little-endian file (one per kind of per-document value)."""

    def __init__(self, path: Path, dtype: Any) -> None:
        self.path = path
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._f = open(path, "wb")
        self.count = 0

    def append(self, values: np.ndarray) -> None:
        np.ascontiguousarray(values, dtype=self.dtype).tofile(self._f)
        self.count += len(values)

    def close(self) -> None:
        self._f.close()
