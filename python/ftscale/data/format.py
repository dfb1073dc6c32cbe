"""The prepared-dataset format: the contract between `ftscale prep` and the loader.

Layout of a prepared directory::

    manifest.json                         written last (atomically): the dataset exists once it does
    shards/<source>/part-NNNNN.parquet    training documents
    val/<source>/part-NNNNN.parquet       held-out documents (chosen by uid hash, never position)
    quarantine/<source>.parquet           rejected records with a reason
    dedup/decisions.parquet               removed uid → kept uid, similarity, reason
    report.json, plots/<source>_lengths.png

Shard columns (``SHARD_SCHEMA``): ``uid`` (uint64), ``input_ids`` (list<int32>),
``loss_mask`` (list<uint8>: 1 where the token is a training target), ``length`` (int32,
tokens) and ``family`` (string, null when the source has no task-family field). CPT
documents end with EOS and have an all-ones mask; SFT masks cover assistant turns only.
The loader turns masks into labels (-100 where the mask is 0, and at the first token of
every packed piece, so no label is predicted across a document boundary).

Manifest keys (``MANIFEST_VERSION`` 1)::

    format_version, created_by, seq_len, seed,
    config            the prep config as plain data
    config_fingerprint  sha256 of the canonical config JSON
    tokenizer         {path, fingerprint, eos_token_id, pad_token_id, bos_token_id, vocab_size,
                       chat_template (or null)}
    sources           {name: {kind, counts{read, quarantined, exact_duplicate, near_duplicate,
                       contaminated, truncated, dropped_overlong, kept, train_docs, val_docs},
                       tokens{train, val, supervised_train}, supervised_share,
                       train: [shard...], val: [shard...]}}
    shard             {path (relative), rows, tokens, sha256}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
VAL_DIR = "val"

SHARD_SCHEMA = pa.schema([
    ("uid", pa.uint64()),
    ("input_ids", pa.list_(pa.int32())),
    ("loss_mask", pa.list_(pa.uint8())),
    ("length", pa.int32()),
    ("family", pa.string()),
])

IGNORE_INDEX = -100  # label value that carries no loss (the PyTorch / HF convention)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def read_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared dataset, checked for existence, JSON and format version."""
    from ftscale.errors import DataError, InputError

    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{path} not found: {dataset_dir} is not a prepared dataset (run `ftscale prep` first "
                         "and point at its output directory)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read as JSON ({e}); re-run `ftscale prep`") from e
    version = manifest.get("format_version")
    if version != MANIFEST_VERSION:
        raise DataError(f"{path}: format_version {version!r}, this ftscale reads {MANIFEST_VERSION}; "
                        "re-run `ftscale prep` with this version")
    if not isinstance(manifest.get("sources"), dict):
        raise DataError(f"{path}: no 'sources' table; re-run `ftscale prep`")
    return manifest
