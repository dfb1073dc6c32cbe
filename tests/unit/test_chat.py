"""Tests for ftscale.data.chat: assistant-only loss masks under real and hand-written templates.

Expected masks are built independently of the implementation: the expected rendering is
written as a list of (text piece, supervised?) pairs, each piece is tokenized on its own, and
the concatenated ids and flags are the expected input_ids and loss_mask. The pieces are cut at
token boundaries (special tokens, newlines), which each test checks by comparing the ids.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_runs import supervised_runs
from ftscale.data.chat import (
    ChatEncoder,
    ChatTemplateError,
    EncodedChat,
    NoAssistantTurnError,
    lint_masks,
    supervised_share,
    template_messages,
)
from ftscale.errors import ConfigError, DataError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Llama-2 chat format: the system prompt lives inside the first [INST] block, assistant
# replies are " {reply} </s>", and there is no generation prompt.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% if m['role'] == 'user' %}"
    "{% if loop.first and system is not none %}"
    "{{ '<s>[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ '<s>[INST] ' + m['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + m['content'] + ' </s>' }}{% endif %}{% endfor %}"
)

# ChatML whose generation prompt opens a reasoning block that rendered assistant turns do not
# have (as R1-style templates do), so the rendering of a turn never starts with its prompt.
THINK_PROMPT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)

# ChatML that strips the reasoning of every assistant turn but the last (as Qwen3-style
# templates do): an earlier turn's text, as written, never appears in the full rendering.
REASONING_STRIP_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
    "{% set content = m['content'].split('</think>')[-1].lstrip() %}{% else %}"
    "{% set content = m['content'] %}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


THREE_TURNS = [
    user("What is the capital of France?"),
    assistant("Paris."),
    user("And of Italy?"),
    assistant("Rome, a city of about 2.8 million people."),
    user("Thanks! One word: yes or no?"),
    assistant("Yes"),
]


@pytest.fixture(scope="module")
def tok(smol_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def chatml_pieces(messages: list[dict], default_system: str | None) -> list[tuple[str, bool]]:
    """The SmolLM2 rendering as (piece, supervised) pairs: assistant content + <|im_end|> only."""
    pieces = []
    if default_system is not None and messages[0]["role"] != "system":
        pieces.append((f"{IM_START}system\n{default_system}{IM_END}\n", False))
    for m in messages:
        if m["role"] == "assistant":
            pieces += [(f"{IM_START}assistant\n", False), (m["content"] + IM_END, True), ("\n", False)]
        else:
            pieces.append((f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n", False))
    return pieces


def expected_from_pieces(tok, pieces: list[tuple[str, bool]]) -> tuple[str, np.ndarray, np.ndarray]:
    ids: list[int] = []
    mask: list[int] = []
    for text, supervised in pieces:
        piece_ids = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        mask += [int(supervised)] * len(piece_ids)
    return "".join(t for t, _ in pieces), np.array(ids), np.array(mask)


def one(encoder: ChatEncoder, messages: list[dict]) -> EncodedChat:
    """The single sample of a conversation no turn of which the template rewrites."""
    (encoded,) = encoder.encode(messages)
    return encoded


def assert_matches(tok, encoded, pieces) -> None:
    text, ids, mask = expected_from_pieces(tok, pieces)
    assert encoded.text == text
    assert encoded.input_ids.dtype == np.int32 and encoded.loss_mask.dtype == np.uint8
    np.testing.assert_array_equal(encoded.input_ids, ids)
    np.testing.assert_array_equal(encoded.loss_mask, mask)


def test_single_turn_does_not_supervise_the_auto_inserted_system_prompt(tok):
    messages = [user("Hi"), assistant("Hello there")]
    encoded = one(ChatEncoder(tok), messages)
    assert_matches(tok, encoded, chatml_pieces(messages, SMOL_DEFAULT_SYSTEM))
    assert SMOL_DEFAULT_SYSTEM in encoded.text
    assert supervised_runs(tok, encoded.input_ids, encoded.loss_mask) == ["Hello there" + IM_END]
    # The "\n" after <|im_end|> is the last token and is not supervised.
    assert encoded.loss_mask[-1] == 0 and encoded.loss_mask[-2] == 1


@pytest.mark.parametrize("with_system", [False, True])
def test_three_assistant_turns(tok, with_system):
    messages = ([system("Answer briefly.")] if with_system else []) + THREE_TURNS
    encoded = one(ChatEncoder(tok), messages)
    assert_matches(tok, encoded, chatml_pieces(messages, SMOL_DEFAULT_SYSTEM))
    runs = supervised_runs(tok, encoded.input_ids, encoded.loss_mask)
    assert runs == [m["content"] + IM_END for m in THREE_TURNS if m["role"] == "assistant"]
    for m in messages:
        if m["role"] != "assistant":
            assert not any(m["content"] in run for run in runs)


def test_system_prompt_is_inserted_only_when_missing(tok):
    encoder = ChatEncoder(tok)
    encoded = one(encoder, template_messages(THREE_TURNS, system_prompt="You are a terse geographer."))
    assert_matches(tok, encoded, chatml_pieces([system("You are a terse geographer."), *THREE_TURNS], None))
    assert SMOL_DEFAULT_SYSTEM not in encoded.text

    own = [system("Own system."), *THREE_TURNS]
    assert_matches(tok, one(encoder, template_messages(own, system_prompt="Ignored.")), chatml_pieces(own, None))


def test_llama2_template_override_multi_turn(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tok.add_tokens(["<s>", "</s>"], special_tokens=True)  # as in Llama-2's own vocabulary
    messages = [system("Be kind."), *THREE_TURNS]
    encoded = one(ChatEncoder(tok, chat_template=LLAMA2_TEMPLATE), messages)
    pieces = [
        ("<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\n" + THREE_TURNS[0]["content"] + " [/INST]", False),
        (" " + THREE_TURNS[1]["content"] + " </s>", True),
        ("<s>[INST] " + THREE_TURNS[2]["content"] + " [/INST]", False),
        (" " + THREE_TURNS[3]["content"] + " </s>", True),
        ("<s>[INST] " + THREE_TURNS[4]["content"] + " [/INST]", False),
        (" " + THREE_TURNS[5]["content"] + " </s>", True),
    ]
    assert_matches(tok, encoded, pieces)
    runs = supervised_runs(tok, encoded.input_ids, encoded.loss_mask)
    assert runs == [" Paris. </s>", " Rome, a city of about 2.8 million people. </s>", " Yes </s>"]
    assert not any("Be kind." in run or "[INST]" in run for run in runs)


def test_token_straddling_the_span_end_is_supervised(tok):
    # With "</s>" as plain text, BPE merges the ">" closing "</s>" with the "<" opening the
    # next "<s>" into one token "><": by the overlap rule it is supervised, so the model
    # learns every character of its end-of-turn text.
    messages = [user("Hi"), assistant("Yo"), user("Bye"), assistant("Ok")]
    encoded = one(ChatEncoder(tok, chat_template=LLAMA2_TEMPLATE), messages)
    assert encoded.text == "<s>[INST] Hi [/INST] Yo </s><s>[INST] Bye [/INST] Ok </s>"
    assert "><" in tok.convert_ids_to_tokens(encoded.input_ids.tolist())
    assert supervised_runs(tok, encoded.input_ids, encoded.loss_mask) == [" Yo </s><", " Ok </s>"]


def test_fallback_locates_turns_when_generation_prompt_differs(tok):
    # The assistant's "OK" also occurs in the user turn before it; the fallback must step
    # over that turn and find the reply itself.
    messages = [user("Please reply OK"), assistant("OK"), user("Again, OK?"), assistant("OK")]
    encoded = one(ChatEncoder(tok, chat_template=THINK_PROMPT_TEMPLATE), messages)
    assert_matches(tok, encoded, chatml_pieces(messages, None))
    assert supervised_runs(tok, encoded.input_ids, encoded.loss_mask) == ["OK" + IM_END] * 2


def test_template_that_rewrites_earlier_turns_expands_them_into_their_own_samples(tok):
    rewritten = [
        user("2+2?"),
        assistant("<think>add them</think>4"),
        user("3+3?"),
        assistant("<think>add again</think>6"),
    ]
    full, first = ChatEncoder(tok, chat_template=REASONING_STRIP_TEMPLATE).encode(rewritten)
    # The full rendering drops turn 1's reasoning: only the last turn is supervised in it...
    assert full.text == (f"{IM_START}user\n2+2?{IM_END}\n{IM_START}assistant\n4{IM_END}\n"
                         f"{IM_START}user\n3+3?{IM_END}\n{IM_START}assistant\n<think>add again</think>6{IM_END}\n")
    assert supervised_runs(tok, full.input_ids, full.loss_mask) == ["<think>add again</think>6" + IM_END]
    # ...and turn 1 is trained, reasoning included, in the context it has at inference.
    assert_matches(tok, first, chatml_pieces(rewritten[:2], None))
    assert supervised_runs(tok, first.input_ids, first.loss_mask) == ["<think>add them</think>4" + IM_END]

    batch = ChatEncoder(tok, chat_template=REASONING_STRIP_TEMPLATE).encode_batch([(rewritten, None)] * 2)
    assert batch.owners == [0, 0, 1, 1] and batch.expanded_turns == 2 and not batch.failures

    # Policy "locate" does not expand: turn 1's text is nowhere in the full rendering.
    locate = ChatEncoder(tok, chat_template=REASONING_STRIP_TEMPLATE, policy="locate")
    with pytest.raises(ChatTemplateError, match="message 1"):
        locate.encode(rewritten)
    failures = locate.encode_batch([(rewritten, None), (rewritten[:2], None)]).failures
    assert [(i, reason) for i, reason, _ in failures] == [(0, "template_mismatch")]


def test_tokenizer_without_chat_template_is_a_config_error(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="tokenizer.chat_template"):
        ChatEncoder(tok)
    assert one(ChatEncoder(tok, chat_template=LLAMA2_TEMPLATE), THREE_TURNS).loss_mask.any()


def test_encode_batch_matches_encode_and_reports_failures(tok):
    encoder = ChatEncoder(tok)
    conversations = [THREE_TURNS, [user("Is anyone there?")], THREE_TURNS[:2], [system("s"), user("u")]]
    batch = encoder.encode_batch([(c, None) for c in conversations])
    assert [(i, reason) for i, reason, _ in batch.failures] == [(1, "no_assistant_turn"), (3, "no_assistant_turn")]
    assert "no assistant" in batch.failures[0][2]
    assert batch.owners == [0, 2]
    for k, index in enumerate(batch.owners):
        single = one(encoder, conversations[index])
        np.testing.assert_array_equal(batch.ids[k], single.input_ids)
        np.testing.assert_array_equal(batch.masks[k], single.loss_mask)
        assert batch.texts[k] == single.text
    with pytest.raises(NoAssistantTurnError):
        encoder.encode([user("Is anyone there?")])
    empty = encoder.encode_batch([])
    assert (empty.ids, empty.owners, empty.failures) == ([], [], [])


def test_lint_masks():
    with pytest.raises(DataError, match="'support_chats'.*my-template"):
        lint_masks("support_chats", "my-template", np.zeros(10))
    assert lint_masks("src", "t", np.full(10, 0.4)) == []
    assert lint_masks("src", "t", np.array([])) == []

    (low,) = lint_masks("src", "t", np.full(10, 0.01))
    assert "1.0%" in low and "'src'" in low
    (high,) = lint_masks("src", "t", np.full(10, 0.99))
    assert "99.0%" in high
    (zeros,) = lint_masks("src", "t", np.array([0.0] + [0.5] * 9))
    assert "10.0% of conversations" in zeros
    # Token weighting: the long conversation's 1% dominates the short one's 90%.
    (weighted,) = lint_masks("src", "t", np.array([0.01, 0.9]), token_counts=np.array([10_000, 10]))
    assert "only 1.1%" in weighted


def test_stock_template_mask_is_not_all_zero(tok):
    # Regression against the failure of apply_chat_template(return_assistant_tokens_mask=True)
    # (TRL's assistant_only_loss): stock templates have no {% generation %} block, so that
    # mask is all zeros. Ours must supervise a plausible share of the tokens.
    assert not re.search(r"\{%-?\s*generation\s*-?%\}", tok.chat_template)
    encoder = ChatEncoder(tok)
    encoded = one(encoder, THREE_TURNS)
    share = supervised_share(encoded)
    assert encoded.loss_mask.sum() > 0
    assert 0.1 < share < 0.6
    assert lint_masks("regression", encoder.template_name, np.array([share])) == []


_words = st.text(alphabet="abcdefgXYZ 0123.,!?'\né字", max_size=30)
_content = st.builds(lambda head, tail: head + tail, st.sampled_from("AbcQz"), _words)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(turns=st.lists(st.tuples(_content, _content), min_size=1, max_size=4), with_system=st.booleans())
def test_supervised_runs_are_exactly_the_replies(tok, turns, with_system):
    messages = [system("Sys.")] if with_system else []
    for question, reply in turns:
        messages += [user(question), assistant(reply)]
    encoded = one(ChatEncoder(tok), messages)
    assert supervised_runs(tok, encoded.input_ids, encoded.loss_mask) == [r + IM_END for _, r in turns]
