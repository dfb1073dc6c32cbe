"""ftscale.data.io streaming: units, batches, and one schema per source whatever the batching."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftscale.data.io import (
    ReadOptions,
    conform,
    plan_units,
    read_source,
    read_unit,
    record_uids,
    unify,
)
from ftscale.errors import ConfigError

HUGE = 1 << 40


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_units(units, opts: ReadOptions, batch_bytes: int) -> tuple[pa.Table, pa.Table, int]:
    """Every unit read in batches, conformed to the unified schema and concatenated."""
    batches = [b for unit in units for b in read_unit(unit, opts, batch_bytes=batch_bytes)]
    schema = unify(b.records.schema for b in batches)
    records = pa.concat_tables([conform(b.records, schema) for b in batches])
    return records, pa.concat_tables([b.quarantine for b in batches]), len(batches)


def assert_same_read(one, other) -> None:
    assert one.records.schema == other.records.schema
    assert one.records.equals(other.records)
    assert one.quarantine.equals(other.quarantine)
    assert one.counts == other.counts


# ------------------------------------------------------------------ batching is invisible

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.sampled_from([2**53 + 1, 2**63 - 1]),
                   st.floats(width=32), st.text(max_size=3))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abc"), inner, max_size=3)), max_leaves=6)
TEXT_RECORD = st.builds(lambda text, extra: {"text": text, **extra}, st.sampled_from(["x", "y z", " ", 7]),
                        st.dictionaries(st.sampled_from(["meta", "n", "row", "source"]), VALUE, max_size=3))
MESSAGE = st.builds(lambda role, extra: {"role": role, "content": "hi", **extra}, st.sampled_from(["user", "assistant"]),
                    st.dictionaries(st.sampled_from(["weight", "name"]), VALUE, max_size=2))
CHAT_RECORD = st.builds(lambda messages, extra: {"messages": messages, **extra},
                        st.lists(MESSAGE, min_size=1, max_size=2),
                        st.dictionaries(st.sampled_from(["meta", "n"]), VALUE, max_size=2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chat=st.booleans(), files=st.lists(st.tuples(st.integers(1, 8), st.sampled_from(["jsonl", "parquet"])),
                                          min_size=1, max_size=3),
       batch_bytes=st.integers(1, 2_000), data=st.data())
def test_batch_size_never_changes_the_result(tmp_path_factory, chat, files, batch_bytes, data):
    root = tmp_path_factory.mktemp("batching")
    for i, (n, fmt) in enumerate(files):
        records = data.draw(st.lists(CHAT_RECORD if chat else TEXT_RECORD, min_size=n, max_size=n))
        try:
            if fmt != "parquet":
                raise ValueError("JSONL asked for")
            pq.write_table(pa.Table.from_pylist(records), root / f"{i}.parquet", row_group_size=2)
        except (ValueError, pa.ArrowException):  # records Arrow cannot type as one table stay JSONL
            write_jsonl(root / f"{i}.jsonl", records)
    fields = {"messages_field": "messages"} if chat else {}
    whole = read_source("src", [root], batch_bytes=HUGE, **fields)
    batched = read_source("src", [root], batch_bytes=batch_bytes, **fields)
    assert_same_read(whole, batched)
    records, quarantine, _ = read_units(plan_units("src", [root], target_unit_bytes=1), ReadOptions(**fields), batch_bytes)
    assert records.equals(whole.records) and records.schema == whole.records.schema
    assert quarantine.equals(whole.quarantine)


def test_a_clash_in_a_later_batch_makes_earlier_batches_json(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "meta": "s"}, {"text": "b", "meta": {"k": [1, 2.5]}},
                                              {"text": "c", "meta": 3}, {"text": "d", "other": True}])
    batches = list(read_unit(plan_units("s", path)[0], ReadOptions(), batch_bytes=1))
    assert len(batches) == 4
    assert batches[0].records.schema.field("meta").type == pa.string()  # typed alone, a plain string
    result = read_source("s", path, batch_bytes=1)
    assert result.records.column("meta").to_pylist() == ['"s"', '{"k": [1, 2.5]}', "3", None]
    assert result.records.column("other").to_pylist() == [None, None, None, "true"]  # whole file is JSON
    assert_same_read(result, read_source("s", path))


def test_a_clash_across_files_is_json_in_both_and_encoded_once(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "meta": 1}, {"text": "b", "meta": "x"}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "c", "meta": "plain", "keep": 1.5}])
    result = read_source("s", [tmp_path])
    assert result.records.column("meta").to_pylist() == ["1", '"x"', '"plain"']
    assert result.records.column("keep").to_pylist() == [None, None, 1.5]  # b.jsonl's own columns stay typed


def test_json_text_is_canonical_whatever_the_batch(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "m": {"b": 1, "a": None}}, {"text": "b", "m": {"c": 2.0}},
                                              {"text": "c", "m": [1]}])
    for batch_bytes in (1, 40, HUGE):
        assert read_source("s", path, batch_bytes=batch_bytes).records.column("m").to_pylist() == [
            '{"b": 1}', '{"c": 2}', "[1]"]


@pytest.mark.parametrize("rows", [
    [{"text": "a", "n": 2**53 + 1}, {"text": "b", "n": 0.5}],   # int64 -> float64 would change 2**53 + 1
    [{"text": "a", "n": 0.5}, {"text": "b", "n": True}],        # Arrow would store true as 1.0
])
def test_values_arrow_would_change_become_json(tmp_path, rows):
    write_jsonl(tmp_path / "a.jsonl", rows[:1])
    write_jsonl(tmp_path / "b.jsonl", rows[1:])
    across = read_source("s", [tmp_path]).records.column("n").to_pylist()
    within = read_source("s", write_jsonl(tmp_path / "c.jsonl", rows)).records.column("n").to_pylist()
    assert across == within == [json.dumps(rows[0]["n"]), json.dumps(rows[1]["n"])]


def test_wide_integers_across_parquet_files_become_json(tmp_path):
    pq.write_table(pa.table({"text": ["a"], "n": pa.array([2**63 + 1], pa.uint64())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ["b"], "n": pa.array([-1], pa.int64())}), tmp_path / "b.parquet")
    assert read_source("s", [tmp_path]).records.column("n").to_pylist() == [str(2**63 + 1), "-1"]


def test_chat_extras_clash_makes_every_batch_json(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q", "w": 1}]},
            {"messages": [{"role": "user", "content": "r", "w": "heavy"}]}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    for batch_bytes in (1, HUGE):
        result = read_source("s", path, messages_field="messages", batch_bytes=batch_bytes)
        assert [m[0]["w"] for m in result.records.column("messages").to_pylist()] == ["1", '"heavy"']


def test_provenance_like_names_are_renamed_the_same_in_every_batch(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "source": "web"}, {"text": "b", "input_source": "x"},
                                              {"text": "c", "source": "wiki", "input_source": "y"}])
    result = read_source("s", path, batch_bytes=1)
    assert result.records.column("input_source").to_pylist() == ["web", None, "wiki"]
    assert result.records.column("input_input_source").to_pylist() == [None, "x", "y"]
    assert_same_read(result, read_source("s", path))


def test_validated_field_keeps_its_name(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"input_row": "the text", "row": 3}])
    record = read_source("s", path, text_field="input_row").records.to_pylist()[0]
    assert record["input_row"] == "the text" and record["input_input_row"] == 3 and record["row"] == 0


# ------------------------------------------------------------------------- units

def test_parquet_row_groups_split_into_units_that_rebuild_the_file(tmp_path):
    texts = [f"document number {i} " * (1 + i % 5) for i in range(200)]
    table = pa.table({"text": texts, "n": list(range(200))})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=20)
    units = plan_units("s", [tmp_path / "a.parquet"], target_unit_bytes=3_000)
    assert len(units) > 2
    assert units == plan_units("s", [tmp_path / "a.parquet"], target_unit_bytes=3_000)
    assert [u.index for u in units] == list(range(len(units)))
    assert units[0].start == 0 and units[-1].stop == 10
    assert all(a.stop == b.start for a, b in zip(units, units[1:]))
    assert [u.first_row for u in units] == [20 * u.start for u in units]
    records, _, n_batches = read_units(units, ReadOptions(), batch_bytes=500)
    assert n_batches > len(units)
    whole = read_source("s", [tmp_path / "a.parquet"])
    assert records.equals(whole.records) and records.schema == whole.records.schema
    assert records.column("row").to_pylist() == list(range(200))
    assert records.column("uid").to_pylist() == record_uids("s", "a.parquet", list(range(200))).tolist()
    assert pickle.loads(pickle.dumps(units)) == units  # units travel to other processes


def test_unit_rows_are_numbered_from_the_unit_first_row(tmp_path):
    pq.write_table(pa.table({"text": ["a", "", "c", "d", " ", "f"]}), tmp_path / "a.parquet", row_group_size=2)
    units = plan_units("s", [tmp_path / "a.parquet"], target_unit_bytes=1)
    assert [(u.start, u.stop, u.first_row) for u in units] == [(0, 1, 0), (1, 2, 2), (2, 3, 4)]
    batch = next(read_unit(units[2], ReadOptions()))
    assert batch.records.column("row").to_pylist() == [5]
    assert batch.quarantine.column("row").to_pylist() == [4] and batch.read == 2


def test_arrow_ipc_file_splits_by_record_batch_and_streams_stay_whole(tmp_path):
    table = pa.table({"text": [f"t{i}" for i in range(30)]})
    for name, opener in (("f.arrow", pa.ipc.new_file), ("s.arrow", pa.ipc.new_stream)):
        with pa.OSFile(str(tmp_path / name), "wb") as sink, opener(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=5):
                writer.write_batch(batch)
    file_units = plan_units("s", [tmp_path / "f.arrow"], target_unit_bytes=1)
    assert [(u.format, u.start, u.stop, u.first_row) for u in file_units] == [
        ("ipc_file", i, i + 1, 5 * i) for i in range(6)]
    stream_units = plan_units("s", [tmp_path / "s.arrow"], target_unit_bytes=1)
    assert [(u.format, u.stop) for u in stream_units] == [("ipc_stream", None)]
    for units, file_id in ((file_units, "f.arrow"), (stream_units, "s.arrow")):
        records, _, _ = read_units(units, ReadOptions(), batch_bytes=1)
        assert records.column("text").to_pylist() == table.column("text").to_pylist()
        assert records.column("uid").to_pylist() == record_uids("s", file_id, list(range(30))).tolist()


def test_every_unit_yields_a_batch_so_empty_files_keep_their_columns(tmp_path):
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "lang": pa.array([], pa.string())}),
                   tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text("\n  \n")
    batches = [b for u in plan_units("s", [tmp_path]) for b in read_unit(u, ReadOptions())]
    assert [b.read for b in batches] == [0, 0]
    assert read_source("s", [tmp_path]).records.column_names == ["uid", "source", "file", "row", "text", "lang"]


def test_unmarked_schemas_and_bad_arguments_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}])
    with pytest.raises(ValueError, match="ftscale.read"):
        unify([pa.schema([("text", pa.string())])])
    with pytest.raises(ConfigError):
        plan_units("s", [path], target_unit_bytes=0)
    with pytest.raises(ConfigError):
        next(read_unit(plan_units("s", [path])[0], ReadOptions(), batch_bytes=-1))
    with pytest.raises(ConfigError):
        ReadOptions(messages_field="row")


def _jsonl_bytes(n: int, seed: int) -> bytes:
    """Records, blank and whitespace-only lines, CR runs, broken lines and a long line."""
    rng = random.Random(seed)
    out = [b"\xef\xbb\xbf"]
    for i in range(n):
        kind = rng.random()
        if kind < 0.1:
            out.append(rng.choice([b"", b"   ", b"\t\x0b\x0c", b"\r\r"]) + b"\n")
        elif kind < 0.15:
            out.append(b"{broken " + str(i).encode() + b"\r\n")
        elif kind < 0.17:
            out.append(json.dumps({"text": "x" * 5000, "i": i}).encode() + b"\n")
        else:
            out.append(json.dumps({"text": f"doc {i} " + "w " * rng.randrange(1, 40), "i": i}).encode()
                       + rng.choice([b"\n", b"\r\n"]))
    return b"".join(out)


@pytest.mark.parametrize("target", [64, 700, 5000, 1 << 30])
def test_plain_jsonl_cut_at_line_starts_reads_the_same_records(tmp_path, target):
    from ftscale.data.io import ReadOptions, plan_units, read_source, read_unit

    path = tmp_path / "big.jsonl"
    path.write_bytes(_jsonl_bytes(600, seed=target))
    whole = read_source("s", [path], max_record_bytes=2000)
    units = plan_units("s", [path], target_unit_bytes=target)
    assert (len(units) == 1) == (target > path.stat().st_size) and units[0].start == 0
    opts = ReadOptions(max_record_bytes=2000)
    batches = [b for u in units for b in read_unit(u, opts, batch_bytes=1000)]
    schema = unify(b.records.schema for b in batches)
    records = pa.concat_tables([conform(b.records, schema) for b in batches])
    quarantine = pa.concat_tables([b.quarantine for b in batches])
    assert records.equals(whole.records) and quarantine.equals(whole.quarantine)
    assert sum(b.read for b in batches) == whole.counts["read"]
