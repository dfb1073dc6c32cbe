"""Preference records in the shapes users bring, converted to one pair (or a quarantine reason).

A pair is a prompt (a message list) and two completions, ``chosen`` and ``rejected``, each one
assistant message. Accepted record shapes (field names are the source's ``prompt_field``,
``messages_field``, ``chosen_field``, ``rejected_field``):

- ``{prompt: str, chosen: str, rejected: str}`` (a string prompt is one user message, a string
  completion one assistant message);
- ``prompt`` as a message list (OpenAI or ShareGPT ``from``/``value``, as ``chat_formats``);
- ``{messages: [...], chosen, rejected}``: the messages field (else ShareGPT ``conversations``)
  is the prompt when the prompt field is absent;
- ``chosen`` / ``rejected`` as a message list (TRL's conversational format: one assistant
  message) or one message object (LLaMA-Factory's ShareGPT preference format); when both start
  with the prompt's messages (UltraFeedback: the whole conversation), those are dropped;
- TRL's implicit prompt: no prompt field, ``chosen`` and ``rejected`` are whole conversations;
  the prompt is their longest common message prefix.

What is left of each side must be one assistant message. Quarantine reasons (``validate.REASONS``),
the detail naming the field: ``missing_field``, ``wrong_type``, ``wrong_role``, ``empty_text``
(a blank prompt), ``empty_side`` (a blank chosen or rejected completion), ``identical_sides``
(chosen == rejected), ``oversize``.

The pair is stored as JSON text in one string column, ``PAIR_FIELD`` (``pair_json``), so every
batch of a source has the same type whatever shapes its records came in; the tokenize step and
dedup read it back with ``json.loads``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ftscale.data.io.chat_formats import SHAREGPT_FIELD, convert_messages

PAIR_FIELD = "ftscale_pair"  # the column a source's converted pairs are stored in (JSON text)

Message = dict[str, Any]
Result = tuple[str | None, str, dict[str, Any] | None]  # (reason, detail, pair)


@dataclass(frozen=True)
class PairFields:
    """The columns of a preference record."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    messages: str = "messages"

    def prompt_keys(self) -> tuple[str, ...]:
        """The fields tried for the prompt, in order."""
        return tuple(dict.fromkeys((self.prompt, self.messages, SHAREGPT_FIELD)))

    def columns(self) -> tuple[str, ...]:
        """Every column the conversion reads."""
        return (*self.prompt_keys(), self.chosen, self.rejected)


def _clean(message: Message) -> Message:
    # Arrow gives every message every key seen in its column (absent ones None): equality of
    # two messages must not depend on which other messages shared their batch.
    return {k: v for k, v in message.items() if v is not None}


def _blank(message: Message) -> bool:
    return not message["content"].strip() and not message.get("tool_calls")


def _side(record: dict[str, Any], key: str, role_map: dict[str, str]) -> tuple[str | None, str, list[Message] | None]:
    value = record.get(key)
    if value is None:
        return "missing_field", f"field {key!r} is {'null' if key in record else 'absent'}", None
    if isinstance(value, dict):  # one message object
        value = [value]
    reason, detail, messages = convert_messages(value, key, role_map, default_role="assistant")
    if reason == "empty_text":  # an empty message list
        return "empty_side", detail, None
    return reason, detail, None if messages is None else [_clean(m) for m in messages]


def _shared_prefix(a: list[Message], b: list[Message]) -> int:
    """Leading messages ``a`` and ``b`` share, leaving each at least one."""
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def record_pair(record: dict[str, Any], fields: PairFields, role_map: dict[str, str] | None = None,
                max_messages: int | None = None) -> Result:
    """The pair ``{"prompt": [messages], "chosen": message, "rejected": message}`` of one record
    of any accepted shape, or the reason it is quarantined (see the module docstring)."""
    role_map = role_map or {}
    prompt_key = next((k for k in fields.prompt_keys() if record.get(k) is not None), None)
    prompt: list[Message] | None = None
    if prompt_key is not None:
        reason, detail, prompt = convert_messages(record[prompt_key], prompt_key, role_map, default_role="user")
        if reason is not None:
            return reason, detail, None
        prompt = [_clean(m) for m in prompt or []]
    chosen_reason, chosen_detail, chosen = _side(record, fields.chosen, role_map)
    if chosen_reason is not None:
        return chosen_reason, chosen_detail, None
    rejected_reason, rejected_detail, rejected = _side(record, fields.rejected, role_map)
    if rejected_reason is not None:
        return rejected_reason, rejected_detail, None
    assert chosen is not None and rejected is not None
    if prompt is None:  # TRL's implicit prompt: the conversations' shared beginning
        shared = _shared_prefix(chosen, rejected)
        if not shared:
            return "missing_field", (f"no prompt: fields {fields.prompt!r} and {fields.messages!r} are absent, and "
                                     f"{fields.chosen!r} and {fields.rejected!r} share no leading messages"), None
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        prompt_key = fields.chosen
    else:
        n = len(prompt)
        if len(chosen) > n and len(rejected) > n and chosen[:n] == prompt and rejected[:n] == prompt:
            chosen, rejected = chosen[n:], rejected[n:]  # whole conversations that repeat the prompt
    for key, side in ((fields.chosen, chosen), (fields.rejected, rejected)):
        if len(side) != 1:
            return "wrong_type", (f"field {key!r}: the completion after the prompt is {len(side)} messages; "
                                  "expected one assistant message"), None
        if side[0]["role"] != "assistant":
            return "wrong_role", f"field {key!r}: the completion has role {side[0]['role']!r}; expected 'assistant'", None
    if all(_blank(m) for m in prompt):
        return "empty_text", f"field {prompt_key!r}: the prompt is empty or whitespace-only", None
    for key, side in ((fields.chosen, chosen), (fields.rejected, rejected)):
        if _blank(side[0]):
            return "empty_side", f"field {key!r}: the completion is empty or whitespace-only", None
    if max_messages is not None and len(prompt) + 1 > max_messages:
        return "oversize", f"{len(prompt) + 1} messages > max_messages={max_messages}", None
    if chosen[0] == rejected[0]:
        return "identical_sides", f"fields {fields.chosen!r} and {fields.rejected!r} hold the same completion", None
    return None, "", {"prompt": prompt, "chosen": chosen[0], "rejected": rejected[0]}


def pair_json(pair: dict[str, Any]) -> str:
    """The stored form of a pair (values JSON cannot hold, such as Parquet timestamps in a
    message's extra keys, as their text)."""
    return json.dumps(pair, ensure_ascii=False, default=str)


def pair_content_bytes(pair: dict[str, Any]) -> int:
    """UTF-8 bytes of every message content of a pair (the columnar readers' size cap)."""
    messages = [*pair["prompt"], pair["chosen"], pair["rejected"]]
    return sum(len(m["content"].encode("utf-8")) for m in messages)


def pair_texts(stored: str | None) -> tuple[list[tuple[str, str]], str]:
    """(prompt (role, content) turns, chosen content) of a stored pair: what dedup and
    decontamination read."""
    if stored is None:
        return [], ""
    pair = json.loads(stored)
    return [(m["role"], m["content"]) for m in pair["prompt"]], pair["chosen"]["content"]
