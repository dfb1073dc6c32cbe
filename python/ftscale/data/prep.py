"""`ftscale prep`: raw sources → a prepared dataset directory (see ``format.py``).

read (quarantine) → exact + near dedup and decontamination (global, ``dedup_job``) →
tokenize (CPT: documents + EOS; SFT: the tokenizer's own chat template with assistant-only
masks) → SFT over-long policy → train/val split by uid hash → shards, quarantine, decision
log, length histograms, report.json, and manifest.json last.

Resumable: every file is written atomically, and ``.prep-progress.json`` records each finished
source's shards with checksums under a fingerprint of the config, the tokenizer and the input
files (path, size, mtime). A re-run after a crash skips the sources whose shards are intact and
redoes the rest; since every step is deterministic, the result is byte-identical to an
uninterrupted run, whatever the thread count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftscale.config import PrepConfig, SourceConfig, to_dict
from ftscale.data.format import Manifest, Shard, SourceEntry, StageCounts
from ftscale.errors import ConfigError, DataError
from ftscale.paths import expand_paths

PROGRESS = ".prep-progress.json"
VAL_SALT = np.uint64(0x56414C)  # "VAL": decorrelates the split from other uses of the uid


@dataclass
class Tokenized:
    """Kept records of one source after tokenization."""

    uids: np.ndarray
    input_ids: list[np.ndarray]
    loss_masks: list[np.ndarray]
    families: list[str | None]
    quarantine_rows: dict[str, list] = field(default_factory=dict)
    truncated: int = 0
    warnings: list[str] = field(default_factory=list)


def _input_digest(paths: list[str]) -> list[list]:
    files: list[list] = []
    for p in paths:
        root = Path(p)
        walk = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in walk:
            if f.is_file():
                st = f.stat()
                files.append([str(f), st.st_size, st.st_mtime_ns])
    return files


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def val_mask(uids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Held-out records: a hash of (uid, seed) below ``fraction`` — never position-based."""
    from ftscale.data.io import splitmix64_array

    if fraction <= 0:
        return np.zeros(len(uids), dtype=bool)
    with np.errstate(over="ignore"):
        h = splitmix64_array(uids.astype(np.uint64) ^ (np.uint64(seed) * VAL_SALT))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def run_prep(cfg: PrepConfig, stages: Any) -> Manifest:
    """Run prep; returns the manifest (also written to ``output/manifest.json``)."""
    from ftscale.data.atomic import ensure_dir, write_json, write_parquet
    from ftscale.data.format import MANIFEST, MANIFEST_VERSION
    from ftscale.data.io import read_source
    from ftscale.data.tokenize import load_tokenizer
    from ftscale.dedup_job import Records, dedup_and_decontaminate, stage_counts

    out = ensure_dir(Path(cfg.output))
    with stages.stage("load tokenizer", cfg.tokenizer.path):
        tok = load_tokenizer(cfg.tokenizer.path, cfg.tokenizer.chat_template)
    paths = {s.name: expand_paths(s.paths, f"sources.{i}.paths") for i, s in enumerate(cfg.sources)}
    eval_paths = expand_paths(cfg.decontaminate.eval_paths, "decontaminate.eval_paths")
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("output", "num_threads")}
    fingerprint = _fingerprint({"config": settings, "tokenizer": tok.fingerprint,
                                "inputs": _input_digest([p for ps in paths.values() for p in ps] + eval_paths)})
    progress = _load_progress(out, fingerprint)

    reads = []
    for s in cfg.sources:
        with stages.stage("read", s.name):
            reads.append(read_source(s.name, paths[s.name], text_field=s.text_field,
                                     messages_field=s.messages_field if s.kind == "sft" else None,
                                     max_record_bytes=s.max_record_bytes))
    fields = [(s.text_field, s.messages_field if s.kind == "sft" else None) for s in cfg.sources]
    records = Records([r.records for r in reads], [s.name for s in cfg.sources], fields)
    outcome = dedup_and_decontaminate(records, _dedup_options(cfg, eval_paths), stages)
    counts = stage_counts(records, [r.counts for r in reads], outcome)

    manifest_sources: dict[str, SourceEntry] = {}
    start = 0
    for i, (src, read) in enumerate(zip(cfg.sources, reads)):
        table = records.tables[i]
        alive = outcome.alive[start:start + table.num_rows]
        start += table.num_rows
        done = _finished_source(out, progress, src.name)
        if done is not None:
            stages.print(f"[dim]{src.name}: shards intact from an earlier run; skipped[/dim]")
            manifest_sources[src.name] = done
            continue
        kept = table.filter(alive)
        with stages.stage("tokenize", f"{src.name} ({kept.num_rows:,} {src.kind} records)"):
            tokenized = _tokenize(src, kept, tok, cfg)
        with stages.stage("write shards", src.name):
            entry = _write_source(out, src, cfg, tokenized, read, StageCounts(**counts[src.name]), write_parquet)
        manifest_sources[src.name] = entry
        progress["sources"][src.name] = entry.to_json()
        write_json(progress, out / PROGRESS)

    write_parquet(outcome.decisions, out / "dedup" / "decisions.parquet")
    with stages.stage("plots", "length histograms"):
        for name, entry in manifest_sources.items():
            _plot_lengths(out, name, entry)
    report = {"format_version": MANIFEST_VERSION, **outcome.report,
              "sources": {n: e.counts.to_json() for n, e in manifest_sources.items()}}
    write_json(report, out / "report.json")
    manifest = Manifest(seq_len=cfg.seq_len, seed=cfg.seed, sources=manifest_sources, tokenizer=tok.describe(),
                        config=settings, config_fingerprint=fingerprint, created_by="ftscale prep")
    write_json(manifest.to_json(), out / MANIFEST)
    (out / PROGRESS).unlink(missing_ok=True)
    return manifest


