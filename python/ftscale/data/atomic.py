"""Atomic file writes: write to a temporary name in the same directory, fsync, rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one,
never a torn write. A write that fails for want of space or permission is an OutputError
naming the file; the temporary file is removed.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ftscale.errors import OutputError


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or raise OutputError saying why it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output directory {path}: {e.strerror or e}; choose a writable --out") from e
    if not os.access(path, os.W_OK):
        raise OutputError(f"output directory {path} is not writable; choose a writable --out")
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it into place."""
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}; free space or choose a writable output") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parquet(table: Any, path: Path, **kwargs: Any) -> None:
    """Write an Arrow table to Parquet atomically (zstd, no timestamps, so bytes are reproducible)."""
    import pyarrow.parquet as pq

    kwargs.setdefault("compression", "zstd")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically, keys in insertion order, UTF-8, trailing newline."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
