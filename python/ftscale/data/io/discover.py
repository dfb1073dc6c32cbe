"""Which files an input path names, in which order, and in which format.

Supported inputs (see ``detect_format``): JSONL (``.jsonl``/``.json``/``.ndjson``,
optionally ``.gz`` or ``.zst``), Parquet (``.parquet``/``.pq``), Arrow IPC file or
stream (``.arrow``/``.ipc``/``.feather``), a Hugging Face ``datasets`` directory written
by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``, and plain directories,
which expand to the supported files inside them (recursive, sorted by relative path,
names starting with "." skipped, unsupported files skipped).

A file's id is its path relative to the input path the user gave (posix separators; the
basename for a single-file input; "split/filename" inside an HF DatasetDict); record
uids derive from it (see ``uids``).

Names read from HF metadata (``dataset_dict.json`` splits, ``state.json`` data files) are
untrusted: one that is absolute, holds "..", or resolves (through symlinks) outside the
dataset directory is an ``InputError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from ftscale.errors import InputError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION_SUFFIXES = (".gz", ".zst")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".ipc", ".feather")
SUPPORTED_DESCRIPTION = (
    ".jsonl/.json/.ndjson (optionally .gz or .zst), .parquet/.pq, .arrow/.ipc/.feather, "
    "or a Hugging Face datasets directory"
)

InputFile = tuple[Path, str, str]  # (file path, file id, format: "jsonl" | "parquet" | "arrow" | "hf")


def _format_from_name(name: str) -> str | None:
    lowered = name.lower()
    stem, suffix = os.path.splitext(lowered)
    if suffix in COMPRESSION_SUFFIXES:
        return "jsonl" if os.path.splitext(stem)[1] in JSONL_SUFFIXES else None
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in ARROW_SUFFIXES:
        return "arrow"
    return None


def _is_hf_dir(path: Path) -> bool:
    if (path / "dataset_dict.json").is_file():
        return True
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def detect_format(path: str | Path) -> str:
    """Return "jsonl", "parquet", "arrow" or "hf" for one input path (by suffix for files).

    Raises ``InputError`` for a missing path, an unknown suffix, or a directory that is
    not a Hugging Face dataset (``iter_input_files`` expands those into their files).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        if _is_hf_dir(path):
            return "hf"
        raise InputError(
            f"{path} is a directory but not a Hugging Face datasets directory (no "
            "dataset_dict.json, nor state.json + dataset_info.json); pass it to read_source "
            "to read the supported files inside it"
        )
    fmt = _format_from_name(path.name)
    if fmt is None:
        compressed = path.suffix.lower() in COMPRESSION_SUFFIXES
        suffix = "".join(path.suffixes[-2:]) if compressed else path.suffix
        raise InputError(
            f"unsupported input format {suffix or '(no suffix)'!r} for {path}; "
            f"supported: {SUPPORTED_DESCRIPTION}"
        )
    return fmt


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read Hugging Face dataset metadata {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise InputError(f"Hugging Face dataset metadata {path} is not a JSON object; re-save the dataset")
    return value


def _listed_path(directory: Path, name: Any, what: str, listed_in: Path) -> Path:
    """``directory / name`` for a name read from HF metadata, checked to stay strictly inside."""
    if not isinstance(name, str) or not name:
        raise InputError(f"{listed_in} lists {what} {name!r}; expected a non-empty relative path")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute() or ".." in parts:
        raise InputError(
            f"{listed_in} lists {what} {name!r}, which points outside {directory}; "
            "fix the metadata or pass the data files themselves")
    target = directory / name
    resolved, base = target.resolve(), directory.resolve()
    if base not in resolved.parents:  # also rejects "." (resolves to the directory itself)
        raise InputError(
            f"{listed_in} lists {what} {name!r}, which resolves to {resolved}, outside {directory}; "
            "fix the metadata or pass the data files themselves")
    return target


def _hf_files(root: Path, prefix: str) -> list[InputFile]:
    """Data files of an HF dataset directory, in the order ``datasets`` would read them."""
    meta = root / "dataset_dict.json"
    if meta.is_file():
        splits = _read_json_object(meta).get("splits")
        if not isinstance(splits, list):
            raise InputError(f"{meta} has no 'splits' list; re-save the dataset")
        out: list[InputFile] = []
        for split in splits:
            # Each split lies strictly below its parent (after resolving symlinks), so the
            # recursion always goes deeper and ends.
            out += _hf_files(_listed_path(root, split, "split", meta), f"{prefix}{split}/")
        return out
    state_path = root / "state.json"
    state = _read_json_object(state_path)
    entries = state.get("_data_files")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "filename" in e for e in entries):
        raise InputError(f"{state_path} has no valid '_data_files' list; re-save the dataset")
    files = []
    for entry in entries:
        name = entry["filename"]
        path = _listed_path(root, name, "data file", state_path)
        if not path.is_file():
            raise InputError(f"input not found: {path} (listed in {state_path})")
        files.append((path, prefix + name, "hf"))
    return files


def _expand_plain_dir(root: Path) -> list[InputFile]:
    # Entries sort by their relative path; an HF dataset found inside is one entry that
    # keeps its own (state.json) file order.
    entries: list[tuple[str, list[InputFile]]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_here = here.relative_to(root)
        descend = []
        for name in dirnames:
            if name.startswith("."):
                continue
            if _is_hf_dir(here / name):
                rel = (rel_here / name).as_posix()
                entries.append((rel, _hf_files(here / name, rel + "/")))
            else:
                descend.append(name)
        dirnames[:] = descend
        for name in filenames:
            fmt = None if name.startswith(".") else _format_from_name(name)
            if fmt is not None:
                rel = (rel_here / name).as_posix()
                entries.append((rel, [(here / name, rel, fmt)]))
    entries.sort(key=lambda entry: entry[0])
    return [file for _, group in entries for file in group]


def iter_input_files(paths: Iterable[str | Path]) -> list[InputFile]:
    """Resolve input paths to (file path, file id, format) in read order.

    Raises ``InputError`` for a missing path, an unknown suffix, a directory with no
    supported files, HF metadata naming a path outside its dataset, or two files with the
    same file id (their uids would collide).
    """
    files: list[InputFile] = []
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise InputError(f"input not found: {root}")
        if root.is_file():
            files.append((root, root.name, detect_format(root)))
        elif _is_hf_dir(root):
            files += _hf_files(root, "")
        else:
            found = _expand_plain_dir(root)
            if not found:
                raise InputError(f"input directory {root} contains no supported files ({SUPPORTED_DESCRIPTION})")
            files += found
    seen: dict[str, Path] = {}
    for path, file_id, _ in files:
        if file_id in seen:
            raise InputError(
                f"inputs {seen[file_id]} and {path} have the same file id {file_id!r}, so their "
                "record uids would collide; pass their common parent directory instead, or "
                "list them under different sources"
            )
        seen[file_id] = path
    return files
