"""Run directories: where a run's checkpoints, metrics and export live.

``{storage_path}/{run_name}/`` is Ray Train's run directory; checkpoints are the
``checkpoint_NNNNNNN`` folders Ray persists there (one per report). Rank 0's
``ftscale_run.json`` makes a folder a checkpoint; it also holds the forgetting gate's state
(``gate``), which names the best checkpoint of the run so far.

A checkpoint is complete or invisible. Every rank lists the files it wrote (size and sha256)
in ``ftscale_files_rank<R>.json``; after every rank's upload (a barrier), rank 0 checks that
each listed file arrived with its size and writes the commit marker ``ftscale_commit.json``,
which lists them all. Resume, rollback, export and eval use a checkpoint only when its marker
exists and its files have the listed sizes (``scan``) and, before reading it, the listed
checksums (``mismatched_files``); anything else is skipped with the reason. Nothing read from
these files is trusted: names must stay inside the checkpoint, sizes and hashes well formed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftscale.errors import InputError, OutputError

RUN_FILE = "ftscale_run.json"
COMMIT_FILE = "ftscale_commit.json"
RANK_FILES = "ftscale_files_rank{rank}.json"
DS_TAG = "ds"  # DeepSpeed checkpoint tag inside every checkpoint directory
HASH_CHUNK_BYTES = 8 << 20  # read size while hashing: the only memory a checksum holds
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RANK_FILES = re.compile(r"ftscale_files_rank\d+\.json")
# Sizes of a checkpoint's files kept elsewhere: (checkpoint, names) -> {name: bytes, or None when
# missing}. A remote run's mirror holds only the small files; its sizes come from the store
# (``storage.remote_sizes``). None: the files are in the checkpoint directory itself.
Sizes = Callable[[Path, list[str]], dict[str, int | None]]


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:07d}"


def run_dir(storage_path: str, run_name: str) -> Path:
    return Path(storage_path).expanduser().resolve() / run_name


# ---------------------------------------------------------------------------- writing

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def write_rank_files(directory: Path, rank: int) -> None:
    """List every file under ``directory`` (one rank's part of a checkpoint, before upload)
    with its size and sha256 in ``RANK_FILES``."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if not _RANK_FILES.fullmatch(name):
            files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    (directory / RANK_FILES.format(rank=rank)).write_text(json.dumps({"rank": rank, "files": files}, indent=1))


def clear(checkpoint: Path) -> None:
    """Remove a checkpoint folder that is about to be written again (a resumed or rolled-back
    run repeats steps): its old marker must not vouch for half-replaced files, and files of the
    old attempt (another world size's shards) must not mix with the new ones."""
    import shutil

    try:
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)
    except OSError as e:
        raise OutputError(f"{checkpoint}: cannot remove the earlier attempt's checkpoint: {e}") from e


def commit(checkpoint: Path, world_size: int, step: int) -> None:
    """Write the commit marker of ``checkpoint`` once every rank's listed files are there with
    their sizes; OutputError (and no marker) otherwise."""
    marker = commit_marker(checkpoint, world_size, step)
    tmp = checkpoint / f".{COMMIT_FILE}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, checkpoint / COMMIT_FILE)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{checkpoint}: cannot write the commit marker: {e}") from e


def commit_marker(checkpoint: Path, world_size: int, step: int, sizes: Sizes | None = None) -> dict[str, Any]:
    """The commit marker of ``checkpoint`` (every rank's file list merged), once each listed
    file is there with its size (``sizes``: see ``Sizes``); OutputError otherwise."""
    files: dict[str, dict[str, Any]] = {}
    for rank in range(world_size):
        listing = _json(checkpoint / RANK_FILES.format(rank=rank))
        if listing is None:
            raise OutputError(f"{checkpoint}: rank {rank}'s file list did not arrive; the checkpoint is not committed")
        for name, entry in _entries(listing.get("files"), checkpoint):
            if files.setdefault(name, entry) != entry:
                raise OutputError(f"{checkpoint}: ranks wrote different versions of {name}; not committed")
    if RUN_FILE not in files:
        raise OutputError(f"{checkpoint}: rank 0 wrote no {RUN_FILE}; not committed")
    problem = _size_problem(checkpoint, files, sizes)
    if problem:
        raise OutputError(f"{checkpoint}: {problem}; the checkpoint is not committed")
    return {"step": step, "world_size": world_size, "files": files}


# ---------------------------------------------------------------------------- reading

def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _entries(files: Any, checkpoint: Path) -> list[tuple[str, dict[str, Any]]]:
    """Validated (name, {size, sha256}) pairs of a file list; a malformed one raises InputError."""
    if not isinstance(files, dict):
        raise InputError(f"{checkpoint}: its file list is not a JSON object")
    out = []
    for name, entry in files.items():
        parts = name.split("/") if isinstance(name, str) else []
        if not parts or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
            raise InputError(f"{checkpoint}: file list names {name!r}, which is not a path inside the checkpoint")
        size = entry.get("size") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0
                and isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise InputError(f"{checkpoint}: file list entry {name!r} needs a size and a sha256")
        out.append((name, {"size": size, "sha256": digest}))
    return out


