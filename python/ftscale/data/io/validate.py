"""Record checks, quarantine tables and provenance columns, shared by every reader.

A record is plain text (``ReadOptions.text_field`` must be a non-blank string), chat
(OpenAI messages, ShareGPT, Alpaca or prompt/completion, converted to one message form with
roles in ``CHAT_ROLES`` and some non-blank content: ``chat_formats``) or a preference pair
(``ReadOptions.pair``: a prompt and a chosen and a rejected completion, converted to one pair
stored as JSON text in the ``PAIR_FIELD`` column: ``preference``). ``max_record_bytes`` bounds
a record (default ``DEFAULT_MAX_RECORD_BYTES``): the raw line for JSONL, the UTF-8 bytes of the
text (or of all message contents) for columnar formats; ``max_messages`` bounds a
conversation's turns. Both reject as ``oversize``. A rejected record gets one reason from
``REASONS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftscale.data.io.chat_formats import record_messages
from ftscale.data.io.jsontext import messages_array
from ftscale.data.io.preference import PAIR_FIELD, PairFields, pair_content_bytes, pair_json, record_pair
from ftscale.data.io.uids import record_uids
from ftscale.errors import ConfigError

REASONS = (
    "invalid_utf8", "malformed_json", "not_an_object", "missing_field",
    "wrong_type", "empty_text", "wrong_role", "oversize", "empty_side", "identical_sides",
)
PROVENANCE_COLUMNS = ("uid", "source", "file", "row")
RAW_MAX_CHARS = 10_000
# Records above this are quarantined as oversize unless max_record_bytes says otherwise: no
# one trains on a 16 MiB document, and parsing one takes several times its size in memory.
DEFAULT_MAX_RECORD_BYTES = 16 << 20
# Turns per conversation. SFT renders the prefix up to every assistant turn with the chat
# template (``data.chat``), so a conversation costs about turns x bytes: the cap bounds that
# to 512 renderings of the record. Real multi-turn sets stay far below (ShareGPT-style
# conversations: tens of messages).
DEFAULT_MAX_MESSAGES = 1024
QUARANTINE_SCHEMA = pa.schema([
    ("uid", pa.uint64()), ("source", pa.string()), ("file", pa.string()), ("row", pa.int64()),
    ("reason", pa.string()), ("detail", pa.string()), ("raw", pa.string()),
])
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
# Names a provenance column would clash with once original columns are renamed.
_PROVENANCE_LIKE = re.compile(r"(?:input_)*(?:uid|source|file|row)")


@dataclass(frozen=True)
class ReadOptions:
    """How to validate records: which field holds the text (or the chat messages), and the size caps."""

    text_field: str = "text"
    messages_field: str | None = None
    max_record_bytes: int | None = None  # None: DEFAULT_MAX_RECORD_BYTES
    max_messages: int = DEFAULT_MAX_MESSAGES
    role_map: tuple[tuple[str, str], ...] = ()  # chat: extra role names → CHAT_ROLES
    pair: PairFields | None = None  # set: preference records (``messages_field`` must then be None)

    def __post_init__(self) -> None:
        named = [("text_field", self.text_field), ("messages_field", self.messages_field)]
        if self.pair is not None:
            if self.messages_field is not None:
                raise ConfigError("a preference source reads its prompt's messages field through pair, "
                                  "not messages_field")
            named += [(f"{k}_field", getattr(self.pair, k)) for k in ("prompt", "chosen", "rejected", "messages")]
        for key, value in named:
            if value in PROVENANCE_COLUMNS:
                raise ConfigError(f"{key}={value!r} clashes with a provenance column {PROVENANCE_COLUMNS}")
        limit = self.max_record_bytes
        valid = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
        if limit is not None and not valid:
            raise ConfigError(f"max_record_bytes must be a positive integer or None, got {limit!r}")
        turns = self.max_messages
        if not (isinstance(turns, int) and not isinstance(turns, bool) and turns > 0):
            raise ConfigError(f"max_messages must be a positive integer, got {turns!r}")

    @property
    def record_cap_bytes(self) -> int:
        """The largest record kept, in bytes."""
        return self.max_record_bytes or DEFAULT_MAX_RECORD_BYTES

    def oversize_detail(self, size_bytes: int, what: str = "bytes") -> str:
        default = "" if self.max_record_bytes else " (the default cap)"
        return f"{size_bytes} {what} > max_record_bytes={self.record_cap_bytes}{default}"

    @property
    def validated(self) -> str:
        """The column the checks write or read: the pair column for preference records, the
        messages field for chat, else the text field."""
        if self.pair is not None:
            return PAIR_FIELD
        return self.messages_field or self.text_field


# --------------------------------------------------------------------------- one record

def json_type_name(value: Any) -> str:
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
        return "wrong_type", f"field {name!r} is {json_type_name(value)}, expected a string"
    if not value.strip():
        return "empty_text", f"field {name!r} is empty or whitespace-only"
    return None, ""


def check_chat(record: dict, name: str, role_map: dict[str, str] | None = None,
               max_messages: int = DEFAULT_MAX_MESSAGES) -> tuple[str | None, str, list | None]:
    """Validate a chat record of any accepted shape; returns its messages in the common form."""
    reason, detail, messages = record_messages(record, name, role_map)
    if reason is None and messages is not None and len(messages) > max_messages:
        return "oversize", f"{len(messages)} messages > max_messages={max_messages}", None
    return reason, detail, messages


def check_record(record: dict, opts: ReadOptions) -> tuple[str | None, str]:
    """Validate one parsed record in place (Alpaca records get their messages field, preference
    records their pair column)."""
    if opts.pair is not None:
        reason, detail, pair = record_pair(record, opts.pair, dict(opts.role_map), opts.max_messages)
        if pair is not None:
            record[PAIR_FIELD] = pair_json(pair)
        return reason, detail
    if opts.messages_field is None:
        return _check_text(record, opts.text_field)
    reason, detail, messages = check_chat(record, opts.messages_field, dict(opts.role_map), opts.max_messages)
    if reason is None:
        record[opts.messages_field] = messages
    return reason, detail


# --------------------------------------------------------------------- columnar batches

def check_text_column(table: pa.Table, opts: ReadOptions, codes: np.ndarray, details: dict[int, str]) -> pa.Table:
    """Vectorised text checks; returns the table with the text column as ``string``.

    ``codes`` (index into REASONS, -1 keeps the row) and ``details`` are filled in place.
    """
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
        # No row is kept, so the column can take the type every kept text has.
        return table.set_column(table.column_names.index(name), name, pa.nulls(n, pa.string()))
    pending = codes < 0  # rows not already rejected by decoding
    null = column.is_null().to_numpy(zero_copy_only=False)
    nbytes = pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), False)
    oversize = nbytes > opts.record_cap_bytes
    verdict = np.select(
        [null, oversize, blank.to_numpy(zero_copy_only=False)],
        [REASONS.index(r) for r in ("missing_field", "oversize", "empty_text")], default=-1)
    codes[pending] = verdict[pending]
    for i in np.flatnonzero(pending & (codes >= 0)).tolist():
        details[i] = {
            "missing_field": f"field {name!r} is null",
            "oversize": opts.oversize_detail(int(nbytes[i])),
            "empty_text": f"field {name!r} is empty or whitespace-only",
        }[REASONS[codes[i]]]
    return table.set_column(table.column_names.index(name), name, column)


def _is_messages_type(kind: pa.DataType) -> bool:
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return False
    fields = {f.name: f.type for f in kind.value_type}
    return all(k in fields and (pa.types.is_string(fields[k]) or pa.types.is_large_string(fields[k]))
               for k in ("role", "content"))


def check_chat_column(table: pa.Table, opts: ReadOptions, codes: np.ndarray, details: dict[int, str]) -> tuple[pa.Table, bool]:
    """Per-row chat checks; rebuilds the messages column when Alpaca rows were converted.

    Returns the table and whether the messages' extra keys became JSON text. Converted
    rows take the file's messages type when it has one, so every batch of a file agrees.
    """
    name = opts.messages_field
    assert name is not None
    wanted = [c for c in dict.fromkeys((name, "conversations", "system", "instruction", "input", "output",
                                        "prompt", "completion")) if c in table.column_names]
    rows = table.select(wanted).to_pylist()
    messages_out: list[list | None] = []
    converted = False
    role_map = dict(opts.role_map)
    for i, record in enumerate(rows):
        reason, detail, messages = check_chat(record, name, role_map, opts.max_messages)
        if reason is None:
            nbytes = sum(len(m["content"].encode("utf-8")) for m in messages)  # type: ignore[union-attr]
            if nbytes > opts.record_cap_bytes:
                reason, detail = "oversize", opts.oversize_detail(nbytes, "content bytes")
        if reason is not None:
            codes[i], details[i] = REASONS.index(reason), detail
            if reason == "missing_field" and name not in table.column_names:
                details[i] = f"{detail}; columns: {table.column_names}"
            messages = None
        converted = converted or (messages is not None and messages != record.get(name))
        messages_out.append(messages)
    present = name in table.column_names
    if present and not converted:
        if (codes < 0).any() or _is_messages_type(table.schema.field(name).type):
            return table, False
        # No row is kept, so the column can take the type every kept message list has.
        return table.set_column(table.column_names.index(name), name, pa.nulls(table.num_rows, MESSAGES_TYPE)), False
    if not converted:
        return table, False
    column, extras_json = None, False
    kind = table.schema.field(name).type if present else None
    if kind is not None and _is_messages_type(kind) and _keys_fit(messages_out, {f.name for f in kind.value_type}):
        try:
            column = pa.array(messages_out, table.schema.field(name).type)
        except (pa.ArrowException, ValueError, TypeError):
            column = None
    if column is None:
        column, extras_json = messages_array(messages_out)
    if present:
        return table.set_column(table.column_names.index(name), name, column), extras_json
    return table.append_column(name, column), extras_json


def check_pair_column(table: pa.Table, opts: ReadOptions, codes: np.ndarray, details: dict[int, str]) -> pa.Table:
    """Per-row preference checks; returns the table with the pair column (JSON text, null for a
    rejected row). ``codes`` and ``details`` are filled in place as for ``check_text_column``."""
    assert opts.pair is not None
    wanted = [c for c in dict.fromkeys(opts.pair.columns()) if c in table.column_names]
    stored: list[str | None] = []
    role_map = dict(opts.role_map)
    for i, record in enumerate(table.select(wanted).to_pylist()):
        reason, detail, pair = record_pair(record, opts.pair, role_map, opts.max_messages)
        if pair is not None and pair_content_bytes(pair) > opts.record_cap_bytes:
            reason, detail, pair = "oversize", opts.oversize_detail(pair_content_bytes(pair), "content bytes"), None
        if reason is not None:
            codes[i], details[i] = REASONS.index(reason), detail
            if reason == "missing_field":
                details[i] = f"{detail}; columns: {table.column_names}"
        stored.append(None if pair is None else pair_json(pair))
    column = pa.array(stored, pa.string())
    if PAIR_FIELD in table.column_names:
        return table.set_column(table.column_names.index(PAIR_FIELD), PAIR_FIELD, column)
    return table.append_column(PAIR_FIELD, column)


def _keys_fit(rows: list[list | None], fields: set[str]) -> bool:
    """Whether every message's keys are struct fields (Arrow would drop the others silently)."""
    return all(m.keys() <= fields for messages in rows if messages for m in messages)


