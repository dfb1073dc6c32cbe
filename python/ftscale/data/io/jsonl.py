"""Stream one JSONL file (plain, .gz or multi-frame .zst) as batches of validated records.

A line is one record. Lines holding only ASCII whitespace are not records: they are not
counted and take no row index. A UTF-8 BOM opening the file is not content. A line's
size is counted after its trailing CR/LF bytes are removed.

Memory: one batch, that is the parsed records of about ``batch_bytes`` of (decompressed)
input lines as Python objects (several times their bytes) and then their Arrow table,
plus one line. A line is held whole only up to ``line_hold_bytes`` (the record cap,
``ReadOptions.record_cap_bytes``, and at least the raw text a quarantine row keeps); a
longer line is read past in ``_SKIP_CHUNK_BYTES`` pieces while only its first
``line_hold_bytes`` bytes are held, and quarantined as oversize with its first
``RAW_KEEP_BYTES`` as raw text. Decompression streams too: ``readline`` with a limit pulls
at most that many decompressed bytes, so a small archive that inflates to one enormous line
(a decompression bomb) costs a bounded read buffer, not the line; zstd frames asking for a
window beyond zstandard's default limit (128 MiB) are refused as unreadable.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import pyarrow as pa
import zstandard

from ftscale.data.io.columnar import Span
from ftscale.data.io.jsontext import bools_among_floats, json_strings, messages_array
from ftscale.data.io.schema import BatchInfo, mark
from ftscale.data.io.validate import (
    RAW_MAX_CHARS,
    ReadOptions,
    check_record,
    json_type_name,
    quarantine_table,
    with_provenance,
)
from ftscale.errors import InputError

RAW_KEEP_BYTES = RAW_MAX_CHARS * 4  # a quarantine row keeps the first 10,000 characters
_SKIP_CHUNK_BYTES = 1 << 20
ZSTD_MAX_WINDOW_BYTES = 1 << 27
_UTF8_BOM = b"\xef\xbb\xbf"
# json.loads accepts "\ud800" escapes that yield strings UTF-8 cannot encode; only lines
# containing such an escape need the (slower) full check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class LongLine(NamedTuple):
    """A non-blank line longer than the hold limit: its first bytes and its full size."""

    head: bytes
    size_bytes: int


def line_hold_bytes(opts: ReadOptions) -> int:
    """The longest line the reader holds whole, in bytes."""
    return max(opts.record_cap_bytes, RAW_KEEP_BYTES)


def open_binary(path: Path) -> BinaryIO:
    """``path`` opened for reading, decompressing .gz and .zst (all frames) by suffix."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        # read_across_frames: files made by concatenating .zst files hold several frames
        # max_window_size: libzstd's default limit, spelt out: a frame may not make the
        # decompressor allocate more than 128 MiB of window before a byte is checked.
        reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW_BYTES).stream_reader(
            open(path, "rb"), read_across_frames=True)
        return io.BufferedReader(reader)  # type: ignore[arg-type]
    return open(path, "rb")


def iter_lines(stream: BinaryIO, hold_bytes: int, *, skip_chunk_bytes: int = _SKIP_CHUNK_BYTES,
               at_file_start: bool = True) -> Iterator[tuple[bytes | LongLine | None, int]]:
    """(line, input bytes consumed) per physical line; the line is None when blank.

    Lines come without their trailing CR/LF bytes (and the file's first line without a BOM;
    ``at_file_start=False`` for a stream positioned mid-file). A line longer than
    ``hold_bytes`` comes as a ``LongLine`` whose head holds its first bytes (up to
    ``RAW_KEEP_BYTES``); the rest of it is read past ``skip_chunk_bytes`` at a time, never held.
    """
    limit = hold_bytes + 1 + len(_UTF8_BOM)  # the first line may carry a BOM beyond the limit
    first = at_file_start
    while True:
        piece = stream.readline(limit)
        if not piece:
            return
        consumed = len(piece)
        whole = piece.endswith(b"\n") or len(piece) < limit
        if first and piece.startswith(_UTF8_BOM):
            piece = piece[len(_UTF8_BOM):]
        first, limit = False, hold_bytes + 1
        if whole:
            line = piece.rstrip(b"\r\n")
            yield (None if not line or line.isspace() else line), consumed
            continue
        size, blank = len(piece), piece.isspace()
        trailing_cr = len(piece) - len(piece.rstrip(b"\r"))
        while True:
            more = stream.readline(skip_chunk_bytes)
            if not more:
                break
            consumed += len(more)
            ended = more.endswith(b"\n")
            body = more[:-1] if ended else more
            if body:
                size += len(body)
                blank = blank and body.isspace()
                kept = body.rstrip(b"\r")
                trailing_cr = len(body) - len(kept) + (0 if kept else trailing_cr)
            if ended:
                break
        size -= trailing_cr
        if blank:
            yield None, consumed
        elif size <= hold_bytes:  # only a run of CRs made it long; the head holds it all
            yield piece[:size], consumed
        else:
            yield LongLine(piece[:min(RAW_KEEP_BYTES, size)], size), consumed


def _parse_line(line: bytes, opts: ReadOptions) -> tuple[str | None, str, dict | None]:
    if len(line) > opts.record_cap_bytes:
        return "oversize", opts.oversize_detail(len(line)), None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "invalid_utf8", str(exc), None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError
        return "malformed_json", str(exc) or type(exc).__name__, None
    if not isinstance(record, dict):
        return "not_an_object", f"top-level JSON value is {json_type_name(record)}, expected an object", None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_utf8", "a JSON string holds an unpaired surrogate escape (\\ud800-\\udfff)", None
    reason, detail = check_record(record, opts)
    return reason, detail, record if reason is None else None