def _dedup_options(cfg: PrepConfig, eval_paths: list[str]) -> Any:
    from ftscale.dedup_job import DedupOptions

    d, c = cfg.dedup, cfg.decontaminate
    return DedupOptions(
        inputs=[], out=cfg.output, exact=d.exact, near=d.near, threshold=d.threshold, num_perm=d.num_perm,
        ngram=d.ngram, verify=d.verify, seed=cfg.seed, decontaminate=eval_paths, eval_text_field=c.text_field,
        eval_messages_field=c.messages_field, decontam_ngram=c.ngram, decontam_min_fraction=c.min_fraction,
        decontam_roles=list(c.roles) if c.roles else None, num_threads=cfg.num_threads,
    )


def _load_progress(out: Path, fingerprint: str) -> dict[str, Any]:
    path = out / PROGRESS
    if path.is_file():
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("fingerprint") == fingerprint:
            return state
    return {"fingerprint": fingerprint, "sources": {}}


def _finished_source(out: Path, progress: dict[str, Any], name: str) -> SourceEntry | None:
    """The entry of a source an earlier run finished, if its files are still intact."""
    from ftscale.data.format import sha256_file

    done = progress["sources"].get(name)
    if done is None:
        return None
    try:
        entry = SourceEntry.from_json(done, out, f"{out / PROGRESS}: sources.{name}")
    except DataError:  # written by another ftscale version: redo the source
        return None
    for shard in entry.train + entry.val:
        for rel, digest in ((shard.path, shard.sha256), (shard.store, shard.store_sha256)):
            p = out / rel
            if not p.is_file() or sha256_file(p) != digest:
                return None
    return entry


def _tokenize(src: SourceConfig, kept: Any, tok: Any, cfg: PrepConfig) -> Tokenized:
    uids = kept.column("uid").to_numpy()
    families = (kept.column(src.family_field).cast("string").to_pylist()
                if src.family_field and src.family_field in kept.column_names else [None] * kept.num_rows)
    if src.family_field and src.family_field not in kept.column_names and kept.num_rows:
        raise ConfigError(f"sources.{src.name}.family_field: column {src.family_field!r} not found")
    if src.kind == "cpt":
        ids = tok.encode_batch(kept.column(src.text_field).to_pylist())
        if cfg.tokenizer.add_eos:
            ids = [np.append(x, np.int32(tok.eos_token_id)) for x in ids]
        masks = [np.ones(len(x), dtype=np.uint8) for x in ids]
        return Tokenized(uids, ids, masks, families)
    return _tokenize_chat(src, kept, tok, cfg, uids, families)


