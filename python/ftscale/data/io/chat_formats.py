"""Chat records in the shapes users bring, converted to one message form (or a quarantine reason).

Accepted record shapes, tried in this order:

- OpenAI messages: ``messages_field`` holds ``[{role, content, ...}]``; ``content`` may be a
  string or a list of text parts (``[{"type": "text", "text": ...}]``, joined with newlines); an
  assistant message may carry ``tool_calls`` (``[{"type": "function", "function": {"name",
  "arguments"}}]``, arguments an object or its JSON text) and ``reasoning_content`` (or
  ``thinking`` / ``reasoning``); the ``tool`` role answers a call (``tool_call_id``, ``name``);
- ShareGPT: ``conversations`` (or ``messages_field``) holds ``[{from, value}]`` with ``from`` in
  human / gpt / system / tool (and the aliases below); a ``function_call`` turn's value is the
  call's JSON (``{"name", "arguments"}``) and becomes an assistant tool call; a record-level
  ``system`` string becomes the system message;
- Alpaca: ``instruction``, optional ``input``, ``output`` → [user, assistant];
- prompt / completion: each a string (→ a user / an assistant message) or a message list.

Every message comes out as ``{"role", "content"}`` (content a string) plus, when present,
``tool_calls``, ``tool_call_id``, ``name`` and ``reasoning_content``; other keys of an OpenAI
message are kept as they are.
``convert_messages`` converts one message list on its own, for fields such as a preference
record's ``chosen`` / ``rejected``. Role names are mapped through ``ROLE_ALIASES`` and the
source's ``role_map``; any other role is ``wrong_role``.
"""

from __future__ import annotations

import json
from typing import Any

from ftscale.errors import ConfigError

CHAT_ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {
    "human": "user", "gpt": "assistant", "model": "assistant", "chatgpt": "assistant", "bot": "assistant",
    "observation": "tool", "function_response": "tool", "ipython": "tool", "function_call": "assistant",
}
SHAREGPT_FIELD = "conversations"
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_TEXT_PART_JOINER = "\n"  # as vLLM joins text parts for templates that take string content

Result = tuple[str | None, str, list[dict[str, Any]] | None]  # (reason, detail, messages)


def check_role_map(role_map: dict[str, str], key: str) -> None:
    """ConfigError naming ``key`` when a mapped role is not one of ``CHAT_ROLES``."""
    for name, role in role_map.items():
        if role not in CHAT_ROLES:
            raise ConfigError(f"{key}.{name}: {role!r} is not a chat role; choose one of {', '.join(CHAT_ROLES)}")


def _type_name(value: Any) -> str:
    from ftscale.data.io.validate import json_type_name

    return json_type_name(value)


def _text(content: Any, where: str) -> tuple[str | None, str]:
    """(text, error) of a message content: a string or a list of text parts."""
    if isinstance(content, str):
        return content, ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and part.get("type") not in (None, "text"):
                return None, f"{where} content part {j} has type {part.get('type')!r}; only text parts are supported"
            else:
                return None, f"{where} content part {j} is not a text part ({{'type': 'text', 'text': str}})"
        return _TEXT_PART_JOINER.join(texts), ""
    return None, f"{where} 'content' is {_type_name(content)}, expected a string or a list of text parts"


def _check_call(call: Any, where: str) -> str:
    """An error for a malformed tool call ('' when it is fine)."""
    if not isinstance(call, dict):
        return f"{where} is {_type_name(call)}, expected an object"
    function = call.get("function", call)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return f"{where} has no function name (expected {{'type': 'function', 'function': {{'name', 'arguments'}}}})"
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return f"{where} 'arguments' is a string that is not JSON"
    if arguments is not None and not isinstance(arguments, dict):
        return f"{where} 'arguments' is {_type_name(arguments)}, expected an object"
    return ""


