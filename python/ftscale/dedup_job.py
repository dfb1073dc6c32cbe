"""`ftscale dedup`: read inputs → quarantine → exact dedup → near dedup → decontamination → write.

Outputs under ``--out``::

    data/<source>.parquet        kept records, all original columns + uid, source, file, row
    removed/decisions.parquet    one row per removed record: uid, source, file, row, reason,
                                 matched_uid (the record it duplicates, at its stage),
                                 kept_uid (the end of the matched chain: a kept record, or
                                 one removed as contaminated), similarity (to matched_uid),
                                 eval_set, eval_items (leaked eval uids)
    quarantine/<source>.parquet  rejected input records with a reason
    report.json                  options, per-source and total counts per stage, LSH
                                 parameters, leaked eval items, audit

Counts are conserved per source: ``read == kept + quarantined + exact_duplicate +
near_duplicate + contaminated``. Dedup is global across all inputs. Output bytes depend only
on the inputs and options (never on thread count); timings are printed, not written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftscale.errors import ConfigError, InputError

STAGES = ("exact_duplicate", "near_duplicate", "contaminated")
REPORT_FORMAT_VERSION = 1


@dataclass
class DedupOptions:
    inputs: list[str]
    out: str
    text_field: str = "text"
    messages_field: str | None = None
    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    char_ngrams: bool = False
    verify: str = "auto"
    bands: int | None = None
    rows: int | None = None
    seed: int = 0
    keep: str = "lowest-uid"
    lowercase: bool = True
    strip_punctuation: bool = False
    decontaminate: list[str] = field(default_factory=list)
    eval_text_field: str | None = None
    eval_messages_field: str | None = None
    decontam_ngram: int = 13
    decontam_min_fraction: float = 0.0
    decontam_roles: list[str] | None = None
    audit: int = 0
    max_record_bytes: int | None = None
    num_threads: int | None = None

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2 or self.num_perm > 4096:
            raise ConfigError(f"--num-perm must be in 2..4096, got {self.num_perm}")
        if self.ngram < 1 or self.decontam_ngram < 1:
            raise ConfigError("--ngram and --decontam-ngram must be >= 1")
        if self.verify not in ("auto", "estimate", "exact", "none"):
            raise ConfigError(f"--verify must be auto, estimate, exact or none, got {self.verify!r}")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("give both --bands and --rows, or neither")
        if self.keep != "lowest-uid" and not (self.keep.startswith("max:") and len(self.keep) > 4):
            raise ConfigError(f"--keep must be 'lowest-uid' or 'max:COLUMN', got {self.keep!r}")
        if self.audit < 0:
            raise ConfigError(f"--audit must be >= 0, got {self.audit}")
        if self.decontam_roles:
            from ftscale.data.texts import ROLES

            bad = sorted(set(self.decontam_roles) - set(ROLES))
            if bad:
                raise ConfigError(f"--decontam-roles: unknown roles {bad}; allowed: {', '.join(ROLES)}")


def _source_names(inputs: list[str]) -> list[tuple[str, str]]:
    """(name, path) per input: ``name=path`` or the path's stem; clashing names get -2, -3, ..."""
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    for spec in inputs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name:
            path = spec
            name = Path(spec.rstrip("/")).name.split(".")[0] or "input"
        unique, k = name, 2
        while unique in used:
            unique, k = f"{name}-{k}", k + 1
        used.add(unique)
        out.append((unique, path))
    return out


