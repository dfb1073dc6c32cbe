"""What the dedup engine reads from a record: one text per record, or one segment per turn.

Text records contribute their text field. Chat records contribute their message contents:
joined by newlines for dedup (so two conversations are duplicates when their turns are), and
as separate segments for decontamination (so an n-gram never spans two turns). Preference pairs
(``pair_field``: the stored pair, ``io.preference``) contribute the prompt's turns followed by the
chosen reply, the same way; the rejected reply is never trained toward, so it is not compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROLES = ("system", "user", "assistant")


def record_texts(table: pa.Table, text_field: str, messages_field: str | None,
                 pair_field: str | None = None) -> pa.ChunkedArray | pa.Array:
    """One string per record: the text field, the chat contents joined by newlines, or a pair's
    prompt contents and chosen reply joined by newlines."""
    if pair_field is not None:
        from ftscale.data.io.preference import pair_texts

        joined = []
        for stored in table.column(pair_field).to_pylist():
            prompt, chosen = pair_texts(stored)
            joined.append("\n".join([*(content for _, content in prompt), chosen]))
        return pa.array(joined, type=pa.string())
    if messages_field is None:
        return table.column(text_field)
    contents = [
        "\n".join(m["content"] for m in (messages or []))
        for messages in table.column(messages_field).to_pylist()
    ]
    return pa.array(contents, type=pa.string())


def record_segments(
    table: pa.Table, text_field: str, messages_field: str | None, roles: Sequence[str] | None = None,
    pair_field: str | None = None,
) -> list[str | list[str]]:
    """Per record: its text, or (chat) the list of contents of the turns whose role is in ``roles``
    (a pair: the prompt's turns, then the chosen reply as an assistant turn)."""
    wanted = set(roles or ROLES)
    if pair_field is not None:
        from ftscale.data.io.preference import pair_texts

        out: list[str | list[str]] = []
        for stored in table.column(pair_field).to_pylist():
            prompt, chosen = pair_texts(stored)
            out.append([content for role, content in [*prompt, ("assistant", chosen)] if role in wanted])
        return out
    if messages_field is None:
        return table.column(text_field).to_pylist()
    return [
        [m["content"] for m in (messages or []) if m["role"] in wanted]
        for messages in table.column(messages_field).to_pylist()
    ]


def column_or_none(table: pa.Table, name: str) -> np.ndarray | None:
    """A numeric column as float64 (nulls as NaN), or None when absent."""
    if name not in table.column_names:
        return None
    return pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)
