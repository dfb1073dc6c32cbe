"""A stored conversation as the chat template sees it, the same for the Rust and Python engines.

Records reach the tokenize step through Arrow, which changes them in ways templates notice:
a struct column gives every message every key seen in the batch (absent keys become None), and
a source whose message keys do not type together stores keys other than role/content as JSON
text. ``template_messages`` undoes both and applies what ``transformers.apply_chat_template``
does before rendering, so both engines render exactly the same data:

- keys whose value is None are dropped, at every level of dicts (Arrow cannot tell an explicit
  null member from an absent one, and templates handle an absent key, not a None);
- JSON-text extras are decoded; a tool call's ``arguments`` given as a JSON object string (the
  OpenAI wire form) becomes that object, so templates that ``| tojson`` it write JSON, not a
  quoted string;
- reasoning is aliased as ``transformers`` does: ``reasoning_content`` (the name templates read),
  from ``thinking`` or ``reasoning`` when only those are set, and ``thinking`` (gpt-oss templates);
- the source's ``system_prompt`` becomes the first message of a conversation without one.
"""

from __future__ import annotations

import json
from typing import Any

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _decoded(value: Any) -> Any:
    """A JSON-text extra back to its value (a value that is not JSON text stays as it is)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _json_object(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _object_arguments(call: Any) -> Any:
    """A tool call whose ``arguments`` (flat, or under ``function``) is a JSON object string,
    with that object in its place."""
    if not isinstance(call, dict):
        return call
    function = call.get("function")
    if isinstance(function, dict):
        parsed = _json_object(function.get("arguments"))
        return call if parsed is None else {**call, "function": {**function, "arguments": parsed}}
    parsed = _json_object(call.get("arguments"))
    return call if parsed is None else {**call, "arguments": parsed}


def _message(message: dict[str, Any], json_extras: bool) -> dict[str, Any]:
    if len(message) == 2 and type(message.get("role")) is str and type(message.get("content")) is str:
        # The common message, role and content text only, has nothing to drop, decode or alias
        # (the general path below was ~15 µs of a conversation's ~60 µs in SFT prep).
        return dict(message)
    out = {}
    for key, value in message.items():
        if value is None:
            continue
        if json_extras and key not in ("role", "content"):
            value = _decoded(value)
        out[key] = _without_none(value)
    calls = out.get("tool_calls")
    if isinstance(calls, list):
        out["tool_calls"] = [_object_arguments(c) for c in calls]
    reasoning = next((out[k] for k in REASONING_FIELDS if out.get(k) is not None), None)
    if reasoning is not None:  # transformers' _alias_reasoning_fields, same key order
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


def template_messages(messages: list[dict[str, Any]], system_prompt: str | None = None,
                      json_extras: bool = False) -> list[dict[str, Any]]:
    """The messages a template renders (see the module docstring)."""
    out = [_message(m, json_extras) for m in messages]
    if system_prompt is not None and not any(m.get("role") == "system" for m in out):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def template_tools(tools: Any) -> list[Any] | None:
    """A record's tool definitions as the template's ``tools`` (None when it has none)."""
    tools = _decoded(tools)
    if tools is None:
        return None
    if not isinstance(tools, list):
        tools = [tools]
    return [_without_none(_decoded(t)) for t in tools] or None