def _tokenize_chat(src: SourceConfig, kept: Any, tok: Any, cfg: PrepConfig, uids: np.ndarray,
                   families: list) -> Tokenized:
    from ftscale.data.chat import ChatEncoder, lint_masks

    if tok.hf is None:
        raise ConfigError(f"sources.{src.name}: sft needs a tokenizer with a chat template "
                          "(a tokenizer directory or .gguf), not a .tiktoken file")
    encoder = ChatEncoder(tok.hf, system_prompt=src.system_prompt)
    encoded, failures = encoder.encode_batch(kept.column(src.messages_field).to_pylist())
    bad = {i: (reason, detail) for i, reason, detail in failures}
    keep_idx, ids, masks, truncated = [], [], [], 0
    for i, enc in enumerate(encoded):
        if enc is None:
            continue
        x, m = enc.input_ids, enc.loss_mask
        if len(x) > cfg.seq_len:
            if src.overlong == "drop":
                bad[i] = ("overlong", f"{len(x)} tokens > seq_len {cfg.seq_len}")
                continue
            x, m = x[:cfg.seq_len], m[:cfg.seq_len]
            truncated += 1
        if not m.any():
            bad[i] = ("no_supervised_tokens", "no assistant token left (truncated away?)")
            continue
        keep_idx.append(i)
        ids.append(np.asarray(x, dtype=np.int32))
        masks.append(np.asarray(m, dtype=np.uint8))
    if kept.num_rows and not masks:
        reasons = sorted({r for r, _ in bad.values()})
        raise DataError(f"source {src.name!r}: none of its {kept.num_rows} conversations yields supervised "
                        f"tokens with the chat template of {tok.path} (reasons: {', '.join(reasons)}); check "
                        "the template (tokenizer.chat_template) and the messages field")
    shares = np.array([m.mean() for m in masks]) if masks else np.zeros(0)
    template_name = "override" if cfg.tokenizer.chat_template else f"the chat template of {tok.path}"
    warnings = lint_masks(src.name, template_name, shares) if kept.num_rows else []
    rows = sorted(bad)
    quarantine = {
        "uid": [int(uids[i]) for i in rows],
        "file": kept.column("file").take(rows).to_pylist() if rows else [],
        "row": kept.column("row").take(rows).to_pylist() if rows else [],
        "reason": [bad[i][0] for i in rows],
        "detail": [bad[i][1] for i in rows],
        "raw": [json.dumps(kept.column(src.messages_field)[i].as_py(), ensure_ascii=False)[:10_000] for i in rows],
    }
    return Tokenized(uids[keep_idx], ids, masks, [families[i] for i in keep_idx], quarantine, truncated, warnings)


def _write_split_shards(out: Path, directory: str, src: SourceConfig, t: Tokenized, idx: np.ndarray,
                        shard_rows: int) -> tuple[Shard, ...]:
    """The documents ``idx`` of one split as shards of ``shard_rows`` (Parquet + token store each)."""
    from ftscale.data.format import shard_name
    from ftscale.data.store import write_shard

    shards = []
    for k, lo in enumerate(range(0, len(idx), shard_rows)):
        sel = idx[lo:lo + shard_rows]
        lengths = np.array([len(t.input_ids[i]) for i in sel], dtype=np.int64)
        shards.append(write_shard(out, f"{directory}/{src.name}/{shard_name(k)}", t.uids[sel], lengths,
                                  np.concatenate([t.input_ids[i] for i in sel]).astype(np.int32),
                                  np.concatenate([t.loss_masks[i] for i in sel]).astype(np.uint8),
                                  [t.families[i] for i in sel]))
    return tuple(shards)


