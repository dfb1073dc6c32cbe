"""One schema for a whole source, from the schemas of its record batches.

Readers type each batch on its own (JSONL infers types per batch; files differ), and mark
the batch's schema with what the unification needs (``BatchInfo``, in the schema
metadata under ``ftscale.read``). ``unify`` takes the marked schemas of every batch of a
source, in read order, and ``conform`` brings one batch to the result, so conforming every
batch gives one table whatever the batch size:

- columns: uid, source, file, row, then the original columns in first-seen order;
- types: a column's types over all batches promoted together (``pa.unify_schemas``,
  permissive: null to any type, int to float, string to large_string, struct fields merged
  in first-seen order); a column missing from a batch is null there (and nullable);
- JSON text (``jsontext``): a column is stored as canonical JSON text in every batch when
  (a) a batch of a JSONL file could not type its own records together, or (b) the batches
  of one JSONL file have types that do not unify: then every column of that file but the
  validated one is JSON text, as when the file is typed as a whole; or (c) the batches of
  different files have types that do not unify: then that column. A promotion that would
  change a value (an integer beyond 2**53 to float64, 2**63 to int64) counts as not
  unifying. For the messages column only the per-message keys other than role/content
  become JSON text, and the column then has type list<struct<... all string>>.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftscale.data.io.jsontext import json_strings, messages_extras_as_json

PROVENANCE_SCHEMA = pa.schema([("uid", pa.uint64()), ("source", pa.string()), ("file", pa.string()),
                               ("row", pa.int64())])
_META_KEY = b"ftscale.read"
_UNIFY_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
# The largest integer magnitude every smaller one of which a float of this width holds exactly.
_EXACT_INT_BY_FLOAT_BITS = {16: 2**11, 32: 2**24, 64: 2**53}


@dataclass(frozen=True)
class BatchInfo:
    """What ``unify`` needs to know about one record batch besides its Arrow schema."""

    file: str                            # the file id the batch was read from
    jsonl: bool                          # JSONL: types were inferred for this batch alone
    validated: str                       # the validated column (text, or messages for chat)
    chat: bool
    json_columns: tuple[str, ...] = ()   # columns already JSON text in this batch
    fallback: bool = False               # the batch's records could not be typed together
    json_extras: bool = False            # message keys other than role/content are JSON text
    int_ranges: tuple[tuple[str, int, int], ...] = ()  # (column, min, max) over integer values


@dataclass(frozen=True)
class SourceSchema:
    """The unified schema of one source and which columns hold JSON text."""

    schema: pa.Schema
    json_columns: frozenset[str]
    messages_field: str | None
    json_extras: bool


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _has_int(kind: pa.DataType) -> bool:
    if pa.types.is_integer(kind):
        return True
    if _is_list(kind):
        return _has_int(kind.value_type)
    return pa.types.is_struct(kind) and any(_has_int(f.type) for f in kind)


def _int_leaves(array: pa.Array) -> Iterator[pa.Array]:
    kind = array.type
    if pa.types.is_integer(kind):
        yield array
    elif _is_list(kind):
        yield from _int_leaves(array.flatten())
    elif pa.types.is_struct(kind):
        for child in array.flatten():  # children with the parents' nulls applied
            yield from _int_leaves(child)


def _int_range(column: pa.ChunkedArray) -> tuple[int, int] | None:
    if not _has_int(column.type):
        return None
    lows, highs = [], []
    for chunk in column.chunks:
        for leaf in _int_leaves(chunk):
            bounds = pc.min_max(leaf)
            if bounds["min"].is_valid:
                lows.append(bounds["min"].as_py())
                highs.append(bounds["max"].as_py())
    return (min(lows), max(highs)) if lows else None


def mark(records: pa.Table, info: BatchInfo) -> pa.Table:
    """``records`` with ``info`` (and its integer ranges) in the schema metadata."""
    ranges = []
    for name in records.column_names[len(PROVENANCE_SCHEMA):]:
        bounds = None if name in info.json_columns else _int_range(records.column(name))
        if bounds is not None:
            ranges.append((name, *bounds))
    info = replace(info, int_ranges=tuple(ranges))
    return records.replace_schema_metadata({_META_KEY: json.dumps(asdict(info))})


def batch_info(schema: pa.Schema) -> BatchInfo:
    """The ``BatchInfo`` a reader put in ``schema``; ValueError when there is none."""
    raw = (schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise ValueError("schema has no ftscale.read metadata: pass the record tables read_unit yields")
    fields = json.loads(raw)
    fields["json_columns"] = tuple(fields["json_columns"])
    fields["int_ranges"] = tuple(tuple(r) for r in fields["int_ranges"])
    return BatchInfo(**fields)


def _values_fit(src: pa.DataType, dst: pa.DataType, low: int, high: int) -> bool:
    """Whether integers in [low, high] at ``src``'s integer leaves keep their value in ``dst``."""
    if pa.types.is_integer(src):
        if pa.types.is_floating(dst):
            exact = _EXACT_INT_BY_FLOAT_BITS[dst.bit_width]
            return -exact <= low and high <= exact
        if pa.types.is_integer(dst):
            bounds = np.iinfo(dst.to_pandas_dtype())
            return int(bounds.min) <= low and high <= int(bounds.max)
        return True
    if _is_list(src) and _is_list(dst):
        return _values_fit(src.value_type, dst.value_type, low, high)
    if pa.types.is_struct(src) and pa.types.is_struct(dst):
        targets = {f.name: f.type for f in dst}
        return all(_values_fit(f.type, targets[f.name], low, high) for f in src if f.name in targets)
    return True


