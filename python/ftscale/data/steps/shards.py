"""Writing a prepared dataset's shards: each source's train and val documents, in document
order, cut every ``shard_rows`` documents, so the shards are the same whatever the units,
workers or executor. One task per shard reads the spilled tokens of the units it spans
(memory: the shard's tokens, 5 bytes per token, and its documents' table).

A preference source's documents come in pairs (chosen, rejected: adjacent, same uid, so same
split; every unit spills whole pairs), and its shards are cut every ``shard_rows`` rounded up to
an even number, so a shard never separates the two documents of a pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ftscale.data.steps.records import read_ipc
from ftscale.data.workdir import map_array

if TYPE_CHECKING:
    from ftscale.data.job import Job

SHARD_ROW_GROUP_ROWS = 4096
WRITTEN_SCHEMA = pa.schema([("source", pa.string()), ("split", pa.string()), ("index", pa.int64()),
                            ("entry", pa.string())])


@dataclass(frozen=True)
class TokenSegment:
    """Documents ``skip .. skip + take`` of one unit's spilled split."""

    directory: str  # the unit's tokenize pass directory
    split: str
    docs: list[str]  # the split's per-batch document tables
    tokens: int  # the split's tokens in the unit
    skip: int
    take: int


@dataclass(frozen=True)
class ShardTask:
    dataset: str
    source: str
    split: str
    index: int
    segments: list[TokenSegment]


def plan_shards(job: Job, metas: list[dict[str, Any]], dataset: Path, shard_rows: int) -> list[ShardTask]:
    """One task per shard of every source and split (``metas``: the tokenize pass's)."""
    tasks = []
    for s, spec in enumerate(job.sources):
        units = [(t, m) for t, m in zip(job.tasks, metas) if t.source_index == s]
        rows_per_shard = shard_rows + shard_rows % 2 if spec.kind == "preference" else shard_rows
        for split in ("train", "val"):
            total = sum(int(m[split]["rows"]) for _, m in units)
            if spec.kind == "preference" and total % 2:
                raise AssertionError(f"source {spec.name!r} {split}: {total} documents, not whole pairs")
            for k, lo in enumerate(range(0, total, rows_per_shard)):
                hi = min(lo + rows_per_shard, total)
                segments, start = [], 0
                for task, meta in units:
                    rows = int(meta[split]["rows"])
                    a, b = max(lo, start), min(hi, start + rows)
                    if a < b:
                        directory = str(Path(task.work) / "units" / f"u{task.index:06d}" / "tokenize")
                        segments.append(TokenSegment(directory, split, list(meta[split]["docs"]),
                                                     int(meta[split]["tokens"]), a - start, b - a))
                    start += rows
                tasks.append(ShardTask(str(dataset), spec.name, split, k, segments))
    return tasks


def _segment_arrays(seg: TokenSegment) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    directory = Path(seg.directory)
    docs = pa.concat_tables([read_ipc(directory / name) for name in seg.docs])
    lengths = docs.column("length").to_numpy().astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    lo, hi = int(starts[seg.skip]), int(starts[seg.skip + seg.take])
    tokens = map_array(directory / f"{seg.split}.tokens.i32", np.int32, seg.tokens)
    masks = map_array(directory / f"{seg.split}.masks.u8", np.uint8, seg.tokens)
    return docs.slice(seg.skip, seg.take), np.array(tokens[lo:hi]), np.array(masks[lo:hi])


def write_shard(task: ShardTask, _shared: Any) -> pa.Table:
    """Write one shard; returns its manifest entry (JSON) with where it belongs."""
    import json

    from ftscale.data.format import SHARDS_DIR, VAL_DIR, shard_name
    from ftscale.data.store import write_shard

    parts = [_segment_arrays(seg) for seg in task.segments]
    docs = pa.concat_tables([p[0] for p in parts])
    ids = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
    masks = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.uint8)
    rel = Path(SHARDS_DIR if task.split == "train" else VAL_DIR) / task.source / shard_name(task.index)
    shard = write_shard(Path(task.dataset), rel.as_posix(), docs.column("uid").to_numpy(),
                        docs.column("length").to_numpy(), ids, masks, docs.column("family").to_pylist())
    return pa.table({"source": [task.source], "split": [task.split], "index": [task.index],
                     "entry": [json.dumps(shard.to_json())]}, schema=WRITTEN_SCHEMA)
