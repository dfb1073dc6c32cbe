"""Prep's tokenize step on a batch of SFT records: plain messages go to the Rust engine as Arrow
columns (``plain_messages`` / ``encode_columns``), anything else as Python dicts, and both give
the Python engine's samples; which samples survive truncation, dropping and the
no-supervised-token rule is decided for the whole batch at once and matches a per-sample
reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ftscale.config.prep import SourceConfig
from ftscale.data.chat import ChatEncoder, RustChatEncoder, plain_messages, template_messages
from ftscale.data.steps.tokenize import _encode_chats

SEQ_LEN = 64
LONG = "and it came to pass " * 30


def _m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


CONVERSATIONS = [
    [_m("user", "Hi"), _m("assistant", "Hello!")],
    [_m("system", "Be brief."), _m("user", "Capital of France?"), _m("assistant", "Paris."),
     _m("user", "And «Italy» 🙂?"), _m("assistant", "Rome.")],
    [_m("user", LONG), _m("assistant", "Only after the cut.")],  # truncated: nothing supervised left
    [_m("user", "Tell a story."), _m("assistant", LONG)],  # truncated, still supervised
    [_m("user", "Nobody answers.")],  # no assistant turn
    [_m("user", "Shout!"), _m("assistant", "OK!")],  # SWAPCASE fails minijinja on a "!" (here and in 0)
]

# Jinja2 renders it; minijinja has no `swapcase`: those conversations go to the Python engine.
SWAPCASE = ("{% for m in messages %}<{{ m['role'] }}>{% if m['content'].endswith('!') %}"
            "{{ m['content'].swapcase() }}{% else %}{{ m['content'] }}{% endif %}</s>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


class _Counts:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + int(n)


@pytest.fixture(scope="module", params=["stock", "swapcase"])
def engines(request, smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    python = ChatEncoder(tok, chat_template=None if request.param == "stock" else SWAPCASE)
    return python, RustChatEncoder(tok, python, "expand", num_threads=2)


def _step(encoder, records: pa.Table, src: SourceConfig):
    counts = _Counts()
    ids, masks, owners, rejected = _encode_chats(encoder, records, src, SEQ_LEN, False, counts)
    return [x.tobytes() for x in ids], [m.tobytes() for m in masks], owners.tolist(), rejected, counts.counters


def _alike(rust_step, python_step) -> bool:
    """The same samples, quarantine and counts (the Python engine renders everything itself, so
    only the Rust engine counts conversations it handed over)."""
    without = [{k: v for k, v in step[4].items() if k != "python_rendered"} for step in (rust_step, python_step)]
    return rust_step[:4] == python_step[:4] and without[0] == without[1]


def _reference(encoder, records: pa.Table, src: SourceConfig):
    """The rule one sample at a time: over seq_len a sample is dropped (policy drop) or cut; a
    sample without a supervised token is not kept."""
    batch = encoder.encode_batch([(template_messages(m, src.system_prompt), None)
                                  for m in records.column("messages").to_pylist()])
    ids, masks, owners, truncated, dropped = [], [], [], 0, set()
    for x, m, owner in zip(batch.ids, batch.masks, batch.owners):
        if len(x) > SEQ_LEN:
            if src.overlong == "drop":
                dropped.add(owner)
                continue
            x, m, truncated = x[:SEQ_LEN], m[:SEQ_LEN], truncated + 1
        if m.any():
            ids.append(x.tobytes())
            masks.append(m.tobytes())
            owners.append(owner)
    return ids, masks, owners, truncated, dropped


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
@pytest.mark.parametrize("system_prompt", [None, "You are kind."])
def test_columns_dicts_and_the_per_sample_rule_agree(engines, overlong, system_prompt):
    python, rust = engines
    src = SourceConfig(name="chat", paths=["chat.jsonl"], kind="sft", overlong=overlong, system_prompt=system_prompt)
    records = pa.table({"messages": CONVERSATIONS})
    assert plain_messages(records.column("messages")) is not None
    got = _step(rust, records, src)
    assert _alike(got, _step(python, records, src))
    ids, masks, owners, truncated, dropped = _reference(python, records, src)
    assert got[:3] == (ids, masks, owners)
    assert got[4]["truncated"] == truncated
    assert {i for i, (reason, _) in got[3].items() if reason == "overlong"} == dropped
    reasons = {i: reason for i, (reason, _) in got[3].items()}
    assert reasons[4] == "no_assistant_turn"
    assert reasons[2] == ("overlong" if overlong == "drop" else "no_supervised_tokens")
    assert 0 in owners and (3 in owners) == (overlong == "truncate")
    shouted = sum(any(m["content"].endswith("!") for m in c) for c in CONVERSATIONS)  # minijinja fails those
    assert got[4]["python_rendered"] == (shouted if "swapcase" in python.template else 0)


def test_column_layouts_and_nulls(engines):
    """Chunked and sliced columns and the content-first field order take the columns; a null
    content (a dropped key for the template) takes the dicts; all give the Python engine's samples."""
    python, rust = engines
    src = SourceConfig(name="chat", paths=["chat.jsonl"], kind="sft")
    content_first = [[{"content": m["content"], "role": m["role"]} for m in c] for c in CONVERSATIONS]
    whole = pa.array(content_first)
    layouts = {
        "content first": pa.table({"messages": whole}),
        "chunked and sliced": pa.table({"messages": pa.chunked_array([whole.slice(1, 2), whole.slice(3)])}),
        "null content": pa.table({"messages": [[_m("user", "Hi"), {"role": "assistant", "content": None}],
                                               *CONVERSATIONS[:2]]}),
    }
    for name, records in layouts.items():
        assert (plain_messages(records.column("messages")) is None) == (name == "null content"), name
        assert _alike(_step(rust, records, src), _step(python, records, src)), name
    structs = layouts["content first"].column("messages").type.value_type
    assert [f.name for f in structs] == ["content", "role"]