def _merge(entries: list[tuple[pa.Field, tuple[int, int] | None]]) -> pa.Field | None:
    """The promoted field of ``entries`` (field, integer range), or None when they clash."""
    unique: dict[pa.Field, tuple[int, int] | None] = {}
    for field, bounds in entries:
        seen = unique.get(field)
        if bounds is not None and seen is not None:
            bounds = (min(bounds[0], seen[0]), max(bounds[1], seen[1]))
        unique[field] = bounds or seen
    try:
        merged = pa.unify_schemas([pa.schema([f]) for f in unique], promote_options="permissive").field(0)
    except _UNIFY_ERRORS:
        return None
    if any(b is not None and not _values_fit(f.type, merged.type, *b) for f, b in unique.items()):
        return None
    return merged


def _extras_json_type(kind: pa.DataType) -> pa.DataType:
    """The messages type once every message key is a string (role/content) or JSON text."""
    if not _is_list(kind) or not pa.types.is_struct(kind.value_type):
        return kind
    return pa.list_(pa.struct([(f.name, pa.string()) for f in kind.value_type]))


def unify(schemas: Iterable[pa.Schema]) -> SourceSchema:
    """The ``SourceSchema`` of the batches whose marked schemas are given, in read order.

    The order matters: it fixes the column order and the struct field order. Raises
    ValueError for a schema ``read_unit`` did not mark, or for batches read with
    different validated columns.
    """
    schemas = list(schemas)
    infos = [batch_info(s) for s in schemas]
    if len({(i.validated, i.chat) for i in infos}) > 1:
        raise ValueError("batches of one source must be read with the same ReadOptions")
    validated = infos[0].validated if infos else None
    messages = validated if infos and infos[0].chat else None
    provenance = set(PROVENANCE_SCHEMA.names)

    fields_of = [{f.name: f for f in s} for s in schemas]
    ranges_of = [{n: (lo, hi) for n, lo, hi in info.int_ranges} for info in infos]

    def entries(name: str, members: Iterable[int]) -> list[tuple[pa.Field, tuple[int, int] | None]]:
        return [(fields_of[k][name], ranges_of[k].get(name)) for k in members if name in fields_of[k]]

    json_columns = {name for info in infos for name in info.json_columns}
    json_extras = any(info.json_extras for info in infos)
    by_file: dict[str, list[int]] = {}
    for k, info in enumerate(infos):
        if info.jsonl:
            by_file.setdefault(info.file, []).append(k)
    for members in by_file.values():  # rules (a) and (b): a JSONL file is typed as a whole
        names = [n for n in dict.fromkeys(n for k in members for n in fields_of[k])
                 if n not in provenance and (n != validated or messages is not None)]
        fallback = any(infos[k].fallback for k in members)
        for name in names:
            if name == messages:
                if not any(infos[k].json_extras for k in members) and _merge(entries(name, members)) is None:
                    json_extras = fallback = True
            elif not fallback and _merge(entries(name, members)) is None:
                fallback = True
        if fallback:
            json_columns.update(n for n in names if n != validated)

    fields = list(PROVENANCE_SCHEMA)
    order = dict.fromkeys(n for names in fields_of for n in names if n not in provenance)
    everyone = range(len(schemas))
    for name in order:  # rule (c): across files
        merged = None
        if name == messages:
            merged = None if json_extras else _merge(entries(name, everyone))
            if merged is None:
                json_extras = True
                merged = _merge([(f.with_type(_extras_json_type(f.type)), None) for f, _ in entries(name, everyone)])
                assert merged is not None, "all-string message types always unify"
        elif name not in json_columns:
            merged = _merge(entries(name, everyone))
            if merged is None:
                json_columns.add(name)
        if merged is None:
            first = entries(name, everyone)[0][0]
            merged = first.with_type(pa.string())
        if not all(name in names for names in fields_of):  # batches without the column hold nulls
            merged = merged.with_nullable(True)
        fields.append(merged)
    return SourceSchema(pa.schema(fields), frozenset(json_columns), messages, json_extras)


