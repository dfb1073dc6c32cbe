"""Near dedup as a global step: MinHash LSH with verification, out of core, with the same
clusters as the in-memory ``ftscale.near_duplicates``.

Map, per batch: MinHash signatures (spilled, 4·num_perm bytes per document), the dedup texts
when verification may read them (spilled with u64 offsets), and one key row per band of
every document that has a shingle (22 bytes per row; partitioned by the band key).

Reduce:
1. per partition of band rows: the buckets (rows sharing band and key; members in keep
   order) among the documents still alive — candidates only, a few bytes per member;
2. band by band, as the in-memory algorithm does: the component of every member at the
   start of the band (a union-find over global document indices, 8 bytes per document),
   then verification of the band's buckets in parallel chunks, each chunk loading only its
   members' signatures (and texts, for pairs whose estimate is ambiguous) from the spills,
   then the union of the band's edges;
3. the representative (best-ranked member) of every component, and each removed document's
   similarity to it;
4. with ``audit_pairs``: the audit's universe from a looser banding (its own key rows), scored
   in chunks, then sampled and measured (``ftscale.dedup.near_duplicates(audit_pairs=...)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ftscale.data.faults import crash_at
from ftscale.data.steps.base import KIND_BAND, KIND_LOOSE_BAND, Batch, Step, UnitContext, key_rows, partition_of
from ftscale.data.steps.records import dedup_texts
from ftscale.data.workdir import ArrayAppender, unit_dir

if TYPE_CHECKING:
    from ftscale.data.job import Job, Shared

# Members verified per task: bounds a task's signatures to CHUNK_MEMBERS · 4 · num_perm bytes
# (64 MiB at 128 permutations).
CHUNK_MEMBERS = 1 << 17
CHUNK_PAIRS = 1 << 16  # similarity / audit pairs per task


@dataclass(frozen=True)
class NearOptions:
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    seed: int = 0
    bands: int | None = None
    rows: int | None = None
    verify: str = "auto"
    char_ngrams: bool = False
    strip_punctuation: bool = False
    audit_pairs: int = 0
    num_threads: int | None = None


@dataclass(frozen=True)
class StoreSpec:
    """How a task opens the spilled signatures and texts (picklable; ``open()`` per task)."""

    units: list[tuple[str, int]]  # (unit directory, documents)
    texts: bool
    options: NearOptions

    def open(self) -> Any:
        from ftscale import _core

        o = self.options
        return _core.SpillStore(
            [str(Path(d) / "sigs.u32") for d, _ in self.units],
            [(str(Path(d) / "texts.bin"), str(Path(d) / "texts.off")) for d, _ in self.units] if self.texts else None,
            [n for _, n in self.units], o.num_perm, o.ngram, o.seed, o.char_ngrams, True, o.strip_punctuation,
        )


class TextSpill:
    """A unit's dedup texts (concatenated UTF-8) and their u64 offsets, appended per batch."""

    def __init__(self, directory: Path) -> None:
        self.data = open(directory / "texts.bin", "wb")
        self.offsets = ArrayAppender(directory / "texts.off", np.uint64)
        self.offsets.append(np.zeros(1, np.uint64))
        self.end = 0

    def append(self, texts: Any) -> None:
        """Write a batch's texts straight from the Arrow buffers (no copy of the text)."""
        for chunk in [texts] if isinstance(texts, pa.Array) else texts.chunks:
            if not len(chunk):
                continue
            width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
            offsets = np.frombuffer(chunk.buffers()[1], dtype=width)[chunk.offset:chunk.offset + len(chunk) + 1]
            offsets = offsets.astype(np.int64)
            data = chunk.buffers()[2]
            if data is not None and offsets[-1] > offsets[0]:
                self.data.write(memoryview(data)[offsets[0]:offsets[-1]])
            self.offsets.append((offsets[1:] - offsets[0] + self.end).astype(np.uint64))
            self.end += int(offsets[-1] - offsets[0])

    def close(self) -> None:
        self.data.close()
        self.offsets.close()


