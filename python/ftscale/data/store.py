"""Token store: one binary file per shard (``part-NNNNN.tokens`` beside ``part-NNNNN.parquet``)
holding the shard's documents as flat arrays — what the loader reads.

Layout (little-endian)::

    header   64 bytes: magic b"FTSTORE1", u32 version (1), u32 token_bytes (4: int32 ids),
             u64 rows, u64 tokens, zero padding
    offsets  int64[rows + 1]   offsets[0] = 0, offsets[rows] = tokens, strictly increasing
                               (every document has at least one token)
    ids      int32[tokens]     token ids, documents back to back
    mask     uint8[tokens]     loss mask: 1 where the token is a training target

Every section starts 8-byte aligned (64 + 8 (rows + 1) is a multiple of 8), so the offsets
and ids can be viewed in place (``np.frombuffer`` / ``np.memmap``). The file size is
``store_bytes(rows, tokens)`` = 64 + 8 (rows + 1) + 5 tokens.

Ids and masks are two flat arrays rather than one interleaved record array so that a reader
can take either alone (``ftscale mix`` reads offsets only; a pure-CPT reader could skip masks).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ftscale.data.atomic import atomic_path
from ftscale.errors import DataError

MAGIC = b"FTSTORE1"
STORE_VERSION = 1
TOKEN_BYTES = 4
HEADER_BYTES = 64
STORE_SUFFIX = ".tokens"
_HEADER = struct.Struct("<8sIIQQ")  # magic, version, token_bytes, rows, tokens (then zero padding to 64)
_COPY_BLOCK_BYTES = 1 << 20
_RERUN = "re-run `ftscale prep`"


def store_bytes(rows: int, tokens: int) -> int:
    """Size in bytes of a store of ``rows`` documents and ``tokens`` tokens."""
    return HEADER_BYTES + 8 * (rows + 1) + (TOKEN_BYTES + 1) * tokens


def store_path_for(parquet_path: str | Path) -> Path:
    """The store beside a Parquet shard: ``part-00003.parquet`` → ``part-00003.tokens``."""
    return Path(parquet_path).with_suffix(STORE_SUFFIX)


@dataclass(frozen=True)
class ShardInfo:
    """What a finished store holds: documents, tokens, file size in bytes, sha256 of the file."""

    rows: int
    tokens: int
    bytes: int
    sha256: str


# ---------------------------------------------------------------------------------------------
# writing


class StoreWriter:
    """Streams documents into a store: ``append`` any number of times (documents in order),
    then ``close``. Offsets, ids and masks go to three anonymous temporary files beside the
    target (deleted by the OS even after a crash); ``close`` stitches header + sections into
    a temporary name while hashing, fsyncs and renames it into place (``data/atomic.py``).
    Memory: what one ``append`` is given plus one 1 MiB copy buffer; no per-document state.
    Use it as a context manager, or call ``abort`` on failure."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sections: list[BinaryIO] = [tempfile.TemporaryFile(dir=self.path.parent) for _ in range(3)]
        self._rows = 0
        self._tokens = 0
        self._sections[0].write(np.zeros(1, dtype="<i8").tobytes())  # offsets[0]

    def append(self, lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> None:
        """Add documents: ``lengths`` (tokens per document, each >= 1), their ``ids`` (int32)
        and loss ``mask`` (uint8 or bool, 0/1) back to back. Misuse is a programming error
        (ValueError), not a user error."""
        lengths = np.asarray(lengths)
        ids, mask = np.asarray(ids), np.asarray(mask)
        if lengths.ndim != 1 or (len(lengths) and lengths.dtype.kind not in "iu"):
            raise ValueError("lengths must be a 1-D integer array")
        if ids.dtype != np.int32 or mask.dtype not in (np.uint8, np.bool_) or ids.ndim != 1 or mask.ndim != 1:
            raise ValueError(f"ids must be 1-D int32 and mask 1-D uint8/bool, got {ids.dtype} and {mask.dtype}")
        if len(lengths) and lengths.min() < 1:
            raise ValueError("every document needs at least one token")
        total = int(lengths.sum(dtype=np.int64))
        if total != len(ids) or total != len(mask):
            raise ValueError(f"lengths sum to {total} tokens, ids has {len(ids)}, mask {len(mask)}")
        if mask.dtype == np.uint8 and len(mask) and mask.max() > 1:
            raise ValueError("mask values must be 0 or 1")
        ends = self._tokens + np.cumsum(lengths, dtype=np.int64)
        self._sections[0].write(ends.astype("<i8", copy=False).data)
        self._sections[1].write(np.ascontiguousarray(ids, dtype="<i4").data)
        self._sections[2].write(np.ascontiguousarray(mask.view(np.uint8)).data)
        self._rows += len(lengths)
        self._tokens += total

    def close(self) -> ShardInfo:
        """Write the store atomically; returns its rows, tokens, bytes and sha256."""
        digest = hashlib.sha256()
        header = _HEADER.pack(MAGIC, STORE_VERSION, TOKEN_BYTES, self._rows, self._tokens).ljust(HEADER_BYTES, b"\0")
        buf = bytearray(_COPY_BLOCK_BYTES)
        view = memoryview(buf)
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as out:
                out.write(header)
                digest.update(header)
                for section in self._sections:
                    section.flush()
                    section.seek(0)
                    while n := section.readinto(buf):
                        out.write(view[:n])
                        digest.update(view[:n])
        finally:
            self.abort()
        size = store_bytes(self._rows, self._tokens)
        return ShardInfo(rows=self._rows, tokens=self._tokens, bytes=size, sha256=digest.hexdigest())

    def abort(self) -> None:
        """Drop the temporary sections (the target is left as it was)."""
        for section in self._sections:
            section.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()


def write_store(path: str | Path, lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> ShardInfo:
    """A whole store in one call (documents already in memory)."""
    with StoreWriter(path) as writer:
        writer.append(lengths, ids, mask)
        return writer.close()


# ---------------------------------------------------------------------------------------------
# reading


class Store:
    """An opened, header-checked store. Reads are positional (``os.preadv`` into the caller's
    buffers): the pages live in the page cache, shared by every process of the node, and never
    count in a reader's resident set. The file descriptor is opened on first use and can be
    released with ``close``."""

    def __init__(self, path: Path, rows: int, tokens: int) -> None:
        self.path = path
        self.rows = rows
        self.tokens = tokens
        self.bytes = store_bytes(rows, tokens)
        self._ids_at = HEADER_BYTES + 8 * (rows + 1)
        self._mask_at = self._ids_at + TOKEN_BYTES * tokens
        self._fd: int | None = None

    def _fileno(self) -> int:
        if self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"token store {self.path} cannot be read ({e.strerror or e}); {_RERUN}") from e
            if os.fstat(fd).st_size != self.bytes:  # replaced or truncated since it was opened
                os.close(fd)
                raise DataError(f"token store {self.path} changed size while in use; {_RERUN}")
            self._fd = fd
        return self._fd

    def _read_into(self, buffer: np.ndarray, offset: int) -> None:
        want = buffer.nbytes
        if want and os.preadv(self._fileno(), [buffer], offset) != want:
            raise DataError(f"token store {self.path} is shorter than its header says; {_RERUN}")

    def offsets(self) -> np.ndarray:
        """int64[rows + 1], checked: starts at 0, strictly increasing, ends at ``tokens``."""
        out = np.empty(self.rows + 1, dtype="<i8")
        self._read_into(out, HEADER_BYTES)
        if out[0] != 0 or out[-1] != self.tokens or (self.rows and np.diff(out).min() < 1):
            raise DataError(f"token store {self.path}: document offsets are not strictly increasing from 0 to "
                            f"{self.tokens} tokens (a document without tokens, or a corrupt file); {_RERUN}")
        return out.astype(np.int64, copy=False)

    def lengths(self) -> np.ndarray:
        """Tokens per document (uint32)."""
        return np.diff(self.offsets()).astype(np.uint32)

    def read_into(self, start: int, ids_out: np.ndarray, mask_out: np.ndarray) -> None:
        """Tokens ``start .. start + len(ids_out)`` into ``ids_out`` (int32) and ``mask_out``
        (uint8), both C-contiguous and of equal length."""
        self._read_into(ids_out, self._ids_at + TOKEN_BYTES * int(start))
        self._read_into(mask_out, self._mask_at + int(start))

    # Positional reads, not np.memmap. PackedLoader over one 50.2 M-token dataset (150k
    # documents, mean 335 tokens, 8 stores), seq_len 4096, micro-batch 8, one process, warm
    # page cache, on this project's shared 2-core machine (runs vary by +-30 %):
    #   preadv (this code)          24-30 M tokens/s   RSS +10 MB (anonymous: the plan)
    #   np.memmap + fancy indexing  17-23 M tokens/s   RSS +250 MB: every page a rank touches
    #                               counts in its RSS (file-backed, shared, but what top, ps and
    #                               the OOM killer's score see), so over an epoch each rank
    #                               "holds" the whole dataset
    #   all tokens in RAM (before)  31-41 M tokens/s   +246 MB anonymous per rank, peak +487 MB
    # Reading pieces costs ~5 us per piece (two syscalls and the copy) against ~3 us from RAM;
    # memmap's gather was slower still (int64 index arrays over the mapping). Both file-based
    # ways share the page cache between ranks; only preads keep RSS flat.
    def read_pieces(self, starts: np.ndarray, lengths: np.ndarray, ids_out: np.ndarray, mask_out: np.ndarray,
                    out_at: np.ndarray) -> None:
        """Several token ranges at once: range ``i`` (``starts[i]``, ``lengths[i]`` tokens) goes to
        ``ids_out`` / ``mask_out`` (int32 / uint8, C-contiguous) at position ``out_at[i]``."""
        fd = self._fileno()
        ids_bytes, mask_bytes = memoryview(ids_out).cast("B"), memoryview(mask_out).cast("B")
        starts = np.asarray(starts, dtype=np.int64)
        for id_at, mask_at, at, n in zip((self._ids_at + TOKEN_BYTES * starts).tolist(),
                                         (self._mask_at + starts).tolist(), out_at.tolist(), lengths.tolist()):
            if (os.preadv(fd, [ids_bytes[TOKEN_BYTES * at:TOKEN_BYTES * (at + n)]], id_at) != TOKEN_BYTES * n
                    or os.preadv(fd, [mask_bytes[at:at + n]], mask_at) != n):
                raise DataError(f"token store {self.path} is shorter than its header says; {_RERUN}")

    def read(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32, mask uint8) of tokens ``start .. start + count``."""
        ids, mask = np.empty(count, dtype="<i4"), np.empty(count, dtype=np.uint8)
        self.read_into(start, ids, mask)
        return ids, mask

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def open_store(path: str | Path, rows: int, tokens: int, size_bytes: int) -> Store:
    """Open the store at ``path`` and check it against the manifest's rows, tokens and bytes:
    file size, magic, version and the header's counts (DataError on any mismatch). Cheap: one
    stat and one 64-byte read; the offsets are checked when read (``Store.offsets``)."""
    path = Path(path)
    expected = store_bytes(rows, tokens)
    if size_bytes != expected:
        raise DataError(f"manifest entry of token store {path}: {size_bytes} bytes, but {rows} rows and {tokens} "
                        f"tokens make {expected}; {_RERUN}")
    try:
        with open(path, "rb") as f:
            actual = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise DataError(f"token store {path} cannot be read ({e.strerror or e}); {_RERUN}") from e
    if actual != expected:
        raise DataError(f"token store {path} is {actual} bytes, the manifest says {expected} (a torn or replaced "
                        f"file); {_RERUN}")
    magic, version, token_bytes, h_rows, h_tokens = _HEADER.unpack_from(head.ljust(HEADER_BYTES, b"\0"))
    if magic != MAGIC:
        raise DataError(f"{path} is not an ftscale token store (magic {magic!r}); {_RERUN}")
    if version != STORE_VERSION or token_bytes != TOKEN_BYTES:
        raise DataError(f"token store {path}: version {version} with {token_bytes}-byte ids, this ftscale reads "
                        f"version {STORE_VERSION} with {TOKEN_BYTES}-byte ids; {_RERUN}")
    if (h_rows, h_tokens) != (rows, tokens):
        raise DataError(f"token store {path}: header says {h_rows} rows / {h_tokens} tokens, the manifest "
                        f"{rows} / {tokens}; {_RERUN}")
    return Store(path, rows, tokens)


# ---------------------------------------------------------------------------------------------
# a prepared shard: the Parquet file and its store, side by side


def shard_table(uids: np.ndarray, lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray,
                families: list[str | None]) -> Any:
    """The Parquet table of one shard (``format.SHARD_SCHEMA``) from flat token/mask arrays."""
    import pyarrow as pa

    from ftscale.data.format import SHARD_SCHEMA

    lengths = np.asarray(lengths, dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    wide = offsets[-1] >= 2**31
    list_type = pa.LargeListArray if wide else pa.ListArray
    offsets_arr = pa.array(offsets.astype(np.int64 if wide else np.int32))
    ids_arr = list_type.from_arrays(offsets_arr, pa.array(ids, pa.int32())).cast(SHARD_SCHEMA.field("input_ids").type)
    mask_arr = list_type.from_arrays(offsets_arr, pa.array(mask, pa.uint8())).cast(SHARD_SCHEMA.field("loss_mask").type)
    return pa.Table.from_arrays([pa.array(uids, pa.uint64()), ids_arr, mask_arr, pa.array(lengths),
                                 pa.array(families, pa.string())], schema=SHARD_SCHEMA)


def write_shard(dataset_dir: str | Path, parquet_rel: str, uids: np.ndarray, lengths: np.ndarray, ids: np.ndarray,
                mask: np.ndarray, families: list[str | None]) -> Any:
    """Write one shard — ``parquet_rel`` (relative to ``dataset_dir``) and the store beside it —
    atomically, and return its manifest entry (``format.Shard``). ``ids``/``mask`` are the
    documents' tokens back to back (int32 / uint8), ``lengths`` their token counts."""
    from ftscale.data.atomic import write_parquet
    from ftscale.data.format import Shard, sha256_file

    root = Path(dataset_dir)
    ids = np.asarray(ids, dtype=np.int32)
    mask = np.asarray(mask, dtype=np.uint8)
    write_parquet(shard_table(uids, lengths, ids, mask, families), root / parquet_rel, row_group_size=4096)
    store_rel = store_path_for(parquet_rel).as_posix()
    info = write_store(root / store_rel, np.asarray(lengths, dtype=np.int64), ids, mask)
    return Shard(path=Path(parquet_rel).as_posix(), rows=info.rows, tokens=info.tokens,
                 sha256=sha256_file(root / parquet_rel), store=store_rel, store_bytes=info.bytes,
                 store_sha256=info.sha256)
