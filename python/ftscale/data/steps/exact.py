"""Exact dedup as a global step: records whose normalised text is byte-identical form one
cluster, and the cluster keeps its best-ranked record (highest score, then lowest uid).

Map: the 128-bit hash of each record's normalised text becomes a key row (22 bytes per
document), partitioned by the hash's top bits. Reduce: per partition, the keep rule over the
rows (the Rust kernel sorts by hash, then rank). A cluster lives in one partition, so the
decisions equal the in-memory ``ftscale.exact_duplicates`` for any partition count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ftscale.data.steps.base import KIND_EXACT, Batch, Step, UnitContext, key_rows, partition_of
from ftscale.data.steps.records import dedup_texts

if TYPE_CHECKING:
    from ftscale.data.job import Job, Shared

REMOVED_SCHEMA = pa.schema([("doc", pa.uint32()), ("matched", pa.uint32())])


class ExactDedup(Step):
    name = "exact dedup"
    global_step = True

    def __init__(self, *, lowercase: bool = True, strip_punctuation: bool = False, num_threads: int | None = None) -> None:
        self.lowercase = lowercase
        self.strip_punctuation = strip_punctuation
        self.num_threads = num_threads

    def run(self, batches: Iterator[Batch], ctx: UnitContext) -> Iterator[Batch]:
        from ftscale import _core
        from ftscale.dedup import texts_arg

        for batch in batches:
            if batch.records.num_rows:
                texts = texts_arg(dedup_texts(batch, ctx.source))
                hi, lo = _core.exact_hashes(texts, True, self.lowercase, True, self.strip_punctuation, self.num_threads)
                ctx.emit(key_rows(KIND_EXACT, partition_of(hi, ctx.partitions), hi, lo, ctx.index, batch.local))
            yield batch

    def reduce(self, job: Job) -> None:
        from ftscale.data.job import Removal

        if job.num_docs == 0:
            return
        removed = job.executor.reduce_partitions(KIND_EXACT, _keep_in_partition, job.shared())
        docs, matched = _sorted_pairs(removed)
        job.remove(Removal("exact_duplicate", docs, matched=matched, similarity=np.ones(len(docs), np.float32)))


def _keep_in_partition(rows: pa.Table, shared: Shared) -> pa.Table:
    """Removed documents of one hash partition and the document each duplicates."""
    from ftscale import _core

    if rows.num_rows == 0:
        return REMOVED_SCHEMA.empty_table()
    docs = shared.docs(rows.column("unit").to_numpy(), rows.column("local").to_numpy())
    rep = _core.exact_keep(rows.column("a").to_numpy(), rows.column("b").to_numpy(), shared.rank[docs])
    gone = np.flatnonzero(rep != np.arange(len(rep)))
    return pa.table({"doc": docs[gone], "matched": docs[rep[gone]]}, schema=REMOVED_SCHEMA)


def _sorted_pairs(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """(doc, matched) columns as int64 arrays sorted by doc (whatever order the partitions came in)."""
    if table.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    docs = table.column("doc").to_numpy().astype(np.int64)
    matched = table.column("matched").to_numpy().astype(np.int64)
    order = np.argsort(docs, kind="stable")
    return docs[order], matched[order]