class NearDedup(Step):
    name = "near dedup"
    global_step = True

    def __init__(self, options: NearOptions) -> None:
        from ftscale import _core
        from ftscale.dedup import lsh_params

        self.o = options
        if options.bands is None:
            self.bands, self.rows = lsh_params(min(options.threshold, 0.999), options.num_perm)
        else:
            self.bands, self.rows = int(options.bands), int(options.rows or 0)
        self.loose = _core.audit_loose_params(options.threshold, options.num_perm) if options.audit_pairs else None
        self.texts = options.verify in ("auto", "exact")

    def run(self, batches: Iterator[Batch], ctx: UnitContext) -> Iterator[Batch]:
        from ftscale import _core
        from ftscale.dedup import texts_arg

        o = self.o
        sigs_out = ArrayAppender(ctx.dir / "sigs.u32", np.uint32)
        texts_out = TextSpill(ctx.dir) if self.texts else None
        try:
            for batch in batches:
                if batch.records.num_rows:
                    texts = dedup_texts(batch, ctx.source)
                    sigs, counts = _core.minhash(texts_arg(texts), o.num_perm, o.ngram, o.seed, o.char_ngrams, True,
                                                 o.strip_punctuation, o.num_threads)
                    sigs_out.append(sigs.ravel())
                    if texts_out is not None:
                        texts_out.append(texts)
                    matchable = counts > 0
                    local = batch.local[matchable]
                    ctx.emit(self._band_rows(KIND_BAND, sigs[matchable], local, (self.bands, self.rows), ctx))
                    if self.loose is not None:
                        ctx.emit(self._band_rows(KIND_LOOSE_BAND, sigs[matchable], local, self.loose, ctx))
                yield batch
        finally:
            sigs_out.close()
            if texts_out is not None:
                texts_out.close()

    def _band_rows(self, kind: int, sigs: np.ndarray, local: np.ndarray, banding: tuple[int, int],
                   ctx: UnitContext) -> pa.Table:
        from ftscale import _core

        bands, rows = banding
        keys = _core.band_keys(np.ascontiguousarray(sigs), bands, rows, self.o.num_threads).ravel()
        band = np.tile(np.arange(bands, dtype=np.uint64), len(local))
        return key_rows(kind, partition_of(keys, ctx.partitions), keys, band, ctx.index, np.repeat(local, bands))

    # ------------------------------------------------------------------------------ reduce

    def store_spec(self, job: Job) -> StoreSpec:
        units = [(str(unit_dir(t.work, t.index)), int(m["records"])) for t, m in zip(job.tasks, job.metas)]
        return StoreSpec(units=units, texts=self.texts, options=self.o)

    def reduce(self, job: Job) -> None:
        from ftscale import _core
        from ftscale.data.job import Removal
        from ftscale.dedup import MINHASH_SIGNATURE_VERSION

        alive = job.alive
        if not alive.any():
            return
        ex, store = job.executor, self.store_spec(job)
        buckets = ex.reduce_partitions(KIND_BAND, _buckets_in_partition, job.shared())
        uf = _core.UnionFind(job.num_docs)
        checked = merged = 0
        bucket_band = buckets.column("band").to_numpy() if buckets.num_rows else np.zeros(0, np.uint32)
        for band in range(self.bands):
            crash_at(f"band:{band}")
            mine = buckets.filter(pa.array(bucket_band == band)) if buckets.num_rows else buckets
            items = []
            for members, offsets in _chunks(mine):
                items.append({"members": members, "roots": uf.find_many(members), "offsets": offsets})
            if not items:
                continue
            found = ex.parallel(_verify_chunk, items, (store, self))
            for a, b in zip(found.column("a").to_pylist(), found.column("b").to_pylist()):
                merged += uf.union_many(np.asarray(a, np.uint32), np.asarray(b, np.uint32))
            checked += int(pa.compute.sum(found.column("checked")).as_py() or 0)
        reps = uf.representatives(job.rank)
        del uf
        docs = np.flatnonzero(reps != np.arange(len(reps), dtype=np.uint32)).astype(np.int64)
        matched = reps[docs].astype(np.int64)
        sims = self._similarities(ex, store, docs, matched)
        job.remove(Removal("near_duplicate", docs, matched=matched, similarity=sims))
        job.report["near_dedup"] = {
            "threshold": self.o.threshold, "num_perm": self.o.num_perm,
            "minhash_signature_version": MINHASH_SIGNATURE_VERSION, "bands": self.bands, "rows": self.rows,
            "candidate_pairs_checked": checked, "verified_pairs": merged,
        }
        if self.loose is not None:
            job.report["audit"] = self._audit(job, ex, store, alive)

    def _similarities(self, ex: Any, store: StoreSpec, docs: np.ndarray, matched: np.ndarray) -> np.ndarray:
        if not len(docs):
            return np.zeros(0, np.float32)
        items = [{"a": docs[i:i + CHUNK_PAIRS].astype(np.uint32), "b": matched[i:i + CHUNK_PAIRS].astype(np.uint32)}
                 for i in range(0, len(docs), CHUNK_PAIRS)]
        out = ex.parallel(_similarity_chunk, items, (store, self))
        return out.column("similarity").to_numpy().astype(np.float32)

    def _audit(self, job: Job, ex: Any, store: StoreSpec, alive: np.ndarray) -> dict[str, Any]:
        from ftscale import _core

        shared = job.shared()
        shared.alive = alive  # the audit samples among the documents near dedup saw
        pairs = ex.reduce_partitions(KIND_LOOSE_BAND, _universe_in_partition, shared)
        packed = np.zeros(0, np.uint64)
        if pairs.num_rows:
            packed = np.unique((pairs.column("a").to_numpy().astype(np.uint64) << np.uint64(32))
                               | pairs.column("b").to_numpy().astype(np.uint64))
        a = (packed >> np.uint64(32)).astype(np.uint32)
        b = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        items = [{"a": a[i:i + CHUNK_PAIRS], "b": b[i:i + CHUNK_PAIRS]} for i in range(0, len(a), CHUNK_PAIRS)]
        scored = ex.parallel(_audit_chunk, items, (store, self)) if items else None
        est = scored.column("estimated").to_numpy() if scored is not None else np.zeros(0)
        flagged = scored.column("flagged").to_numpy(zero_copy_only=False) if scored is not None else np.zeros(0, bool)
        lb, lr = self.loose  # type: ignore[misc]
        audit = _core.audit_summarize(store.open(), a, b, est, flagged.astype(bool), self.o.threshold, lb, lr,
                                      self.o.audit_pairs, self.o.seed, self.o.num_threads)
        sampled = audit.pop("pairs")
        audit["sampled_pairs"] = [
            {"uid_a": int(job.uids[x]), "uid_b": int(job.uids[y]), "estimated": round(e, 4), "exact": round(ex_, 4),
             "flagged": f}
            for x, y, e, ex_, f in sampled
        ]
        return audit


