"""Fuzzing the readers: random bytes in every input format, random JSON in JSONL.

Whatever a file holds, reading it either raises an ``FtscaleError`` (an unreadable archive or
columnar file) or returns every record as kept or quarantined: ``read == kept + quarantined``.
"""

from __future__ import annotations

import gzip
import json

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftscale.data.io import read_source
from ftscale.errors import FtscaleError

SUFFIXES = ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "arrow"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["text", "messages", "role", "content", "instruction", "output", "input", "uid", "row"]), inner, max_size=4),
    max_leaves=12)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_or_refuse(path, chat: bool) -> None:
    try:
        result = read_source("s", [path], messages_field="messages" if chat else None, max_record_bytes=500)
    except FtscaleError:
        return
    counts = result.counts
    assert counts["read"] == counts["kept"] + counts["quarantined"] == result.records.num_rows + result.quarantine.num_rows
    assert sum(counts["quarantined_by_reason"].values()) == counts["quarantined"]


@SETTINGS
@given(data=st.binary(max_size=3000), suffix=st.sampled_from(SUFFIXES), compress=st.booleans(), chat=st.booleans())
def test_random_bytes_in_any_format(tmp_path_factory, data, suffix, compress, chat):
    """Raw random bytes, or (for .gz/.zst) random bytes inside a valid archive."""
    if compress and suffix == "jsonl.gz":
        data = gzip.compress(data)
    elif compress and suffix == "jsonl.zst":
        data = zstandard.ZstdCompressor().compress(data)
    path = tmp_path_factory.mktemp("fuzz") / f"f.{suffix}"
    path.write_bytes(data)
    read_or_refuse(path, chat)


@SETTINGS
@given(values=st.lists(JSON, max_size=12), chat=st.booleans(), suffix=st.sampled_from(["jsonl", "jsonl.gz"]))
def test_random_json_lines(tmp_path_factory, values, chat, suffix):
    text = "".join(json.dumps(v) + "\n" for v in values).encode()
    path = tmp_path_factory.mktemp("fuzz") / f"f.{suffix}"
    path.write_bytes(gzip.compress(text) if suffix.endswith("gz") else text)
    read_or_refuse(path, chat)