# ------------------------------------------------------------------ provenance, quarantine

def provenance_safe_names(names: list[str], validated: str) -> list[str]:
    """Original column names with those a provenance column would clash with renamed.

    A name matching ``(input_)*(uid|source|file|row)`` gets an "input_" prefix (one more
    than it had), so the renaming is the same whatever other columns a batch holds; the
    validated column keeps its name, and a column whose new name would be the validated
    column's gets a second prefix.
    """
    out = []
    for name in names:
        if name != validated and _PROVENANCE_LIKE.fullmatch(name):
            name = "input_" + name
            if name == validated:
                name = "input_" + name
        out.append(name)
    return out


def with_provenance(table: pa.Table, source: str, file_id: str, rows: np.ndarray, validated: str) -> pa.Table:
    """The kept records with uid, source, file, row first (original columns renamed to fit)."""
    table = table.rename_columns(provenance_safe_names(table.column_names, validated))
    table = table.replace_schema_metadata(None)
    provenance = [
        pa.array(record_uids(source, file_id, rows), pa.uint64()),
        pa.repeat(pa.scalar(source, pa.string()), len(rows)),
        pa.repeat(pa.scalar(file_id, pa.string()), len(rows)),
        pa.array(rows, pa.int64()),
    ]
    for i, (name, column) in enumerate(zip(PROVENANCE_COLUMNS, provenance)):
        table = table.add_column(i, name, column)
    return table


def quarantine_table(source: str, file_id: str, rows: list[int] | np.ndarray, reasons: list[str],
                     details: list[str], raws: list[str]) -> pa.Table:
    """Rejected records as a ``QUARANTINE_SCHEMA`` table (raw text cut to RAW_MAX_CHARS)."""
    row_array = np.asarray(rows, dtype=np.int64)
    return pa.table({
        "uid": pa.array(record_uids(source, file_id, row_array), pa.uint64()),
        "source": pa.array([source] * len(row_array), pa.string()),
        "file": pa.array([file_id] * len(row_array), pa.string()),
        "row": pa.array(row_array, pa.int64()),
        "reason": pa.array(reasons, pa.string()),
        "detail": pa.array(details, pa.string()),
        "raw": pa.array([raw[:RAW_MAX_CHARS] for raw in raws], pa.string()),
    }, schema=QUARANTINE_SCHEMA)