def _chunks(buckets: pa.Table) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(members, offsets) of consecutive buckets holding up to CHUNK_MEMBERS members."""
    if buckets.num_rows == 0:
        return
    lists = buckets.column("members").combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    members = lists.values.to_numpy()
    start = 0
    while start < len(lists):
        stop = int(np.searchsorted(offsets, offsets[start] + CHUNK_MEMBERS, side="right")) - 1
        stop = max(stop, start + 1)
        lo, hi = offsets[start], offsets[stop]
        yield members[lo:hi].astype(np.uint32), offsets[start:stop + 1] - lo
        start = stop


def _buckets_in_partition(rows: pa.Table, shared: Shared) -> pa.Table:
    from ftscale import _core

    if rows.num_rows == 0:
        return BUCKET_SCHEMA.empty_table()
    docs = shared.docs(rows.column("unit").to_numpy(), rows.column("local").to_numpy())
    keep = shared.alive[docs]
    band, offsets, members = _core.find_buckets(rows.column("b").to_numpy()[keep].astype(np.uint32),
                                                rows.column("a").to_numpy()[keep], docs[keep], shared.rank)
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(members, pa.uint32()))
    return pa.table({"band": pa.array(band, pa.uint32()), "members": lists}, schema=BUCKET_SCHEMA)


def _universe_in_partition(rows: pa.Table, shared: Shared) -> pa.Table:
    from ftscale import _core

    if rows.num_rows == 0:
        return PAIR_SCHEMA.empty_table()
    docs = shared.docs(rows.column("unit").to_numpy(), rows.column("local").to_numpy())
    keep = shared.alive[docs]
    a, b = _core.audit_universe(rows.column("b").to_numpy()[keep].astype(np.uint32),
                                rows.column("a").to_numpy()[keep], docs[keep])
    return pa.table({"a": a, "b": b}, schema=PAIR_SCHEMA)


def _verify_chunk(item: dict[str, np.ndarray], shared: tuple[StoreSpec, NearDedup]) -> pa.Table:
    from ftscale import _core

    spec, step = shared
    a, b, checked = _core.verify_buckets(spec.open(), item["members"], item["roots"], item["offsets"],
                                         step.o.threshold, step.bands, step.rows, step.o.verify, step.o.num_threads)
    return pa.table({"a": pa.array([a], pa.list_(pa.uint32())), "b": pa.array([b], pa.list_(pa.uint32())),
                     "checked": pa.array([checked], pa.uint64())})


def _similarity_chunk(item: dict[str, np.ndarray], shared: tuple[StoreSpec, NearDedup]) -> pa.Table:
    from ftscale import _core

    spec, step = shared
    sims = _core.pair_similarities(spec.open(), item["a"], item["b"], step.o.threshold, step.bands, step.rows,
                                   step.o.verify, step.o.num_threads)
    return pa.table({"similarity": sims})


def _audit_chunk(item: dict[str, np.ndarray], shared: tuple[StoreSpec, NearDedup]) -> pa.Table:
    from ftscale import _core

    spec, step = shared
    est, flagged = _core.audit_score(spec.open(), item["a"], item["b"], step.o.threshold, step.bands, step.rows,
                                     step.o.verify, step.o.num_threads)
    return pa.table({"estimated": est, "flagged": flagged})


BUCKET_SCHEMA = pa.schema([("band", pa.uint32()), ("members", pa.large_list(pa.uint32()))])
PAIR_SCHEMA = pa.schema([("a", pa.uint32()), ("b", pa.uint32())])
