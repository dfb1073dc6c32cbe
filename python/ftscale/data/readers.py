"""Read one source's input files into a table of valid records and a table of rejects.

Supported inputs (see ``detect_format``): JSONL (``.jsonl``/``.json``/``.ndjson``,
optionally ``.gz`` or ``.zst``), Parquet (``.parquet``/``.pq``), Arrow IPC file or
stream (``.arrow``/``.ipc``/``.feather``), a Hugging Face ``datasets`` directory written
by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``, and plain directories,
which expand to the supported files inside them (recursive, sorted by relative path,
names starting with "." skipped, unsupported files skipped).

Every record gets a stable 64-bit uid from (source, file id, row)::

    base = int.from_bytes(blake2b(utf8(source + "\\0" + file_id), digest_size=8), "little")
    x    = (base + row + 0x9E3779B97F4A7C15)             mod 2**64
    x    = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9)        mod 2**64
    x    = ((x ^ (x >> 27)) * 0x94D049BB133111EB)        mod 2**64
    uid  = x ^ (x >> 31)                                 (splitmix64 of base + row)

``file_id`` is the file's path relative to the input path the user gave (posix
separators; the basename for a single-file input; "split/filename" inside an HF
DatasetDict). ``row`` is the 0-based record index within the file. In JSONL, lines that
hold only ASCII whitespace are not records: they are not counted and take no row index.

Bad input never raises: it is returned in ``SourceRead.quarantine`` with a reason from
``REASONS``, and ``read == kept + quarantined`` always holds. Only a missing, unreadable
or unknown-format path raises ``InputError``.

``SourceRead.records`` has columns uid (uint64), source, file (string), row (int64),
then every original column of the kept records. An original column named like one of
those four is renamed with an "input_" prefix. The text column is always ``string``.
When Arrow cannot infer one type for a column (for example an int in one JSONL line and
a string in another, or across files), the conflicting non-validated columns are stored
as JSON text (nulls stay null) instead of failing; for the messages column only the
per-message keys other than role/content are JSON-encoded.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from ftscale.errors import ConfigError, InputError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION_SUFFIXES = (".gz", ".zst")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".ipc", ".feather")
SUPPORTED_DESCRIPTION = (
    ".jsonl/.json/.ndjson (optionally .gz or .zst), .parquet/.pq, .arrow/.ipc/.feather, "
    "or a Hugging Face datasets directory"
)
CHAT_ROLES = ("system", "user", "assistant")
REASONS = (
    "invalid_utf8", "malformed_json", "not_an_object", "missing_field",
    "wrong_type", "empty_text", "wrong_role", "oversize",
)
PROVENANCE_COLUMNS = ("uid", "source", "file", "row")
RAW_MAX_CHARS = 10_000
QUARANTINE_SCHEMA = pa.schema([
    ("uid", pa.uint64()), ("source", pa.string()), ("file", pa.string()), ("row", pa.int64()),
    ("reason", pa.string()), ("detail", pa.string()), ("raw", pa.string()),
])

_UTF8_BOM = b"\xef\xbb\xbf"
# json.loads accepts "\ud800" escapes that yield strings UTF-8 cannot encode; only lines
# containing such an escape need the (slower) full check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_MUL2 = np.uint64(0x94D049BB133111EB)


@dataclass
class SourceRead:
    """What ``read_source`` returns: kept records, rejected records, and their counts."""

    records: pa.Table
    quarantine: pa.Table
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Options:
    text_field: str
    messages_field: str | None
    max_record_bytes: int | None


# ----------------------------------------------------------------------------- formats

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
    not a Hugging Face dataset (``read_source`` expands those into their files).
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


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read Hugging Face dataset metadata {path}: {exc}") from exc


def _hf_files(root: Path, prefix: str) -> list[tuple[Path, str, str]]:
    """Data files of an HF dataset directory, in the order ``datasets`` would read them."""
    if (root / "dataset_dict.json").is_file():
        splits = _read_json_file(root / "dataset_dict.json").get("splits", [])
        out: list[tuple[Path, str, str]] = []
        for split in splits:
            out += _hf_files(root / split, f"{prefix}{split}/")
        return out
    state = _read_json_file(root / "state.json")
    try:
        names = [entry["filename"] for entry in state["_data_files"]]
    except (KeyError, TypeError) as exc:
        raise InputError(f"{root / 'state.json'} has no valid '_data_files' list") from exc
    files = []
    for name in names:
        if not (root / name).is_file():
            raise InputError(f"input not found: {root / name} (listed in {root / 'state.json'})")
        files.append((root / name, prefix + name, "hf"))
    return files


def _expand_plain_dir(root: Path) -> list[tuple[Path, str, str]]:
    # Units sort by their relative path; an HF dataset found inside is one unit that
    # keeps its own (state.json) file order.
    units: list[tuple[str, list[tuple[Path, str, str]]]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_here = here.relative_to(root)
        descend = []
        for name in dirnames:
            if name.startswith("."):
                continue
            if _is_hf_dir(here / name):
                rel = (rel_here / name).as_posix()
                units.append((rel, _hf_files(here / name, rel + "/")))
            else:
                descend.append(name)
        dirnames[:] = descend
        for name in filenames:
            fmt = None if name.startswith(".") else _format_from_name(name)
            if fmt is not None:
                rel = (rel_here / name).as_posix()
                units.append((rel, [(here / name, rel, fmt)]))
    units.sort(key=lambda unit: unit[0])
    return [entry for _, group in units for entry in group]


def iter_input_files(paths: Iterable[str | Path]) -> list[tuple[Path, str, str]]:
    """Resolve input paths to (file path, file id, format) in read order.

    Raises ``InputError`` for a missing path, an unknown suffix, a directory with no
    supported files, or two files with the same file id (their uids would collide).
    """
    files: list[tuple[Path, str, str]] = []
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


# --------------------------------------------------------------------------------- uids

def file_uid_base(source: str, file_id: str) -> int:
    """The 64-bit base of a file's uids: blake2b-64 of source + NUL + file id, little-endian."""
    digest = hashlib.blake2b(f"{source}\0{file_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def record_uids(source: str, file_id: str, rows: np.ndarray) -> np.ndarray:
    """uint64 uids of ``rows`` of one file: splitmix64(base + row), see the module docstring."""
    rows = np.asarray(rows)
    if rows.size and np.issubdtype(rows.dtype, np.signedinteger) and rows.min() < 0:
        raise ValueError("row indices must be non-negative")
    with np.errstate(over="ignore"):  # wrapping mod 2**64 is the point
        return splitmix64_array(rows.astype(np.uint64) + np.uint64(file_uid_base(source, file_id)))


def splitmix64_array(x: np.ndarray) -> np.ndarray:
    """SplitMix64 of every uint64 in ``x`` (vectorised; arithmetic mod 2**64)."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64) + _SPLITMIX_GAMMA
        x = (x ^ (x >> np.uint64(30))) * _SPLITMIX_MUL1
        x = (x ^ (x >> np.uint64(27))) * _SPLITMIX_MUL2
        return x ^ (x >> np.uint64(31))


# --------------------------------------------------------------------------- validation

def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_text(record: dict, name: str) -> tuple[str | None, str]:
    value = record.get(name)
    if value is None:
        return "missing_field", f"field {name!r} is {'null' if name in record else 'absent'}"
    if not isinstance(value, str):
        return "wrong_type", f"field {name!r} is {_json_type_name(value)}, expected a string"
    if not value.strip():
        return "empty_text", f"field {name!r} is empty or whitespace-only"
    return None, ""


def _check_messages(messages: Any, name: str) -> tuple[str | None, str]:
    if not isinstance(messages, list):
        return "wrong_type", f"field {name!r} is {_json_type_name(messages)}, expected a list of messages"
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            return "wrong_type", f"message {i} is not an object with string 'role' and 'content'"
    for i, message in enumerate(messages):
        if message["role"] not in CHAT_ROLES:
            return "wrong_role", f"message {i} has role {message['role']!r}; allowed: {', '.join(CHAT_ROLES)}"
    if not messages:
        return "empty_text", f"field {name!r} has no messages"
    if all(not message["content"].strip() for message in messages):
        return "empty_text", "every message content is empty or whitespace-only"
    return None, ""


def _check_chat(record: dict, name: str) -> tuple[str | None, str, list | None]:
    """Validate a chat record; an Alpaca record becomes [user, assistant] messages."""
    messages = record.get(name)
    if messages is None:
        instruction, output, extra = record.get("instruction"), record.get("output"), record.get("input")
        if instruction is None and output is None:
            return "missing_field", f"field {name!r} is absent or null and there are no Alpaca fields", None
        for key, value in (("instruction", instruction), ("output", output)):
            if not isinstance(value, str):
                return "wrong_type", f"Alpaca field {key!r} is {_json_type_name(value)}, expected a string", None
        if extra is not None and not isinstance(extra, str):
            return "wrong_type", f"Alpaca field 'input' is {_json_type_name(extra)}, expected a string", None
        prompt = instruction + ("\n\n" + extra if extra and extra.strip() else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    reason, detail = _check_messages(messages, name)
    return reason, detail, messages


def _check_record(record: dict, opts: _Options) -> tuple[str | None, str]:
    """Validate one parsed record in place (Alpaca records get their messages field)."""
    if opts.messages_field is None:
        return _check_text(record, opts.text_field)
    reason, detail, messages = _check_chat(record, opts.messages_field)
    if reason is None:
        record[opts.messages_field] = messages
    return reason, detail


def _parse_line(line: bytes, opts: _Options) -> tuple[str | None, str, dict | None]:
    if opts.max_record_bytes is not None and len(line) > opts.max_record_bytes:
        return "oversize", f"{len(line)} bytes > max_record_bytes={opts.max_record_bytes}", None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "invalid_utf8", str(exc), None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError
        return "malformed_json", str(exc) or type(exc).__name__, None
    if not isinstance(record, dict):
        return "not_an_object", f"top-level JSON value is {_json_type_name(record)}, expected an object", None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_utf8", "a JSON string holds an unpaired surrogate escape (\\ud800-\\udfff)", None
    reason, detail = _check_record(record, opts)
    return reason, detail, record if reason is None else None


# ------------------------------------------------------------------------------ tables

def _to_json(value: Any) -> str:
    def fallback(obj: Any) -> Any:
        return obj.decode("utf-8", errors="replace") if isinstance(obj, bytes) else str(obj)
    return json.dumps(value, ensure_ascii=False, default=fallback)


def _json_strings(values: Sequence[Any]) -> pa.Array:
    return pa.array([None if v is None else _to_json(v) for v in values], pa.string())


def _messages_extras_as_json(values: Sequence[Any]) -> pa.Array:
    """Messages with every key other than role/content JSON-encoded, so types always agree."""
    return pa.array([
        None if messages is None else [
            {k: v if k in ("role", "content") or v is None else _to_json(v) for k, v in m.items()}
            for m in messages
        ]
        for messages in values
    ])


def _messages_array(values: Sequence[Any]) -> pa.Array:
    """Messages as list<struct>; if extra per-message keys clash in type, JSON-encode them."""
    try:
        return pa.array(values)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return _messages_extras_as_json(values)


def _table_from_records(records: list[dict], opts: _Options) -> pa.Table:
    # pa.Table.from_pylist names columns after the first row only, so build each column
    # over the union of keys (first-seen order); absent keys become nulls.
    names = list(dict.fromkeys(key for record in records for key in record))
    columns = {name: [record.get(name) for record in records] for name in names}
    validated = opts.messages_field or opts.text_field
    try:
        return pa.table({name: pa.array(values) for name, values in columns.items()})
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        pass
    arrays = {}
    for name, values in columns.items():
        if name == validated:
            arrays[name] = _messages_array(values) if opts.messages_field else pa.array(values, pa.string())
        else:
            arrays[name] = _json_strings(values)
    return pa.table(arrays)


def _with_provenance(table: pa.Table, source: str, file_id: str, rows: np.ndarray) -> pa.Table:
    names = list(table.column_names)
    for i, name in enumerate(names):
        if name in PROVENANCE_COLUMNS:
            new = "input_" + name
            while new in names:
                new = "input_" + new
            names[i] = new
    table = table.rename_columns(names).replace_schema_metadata(None)
    provenance = [
        pa.array(record_uids(source, file_id, rows), pa.uint64()),
        pa.repeat(pa.scalar(source, pa.string()), len(rows)),
        pa.repeat(pa.scalar(file_id, pa.string()), len(rows)),
        pa.array(rows, pa.int64()),
    ]
    for i, (name, column) in enumerate(zip(PROVENANCE_COLUMNS, provenance)):
        table = table.add_column(i, name, column)
    return table


def _quarantine_table(source: str, file_id: str, rows: list[int], reasons: list[str],
                      details: list[str], raws: list[str]) -> pa.Table:
    row_array = np.asarray(rows, dtype=np.int64)
    return pa.table({
        "uid": pa.array(record_uids(source, file_id, row_array), pa.uint64()),
        "source": pa.array([source] * len(rows), pa.string()),
        "file": pa.array([file_id] * len(rows), pa.string()),
        "row": pa.array(row_array, pa.int64()),
        "reason": pa.array(reasons, pa.string()),
        "detail": pa.array(details, pa.string()),
        "raw": pa.array([raw[:RAW_MAX_CHARS] for raw in raws], pa.string()),
    }, schema=QUARANTINE_SCHEMA)


# -------------------------------------------------------------------------------- JSONL

def _open_binary(path: Path) -> BinaryIO:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        # read_across_frames: files made by concatenating .zst files hold several frames
        reader = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True)
        return io.BufferedReader(reader)  # type: ignore[arg-type]
    return open(path, "rb")


def _read_jsonl(path: Path, source: str, file_id: str, opts: _Options) -> tuple[pa.Table, pa.Table, int]:
    kept_rows: list[int] = []
    kept: list[dict] = []
    bad_rows: list[int] = []
    bad_reasons: list[str] = []
    bad_details: list[str] = []
    bad_raws: list[str] = []
    row = -1
    try:
        with _open_binary(path) as stream:
            for line_number, line in enumerate(stream):
                if line_number == 0 and line.startswith(_UTF8_BOM):
                    line = line[len(_UTF8_BOM):]
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue  # blank lines are not records
                row += 1
                reason, detail, record = _parse_line(line, opts)
                if reason is None:
                    kept_rows.append(row)
                    kept.append(record)  # type: ignore[arg-type]
                else:
                    bad_rows.append(row)
                    bad_reasons.append(reason)
                    bad_details.append(detail)
                    bad_raws.append(line[: RAW_MAX_CHARS * 4].decode("utf-8", errors="replace"))
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    kept_table = _table_from_records(kept, opts)
    records = _with_provenance(kept_table, source, file_id, np.asarray(kept_rows, np.int64))
    quarantine = _quarantine_table(source, file_id, bad_rows, bad_reasons, bad_details, bad_raws)
    return records, quarantine, row + 1


# ----------------------------------------------------------------------------- columnar

def _read_table(path: Path, fmt: str) -> pa.Table:
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        try:  # Arrow IPC file format first, then the stream format (used by HF datasets)
            return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {path} as {fmt}: {exc}") from exc


def _check_text_column(table: pa.Table, opts: _Options, codes: np.ndarray, details: dict[int, str]) -> pa.Table:
    """Vectorised text checks; returns the table with the text column as ``string``."""
    name, n = opts.text_field, table.num_rows
    if name not in table.column_names:
        codes[:] = REASONS.index("missing_field")
        detail = f"column {name!r} not found; columns: {table.column_names}"
        details.update(dict.fromkeys(range(n), detail))
        return table
    column = table.column(name)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        decoded: list[str | None] = []
        for i, value in enumerate(column.to_pylist()):  # per-row decode catches bad UTF-8
            try:
                decoded.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError as exc:
                decoded.append(None)
                codes[i], details[i] = REASONS.index("invalid_utf8"), str(exc)
        column = pa.chunked_array([pa.array(decoded, pa.string())])
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        column = column.cast(pa.string())
    else:
        null = column.is_null().to_numpy(zero_copy_only=False)
        codes[:] = np.where(null, REASONS.index("missing_field"), REASONS.index("wrong_type"))
        detail = f"column {name!r} has type {kind}, expected a string"
        null_detail = f"field {name!r} is null"
        details.update({i: null_detail if is_null else detail for i, is_null in enumerate(null.tolist())})
        return table
    pending = codes < 0  # rows not already rejected by decoding
    null = column.is_null().to_numpy(zero_copy_only=False)
    nbytes = pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), False)
    limit = opts.max_record_bytes
    oversize = nbytes > limit if limit is not None else np.zeros(n, dtype=bool)
    verdict = np.select(
        [null, oversize, blank.to_numpy(zero_copy_only=False)],
        [REASONS.index(r) for r in ("missing_field", "oversize", "empty_text")], default=-1)
    codes[pending] = verdict[pending]
    for i in np.flatnonzero(pending & (codes >= 0)).tolist():
        details[i] = {
            "missing_field": f"field {name!r} is null",
            "oversize": f"{nbytes[i]} bytes > max_record_bytes={limit}",
            "empty_text": f"field {name!r} is empty or whitespace-only",
        }[REASONS[codes[i]]]
    return table.set_column(table.column_names.index(name), name, column)


def _check_chat_column(table: pa.Table, opts: _Options, codes: np.ndarray, details: dict[int, str]) -> pa.Table:
    """Per-row chat checks; rebuilds the messages column when Alpaca rows were converted."""
    name = opts.messages_field
    assert name is not None
    wanted = [c for c in (name, "instruction", "input", "output") if c in table.column_names]
    rows = table.select(wanted).to_pylist()
    messages_out: list[list | None] = []
    converted = False
    for i, record in enumerate(rows):
        reason, detail, messages = _check_chat(record, name)
        if reason is None and opts.max_record_bytes is not None:
            nbytes = sum(len(m["content"].encode("utf-8")) for m in messages)  # type: ignore[union-attr]
            if nbytes > opts.max_record_bytes:
                reason, detail = "oversize", f"{nbytes} content bytes > max_record_bytes={opts.max_record_bytes}"
        if reason is not None:
            codes[i], details[i] = REASONS.index(reason), detail
            if reason == "missing_field" and name not in table.column_names:
                details[i] = f"{detail}; columns: {table.column_names}"
            messages = None
        converted = converted or (messages is not None and record.get(name) is None)
        messages_out.append(messages)
    if not converted:
        return table
    column = _messages_array(messages_out)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def _without_views(table: pa.Table) -> pa.Table:
    # Many compute kernels (filter, take) lack string_view/binary_view support.
    for i, f in enumerate(table.schema):
        if pa.types.is_string_view(f.type) or pa.types.is_binary_view(f.type):
            plain = pa.string() if pa.types.is_string_view(f.type) else pa.binary()
            table = table.set_column(i, f.name, table.column(i).cast(plain))
    return table


def _read_columnar(path: Path, fmt: str, source: str, file_id: str, opts: _Options) -> tuple[pa.Table, pa.Table, int]:
    original = _without_views(_read_table(path, fmt).replace_schema_metadata(None))
    n = original.num_rows
    codes = np.full(n, -1, dtype=np.int8)  # index into REASONS; -1 keeps the row
    details: dict[int, str] = {}
    if opts.messages_field is None:
        checked = _check_text_column(original, opts, codes, details)
    else:
        checked = _check_chat_column(original, opts, codes, details)
    keep = codes < 0
    rows = np.arange(n, dtype=np.int64)
    records = _with_provenance(checked.filter(pa.array(keep)), source, file_id, rows[keep])
    bad = np.flatnonzero(~keep)
    raws = [_to_json(row) for row in original.take(pa.array(bad)).to_pylist()] if bad.size else []
    quarantine = _quarantine_table(
        source, file_id, bad.tolist(), [REASONS[codes[i]] for i in bad],
        [details.get(int(i), "") for i in bad], raws)
    return records, quarantine, n


# ------------------------------------------------------------------------------ concat

def _concat_records(tables: list[pa.Table], opts: _Options) -> pa.Table:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    # Find the columns whose types cannot be promoted and store them as JSON text.
    fields: dict[str, list[pa.Field]] = {}
    for table in tables:
        for f in table.schema:
            fields.setdefault(f.name, []).append(f)
    clashing = []
    for name, group in fields.items():
        try:
            pa.unify_schemas([pa.schema([f]) for f in group], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            clashing.append(name)
    fixed = []
    for table in tables:
        for name in clashing:
            if name in table.column_names:
                values = table.column(name).to_pylist()
                column = _messages_extras_as_json(values) if name == opts.messages_field else _json_strings(values)
                table = table.set_column(table.column_names.index(name), name, column)
        fixed.append(table)
    return pa.concat_tables(fixed, promote_options="permissive")


def read_source(source: str, paths: Sequence[str | Path] | str | Path, *, text_field: str = "text",
                messages_field: str | None = None, max_record_bytes: int | None = None) -> SourceRead:
    """Read, validate and quarantine every record of one source; see the module docstring.

    ``text_field`` is validated for plain-text records; when ``messages_field`` is given the
    records are chat records (or Alpaca records, converted to messages) and that field is
    validated instead. ``max_record_bytes`` bounds a record's size: the raw line for JSONL,
    the UTF-8 bytes of the text (or of all message contents) for columnar formats.
    """
    if not isinstance(source, str) or not source:
        raise ConfigError("source name must be a non-empty string")
    for key, value in (("text_field", text_field), ("messages_field", messages_field)):
        if value in PROVENANCE_COLUMNS:
            raise ConfigError(f"{key}={value!r} clashes with a provenance column {PROVENANCE_COLUMNS}")
    valid_limit = isinstance(max_record_bytes, int) and not isinstance(max_record_bytes, bool) and max_record_bytes > 0
    if max_record_bytes is not None and not valid_limit:
        raise ConfigError(f"max_record_bytes must be a positive integer or None, got {max_record_bytes!r}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ConfigError(f"source {source!r}: no input paths given")
    opts = _Options(text_field, messages_field, max_record_bytes)
    record_tables, quarantine_tables, n_read = [], [], 0
    for path, file_id, fmt in iter_input_files(paths):
        if fmt == "jsonl":
            records, quarantine, n = _read_jsonl(path, source, file_id, opts)
        else:  # "hf" data files are Arrow IPC streams
            columnar_format = "parquet" if fmt == "parquet" else "arrow"
            records, quarantine, n = _read_columnar(path, columnar_format, source, file_id, opts)
        record_tables.append(records)
        quarantine_tables.append(quarantine)
        n_read += n
    records = _concat_records(record_tables, opts)
    quarantine = pa.concat_tables(quarantine_tables)
    by_reason = dict.fromkeys(REASONS, 0)
    for reason in quarantine.column("reason").to_pylist():
        by_reason[reason] += 1
    counts = {
        "read": n_read, "kept": records.num_rows, "quarantined": quarantine.num_rows,
        "quarantined_by_reason": {reason: n for reason, n in by_reason.items() if n},
    }
    if counts["read"] != counts["kept"] + counts["quarantined"]:  # a bug, never bad input
        raise AssertionError(f"record counts not conserved for source {source!r}: {counts}")
    return SourceRead(records=records, quarantine=quarantine, counts=counts)


__all__ = [
    "REASONS", "QUARANTINE_SCHEMA", "SourceRead", "detect_format", "file_uid_base",
    "iter_input_files", "read_source", "record_uids",
]
