"""The chat templates of the model families users fine-tune most, under both chat engines.

Each template is written here from its public definition (the model's ``tokenizer_config.json``;
the Qwen 2.5 and Qwen3 ones keep the parts a text conversation with tools reaches). Every test
runs with the SmolLM2 tokenizer, with the family's turn markers added as special tokens, as they
are in the family's own vocabulary. Checked by hand: the rendering, and the decoded text of every
supervised run (an assistant turn's text plus its end-of-turn marker, nothing else). Checked
mechanically: the Rust engine (minijinja + ``tokenizers`` crate, byte-level BPE fast path) gives
the Python engine's ids and masks, byte for byte, on every conversation here and on random ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_runs import supervised_runs
from ftscale.data.chat import ChatEncoder, RustChatEncoder, choose_engine, template_messages, template_tools

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN25 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}"
    "{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == \"assistant\" %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == \"tool\" %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3: earlier turns' reasoning is dropped once a later user query follows.
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and "
    "not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}"
    "{%- endif %}"
    "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == \"assistant\" %}{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and content) or (not loop.first) %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}"
    "{%- endif %}{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == \"tool\" %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# Mistral-7B-Instruct-v0.1: no system role, no generation prompt; a reply follows " [/INST]".
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Gemma 3: the system prompt is folded into the first user turn; the assistant role is "model".
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = \"\" %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = \"model\" %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Phi-3-mini-4k-instruct: a conversation without a generation prompt ends with EOS.
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# (template or None for SmolLM2's stock ChatML, the family's marker tokens)
FAMILIES = {
    "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "qwen2.5": (QWEN25, []),
    "qwen3": (QWEN3, ["<think>", "</think>", "<tool_call>", "</tool_call>"]),
    "mistral": (MISTRAL, ["[INST]", "[/INST]"]),
    "gemma": (GEMMA, ["<start_of_turn>", "<end_of_turn>"]),
    "phi3": (PHI3, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "chatml": (None, []),
}
BOS, EOS = "<|im_start|>", "<|im_end|>"  # SmolLM2's bos_token and eos_token

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


MULTI_TURN = [system("Be brief."), user("Capital of France?"), assistant("Paris."),
              user("And of Italy? «Rome» 🙂"), assistant("Rome, about 2.8 million people.")]
NO_SYSTEM = MULTI_TURN[1:]


@pytest.fixture(scope="module")
def encoders(smol_tokenizer_dir: Path):
    """family -> (tokenizer, Python engine, Rust engine)."""
    from transformers import AutoTokenizer

    out = {}
    for family, (template, markers) in FAMILIES.items():
        tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
        if markers:
            tok.add_tokens(markers, special_tokens=True)
        python = ChatEncoder(tok, chat_template=template)
        out[family] = (tok, python, RustChatEncoder(tok, python, "expand", num_threads=2))
    return out


def encode_both(encoders, family: str, messages: list[dict], tools=None):
    """The Python engine's batch for one conversation, after checking the Rust one equals it."""
    tok, python, rust = encoders[family]
    conversation = [(template_messages(messages), template_tools(tools))]
    want, got = python.encode_batch(conversation), rust.encode_batch(conversation)
    assert got.python_rendered == 0, "minijinja must render the template itself"
    assert (got.owners, got.failures, got.expanded_turns) == (want.owners, want.failures, want.expanded_turns)
    for ids_a, ids_b, mask_a, mask_b in zip(want.ids, got.ids, want.masks, got.masks, strict=True):
        assert ids_b.dtype == ids_a.dtype and mask_b.dtype == mask_a.dtype
        assert ids_b.tobytes() == ids_a.tobytes() and mask_b.tobytes() == mask_a.tobytes()
    return want