def test_plain_messages_offsets_and_bytes():
    column = pa.chunked_array([pa.array([[_m("user", "é"), _m("assistant", "ok")], [_m("user", "x")]]).slice(1)])
    plain = plain_messages(column)
    assert plain is not None and plain.role_first
    assert plain.offsets.tolist() == [0, 1]
    assert plain.role_offsets.tolist() == [0, 4] and plain.role_data.tobytes() == b"user"
    assert plain.content_offsets.tolist() == [0, 1] and plain.content_data.tobytes() == b"x"
    assert plain_messages(pa.chunked_array([pa.array([[{"role": "user", "content": "x", "name": "a"}]])])) is None
    assert plain_messages(pa.chunked_array([pa.array(["not messages"])])) is None


def test_encode_columns_rejects_offsets_outside_the_data(engines):
    _, rust = engines
    offsets = np.array([0, 1], dtype=np.int64)
    with pytest.raises(ValueError, match="outside the data"):
        rust._core.encode_columns(offsets, np.array([0, 9], dtype=np.int64), np.frombuffer(b"user", np.uint8),
                                  np.array([0, 1], dtype=np.int64), np.frombuffer(b"x", np.uint8), True)
    with pytest.raises(ValueError, match="not UTF-8"):
        rust._core.encode_columns(offsets, np.array([0, 1], dtype=np.int64), np.frombuffer(b"\xff", np.uint8),
                                  np.array([0, 1], dtype=np.int64), np.frombuffer(b"x", np.uint8), True)
    with pytest.raises(ValueError, match="offsets must"):
        rust._core.encode_columns(np.array([0, 2], dtype=np.int64), offsets, np.frombuffer(b"u", np.uint8),
                                  offsets, np.frombuffer(b"x", np.uint8), True)


class _GivenSamples:
    """An engine stand-in that returns fixed samples, to reach cases the real engines do not
    produce (an empty sample) next to the usual ones."""

    def __init__(self, samples: list[tuple[int, list[int]]]) -> None:
        self.samples = samples

    def encode_batch(self, conversations):
        from ftscale.data.chat import EncodedBatch

        return EncodedBatch(ids=[np.arange(len(m), dtype=np.int32) for _, m in self.samples],
                            masks=[np.asarray(m, dtype=np.uint8) for _, m in self.samples],
                            owners=[owner for owner, _ in self.samples])


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_sample_selection_with_empty_and_overlong_samples(overlong):
    samples = [(0, []), (0, [0, 1]), (1, [0] * SEQ_LEN + [1]), (2, [1] + [0] * SEQ_LEN), (3, [0, 0]),
               (3, []), (4, [1] * SEQ_LEN)]
    records = pa.table({"messages": [[_m("user", "x"), _m("assistant", "y")]] * 5})
    src = SourceConfig(name="chat", paths=["chat.jsonl"], kind="sft", overlong=overlong)
    ids, masks, owners, rejected, counts = _step(_GivenSamples(samples), records, src)
    if overlong == "truncate":
        assert owners == [0, 2, 4] and counts["truncated"] == 2
        assert [len(m) for m in masks] == [2, SEQ_LEN, SEQ_LEN] and masks[1] == b"\x01" + b"\x00" * (SEQ_LEN - 1)
        assert {i: r for i, (r, _) in rejected.items()} == {1: "no_supervised_tokens", 3: "no_supervised_tokens"}
    else:
        assert owners == [0, 4] and counts["truncated"] == 0
        assert {i: r for i, (r, _) in rejected.items()} == {1: "overlong", 2: "overlong", 3: "no_supervised_tokens"}
    assert counts["extra_samples"] == 0 and len(ids) == len(owners)
