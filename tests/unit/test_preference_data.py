"""Preference records: every accepted shape becomes one pair, every other one a quarantine reason
naming the field; reading conserves counts; dedup and decontamination read prompt + chosen;
a pair's two documents share the prompt's tokens and supervise the final reply only."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftscale.config import PrepConfig, build
from ftscale.data.chat.preference import encode_pairs, final_turn_start
from ftscale.data.io import ReadOptions, plan_units, read_unit
from ftscale.data.io.preference import PAIR_FIELD, PairFields, record_pair
from ftscale.data.texts import record_segments, record_texts
from ftscale.errors import ConfigError

FIELDS = PairFields()
USER = {"role": "user", "content": "Q?"}
GOOD = {"role": "assistant", "content": "good"}
BAD = {"role": "assistant", "content": "bad"}
EXPECTED = {"prompt": [USER], "chosen": GOOD, "rejected": BAD}


@pytest.mark.parametrize("record", [
    {"prompt": "Q?", "chosen": "good", "rejected": "bad"},
    {"prompt": [USER], "chosen": "good", "rejected": "bad"},
    {"messages": [USER], "chosen": [GOOD], "rejected": [BAD]},
    {"prompt": [{"from": "human", "value": "Q?"}], "chosen": [GOOD], "rejected": [BAD]},
    {"conversations": [{"from": "human", "value": "Q?"}], "chosen": {"from": "gpt", "value": "good"},
     "rejected": {"from": "gpt", "value": "bad"}},
    {"chosen": [USER, GOOD], "rejected": [USER, BAD]},  # TRL's implicit prompt
    {"prompt": "Q?", "chosen": [USER, GOOD], "rejected": [USER, BAD]},  # UltraFeedback: whole conversations
    {"prompt": None, "messages": [USER], "chosen": "good", "rejected": "bad"},  # a null prompt falls back
])
def test_every_accepted_shape_gives_the_same_pair(record):
    assert record_pair(record, FIELDS) == (None, "", EXPECTED)


def test_implicit_prompt_is_the_longest_shared_prefix_and_keeps_earlier_turns():
    history = [{"role": "system", "content": "Be brief."}, USER, {"role": "assistant", "content": "A."},
               {"role": "user", "content": "More?"}]
    reason, _, pair = record_pair({"chosen": [*history, GOOD], "rejected": [*history, BAD]}, FIELDS)
    assert reason is None and pair == {"prompt": history, "chosen": GOOD, "rejected": BAD}


def test_custom_fields_and_role_map():
    fields = PairFields(prompt="question", chosen="yes", rejected="no", messages="ctx")
    record = {"ctx": [{"role": "asker", "content": "Q?"}], "yes": "good", "no": "bad"}
    assert record_pair(record, fields, {"asker": "user"}) == (None, "", EXPECTED)


@pytest.mark.parametrize("record, reason, named", [
    ({"prompt": "Q?", "rejected": "bad"}, "missing_field", "'chosen'"),
    ({"prompt": "Q?", "chosen": "good", "rejected": None}, "missing_field", "'rejected'"),
    ({"chosen": "good", "rejected": "bad"}, "missing_field", "'prompt'"),
    ({"chosen": [USER, GOOD], "rejected": [{"role": "user", "content": "other"}, BAD]}, "missing_field", "'prompt'"),
    ({"prompt": 7, "chosen": "good", "rejected": "bad"}, "wrong_type", "'prompt'"),
    ({"prompt": "Q?", "chosen": 3, "rejected": "bad"}, "wrong_type", "'chosen'"),
    ({"prompt": "Q?", "chosen": [GOOD, USER, GOOD], "rejected": [BAD]}, "wrong_type", "'chosen'"),
    ({"prompt": "Q?", "chosen": "good", "rejected": [{"role": "user", "content": "bad"}]}, "wrong_role", "'rejected'"),
    ({"prompt": "Q?", "chosen": "good", "rejected": [{"role": "critic", "content": "bad"}]}, "wrong_role", "'rejected'"),
    ({"prompt": "  ", "chosen": "good", "rejected": "bad"}, "empty_text", "'prompt'"),
    ({"prompt": "Q?", "chosen": " \n", "rejected": "bad"}, "empty_side", "'chosen'"),
    ({"prompt": "Q?", "chosen": "good", "rejected": []}, "empty_side", "'rejected'"),
    ({"prompt": "Q?", "chosen": "same", "rejected": "same"}, "identical_sides", "'chosen'"),
    ({"chosen": [USER, GOOD], "rejected": [USER, GOOD]}, "identical_sides", "'rejected'"),
])
def test_unknown_shapes_are_quarantined_with_a_reason_naming_the_field(record, reason, named):
    got, detail, pair = record_pair(record, FIELDS)
    assert (got, pair) == (reason, None) and named in detail


def test_a_prompt_over_max_messages_is_oversize():
    record = {"prompt": [USER] * 5, "chosen": "good", "rejected": "bad"}
    assert record_pair(record, FIELDS, max_messages=5)[0] == "oversize"
    assert record_pair(record, FIELDS, max_messages=6)[0] is None


RECORDS = [
    {"prompt": "Q0?", "chosen": "good", "rejected": "bad"},
    {"messages": [USER], "chosen": [GOOD], "rejected": [BAD], "id": 1},
    {"chosen": [USER, GOOD], "rejected": [USER, BAD]},
    {"prompt": "Q?", "chosen": "same", "rejected": "same"},
    {"prompt": "Q?", "chosen": "", "rejected": "bad"},
    {"prompt": "Q?", "rejected": "bad"},
    {"prompt": "Q?", "chosen": "good", "rejected": [{"role": "user", "content": "x"}]},
]
REASONS = {"identical_sides": 1, "empty_side": 1, "missing_field": 1, "wrong_role": 1}


def _read(path, opts):
    kept, quarantine, read = [], [], 0
    for unit in plan_units("pref", [path]):
        for batch in read_unit(unit, opts):
            kept.append(batch.records)
            quarantine.append(batch.quarantine)
            read += batch.read
    return pa.concat_tables(kept, promote_options="permissive"), pa.concat_tables(quarantine), read


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_reading_conserves_counts_and_stores_the_pair_as_json(tmp_path, fmt):
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + "not json\n")
    else:  # Parquet needs one type per column: mixed shapes as JSON-free strings and lists apart
        rows = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": "bad" if i % 3 else f"good {i}"}
                for i in range(6)]
        pq.write_table(pa.Table.from_pylist(rows), path)
    records, quarantine, read = _read(path, ReadOptions(text_field="text", pair=FIELDS))
    assert read == records.num_rows + quarantine.num_rows
    pairs = [json.loads(s) for s in records.column(PAIR_FIELD).to_pylist()]
    reasons = dict(zip(*np.unique(quarantine.column("reason").to_pylist(), return_counts=True)))
    if fmt == "jsonl":
        assert read == 8 and len(pairs) == 3
        assert {k: int(v) for k, v in reasons.items()} == {**REASONS, "malformed_json": 1}
        assert pairs[0] == {"prompt": [{"role": "user", "content": "Q0?"}], "chosen": GOOD, "rejected": BAD}
        assert pairs[1] == pairs[2] == EXPECTED
    else:
        assert read == 6 and len(pairs) == 4 and {k: int(v) for k, v in reasons.items()} == {"identical_sides": 2}


def test_dedup_and_decontamination_read_prompt_and_chosen():
    stored = json.dumps({"prompt": [{"role": "system", "content": "S"}, USER], "chosen": GOOD, "rejected": BAD})
    table = pa.table({PAIR_FIELD: [stored]})
    assert record_texts(table, "text", None, PAIR_FIELD).to_pylist() == ["S\nQ?\ngood"]
    assert record_segments(table, "text", None, None, PAIR_FIELD) == [["S", "Q?", "good"]]
    assert record_segments(table, "text", None, ["user"], PAIR_FIELD) == [["Q?"]]


def _source(kind="preference", **extra):
    return {"output": "out", "tokenizer": {"path": "tok"},
            "sources": [{"name": "p", "kind": kind, "paths": ["x.jsonl"], **extra}]}


def test_config_defaults_and_errors():
    def load(cfg):
        return build(PrepConfig, cfg)

    src = load(_source()).sources[0]
    assert (src.overlong, src.prompt_field, src.chosen_field, src.rejected_field) == ("truncate", "prompt", "chosen",
                                                                                       "rejected")
    with pytest.raises(ConfigError, match=r"sources\.0\.overlong: 'split' would cut a preference pair"):
        load(_source(overlong="split"))
    with pytest.raises(ConfigError, match=r"sources\.0: prompt_field, chosen_field and rejected_field"):
        load(_source(chosen_field="x", rejected_field="x"))


class _FakeEncoder:
    """Renders ``<u>prompt</u><a>reply</a>\\n`` one character per token; supervises every
    assistant turn (content + ``</a>``), as the SFT encoder does."""

    def __init__(self, bad_prompt_for: str | None = None) -> None:
        self.bad_prompt_for = bad_prompt_for

    def encode_batch(self, conversations):
        from ftscale.data.chat import EncodedBatch

        out = EncodedBatch()
        for index, (messages, _) in enumerate(conversations):
            text, mask = "", []
            for m in messages:
                content = m["content"]
                if m["role"] == "assistant":
                    head, body, tail = "<a>", content + "</a>", "\n"
                    if content == self.bad_prompt_for:
                        head = "<A>"  # renders the prompt differently for this reply
                else:
                    head, body, tail = "<u>", content + "</u>", ""
                text += head + body + tail
                sup = int(m["role"] == "assistant")
                mask += [0] * len(head) + [sup] * len(body) + [0] * len(tail)
            out.ids.append(np.frombuffer(text.encode(), np.uint8).astype(np.int32))
            out.masks.append(np.array(mask, np.uint8))
            out.owners.append(index)
        return out


def _pair(prompt_text, chosen, rejected, history=()):
    return ([*history, {"role": "user", "content": prompt_text}], {"role": "assistant", "content": chosen},
            {"role": "assistant", "content": rejected}, None)


def test_pairs_share_the_prompt_and_supervise_the_final_reply_only():
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    out = encode_pairs(_FakeEncoder(), [_pair("Q?", "yes", "no", history)], 64, "truncate")
    assert out.owners == [0, 0] and not out.failures
    chosen, rejected = [bytes(x.astype(np.uint8)).decode() for x in out.ids]
    prompt = "<u>hi</u><a>hello</a>\n<u>Q?</u><a>"
    assert chosen == prompt + "yes</a>\n" and rejected == prompt + "no</a>\n"
    assert out.prompt_tokens == [len(prompt)]
    for ids, mask in zip(out.ids, out.masks):
        supervised = bytes(ids[mask == 1].astype(np.uint8)).decode()
        assert supervised in ("yes</a>", "no</a>") and final_turn_start(mask) == len(prompt)


def test_pair_lengths_and_quarantine_reasons():
    pairs = [_pair("Q?", "a" * 30, "b"),  # chosen over the side limit: cut
             _pair("P" * 40, "a", "b"),  # the prompt alone fills a side
             _pair("Q?", "x", "y"),
             _pair("Q?", "odd", "fine")]  # the template renders the prompt differently for one reply
    out = encode_pairs(_FakeEncoder(bad_prompt_for="odd"), pairs, 24, "truncate")
    assert {p: r for p, (r, _) in out.failures.items()} == {1: "prompt_overlong", 3: "template_mismatch"}
    assert out.owners == [0, 0, 2, 2] and out.truncated == 1
    assert all(len(x) <= 24 for x in out.ids) and out.masks[0][-1] == 1
    dropped = encode_pairs(_FakeEncoder(), pairs[:1], 24, "drop")
    assert dropped.failures[0][0] == "overlong" and not dropped.ids