def _message(raw: Any, i: int, role_map: dict[str, str], where: str) -> tuple[str | None, str, dict[str, Any] | None]:
    where = f"{where}message {i}"
    if not isinstance(raw, dict):
        return "wrong_type", f"{where} is {_type_name(raw)}, expected an object", None
    sharegpt = "role" not in raw and "from" in raw
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    name = raw.get(role_key)
    if not isinstance(name, str):
        missing = "absent" if name is None else _type_name(name)
        return "wrong_type", f"{where} '{role_key}' is {missing}, expected a string (messages need 'role' or ShareGPT 'from')", None
    role = role_map.get(name) or (name if name in CHAT_ROLES else ROLE_ALIASES.get(name.lower()))
    if role is None:
        return "wrong_role", (f"{where} has role {name!r}; allowed: {', '.join(CHAT_ROLES)} and "
                              f"{', '.join(ROLE_ALIASES)} (map others with the source's role_map)"), None
    out: dict[str, Any] = {"role": role}
    if sharegpt and name.lower() == "function_call" and role == "assistant":
        call = raw.get(content_key)
        try:
            call = json.loads(call) if isinstance(call, str) else call
        except ValueError:
            return "wrong_type", f"{where} (function_call) 'value' is not JSON", None
        error = _check_call(call, f"{where} (function_call) 'value'")
        if error:
            return "wrong_type", error, None
        out.update(content="", tool_calls=[{"type": "function", "function": call}])
        return None, "", out
    calls = raw.get("tool_calls")
    content = raw.get(content_key)
    if content is None and role == "assistant" and calls:
        content = ""
    if content is None:
        return "wrong_type", f"{where} has no '{content_key}'", None
    text, error = _text(content, where)
    if text is None:
        return "wrong_type", error, None
    out["content"] = text
    if calls is not None:
        if not isinstance(calls, list):
            return "wrong_type", f"{where} 'tool_calls' is {_type_name(calls)}, expected a list", None
        for j, call in enumerate(calls):
            error = _check_call(call, f"{where} tool call {j}")
            if error:
                return "wrong_type", error, None
        if calls:
            out["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str):
                return "wrong_type", f"{where} '{key}' is {_type_name(raw[key])}, expected a string", None
            out[key] = raw[key]
    reasoning = next((raw[k] for k in _REASONING_KEYS if raw.get(k) is not None), None)
    if reasoning is not None:
        if not isinstance(reasoning, str):
            return "wrong_type", f"{where} reasoning is {_type_name(reasoning)}, expected a string", None
        out["reasoning_content"] = reasoning
    # Keys the conversion does not read (per-message weights, ids, metadata) travel with the
    # message, so nothing of the record is lost; the template ignores what it does not use.
    handled = {role_key, content_key, "tool_calls", "tool_call_id", "name", *_REASONING_KEYS}
    out.update({k: v for k, v in raw.items() if k not in handled and k not in out})
    return None, "", out


def convert_messages(value: Any, field: str, role_map: dict[str, str] | None = None,
                     default_role: str | None = None) -> Result:
    """One message list (OpenAI or ShareGPT) in the common form. A string is one message of
    ``default_role`` when given (a prompt, a completion, a preference answer)."""
    role_map = role_map or {}
    if isinstance(value, str) and default_role is not None:
        value = [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        return "wrong_type", f"field {field!r} is {_type_name(value)}, expected a list of messages", None
    where = f"field {field!r} " if field else ""
    messages = []
    for i, raw in enumerate(value):
        reason, detail, message = _message(raw, i, role_map, where)
        if reason is not None:
            return reason, detail, None
        messages.append(message)
    if not messages:
        return "empty_text", f"field {field!r} has no messages", None
    return None, "", messages


def _blank(messages: list[dict[str, Any]]) -> bool:
    return all(not m["content"].strip() and not m.get("tool_calls") for m in messages)


def record_messages(record: dict[str, Any], messages_field: str, role_map: dict[str, str] | None = None) -> Result:
    """The messages of a chat record of any accepted shape (see the module docstring)."""
    for field in dict.fromkeys((messages_field, SHAREGPT_FIELD)):
        if record.get(field) is not None:
            reason, detail, messages = convert_messages(record[field], field, role_map)
            if messages is not None and isinstance(record.get("system"), str) and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": record["system"]})
            return _finish(reason, detail, messages)
    if record.get("instruction") is not None or record.get("output") is not None:
        return _finish(*_alpaca(record))
    if record.get("prompt") is not None or record.get("completion") is not None:
        prompt = convert_messages(record.get("prompt"), "prompt", role_map, default_role="user")
        if prompt[0] is not None:
            return prompt
        completion = convert_messages(record.get("completion"), "completion", role_map, default_role="assistant")
        if completion[0] is not None:
            return completion
        return _finish(None, "", [*(prompt[2] or []), *(completion[2] or [])])
    return ("missing_field", f"field {messages_field!r} is absent or null, and the record has no ShareGPT "
            f"{SHAREGPT_FIELD!r}, Alpaca 'instruction'/'output' or 'prompt'/'completion' fields", None)


def _alpaca(record: dict[str, Any]) -> Result:
    instruction, output, extra = record.get("instruction"), record.get("output"), record.get("input")
    for key, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str):
            return "wrong_type", f"Alpaca field {key!r} is {_type_name(value)}, expected a string", None
    if extra is not None and not isinstance(extra, str):
        return "wrong_type", f"Alpaca field 'input' is {_type_name(extra)}, expected a string", None
    prompt = instruction + ("\n\n" + extra if extra and extra.strip() else "")
    return None, "", [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _finish(reason: str | None, detail: str, messages: list[dict[str, Any]] | None) -> Result:
    if reason is None and messages is not None and _blank(messages):
        return "empty_text", "every message content is empty or whitespace-only", None
    return reason, detail, messages