def sample_runs(encoders, family: str, batch) -> list[list[str]]:
    tok = encoders[family][0]
    return [supervised_runs(tok, ids, mask) for ids, mask in zip(batch.ids, batch.masks)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_template_takes_the_rust_engine_with_the_fast_tokenizer(encoders, family):
    tok, python, rust = encoders[family]
    assert choose_engine(tok, python, "auto").engine == "rust"
    assert rust._core.fast_path  # SmolLM2 is a byte-level BPE: the fast path must hold
    # Every one of these templates builds turns with string `+` chains; the Rust engine must
    # render them fused (one call per chain), with the same text (the other tests check).
    assert rust._core.fused_concatenations
    # Templates whose loop over the messages looks only backwards give every prefix rendering
    # from one render; the others (a look at the next message, history rewritten, the system
    # prompt folded over a slice) render each prefix. Both are held to the Python engine below.
    assert rust._core.prefixes_from_one_render == (family in {"llama3", "mistral", "phi3", "chatml"})
    text = "Hi <|im_end|> there\n\n  «é» 🙂 don't 123456"
    ids, offsets = rust._core.tokenize(text)
    want = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ids.tolist() == want["input_ids"] and offsets == [tuple(o) for o in want["offset_mapping"]]


def test_llama3(encoders):
    batch = encode_both(encoders, "llama3", MULTI_TURN)
    h = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert batch.texts == [BOS + h.format("system") + "Be brief.<|eot_id|>" + h.format("user")
                           + "Capital of France?<|eot_id|>" + h.format("assistant") + "Paris.<|eot_id|>"
                           + h.format("user") + "And of Italy? «Rome» 🙂<|eot_id|>" + h.format("assistant")
                           + "Rome, about 2.8 million people.<|eot_id|>"]
    assert sample_runs(encoders, "llama3", batch) == [["Paris.<|eot_id|>", "Rome, about 2.8 million people.<|eot_id|>"]]


def test_qwen25_with_tool_calls(encoders):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [user("Weather in Paris?"), assistant("", tool_calls=[call]),
                {"role": "tool", "content": '{"temp_c": 21}', "name": "get_weather"}, assistant("It is 21 °C.")]
    batch = encode_both(encoders, "qwen2.5", messages, [WEATHER_TOOL])
    (text,) = batch.texts
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert '<|im_start|>user\n<tool_response>\n{"temp_c": 21}\n</tool_response><|im_end|>' in text
    assert '"required": ["city"]' in text  # tools | tojson, as Python's json.dumps writes it
    assert sample_runs(encoders, "qwen2.5", batch) == [[
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 21 °C.<|im_end|>"]]
    plain = encode_both(encoders, "qwen2.5", NO_SYSTEM)
    assert plain.texts[0].startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert sample_runs(encoders, "qwen2.5", plain) == [["Paris.<|im_end|>", "Rome, about 2.8 million people.<|im_end|>"]]


def test_qwen3_reasoning_turns_are_all_trained_with_their_reasoning(encoders):
    messages = [user("2+2?"), assistant("4", reasoning_content="Two plus two is four."),
                user("3+3?"), assistant("6", reasoning_content="Three plus three.")]
    batch = encode_both(encoders, "qwen3", messages)
    assert batch.owners == [0, 0] and batch.expanded_turns == 1 and not batch.failures
    full, first = batch.texts
    # The full rendering drops turn 1's reasoning, so turn 1 gets its own sample, which keeps it.
    assert full == ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
                    "<|im_start|>user\n3+3?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\nThree plus three.\n</think>\n\n6<|im_end|>\n")
    assert first == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nTwo plus two is four.\n</think>\n\n4<|im_end|>\n"
    assert sample_runs(encoders, "qwen3", batch) == [
        ["<think>\nThree plus three.\n</think>\n\n6<|im_end|>"],
        ["<think>\nTwo plus two is four.\n</think>\n\n4<|im_end|>"]]
    # Reasoning inline in the content, as many SFT sets store it, is handled the same way.
    inline = [user("2+2?"), assistant("<think>\nadd\n</think>\n\n4"), user("3+3?"), assistant("<think>\nadd\n</think>\n\n6")]
    batch = encode_both(encoders, "qwen3", inline)
    assert sample_runs(encoders, "qwen3", batch) == [["<think>\nadd\n</think>\n\n6<|im_end|>"],
                                                     ["<think>\nadd\n</think>\n\n4<|im_end|>"]]


def test_mistral_has_no_generation_prompt(encoders):
    batch = encode_both(encoders, "mistral", NO_SYSTEM)
    assert batch.texts == [BOS + "[INST] Capital of France? [/INST]Paris." + EOS
                           + "[INST] And of Italy? «Rome» 🙂 [/INST]Rome, about 2.8 million people." + EOS]
    assert sample_runs(encoders, "mistral", batch) == [["Paris." + EOS, "Rome, about 2.8 million people." + EOS]]
    # A system message is what this template rejects: the record is quarantined, naming why.
    failed = encoders["mistral"][1].encode_batch([(MULTI_TURN, None)]).failures
    assert [(i, reason) for i, reason, _ in failed] == [(0, "template_mismatch")]
    assert "roles must alternate" in failed[0][2]


def test_gemma_folds_the_system_prompt_into_the_first_user_turn(encoders):
    batch = encode_both(encoders, "gemma", MULTI_TURN)
    assert batch.texts == [BOS + "<start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>\n"
                           "<start_of_turn>model\nParis.<end_of_turn>\n"
                           "<start_of_turn>user\nAnd of Italy? «Rome» 🙂<end_of_turn>\n"
                           "<start_of_turn>model\nRome, about 2.8 million people.<end_of_turn>\n"]
    assert sample_runs(encoders, "gemma", batch) == [["Paris.<end_of_turn>", "Rome, about 2.8 million people.<end_of_turn>"]]


def test_phi3_end_of_conversation_eos_is_not_part_of_a_turn(encoders):
    batch = encode_both(encoders, "phi3", MULTI_TURN)
    assert batch.texts == ["<|system|>\nBe brief.<|end|>\n<|user|>\nCapital of France?<|end|>\n"
                           "<|assistant|>\nParis.<|end|>\n<|user|>\nAnd of Italy? «Rome» 🙂<|end|>\n"
                           "<|assistant|>\nRome, about 2.8 million people.<|end|>\n" + EOS]
    assert sample_runs(encoders, "phi3", batch) == [["Paris.<|end|>", "Rome, about 2.8 million people.<|end|>"]]


def test_chatml_smollm2_stock_template(encoders):
    batch = encode_both(encoders, "chatml", NO_SYSTEM)
    assert batch.texts[0].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert sample_runs(encoders, "chatml", batch) == [["Paris.<|im_end|>", "Rome, about 2.8 million people.<|im_end|>"]]


_text = st.text(alphabet="abcXYZ 0123.,!?'\n\t é字🙂<>/|", min_size=1, max_size=24).filter(lambda t: t.strip())


@st.composite
def _conversations(draw, with_system: bool):
    messages = [system(draw(_text))] if with_system and draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages.append(user(draw(_text)))
        reasoning = draw(st.one_of(st.none(), _text))
        messages.append(assistant(draw(_text), **({} if reasoning is None else {"reasoning_content": reasoning})))
    return messages


@settings(max_examples=30, deadline=None, derandomize=True)
@given(data=st.data(), family=st.sampled_from(sorted(FAMILIES)))
def test_rust_engine_equals_python_engine_on_random_conversations(encoders, data, family):
    # Mistral's template rejects a system message (a render failure the Python engine decides).
    conversations = data.draw(st.lists(_conversations(with_system=family != "mistral"), min_size=1, max_size=4))
    tok, python, rust = encoders[family]
    batch = [(template_messages(m), None) for m in conversations]
    want, got = python.encode_batch(batch), rust.encode_batch(batch)
    assert got.python_rendered == 0
    assert (got.owners, got.failures, got.expanded_turns, got.located_turns) == (
        want.owners, want.failures, want.expanded_turns, want.located_turns)
    assert [a.tobytes() for a in got.ids] == [a.tobytes() for a in want.ids]
    assert [a.tobytes() for a in got.masks] == [a.tobytes() for a in want.masks]
    # Every assistant turn of every conversation that was encoded is supervised in some sample.
    failed = {i for i, _, _ in want.failures}
    for index, messages in enumerate(conversations):
        if index not in failed:
            assert index in want.owners