def _write_source(out: Path, src: SourceConfig, cfg: PrepConfig, t: Tokenized, read: Any, counts: StageCounts,
                  write_parquet: Any) -> SourceEntry:
    import pyarrow as pa

    from ftscale.data.format import SHARDS_DIR, VAL_DIR

    # Remove shards of an earlier, different run so that no stale part survives.
    for d in (out / SHARDS_DIR / src.name, out / VAL_DIR / src.name):
        if d.is_dir():
            for old in [*d.glob("part-*.parquet"), *d.glob("part-*.tokens")]:
                old.unlink()
    is_val = val_mask(t.uids, cfg.val_fraction, cfg.seed)
    train = _write_split_shards(out, SHARDS_DIR, src, t, np.flatnonzero(~is_val), cfg.shard_rows)
    val = _write_split_shards(out, VAL_DIR, src, t, np.flatnonzero(is_val), cfg.shard_rows)
    quarantine = read.quarantine
    if t.quarantine_rows.get("uid"):
        extra = pa.table({"uid": pa.array(t.quarantine_rows["uid"], pa.uint64()),
                          "source": pa.array([src.name] * len(t.quarantine_rows["uid"]), pa.string()),
                          "file": pa.array(t.quarantine_rows["file"], pa.string()),
                          "row": pa.array(t.quarantine_rows["row"], pa.int64()),
                          "reason": pa.array(t.quarantine_rows["reason"], pa.string()),
                          "detail": pa.array(t.quarantine_rows["detail"], pa.string()),
                          "raw": pa.array(t.quarantine_rows["raw"], pa.string())}).cast(quarantine.schema)
        quarantine = pa.concat_tables([quarantine, extra])
    write_parquet(quarantine, out / "quarantine" / f"{src.name}.parquet")
    moved = len(t.quarantine_rows.get("uid", []))
    by_reason = dict(counts.quarantined_by_reason)
    for reason in t.quarantine_rows.get("reason", []):
        by_reason[reason] = by_reason.get(reason, 0) + 1
    counts = dataclasses.replace(counts, quarantined=counts.quarantined + moved, quarantined_by_reason=by_reason,
                                 kept=counts.kept - moved, truncated=t.truncated, train_docs=int((~is_val).sum()),
                                 val_docs=int(is_val.sum()))
    counts.check(src.name)
    train_tokens = sum(s.tokens for s in train)
    supervised = int(sum(int(t.loss_masks[i].sum()) for i in np.flatnonzero(~is_val)))
    return SourceEntry(
        kind=src.kind, counts=counts, train=train, val=val, train_tokens=train_tokens,
        val_tokens=sum(s.tokens for s in val), supervised_train_tokens=supervised,
        supervised_share=supervised / train_tokens if train_tokens else 0.0,
        lengths_histogram=_histogram([len(x) for x in t.input_ids], cfg.seq_len), warnings=tuple(t.warnings))


def _histogram(lengths: list[int], seq_len: int) -> dict[str, list]:
    edges = np.unique(np.linspace(0, max(seq_len, max(lengths, default=1)), 33).astype(int))
    counts, _ = np.histogram(lengths, bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _plot_lengths(out: Path, name: str, entry: SourceEntry) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ftscale.data.atomic import atomic_path

    hist = entry.lengths_histogram or {"edges": [0, 1], "counts": [0]}
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    edges = np.array(hist["edges"])
    ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="#4C72B0")
    ax.set_xlabel("tokens per document")
    ax.set_ylabel("documents")
    ax.set_title(f"{name}: {sum(hist['counts']):,} documents ({entry.kind})")
    fig.tight_layout()
    with atomic_path(out / "plots" / f"{name}_lengths.png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def summarize(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per source for the CLI summary table."""
    rows = []
    for name, e in manifest.sources.items():
        c = e.counts
        rows.append({"source": name, "kind": e.kind, "read": c.read, "quarantined": c.quarantined,
                     "dups": c.exact_duplicate + c.near_duplicate, "leaked": c.contaminated,
                     "train docs": c.train_docs, "val docs": c.val_docs, "train tokens": e.train_tokens,
                     "loss share": round(e.supervised_share, 3)})
    return rows

