"""JSON text for values whose types clash: the form every reader and ``conform`` share.

When one column holds values Arrow cannot type together (an int in one record, a string
in another), the column is stored as JSON text. That text must not depend on which
records were read in the same batch, but a value's Arrow form does: in a batch where
another record has an extra object key, this record's struct gains that key as null;
struct fields follow the batch's first-seen key order; an int shares a column with floats
becomes a float. So values are written in a canonical JSON form that is the same for the
original Python value and for every Arrow form it can take:

- object keys sorted, and object members whose value is null omitted;
- a float with an integral value of magnitude at most 2**53 written as an integer (1.0 -> 1);
- everything else as ``json.dumps`` writes it (non-ASCII kept, NaN/Infinity as Python does).

Nulls stay null (no JSON text). Values JSON cannot hold (bytes, dates from columnar
files) are written as their text (bytes decoded as UTF-8 with replacement).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

_EXACT_FLOAT_INT = 2**53  # every integer up to this magnitude is exact in float64


def _text_of(obj: Any) -> Any:
    return obj.decode("utf-8", errors="replace") if isinstance(obj, bytes) else str(obj)


def to_json(value: Any) -> str:
    """``value`` as ``json.dumps`` writes it (keys in order; used for quarantined rows' raw text)."""
    return json.dumps(value, ensure_ascii=False, default=_text_of)


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _EXACT_FLOAT_INT else value
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value`` (see the module docstring)."""
    return json.dumps(_canonical(value), ensure_ascii=False, sort_keys=True, default=_text_of)


def json_strings(values: Sequence[Any]) -> pa.Array:
    """A ``string`` array of the canonical JSON text of each value; nulls stay null."""
    return pa.array([None if v is None else canonical_json(v) for v in values], pa.string())


def messages_extras_as_json(values: Sequence[Any]) -> pa.Array:
    """Messages with every key other than role/content as canonical JSON text, so types agree."""
    return pa.array([
        None if messages is None else [
            {k: v if k in ("role", "content") or v is None else canonical_json(v) for k, v in m.items()}
            for m in messages
        ]
        for messages in values
    ])


def _has_float(kind: pa.DataType) -> bool:
    if pa.types.is_floating(kind):
        return True
    if pa.types.is_list(kind):
        return _has_float(kind.value_type)
    return pa.types.is_struct(kind) and any(_has_float(f.type) for f in kind)


def bools_among_floats(values: Sequence[Any], kind: pa.DataType) -> bool:
    """Whether a JSON boolean sits where Arrow typed a float (it would become 0.0 or 1.0)."""
    if not _has_float(kind):
        return False
    if pa.types.is_floating(kind):
        return any(v is True or v is False for v in values)
    if pa.types.is_list(kind):
        return any(v is not None and bools_among_floats(v, kind.value_type) for v in values)
    return any(bools_among_floats([None if v is None else v.get(f.name) for v in values], f.type) for f in kind)


def messages_array(values: Sequence[Any]) -> tuple[pa.Array, bool]:
    """Messages as list<struct>, and whether their extra keys had to become JSON text."""
    try:
        array = pa.array(values)
        if not bools_among_floats(values, array.type):
            return array, False
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        pass
    return messages_extras_as_json(values), True
