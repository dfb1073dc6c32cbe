"""Read a source's input files as deterministic units of work, each a stream of record batches.

``plan_units`` splits a source into ``ReadUnit``s (compressed JSONL files and IPC streams
whole; ranges of lines of a plain JSONL file, of row groups of a Parquet file, of record
batches of an Arrow IPC file);
``read_unit`` streams one unit as ``ReadBatch``es of about ``batch_bytes`` of input, each
a table of valid records and a table of rejects; ``unify`` and ``conform`` give every
batch of a source one schema (see ``schema``). ``read_source`` does all of it in memory
for small inputs (eval sets, tests).

Formats and file ids: ``discover``. Uids: ``uids`` (a function of source, file id and the
record's 0-based row in its file). Checks and quarantine reasons: ``validate``.

Bad input never raises: it is returned in the quarantine tables with a reason from
``REASONS``, and every batch has ``read == kept + quarantined``. Only a missing,
unreadable or unknown-format path raises ``InputError``.

Record tables have columns uid (uint64), source, file (string), row (int64), then the
original columns of the kept records; an original column named like those four gets an
"input_" prefix (``validate.provenance_safe_names``). The text column is always
``string``. A column whose types clash becomes JSON text (``schema``, ``jsontext``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ftscale.data.io.columnar import Span, plan_file, read_columnar
from ftscale.data.io.discover import SUPPORTED_DESCRIPTION, detect_format, iter_input_files
from ftscale.data.io.jsonl import plan_jsonl, read_jsonl
from ftscale.data.io.schema import SourceSchema, conform, unify
from ftscale.data.io.uids import file_uid_base, record_uids, splitmix64_array
from ftscale.data.io.validate import PROVENANCE_COLUMNS, QUARANTINE_SCHEMA, REASONS, ReadOptions
from ftscale.errors import ConfigError, InputError

UNIT_FORMATS = ("jsonl", "parquet", "ipc_file", "ipc_stream")


@dataclass(frozen=True)
class ReadUnit:
    """One deterministic unit of work: a whole file, or a range of its row groups / record batches."""

    source: str
    path: str
    file_id: str
    format: str            # one of UNIT_FORMATS
    index: int             # position in the source's unit list
    start: int = 0         # first row group (Parquet) or record batch (IPC file) of a split file
    stop: int | None = None  # one past the last; None: to the end of the file
    first_row: int = 0     # file row index of the unit's first row
    size_bytes: int = 0    # estimated input bytes: uncompressed row groups for Parquet, record
                           # batches for an IPC file, the file on disk for JSONL and IPC streams
    largest_piece_bytes: int = 0  # the biggest row group / record batch the reader decodes at once (0: JSONL,
                                  # IPC streams: unknown until read)


@dataclass
class ReadBatch:
    """One batch of a unit: kept records (marked for ``unify``), rejects, and how many records were read."""

    records: pa.Table
    quarantine: pa.Table
    read: int  # == records.num_rows + quarantine.num_rows


@dataclass
class SourceRead:
    """What ``read_source`` returns: kept records, rejected records, and their counts."""

    records: pa.Table
    quarantine: pa.Table
    counts: dict[str, Any] = field(default_factory=dict)


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def plan_units(source: str, paths: Sequence[str | Path] | str | Path, *,
               target_unit_bytes: int = 256 << 20) -> list[ReadUnit]:
    """The units of one source in read order (files as ``iter_input_files`` gives them).

    A Parquet file with several row groups is split into consecutive ranges of about
    ``target_unit_bytes`` (uncompressed, from its metadata), an Arrow IPC file likewise by
    record batches, a plain JSONL file at the line starts after every ``target_unit_bytes``
    (one scan of the file counts the records before each cut); compressed JSONL files and IPC
    streams are one unit each. The plan depends only on the files, so it is the same on every
    run and machine.
    """
    if not isinstance(source, str) or not source:
        raise ConfigError("source name must be a non-empty string")
    _positive_int("target_unit_bytes", target_unit_bytes)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ConfigError(f"source {source!r}: no input paths given")
    units: list[ReadUnit] = []
    for path, file_id, fmt in iter_input_files(paths):
        if fmt == "jsonl":
            spans, kind = plan_jsonl(path, target_unit_bytes), "jsonl"
        else:  # "hf" data files are Arrow IPC streams
            kind, spans = plan_file(path, "parquet" if fmt == "parquet" else "arrow", target_unit_bytes)
        whole = len(spans) == 1
        for span in spans:
            units.append(ReadUnit(source=source, path=str(path), file_id=file_id, format=kind, index=len(units),
                                  start=0 if whole else span.start, stop=None if whole else span.stop,
                                  first_row=span.first_row, size_bytes=span.size_bytes,
                                  largest_piece_bytes=span.largest_piece_bytes))
    return units


def read_unit(unit: ReadUnit, opts: ReadOptions, *, batch_bytes: int = 64 << 20) -> Iterator[ReadBatch]:
    """Stream one unit as batches of about ``batch_bytes`` of input each (at least one batch).

    Rows are numbered within the file and uids derived exactly as for a whole-file read,
    whatever ``batch_bytes`` is. A JSONL batch holds the lines up to the one that reaches
    ``batch_bytes`` of decompressed input (its parsed records take about 5x that in
    Python objects while the table is built). A columnar batch holds at most
    ``batch_bytes`` of Arrow data unless one row is larger; while decoding, the Parquet
    reader also holds one row group's column chunks, so a huge row group costs memory
    beyond the batch. Each record table carries its ``BatchInfo`` in its schema
    metadata: keep it until ``conform``.
    """
    _positive_int("batch_bytes", batch_bytes)
    if unit.format not in UNIT_FORMATS:
        raise ConfigError(f"unit format must be one of {UNIT_FORMATS}, got {unit.format!r}")
    path = Path(unit.path)
    if unit.format == "jsonl":
        pairs = read_jsonl(path, unit.source, unit.file_id, opts, batch_bytes,
                           span=Span(unit.start, unit.stop, unit.first_row, unit.size_bytes))
    else:
        span = Span(unit.start, unit.stop, unit.first_row, unit.size_bytes)
        pairs = read_columnar(path, unit.format, span, unit.source, unit.file_id, opts, batch_bytes)
    for records, quarantine in pairs:
        yield ReadBatch(records, quarantine, records.num_rows + quarantine.num_rows)


def read_source(source: str, paths: Sequence[str | Path] | str | Path, *, text_field: str = "text",
                messages_field: str | None = None, max_record_bytes: int | None = None,
                batch_bytes: int = 64 << 20, max_bytes: int | None = None) -> SourceRead:
    """Read, validate and quarantine every record of one source into memory.

    ``text_field`` is validated for plain-text records; when ``messages_field`` is given the
    records are chat records (or Alpaca records, converted to messages) and that field is
    validated instead. ``max_record_bytes`` bounds a record's size (see ``validate``). The
    result is the same for every ``batch_bytes``; it holds the whole source, so use
    ``plan_units`` + ``read_unit`` for large inputs. ``max_bytes`` bounds what it holds: once
    the kept records' Arrow bytes exceed it, reading stops with an InputError.
    """
    opts = ReadOptions(text_field, messages_field, max_record_bytes)
    batches, held = [], 0
    for unit in plan_units(source, paths):
        for batch in read_unit(unit, opts, batch_bytes=batch_bytes):
            held += batch.records.nbytes
            if max_bytes is not None and held > max_bytes:
                raise InputError(f"source {source!r} ({unit.path}) holds more than {max_bytes >> 20} MiB of records, "
                                 "more than may be held in memory here; use a smaller sample of it")
            batches.append(batch)
    schema = unify(batch.records.schema for batch in batches)
    records = pa.concat_tables([conform(batch.records, schema) for batch in batches])
    quarantine = pa.concat_tables([batch.quarantine for batch in batches])
    by_reason = Counter(quarantine.column("reason").to_pylist())
    counts = {
        "read": sum(batch.read for batch in batches), "kept": records.num_rows, "quarantined": quarantine.num_rows,
        "quarantined_by_reason": {reason: by_reason[reason] for reason in REASONS if by_reason[reason]},
    }
    if counts["read"] != counts["kept"] + counts["quarantined"]:  # a bug, never bad input
        raise AssertionError(f"record counts not conserved for source {source!r}: {counts}")
    return SourceRead(records=records, quarantine=quarantine, counts=counts)


__all__ = [
    "PROVENANCE_COLUMNS", "QUARANTINE_SCHEMA", "REASONS", "SUPPORTED_DESCRIPTION", "UNIT_FORMATS",
    "ReadBatch", "ReadOptions", "ReadUnit", "SourceRead", "SourceSchema", "conform", "detect_format",
    "file_uid_base", "iter_input_files", "plan_units", "read_source", "read_unit", "record_uids",
    "splitmix64_array", "unify",
]
