"""Tests for ftscale.data.io.chat_formats: the chat record shapes users bring, and the SFT
source defaults (``overlong`` by kind)."""

from __future__ import annotations

import json

import pytest

from ftscale.config.prep import SourceConfig
from ftscale.data.chat import template_messages
from ftscale.data.io.chat_formats import check_role_map, convert_messages, record_messages
from ftscale.errors import ConfigError

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def ok(record: dict, messages_field: str = "messages", role_map: dict | None = None) -> list[dict]:
    reason, detail, messages = record_messages(record, messages_field, role_map)
    assert reason is None, detail
    return messages


def bad(record: dict, messages_field: str = "messages") -> tuple[str, str]:
    reason, detail, messages = record_messages(record, messages_field)
    assert messages is None and reason is not None
    return reason, detail


def test_openai_messages_with_text_parts_tool_calls_tool_role_and_reasoning():
    record = {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": "Weather in Paris?", "extra": 1},
        {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning_content": "Need the tool."},
        {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "c1", "name": "get_weather"},
        {"role": "assistant", "content": "21 °C.", "thinking": "Read it off."},
    ]}
    assert ok(record) == [
        {"role": "system", "content": "Be brief.\nBe kind."},
        {"role": "user", "content": "Weather in Paris?", "extra": 1},  # kept, not dropped
        {"role": "assistant", "content": "", "tool_calls": [CALL], "reasoning_content": "Need the tool."},
        {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "c1", "name": "get_weather"},
        {"role": "assistant", "content": "21 °C.", "reasoning_content": "Read it off."},
    ]
    # What the template sees: arguments as an object, reasoning under both names transformers uses.
    seen = template_messages(ok(record))
    assert seen[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert seen[4]["reasoning_content"] == seen[4]["thinking"] == "Read it off."


def test_sharegpt_with_system_field_function_call_and_role_map():
    record = {"system": "Be brief.", "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": '{"temp_c": 21}'},
        {"from": "gpt", "value": "21 °C."},
        {"from": "Teacher", "value": "Good."},
    ]}
    messages = ok(record, role_map={"Teacher": "user"})
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert messages[0]["content"] == "Be brief."
    assert messages[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    reason, detail = bad({"conversations": record["conversations"]})
    assert reason == "wrong_role" and "'Teacher'" in detail and "role_map" in detail


def test_alpaca_and_prompt_completion():
    assert ok({"instruction": "Translate.", "input": "chat", "output": "cat"}) == [
        {"role": "user", "content": "Translate.\n\nchat"}, {"role": "assistant", "content": "cat"}]
    assert ok({"instruction": "Name a colour.", "input": "  ", "output": "Blue."})[0]["content"] == "Name a colour."
    assert ok({"prompt": "2+2?", "completion": "4"}) == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    conversational = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                      "completion": [{"role": "assistant", "content": "a"}]}
    assert [m["role"] for m in ok(conversational)] == ["system", "user", "assistant"]


@pytest.mark.parametrize(("record", "reason", "names"), [
    ({"text": "plain"}, "missing_field", "'messages'"),
    ({"messages": "hi"}, "wrong_type", "'messages'"),
    ({"messages": [{"role": "user", "content": 3}]}, "wrong_type", "'content'"),
    ({"messages": [{"content": "no role"}]}, "wrong_type", "'role'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "wrong_type", "'image_url'"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}]},
     "wrong_type", "function name"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": "{not json"}}]}]}, "wrong_type", "'arguments'"),
    ({"instruction": "x", "output": 5}, "wrong_type", "'output'"),
    ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": ""}]}, "empty_text", "empty"),
    ({"messages": []}, "empty_text", "'messages'"),
])
def test_unknown_or_broken_shapes_are_quarantined_naming_the_field(record, reason, names):
    got, detail = bad(record)
    assert got == reason and names in detail


def test_convert_messages_of_a_preference_answer():
    assert convert_messages("Blue.", "chosen", default_role="assistant") == (
        None, "", [{"role": "assistant", "content": "Blue."}])
    assert convert_messages(None, "rejected")[0] == "wrong_type"


def test_role_map_and_overlong_defaults():
    with pytest.raises(ConfigError, match="sources.0.role_map.bot"):
        check_role_map({"bot": "robot"}, "sources.0.role_map")
    check_role_map({"bot": "assistant"}, "sources.0.role_map")
    # A minimal SFT source runs: its overlong default is truncate, a CPT source's is split.
    sft = SourceConfig(name="chat", paths=["a.jsonl"], kind="sft")
    assert sft.overlong == "truncate"
    sft.check("sources.0")
    assert SourceConfig(name="web", paths=["a.jsonl"]).overlong == "split"
    with pytest.raises(ConfigError, match="sources.0.overlong"):
        SourceConfig(name="chat", paths=["a.jsonl"], kind="sft", overlong="split").check("sources.0")
