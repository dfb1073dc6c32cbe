"""The Rust engine for SFT conversations, and the choice between it and the Python engine.

``RustChatEncoder`` holds the extension's encoder (minijinja + the ``tokenizers`` crate, built
once per process from the tokenizer's own ``tokenizer.json``) and encodes a batch on all cores
with the GIL released. A conversation minijinja does not render (the template raised, or uses a
Python feature minijinja lacks) is encoded again by the Python engine, which decides; those are
counted (``python_rendered``).

``choose_engine`` decides once per job, on the driver, from the template alone: the Rust engine
is used when minijinja compiles the template and renders every probe conversation (multi-turn,
system prompt, tool calls with tools, reasoning, non-ASCII text, every prefix, with and without
the generation prompt) exactly as Jinja2 does, else the Python engine, with the reason reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftscale.data.chat.encoder import ChatEncoder, Conversation, EncodedBatch, special_tokens_of
from ftscale.data.chat.messages import template_messages, template_tools
from ftscale.errors import ConfigError, FtscaleError

ENGINES = ("auto", "rust", "python")

_WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
# What a source's conversations may hold; each is rendered at every prefix by both engines.
PROBES: tuple[tuple[list[dict[str, Any]], Any], ...] = (
    ([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}], None),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  Capital of France?\n"},
      {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Et l'Italie ? — «Rome» 🙂"},
      {"role": "assistant", "content": "Rome.\n\nIt has 2.8 million people."}], None),
    ([{"role": "user", "content": "Weather in Paris for 2 days?"},
      {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
          "name": "get_weather", "arguments": {"city": "Paris", "days": 2, "units": 0.5}}}]},
      {"role": "tool", "content": "{\"temp_c\": 21}", "name": "get_weather"},
      {"role": "assistant", "content": "It is 21 °C."}], [_WEATHER_TOOL]),
    ([{"role": "user", "content": "2+2?"},
      {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."},
      {"role": "user", "content": "3+3?"},
      {"role": "assistant", "content": "6", "reasoning_content": "Three plus three."}], None),
)


@dataclass(frozen=True)
class EngineChoice:
    """Which engine encodes the job's conversations, and why (``reason`` is shown in the report)."""

    engine: str  # "rust" or "python"
    reason: str


class RustChatEncoder:
    """The Rust engine with the Python one behind it for conversations minijinja cannot render.

    Held: the extension's encoder (the tokenizer's vocabulary and merges, the compiled template)
    and the Python engine; per batch, the conversations as Python objects plus their samples.
    """

    def __init__(self, tokenizer: Any, python: ChatEncoder, policy: str, num_threads: int | None = None) -> None:
        from ftscale import _core

        self._python = python
        self.num_threads = num_threads
        self._core = _core.ChatEncoder(python.template, special_tokens_of(tokenizer),
                                       tokenizer.backend_tokenizer.to_str(), policy)

    def render(self, messages: list[dict[str, Any]], tools: Any = None, add_generation_prompt: bool = False) -> str:
        return self._core.render(messages, tools, add_generation_prompt)

    def encode_batch(self, conversations: list[Conversation]) -> EncodedBatch:
        return self._with_retries(self._core.encode_batch(conversations, self.num_threads), conversations.__getitem__)

    def encode_columns(self, columns: PlainMessages, system_prompt: str | None,
                       conversation: Callable[[int], Conversation]) -> EncodedBatch:
        """``encode_batch`` for conversations of plain messages given as columns
        (``plain_messages``); ``conversation(i)`` gives conversation ``i`` as ``encode_batch``
        takes it, for the few the Python engine must encode again."""
        raw = self._core.encode_columns(columns.offsets, columns.role_offsets, columns.role_data,
                                        columns.content_offsets, columns.content_data, columns.role_first,
                                        system_prompt, self.num_threads)
        return self._with_retries(raw, conversation)

    def _with_retries(self, raw: dict[str, Any], conversation: Callable[[int], Conversation]) -> EncodedBatch:
        """The extension's batch, with the conversations it did not render encoded by the Python engine."""
        out = EncodedBatch(expanded_turns=int(raw["expanded_turns"]), located_turns=int(raw["located_turns"]))
        out.ids, out.masks, out.owners = raw["ids"], raw["masks"], raw["owners"]
        retry = [i for i, kind, _ in raw["failures"] if kind == "render"]
        out.failures = [(i, kind, detail) for i, kind, detail in raw["failures"] if kind != "render"]
        if retry:
            again = self._python.encode_batch([conversation(i) for i in retry])
            out.python_rendered = len(retry)
            out.expanded_turns += again.expanded_turns
            out.located_turns += again.located_turns
            samples: list[tuple[int, np.ndarray, np.ndarray]] = list(zip(out.owners, out.ids, out.masks))
            samples.extend((retry[owner], i, m) for owner, i, m in zip(again.owners, again.ids, again.masks))
            samples.sort(key=lambda sample: sample[0])  # stable: a conversation's samples keep their order
            out.failures.extend((retry[i], reason, detail) for i, reason, detail in again.failures)
            out.failures.sort()
            out.owners = [owner for owner, _, _ in samples]
            out.ids = [i for _, i, _ in samples]
            out.masks = [m for _, _, m in samples]
        return out