def table_from_records(records: list[dict], opts: ReadOptions) -> tuple[pa.Table, bool, bool]:
    """Records as a table; whether its columns became JSON text; whether message extras did.

    Arrow types each column over all the records. When some column cannot be typed (an
    int in one record and a string in another; a boolean among floats, which Arrow would
    turn into 0.0 or 1.0 when a float comes first), every column but the validated one
    becomes JSON text (``jsontext``) and the messages keep their role/content types.
    """
    # pa.Table.from_pylist names columns after the first row only, so build each column
    # over the union of keys (first-seen order); absent keys become nulls.
    names = list(dict.fromkeys(key for record in records for key in record))
    columns = {name: [record.get(name) for record in records] for name in names}
    try:
        table = pa.table({name: pa.array(values) for name, values in columns.items()})
        if not any(bools_among_floats(values, table.schema.field(name).type) for name, values in columns.items()):
            return table, False, False
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        pass
    arrays, extras_json = {}, False
    for name, values in columns.items():
        if name != opts.validated:
            arrays[name] = json_strings(values)
        elif opts.messages_field is not None:
            arrays[name], extras_json = messages_array(values)
        else:
            arrays[name] = pa.array(values, pa.string())
    return pa.table(arrays), True, extras_json


class _Batch:
    """What one batch collects: kept records and rejects (per document: its parsed record)."""

    def __init__(self) -> None:
        self.kept_rows: list[int] = []
        self.kept: list[dict] = []
        self.bad_rows: list[int] = []
        self.reasons: list[str] = []
        self.details: list[str] = []
        self.raws: list[str] = []
        self.input_bytes = 0

    def reject(self, row: int, reason: str, detail: str, raw: bytes) -> None:
        self.bad_rows.append(row)
        self.reasons.append(reason)
        self.details.append(detail)
        self.raws.append(raw[:RAW_KEEP_BYTES].decode("utf-8", errors="replace"))


def _finish(batch: _Batch, source: str, file_id: str, opts: ReadOptions) -> tuple[pa.Table, pa.Table]:
    table, fallback, extras_json = table_from_records(batch.kept, opts)
    records = with_provenance(table, source, file_id, np.asarray(batch.kept_rows, np.int64), opts.validated)
    json_columns = tuple(n for n in records.column_names[4:] if n != opts.validated) if fallback else ()
    info = BatchInfo(file=file_id, jsonl=True, validated=opts.validated, chat=opts.messages_field is not None,
                     json_columns=json_columns, fallback=fallback, json_extras=extras_json)
    quarantine = quarantine_table(source, file_id, batch.bad_rows, batch.reasons, batch.details, batch.raws)
    return mark(records, info), quarantine


def plan_jsonl(path: Path, target_bytes: int) -> list[Span]:
    """The units of one JSONL file: a compressed or small file whole, a plain one cut at the
    first line start after every ``target_bytes`` (``_core.jsonl_chunks`` counts the records
    before each cut in one pass, by the rules of ``iter_lines``)."""
    from ftscale import _core

    size = path.stat().st_size
    if size <= target_bytes or path.name.lower().endswith((".gz", ".zst")):
        return [Span(0, None, 0, size)]
    try:
        starts, first_rows, _ = _core.jsonl_chunks(str(path), target_bytes)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    stops = [*starts[1:], None]
    return [Span(a, b, row, (size if b is None else b) - a) for a, b, row in zip(starts, stops, first_rows)]


def read_jsonl(path: Path, source: str, file_id: str, opts: ReadOptions, batch_bytes: int,
               span: Span = Span(0, None, 0, 0)) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(records, quarantine) per batch of about ``batch_bytes`` input bytes; at least one batch.

    Reads the lines starting in ``span`` (byte offsets ``start..stop``, line starts of a plain
    file as ``plan_jsonl`` cuts it; the whole file by default). Rows are numbered over the
    file's non-blank lines from the span's ``first_row``, whatever the batch size.
    """
    hold_bytes = line_hold_bytes(opts)
    row, yielded = span.first_row - 1, False
    batch = _Batch()
    position, stop = span.start, span.stop
    try:
        with open_binary(path) as stream:
            if span.start:
                stream.seek(span.start)
            for line, consumed in iter_lines(stream, hold_bytes, at_file_start=span.start == 0):
                position += consumed
                batch.input_bytes += consumed
                if line is not None:
                    row += 1
                    if isinstance(line, LongLine):
                        batch.reject(row, "oversize", opts.oversize_detail(line.size_bytes), line.head)
                    else:
                        reason, detail, record = _parse_line(line, opts)
                        if reason is None:
                            batch.kept_rows.append(row)
                            batch.kept.append(record)  # type: ignore[arg-type]
                        else:
                            batch.reject(row, reason, detail, line)
                if batch.input_bytes >= batch_bytes:
                    yield _finish(batch, source, file_id, opts)
                    batch, yielded = _Batch(), True
                if stop is not None and position >= stop:  # the next line belongs to the next unit
                    break
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        raise InputError(f"cannot read {path}: {exc}; the file is damaged (re-create or re-download it)") from exc
    if not yielded or batch.input_bytes:
        yield _finish(batch, source, file_id, opts)