def _size_problem(checkpoint: Path, files: dict[str, dict[str, Any]], sizes: Sizes | None = None) -> str | None:
    if sizes is not None:
        found = sizes(checkpoint, sorted(files))
        for name, entry in sorted(files.items()):
            if found.get(name) is None:
                return f"{name} is missing"
            if found[name] != entry["size"]:
                return f"{name} has {found[name]} bytes, {entry['size']} were written"
        return None
    root = checkpoint.resolve()
    for name, entry in sorted(files.items()):
        path = checkpoint / name
        if not path.resolve().is_relative_to(root):
            return f"{name} links outside the checkpoint"
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != entry["size"]:
            return f"{name} has {size} bytes, {entry['size']} were written"
    return None


def committed_files(checkpoint: Path) -> dict[str, dict[str, Any]]:
    """The files the commit marker lists, validated: name → {size, sha256}."""
    marker = _json(checkpoint / COMMIT_FILE)
    if marker is None:
        raise InputError(f"{checkpoint}: no readable commit marker ({COMMIT_FILE})")
    files = dict(_entries(marker.get("files"), checkpoint))
    if RUN_FILE not in files:
        raise InputError(f"{checkpoint}: the commit marker does not list {RUN_FILE}")
    return files


def problem(checkpoint: Path, sizes: Sizes | None = None) -> str | None:
    """Why ``checkpoint`` cannot be used (no marker, a malformed one, a file missing or of
    another size), or None. Cheap: sizes only; see ``mismatched_files`` for the checksums.
    ``sizes``: where the files' sizes come from when they are not in ``checkpoint`` (``Sizes``)."""
    if not (checkpoint / COMMIT_FILE).is_file():
        if (checkpoint / RUN_FILE).is_file() and not any(checkpoint.glob(RANK_FILES.format(rank="*"))):
            # Nothing lists its files, so nothing can show it whole: the run restarts without it.
            return ("no commit marker: written by an ftscale version without them, so it cannot be verified; "
                    "resume it with that version, or start over")
        return "no commit marker: it was never completed (interrupted while saving?)"
    try:
        files = committed_files(checkpoint)
    except InputError as e:
        return str(e).removeprefix(f"{checkpoint}: ")
    return _size_problem(checkpoint, files, sizes)


def mismatched_files(checkpoint: Path, names: list[str] | None = None) -> list[str]:
    """Files of ``checkpoint`` (all, or ``names``) whose sha256 differs from the marker's."""
    files = committed_files(checkpoint)
    bad = []
    for name in sorted(files) if names is None else names:
        try:
            if sha256_file(checkpoint / name) != files[name]["sha256"]:
                bad.append(name)
        except OSError:
            bad.append(name)
    return bad


def scan(run_directory: Path, sizes: Sizes | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(complete checkpoints oldest first, [(skipped checkpoint, why)]) of a run directory (or
    of a remote run's mirror, with ``sizes``)."""
    if not run_directory.is_dir():
        return [], []
    found, skipped = [], []
    for path in sorted(p for p in run_directory.glob("checkpoint_*") if p.is_dir()):
        why = problem(path, sizes)
        if why is None:
            found.append(path)
        else:
            skipped.append((path, why))
    return found, skipped


def checkpoints(run_directory: Path, sizes: Sizes | None = None) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return scan(run_directory, sizes)[0]


def latest_checkpoint(run_directory: Path, sizes: Sizes | None = None) -> Path | None:
    found = checkpoints(run_directory, sizes)
    return found[-1] if found else None


def checksum_problem(checkpoint: Path) -> str | None:
    """``problem``, then the checksums of every file: why ``checkpoint`` cannot be used, or None."""
    why = problem(checkpoint)
    if why is None:
        bad = mismatched_files(checkpoint)
        why = f"{bad[0]} does not match its checksum" if bad else None
    return why


def verified(checkpoint: Path) -> Path:
    """``checkpoint`` after checking its marker, sizes and checksums; InputError saying what is wrong."""
    why = checksum_problem(checkpoint)
    if why is not None:
        raise InputError(f"checkpoint {checkpoint} cannot be used: {why}")
    return checkpoint


def best_checkpoint(run_directory: Path, sizes: Sizes | None = None) -> Path | None:
    """The best checkpoint (``eval.select``, respecting ``eval.guard``) recorded by the run's
    latest checkpoint; None when the run selects none (no ``eval.select``, or no evaluation of
    a trained step respected the guard)."""
    latest = latest_checkpoint(run_directory, sizes)
    if latest is None:
        return None
    run = _json(latest / RUN_FILE)
    if run is None:
        raise InputError(f"{latest / RUN_FILE} cannot be read as a JSON object")
    gate = run.get("gate") or {}
    step = gate.get("best_step") if isinstance(gate, dict) else None
    if step is None:
        return None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise InputError(f"{latest / RUN_FILE}: gate.best_step must be a step number, got {step!r}")
    best = run_directory / checkpoint_name(step)
    why = problem(best, sizes) if best.is_dir() else "it is missing from the run directory"
    if why is not None:
        raise InputError(f"{run_directory}: the best checkpoint (step {step}) cannot be used: {why}")
    return best