@dataclass(frozen=True)
class PlainMessages:
    """Conversations whose messages are a role and a text content each, as Arrow stores them:
    conversation ``i`` is messages ``offsets[i]:offsets[i + 1]``; message ``k``'s role is
    ``role_data[role_offsets[k]:role_offsets[k + 1]]`` (UTF-8), its content likewise;
    ``role_first``: the fields' order in each message (what a template that prints a message
    whole sees). Offsets are int64 from 0; the data are views of the Arrow buffers."""

    offsets: np.ndarray
    role_offsets: np.ndarray
    role_data: np.ndarray
    content_offsets: np.ndarray
    content_data: np.ndarray
    role_first: bool


def plain_messages(column: Any) -> PlainMessages | None:
    """``column`` (an Arrow messages column) as ``PlainMessages`` when every message of every
    conversation is exactly a string role and a string content (no nulls anywhere: a null would
    be a dropped key for ``template_messages``), else None. Held: 8 bytes per conversation and
    16 per message of offsets; the text stays in Arrow's buffers (one copy when the column has
    several chunks)."""
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return None
    fields = list(kind.value_type)
    if sorted(f.name for f in fields) != ["content", "role"] or not all(
            pa.types.is_string(f.type) or pa.types.is_large_string(f.type) for f in fields):
        return None
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if lists.null_count:
        return None
    structs = lists.flatten()  # this slice's messages
    children = dict(zip((f.name for f in fields), structs.flatten()))  # adjusted for the struct's offset
    if structs.null_count or children["role"].null_count or children["content"].null_count:
        return None
    return PlainMessages(_from_zero(lists.offsets.to_numpy()), *_string_buffers(children["role"]),
                         *_string_buffers(children["content"]), fields[0].name == "role")


def _from_zero(offsets: np.ndarray) -> np.ndarray:
    offsets = offsets.astype(np.int64)
    return offsets - offsets[0]


def _string_buffers(strings: Any) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, UTF-8 bytes) of an Arrow string array without nulls, the bytes a view."""
    import pyarrow as pa

    _, offsets, data = strings.buffers()
    width = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(offsets, dtype=width)[strings.offset:strings.offset + len(strings) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    return _from_zero(offsets), data[int(offsets[0]):int(offsets[-1])]


def _renderings(render: Any, messages: list[dict[str, Any]], tools: Any) -> list[str | None]:
    out: list[str | None] = []
    for n in range(1, len(messages) + 1):
        for generation_prompt in (False, True):
            try:
                out.append(render(messages[:n], tools, generation_prompt))
            except Exception:  # a template may reject a partial conversation in any way it likes
                out.append(None)
    return out


def choose_engine(tokenizer: Any, python: ChatEncoder, requested: str, policy: str = "expand") -> EngineChoice:
    """Rust when minijinja renders every probe as Jinja2 does (see the module docstring).

    ``requested``: ``auto``, ``rust`` (ConfigError when it cannot be used) or ``python``.
    """
    if requested not in ENGINES:
        raise ConfigError(f"tokenizer.chat_engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    if requested == "python":
        return EngineChoice("python", "tokenizer.chat_engine is 'python'")
    reason = _rust_blocker(tokenizer, python, policy)
    if reason is None:
        return EngineChoice("rust", "minijinja renders every probe conversation as Jinja2 does")
    if requested == "rust":
        raise ConfigError(f"tokenizer.chat_engine: the Rust engine cannot be used: {reason}; set it to 'auto' "
                          "to fall back to the Python engine")
    return EngineChoice("python", reason)


def _rust_blocker(tokenizer: Any, python: ChatEncoder, policy: str) -> str | None:
    try:
        rust = RustChatEncoder(tokenizer, python, policy)
    except FtscaleError as exc:
        return str(exc)
    for number, (messages, tools) in enumerate(PROBES):
        messages, tools = template_messages(messages), template_tools(tools)
        want = _renderings(python.render, messages, tools)
        got = _renderings(rust.render, messages, tools)
        for k, (a, b) in enumerate(zip(want, got)):
            if a != b:
                n, generation_prompt = k // 2 + 1, bool(k % 2)
                return (f"minijinja renders probe conversation {number} (first {n} messages, "
                        f"add_generation_prompt={generation_prompt}) differently from Jinja2")
    return None