class Records:
    """All kept-so-far records of every source, addressed by one global index.

    ``fields[s]`` is source s's (text_field, messages_field); messages_field set means chat.
    """

    def __init__(self, tables: list[Any], names: list[str], fields: list[tuple[str, str | None]],
                 keep: str = "lowest-uid") -> None:
        import pyarrow as pa

        from ftscale.data.texts import column_or_none, record_texts

        self.tables = tables
        self.names = names
        self.fields = fields
        self.sizes = [t.num_rows for t in tables]
        self.source_of = np.repeat(np.arange(len(tables)), self.sizes)
        self.uids = np.concatenate([t.column("uid").to_numpy() for t in tables]) if tables else np.zeros(0, np.uint64)
        chunks = []
        for t, (text_field, messages_field) in zip(tables, fields):
            col = record_texts(t, text_field, messages_field)
            chunks.extend(col.chunks if isinstance(col, pa.ChunkedArray) else [col])
        self.texts = pa.chunked_array(chunks, type=pa.string()) if chunks else pa.chunked_array([], pa.string())
        self.scores = None
        if keep.startswith("max:"):
            column = keep[4:]
            parts = []
            for name, t in zip(names, tables):
                scores = column_or_none(t, column)
                if scores is None:
                    raise ConfigError(f"keep rule {keep}: source {name!r} has no column {column!r}")
                parts.append(scores)
            self.scores = np.concatenate(parts)

    def __len__(self) -> int:
        return len(self.uids)

    def local(self, global_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source index, row in that source's table) of global indices."""
        starts = np.concatenate([[0], np.cumsum(self.sizes)])[:-1]
        src = self.source_of[global_idx]
        return src, global_idx - starts[src]


def _decision_rows(records: Records, removed: np.ndarray, reason: str, kept: np.ndarray | None,
                   similarity: np.ndarray | None, eval_set: list[str | None] | None = None,
                   eval_items: list[list[int]] | None = None) -> dict[str, list]:
    import pyarrow as pa

    src, row = records.local(removed)
    n = len(removed)
    files: list = [None] * n
    rows: list = [None] * n
    for s in np.unique(src):
        where = np.flatnonzero(src == s)
        picked = records.tables[s].select(["file", "row"]).take(pa.array(row[where]))
        for i, f, r in zip(where.tolist(), picked.column("file").to_pylist(), picked.column("row").to_pylist()):
            files[i], rows[i] = f, r
    return {
        "uid": records.uids[removed].tolist(),
        "source": [records.names[s] for s in src],
        "file": files,
        "row": rows,
        "reason": [reason] * n,
        "matched_uid": records.uids[kept].tolist() if kept is not None else [None] * n,
        "similarity": similarity.astype(float).tolist() if similarity is not None else [None] * n,
        "eval_set": eval_set if eval_set is not None else [None] * n,
        "eval_items": eval_items if eval_items is not None else [None] * n,
    }


def _decisions_table(parts: list[dict[str, list]]) -> Any:
    import pyarrow as pa

    schema = pa.schema([
        ("uid", pa.uint64()), ("source", pa.string()), ("file", pa.string()), ("row", pa.int64()),
        ("reason", pa.string()), ("matched_uid", pa.uint64()), ("kept_uid", pa.uint64()),
        ("similarity", pa.float32()),
        ("eval_set", pa.string()), ("eval_items", pa.list_(pa.uint64())),
    ])
    merged: dict[str, list] = {name: [] for name in schema.names if name != "kept_uid"}
    for p in parts:
        for k in merged:
            merged[k].extend(p[k])
    merged["kept_uid"] = _final_survivors(merged["uid"], merged["matched_uid"])
    return pa.Table.from_pydict(merged, schema=schema)


def _final_survivors(uids: list[int], matched: list[int | None]) -> list[int | None]:
    """Follow matched_uid chains: a record matched at one stage may itself be removed later
    (an exact duplicate's representative can be a near duplicate of a third record). The
    end of the chain is a kept record, or a record removed as contaminated."""
    next_of = {u: m for u, m in zip(uids, matched) if m is not None}
    out = []
    for m in matched:
        while m is not None and m in next_of:
            m = next_of[m]
        out.append(m)
    return out


@dataclass
class StageOutcome:
    """What the dedup and decontamination stages decided, per global record index."""

    alive: np.ndarray
    removed_by: dict[str, np.ndarray]
    decisions: Any  # pyarrow Table (see _decisions_table)
    report: dict[str, Any]


def run_dedup(opts: DedupOptions, stages: Any) -> dict[str, Any]:
    """Run the job; returns the report (also written to ``out/report.json``)."""
    from ftscale.data.atomic import ensure_dir, write_json
    from ftscale.data.io import read_source

    if not opts.inputs:
        raise ConfigError("give at least one INPUT path")
    opts.validate()
    out = ensure_dir(Path(opts.out))
    sources = _source_names(opts.inputs)
    reads = []
    for name, path in sources:
        with stages.stage("read", f"{name} ({path})"):
            reads.append(read_source(name, [path], text_field=opts.text_field,
                                     messages_field=opts.messages_field,
                                     max_record_bytes=opts.max_record_bytes))
    names = [n for n, _ in sources]
    records = Records([r.records for r in reads], names, [(opts.text_field, opts.messages_field)] * len(reads),
                      opts.keep)
    outcome = dedup_and_decontaminate(records, opts, stages)
    # The report holds what determines the output, so it too is identical across thread
    # counts and output locations.
    settings = {k: v for k, v in asdict(opts).items() if k not in ("out", "num_threads")}
    report: dict[str, Any] = {"format_version": REPORT_FORMAT_VERSION, "options": settings, **outcome.report}
    with stages.stage("write", str(out)):
        written = _write_outputs(out, records, reads, outcome)
    report["sources"] = stage_counts(records, [r.counts for r in reads], outcome)
    report["totals"] = {k: sum(s[k] for s in report["sources"].values()) for k in
                        ("read", "quarantined", *STAGES, "kept")}
    report["outputs"] = written
    write_json(report, out / "report.json")
    return report


def dedup_and_decontaminate(records: Records, opts: DedupOptions, stages: Any) -> StageOutcome:
    """Exact dedup → near dedup → decontamination over all records (global across sources)."""
    import pyarrow as pa

    from ftscale import dedup
    from ftscale.data.io import read_source
    from ftscale.data.texts import record_segments
    from ftscale.decontam import find_contamination

    opts.validate()
    alive = np.ones(len(records), dtype=bool)
    removed_by = {stage: np.zeros(len(records), dtype=bool) for stage in STAGES}
    decisions: list[dict[str, list]] = []
    report: dict[str, Any] = {}

    if opts.exact and len(records):
        with stages.stage("exact dedup", f"{len(records):,} records"):
            res = dedup.exact_duplicates(records.texts, lowercase=opts.lowercase,
                                         strip_punctuation=opts.strip_punctuation, uids=records.uids,
                                         scores=records.scores, num_threads=opts.num_threads)
            gone = np.flatnonzero(~res.keep)
            removed_by["exact_duplicate"][gone] = True
            alive[gone] = False
            decisions.append(_decision_rows(records, gone, "exact_duplicate", res.cluster[gone], res.similarity[gone]))

    if opts.near and alive.any():
        idx = np.flatnonzero(alive)
        with stages.stage("near dedup", f"{len(idx):,} records"):
            res = dedup.near_duplicates(
                records.texts.take(pa.array(idx)), threshold=opts.threshold, num_perm=opts.num_perm,
                ngram=opts.ngram, seed=opts.seed, bands=opts.bands, rows=opts.rows, verify=opts.verify,
                uids=records.uids[idx], scores=None if records.scores is None else records.scores[idx],
                char_ngrams=opts.char_ngrams, strip_punctuation=opts.strip_punctuation,
                audit_pairs=opts.audit, num_threads=opts.num_threads)
            gone_local = np.flatnonzero(~res.keep)
            gone = idx[gone_local]
            removed_by["near_duplicate"][gone] = True
            alive[gone] = False
            decisions.append(_decision_rows(records, gone, "near_duplicate", idx[res.cluster[gone_local]],
                                            res.similarity[gone_local]))
            info = dict(res.info)
            audit = info.pop("audit", None)
            report["near_dedup"] = {"threshold": opts.threshold, "num_perm": opts.num_perm,
                                    "minhash_signature_version": dedup.MINHASH_SIGNATURE_VERSION, **info}
            if audit is not None:
                report["audit"] = _audit_summary(audit, records, idx)

    if opts.decontaminate:
        report["decontamination"] = {}
        eval_text_field = opts.eval_text_field or opts.text_field
        for eval_name, eval_path in _source_names(opts.decontaminate):
            idx = np.flatnonzero(alive)
            with stages.stage("decontaminate", f"against {eval_name}"):
                ev = read_source(eval_name, [eval_path], text_field=eval_text_field,
                                 messages_field=opts.eval_messages_field)
                if ev.records.num_rows == 0:
                    raise InputError(f"eval set {eval_path} has no usable records ({ev.counts}); "
                                     "check the eval text field")
                eval_segments = record_segments(ev.records, eval_text_field, opts.eval_messages_field,
                                                opts.decontam_roles)
                train_segments = _alive_segments(records, idx, opts.decontam_roles)
                found = find_contamination(train_segments, eval_segments, ngram=opts.decontam_ngram,
                                           min_fraction=opts.decontam_min_fraction,
                                           num_threads=opts.num_threads)
                hit_local = np.flatnonzero(found.contaminated)
                hit = idx[hit_local]
                eval_uids = ev.records.column("uid").to_numpy()
                items_of: dict[int, list[int]] = {}
                for rec, item in zip(found.leak_record.tolist(), found.leak_eval_item.tolist()):
                    items_of.setdefault(rec, []).append(int(eval_uids[item]))
                removed_by["contaminated"][hit] = True
                alive[hit] = False
                decisions.append(_decision_rows(records, hit, "contaminated", None, None,
                                                [eval_name] * len(hit), [items_of[r] for r in hit_local.tolist()]))
                report["decontamination"][eval_name] = _leak_summary(ev, found, eval_uids)
    return StageOutcome(alive=alive, removed_by=removed_by, decisions=_decisions_table(decisions), report=report)


def _alive_segments(records: Records, idx: np.ndarray, roles: list[str] | None) -> list:
    from ftscale.data.texts import record_segments

    segments: list = []
    src, row = records.local(idx)
    for s in range(len(records.tables)):
        rows = row[src == s]
        if len(rows):
            table = records.tables[s].take(rows)
            text_field, messages_field = records.fields[s]
            segments.extend(record_segments(table, text_field, messages_field, roles))
    return segments


def _leak_summary(ev: Any, found: Any, eval_uids: np.ndarray) -> dict[str, Any]:
    per_item = np.bincount(found.leak_eval_item, minlength=ev.records.num_rows) if len(found.leak_eval_item) else np.zeros(ev.records.num_rows, int)
    leaked = np.flatnonzero(per_item)
    return {
        "eval_items": int(ev.records.num_rows),
        "eval_items_quarantined": int(ev.counts["quarantined"]),
        "eval_ngrams": int(found.eval_ngrams),
        "contaminated_records": int(found.contaminated.sum()),
        "eval_items_leaked": int(len(leaked)),
        "leaked_items": [
            {"eval_uid": int(eval_uids[i]), "file": ev.records.column("file")[int(i)].as_py(),
             "row": int(ev.records.column("row")[int(i)].as_py()), "training_records": int(per_item[i])}
            for i in leaked
        ],
    }


def _audit_summary(audit: dict[str, Any], records: Records, idx: np.ndarray) -> dict[str, Any]:
    pairs = audit.pop("pairs")
    audit["sampled_pairs"] = [
        {"uid_a": int(records.uids[idx[a]]), "uid_b": int(records.uids[idx[b]]), "estimated": round(est, 4),
         "exact": round(ex, 4), "flagged": flagged}
        for a, b, est, ex, flagged in pairs
    ]
    return audit


def stage_counts(records: Records, read_counts: list[dict], outcome: StageOutcome) -> dict[str, dict]:
    """Per-source counts; checks read == kept + quarantined + removed by each stage."""
    out: dict[str, dict] = {}
    for s, (name, rc) in enumerate(zip(records.names, read_counts)):
        mine = records.source_of == s
        c = {"read": rc["read"], "quarantined": rc["quarantined"],
             "quarantined_by_reason": dict(rc["quarantined_by_reason"])}
        for stage in STAGES:
            c[stage] = int((outcome.removed_by[stage] & mine).sum())
        c["kept"] = int((outcome.alive & mine).sum())
        if c["read"] != c["kept"] + c["quarantined"] + sum(c[st] for st in STAGES):
            raise AssertionError(f"count conservation broken for source {name}: {c}")  # a bug, not user error
        out[name] = c
    return out


def _write_outputs(out: Path, records: Records, reads: list, outcome: StageOutcome) -> dict[str, Any]:
    import pyarrow as pa

    from ftscale.data.atomic import write_parquet

    written: dict[str, Any] = {"data": [], "quarantine": []}
    start = 0
    for name, table, r in zip(records.names, records.tables, reads):
        mask = outcome.alive[start:start + table.num_rows]
        start += table.num_rows
        path = out / "data" / f"{name}.parquet"
        write_parquet(table.filter(pa.array(mask)), path)
        written["data"].append(str(path.relative_to(out)))
        qpath = out / "quarantine" / f"{name}.parquet"
        write_parquet(r.quarantine, qpath)
        written["quarantine"].append(str(qpath.relative_to(out)))
    dpath = out / "removed" / "decisions.parquet"
    write_parquet(outcome.decisions, dpath)
    written["decisions"] = str(dpath.relative_to(out))
    return written
