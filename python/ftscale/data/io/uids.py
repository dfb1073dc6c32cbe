"""Stable 64-bit record uids from (source, file id, row).

::

    base = int.from_bytes(blake2b(utf8(source + "\\0" + file_id), digest_size=8), "little")
    x    = (base + row + 0x9E3779B97F4A7C15)             mod 2**64
    x    = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9)        mod 2**64
    x    = ((x ^ (x >> 27)) * 0x94D049BB133111EB)        mod 2**64
    uid  = x ^ (x >> 31)                                 (splitmix64 of base + row)

``row`` is the 0-based record index within the file (see ``discover`` for file ids).
"""

from __future__ import annotations

import hashlib

import numpy as np

_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_MUL2 = np.uint64(0x94D049BB133111EB)


def file_uid_base(source: str, file_id: str) -> int:
    """The 64-bit base of a file's uids: blake2b-64 of source + NUL + file id, little-endian."""
    digest = hashlib.blake2b(f"{source}\0{file_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def record_uids(source: str, file_id: str, rows: np.ndarray) -> np.ndarray:
    """uint64 uids of ``rows`` of one file: splitmix64(base + row), see the module docstring."""
    rows = np.asarray(rows)
    if rows.size and np.issubdtype(rows.dtype, np.signedinteger) and rows.min() < 0:
        raise ValueError("row indices must be non-negative")
    with np.errstate(over="ignore"):  # wrapping mod 2**64 is the point
        return splitmix64_array(rows.astype(np.uint64) + np.uint64(file_uid_base(source, file_id)))


def splitmix64_array(x: np.ndarray) -> np.ndarray:
    """SplitMix64 of every uint64 in ``x`` (vectorised; arithmetic mod 2**64)."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64) + _SPLITMIX_GAMMA
        x = (x ^ (x >> np.uint64(30))) * _SPLITMIX_MUL1
        x = (x ^ (x >> np.uint64(27))) * _SPLITMIX_MUL2
        return x ^ (x >> np.uint64(31))
