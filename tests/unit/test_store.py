"""Tests for ftscale.data.store: the token store's writer, reader and corruption checks."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from ftscale.data.store import HEADER_BYTES, MAGIC, StoreWriter, open_store, store_bytes, write_store
from ftscale.errors import DataError


def documents(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, n)
    ids = rng.integers(0, 2**31 - 1, int(lengths.sum()), dtype=np.int32)
    mask = rng.integers(0, 2, len(ids), dtype=np.uint8)
    return lengths, ids, mask


@pytest.fixture()
def store_file(tmp_path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    lengths, ids, mask = documents(50)
    path = tmp_path / "part-00000.tokens"
    write_store(path, lengths, ids, mask)
    return path, lengths, ids, mask


def test_round_trip_over_several_appends(tmp_path):
    lengths, ids, mask = documents(300)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    path = tmp_path / "s" / "part-00000.tokens"
    with StoreWriter(path) as writer:
        for lo, hi in ((0, 120), (120, 120), (120, 121), (121, 300)):  # incl. an empty append
            writer.append(lengths[lo:hi], ids[offsets[lo]:offsets[hi]], mask[offsets[lo]:offsets[hi]].astype(bool))
        info = writer.close()
    data = path.read_bytes()
    assert (info.rows, info.tokens) == (300, len(ids))
    assert info.bytes == len(data) == store_bytes(300, len(ids))
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert data[:8] == MAGIC and struct.unpack_from("<IIQQ", data, 8) == (1, 4, 300, len(ids))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "temporary files left behind"

    store = open_store(path, info.rows, info.tokens, info.bytes)
    np.testing.assert_array_equal(store.offsets(), offsets)
    np.testing.assert_array_equal(store.lengths(), lengths)
    got_ids, got_mask = store.read(0, len(ids))
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_mask, mask)
    got_ids, got_mask = store.read(17, 100)
    np.testing.assert_array_equal(got_ids, ids[17:117])
    np.testing.assert_array_equal(got_mask, mask[17:117])
    # several scattered ranges into one buffer, at given positions
    starts, counts, at = np.array([900, 3, 250]), np.array([5, 40, 1]), np.array([41, 0, 40])
    out_ids, out_mask = np.zeros(46, np.int32), np.zeros(46, np.uint8)
    store.read_pieces(starts, counts, out_ids, out_mask, at)
    expect = np.concatenate([ids[3:43], ids[250:251], ids[900:905]])
    np.testing.assert_array_equal(out_ids, expect)
    np.testing.assert_array_equal(out_mask, np.concatenate([mask[3:43], mask[250:251], mask[900:905]]))
    store.close()


def test_failed_write_leaves_no_file(tmp_path):
    lengths, ids, mask = documents(10)
    path = tmp_path / "part-00000.tokens"
    with pytest.raises(ValueError, match="lengths sum"):
        with StoreWriter(path) as writer:
            writer.append(lengths, ids, mask)
            writer.append(np.array([5]), ids[:4], mask[:4])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("lengths,ids,mask,match", [
    (np.array([2]), np.zeros(2, np.int64), np.zeros(2, np.uint8), "int32"),
    (np.array([0, 2]), np.zeros(2, np.int32), np.zeros(2, np.uint8), "at least one token"),
    (np.array([3]), np.zeros(2, np.int32), np.zeros(2, np.uint8), "lengths sum to 3"),
    (np.array([2]), np.zeros(2, np.int32), np.array([0, 2], np.uint8), "0 or 1"),
])
def test_append_rejects_misuse(tmp_path, lengths, ids, mask, match):
    with StoreWriter(tmp_path / "x.tokens") as writer:
        with pytest.raises(ValueError, match=match):
            writer.append(lengths, ids, mask)
        writer.abort()


def _patch(path: Path, at: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


def test_header_and_size_are_checked_against_the_manifest(store_file):
    path, lengths, ids, _ = store_file
    rows, tokens = len(lengths), len(ids)
    size = store_bytes(rows, tokens)
    open_store(path, rows, tokens, size)
    with pytest.raises(DataError, match="manifest entry .* bytes, but"):
        open_store(path, rows, tokens, size + 1)
    # same file size, other counts (8 * 5 offset bytes = 5 * 8 token bytes): the header disagrees
    with pytest.raises(DataError, match=f"header says {rows} rows / {tokens} tokens, the manifest"):
        open_store(path, rows + 5, tokens - 8, size)
    with pytest.raises(DataError, match="cannot be read"):
        open_store(path.with_name("missing.tokens"), rows, tokens, size)


def test_truncated_file_is_refused(store_file):
    path, lengths, ids, _ = store_file
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"is \d+ bytes, the manifest says .*re-run `ftscale prep`"):
        open_store(path, len(lengths), len(ids), store_bytes(len(lengths), len(ids)))


def test_bad_magic_and_version_are_refused(store_file):
    path, lengths, ids, _ = store_file
    args = (len(lengths), len(ids), store_bytes(len(lengths), len(ids)))
    _patch(path, 8, struct.pack("<I", 2))
    with pytest.raises(DataError, match="version 2"):
        open_store(path, *args)
    _patch(path, 0, b"PAR1\0\0\0\0")
    with pytest.raises(DataError, match="not an ftscale token store"):
        open_store(path, *args)


@pytest.mark.parametrize("case", ["empty document", "not monotone", "short end", "nonzero start"])
def test_bad_offsets_are_refused(store_file, case):
    """Offsets must start at 0, increase strictly (no empty document) and end at the token count."""
    path, lengths, ids, _ = store_file
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    index, value = {"empty document": (3, offsets[2]), "not monotone": (3, offsets[2] - 1),
                    "short end": (len(lengths), offsets[-1] - 1), "nonzero start": (0, 1)}[case]
    _patch(path, HEADER_BYTES + 8 * index, struct.pack("<q", int(value)))
    store = open_store(path, len(lengths), len(ids), store_bytes(len(lengths), len(ids)))
    with pytest.raises(DataError, match="not strictly increasing from 0"):
        store.offsets()


def test_a_store_shrinking_while_open_is_caught(store_file):
    path, lengths, ids, _ = store_file
    store = open_store(path, len(lengths), len(ids), store_bytes(len(lengths), len(ids)))
    path.write_bytes(path.read_bytes()[:HEADER_BYTES])
    with pytest.raises(DataError, match="changed size"):
        store.read(0, 10)