def _cast_array(array: pa.Array, kind: pa.DataType) -> pa.Array:
    """``array`` as type ``kind``; structs and lists rebuilt child by child.

    Arrow's own struct cast (pyarrow 26) can build invalid arrays when it inserts a field
    before one that holds lists, so nested types are rebuilt here and only leaves are cast.
    """
    if array.type == kind:
        return array
    if pa.types.is_null(array.type) or len(array) == 0:
        return pa.nulls(len(array), kind)
    mask = array.is_null() if array.null_count else None
    if pa.types.is_struct(array.type) and pa.types.is_struct(kind):
        children = []
        for field in kind:
            index = array.type.get_field_index(field.name)
            child = array.field(index) if index >= 0 else pa.nulls(len(array), field.type)
            children.append(_cast_array(child, field.type))
        return pa.StructArray.from_arrays(children, fields=list(kind), mask=mask)
    if (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)) and (
            pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        builder = pa.LargeListArray if pa.types.is_large_list(kind) else pa.ListArray
        offsets = array.offsets.cast(pa.int64())
        start, stop = offsets[0].as_py(), offsets[-1].as_py()
        # Fresh offsets from 0 over just the values this (maybe sliced) array spans.
        offsets = pc.subtract(offsets, start).cast(pa.int64() if builder is pa.LargeListArray else pa.int32())
        values = _cast_array(array.values.slice(start, stop - start), kind.value_type)
        return builder.from_arrays(offsets, values, type=kind, mask=mask)
    return array.cast(kind)


def _cast(column: pa.ChunkedArray | pa.Array, kind: pa.DataType, name: str) -> pa.ChunkedArray:
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    try:
        return pa.chunked_array([_cast_array(chunk, kind) for chunk in chunks], kind)
    except _UNIFY_ERRORS as exc:
        raise AssertionError(f"column {name!r} of type {column.type} does not take its unified type {kind} "
                             f"({exc}); unify should have made it JSON text") from exc


def conform(table: pa.Table, source_schema: SourceSchema) -> pa.Table:
    """One marked record batch with the source's unified schema (columns, types, JSON text).

    Memory: the batch and its converted copy; a column turned into JSON text passes
    through Python objects one column at a time.
    """
    info = batch_info(table.schema)
    arrays = []
    for field in source_schema.schema:
        name = field.name
        if name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(name)
        if name in source_schema.json_columns and name not in info.json_columns:
            column = json_strings(column.to_pylist())
        elif name == source_schema.messages_field and source_schema.json_extras and not info.json_extras:
            column = messages_extras_as_json(column.to_pylist())
        arrays.append(_cast(column, field.type, name))
    return pa.Table.from_arrays(arrays, schema=source_schema.schema)
