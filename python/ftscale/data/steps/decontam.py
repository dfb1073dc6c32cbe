"""Decontamination as a global step: training records that share word n-grams with an eval
set are removed, eval set by eval set, among the records still alive.

Prepare (driver, once): each eval set is read and its n-gram index built (``EvalIndex``; Ray
ships it to each worker once, as bytes). Map: every record's segments (its text, or its chat
turns of the chosen roles) are scanned against each index; a contaminated record emits one key
row per leaked eval item. Whether a record is contaminated depends on the record alone, so the
reduce only applies the verdicts in eval-set order to the records that earlier stages left.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ftscale.data.steps.base import KIND_LEAK, Batch, Step, UnitContext, key_rows
from ftscale.errors import InputError

if TYPE_CHECKING:
    from ftscale.data.job import Job, Shared

# An eval set is held whole, with its n-gram index, by the driver and shipped to every worker:
# benchmark sets are megabytes (MMLU's test split: ~8 MiB of text), so 1 GiB of records means
# the wrong file, and refusing it keeps the driver's memory bounded.
EVAL_SET_MAX_BYTES = 1 << 30


@dataclass
class EvalSet:
    name: str
    path: str
    index: Any  # _core.EvalIndex
    uids: np.ndarray
    files: list[str]
    rows: list[int]
    quarantined: int


@dataclass(frozen=True)
class DecontamOptions:
    eval_sets: list[tuple[str, str]]  # (name, path), in order
    text_field: str = "text"
    messages_field: str | None = None
    ngram: int = 13
    min_fraction: float = 0.0
    roles: list[str] | None = None
    num_threads: int | None = None


def segments_of(table: pa.Table, text_field: str, messages_field: str | None,
                roles: list[str] | None, pair_field: str | None = None) -> tuple[Any, np.ndarray]:
    """(texts, owner record of each text): the text column as it is, or one text per chat turn
    (a preference pair: its prompt's turns and its chosen reply)."""
    from ftscale.data.texts import record_segments

    if messages_field is None and pair_field is None:
        return table.column(text_field), np.arange(table.num_rows, dtype=np.uint32)
    texts: list[str] = []
    owners: list[int] = []
    for i, turns in enumerate(record_segments(table, text_field, messages_field, roles, pair_field)):
        texts.extend(turns)
        owners.extend([i] * len(turns))
    return texts, np.asarray(owners, dtype=np.uint32)


class Decontaminate(Step):
    name = "decontaminate"
    global_step = True

    def __init__(self, options: DecontamOptions) -> None:
        self.o = options
        self.evals: list[EvalSet] = []

    def prepare(self, job: Job) -> None:
        from ftscale import _core
        from ftscale.data.io import read_source
        from ftscale.dedup import texts_arg

        o = self.o
        self.evals = []
        for name, path in o.eval_sets:
            ev = read_source(name, [path], text_field=o.text_field, messages_field=o.messages_field,
                             max_bytes=EVAL_SET_MAX_BYTES)
            if ev.records.num_rows == 0:
                raise InputError(f"eval set {path} has no usable records ({ev.counts}); check the eval text field")
            texts, owners = segments_of(ev.records, o.text_field, o.messages_field, o.roles)
            index = _core.EvalIndex(texts_arg(texts), owners, o.ngram, o.min_fraction, True, o.num_threads)
            self.evals.append(EvalSet(name, path, index, ev.records.column("uid").to_numpy(),
                                      ev.records.column("file").to_pylist(), ev.records.column("row").to_pylist(),
                                      int(ev.counts["quarantined"])))

    def run(self, batches: Iterator[Batch], ctx: UnitContext) -> Iterator[Batch]:
        from ftscale.dedup import texts_arg

        source = ctx.source
        for batch in batches:
            n = batch.records.num_rows
            if n and self.evals:
                texts, owners = segments_of(batch.records, source.text_field, source.messages_field, self.o.roles,
                                            source.pair_field)
                for e, ev in enumerate(self.evals):
                    found = ev.index.scan(texts_arg(texts), owners, n, self.o.num_threads)
                    record, item = found["leak_record"], found["leak_eval_item"]
                    if len(record):
                        ctx.emit(key_rows(KIND_LEAK, np.zeros(len(record), np.uint32), np.full(len(record), e, np.uint64),
                                          item.astype(np.uint64), ctx.index, batch.first + record))
            yield batch

    def reduce(self, job: Job) -> None:
        from ftscale.data.job import Removal

        if not self.evals:
            return
        leaks = job.executor.reduce_partitions(KIND_LEAK, _leak_docs, job.shared())
        docs = leaks.column("doc").to_numpy().astype(np.int64) if leaks.num_rows else np.zeros(0, np.int64)
        sets = leaks.column("set").to_numpy() if leaks.num_rows else np.zeros(0, np.uint64)
        items = leaks.column("item").to_numpy() if leaks.num_rows else np.zeros(0, np.uint64)
        order = np.lexsort((items, docs, sets))
        docs, sets, items = docs[order], sets[order], items[order]
        job.report["decontamination"] = {}
        for e, ev in enumerate(self.evals):
            mine = sets == e
            d, it = docs[mine], items[mine]
            alive = job.alive[d]
            d, it = d[alive], it[alive]
            hit, first = np.unique(d, return_index=True)
            per_doc = np.split(it, first[1:]) if len(hit) else []
            job.remove(Removal("contaminated", hit, eval_set=[ev.name] * len(hit),
                               eval_items=[ev.uids[x.astype(np.int64)].tolist() for x in per_doc]))
            job.report["decontamination"][ev.name] = _summary(ev, it, len(hit))


def _leak_docs(rows: pa.Table, shared: Shared) -> pa.Table:
    docs = shared.docs(rows.column("unit").to_numpy(), rows.column("local").to_numpy())
    return pa.table({"doc": docs, "set": rows.column("a"), "item": rows.column("b")})


def _summary(ev: EvalSet, leaked_items: np.ndarray, contaminated: int) -> dict[str, Any]:
    per_item = np.bincount(leaked_items.astype(np.int64), minlength=len(ev.uids))
    leaked = np.flatnonzero(per_item)
    return {
        "eval_items": int(len(ev.uids)),
        "eval_items_quarantined": ev.quarantined,
        "eval_ngrams": int(ev.index.num_ngrams),
        "contaminated_records": int(contaminated),
        "eval_items_leaked": int(len(leaked)),
        "leaked_items": [{"eval_uid": int(ev.uids[i]), "file": ev.files[i], "row": int(ev.rows[i]),
                          "training_records": int(per_item[i])} for i in leaked],
    }
