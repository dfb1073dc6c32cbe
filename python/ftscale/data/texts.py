"""What the dedup engine reads from a record: one text per record, or one segment per turn.

Text records contribute their text field. Chat records contribute their message contents:
joined by newlines for dedup (so two conversations are duplicates when their turns are), and
as separate segments for decontamination (so an n-gram never spans two turns).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROLES = ("system", "user", "assistant")


def record_texts(table: pa.Table, text_field: str, messages_field: str | None) -> pa.ChunkedArray | pa.Array:
    """One string per record: the text field, or the chat contents joined by newlines."""
    if messages_field is None:
        return table.column(text_field)
    contents = [
        "\n".join(m["content"] for m in (messages or []))
        for messages in table.column(messages_field).to_pylist()
    ]
    return pa.array(contents, type=pa.string())


def record_segments(
    table: pa.Table, text_field: str, messages_field: str | None, roles: Sequence[str] | None = None
) -> list[str | list[str]]:
    """Per record: its text, or (chat) the list of contents of the turns whose role is in ``roles``."""
    if messages_field is None:
        return table.column(text_field).to_pylist()
    wanted = set(roles or ROLES)
    return [
        [m["content"] for m in (messages or []) if m["role"] in wanted]
        for messages in table.column(messages_field).to_pylist()
    ]


def column_or_none(table: pa.Table, name: str) -> np.ndarray | None:
    """A numeric column as float64 (nulls as NaN), or None when absent."""
    if name not in table.column_names:
        return None
    return pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)
