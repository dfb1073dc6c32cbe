"""`ftscale prep`: raw sources → a prepared dataset directory (see ``format.py``).

The dedup step list of ``ftscale dedup`` (read and quarantine → exact + near dedup →
decontamination, global across sources), then a second pass over the kept records
(``steps.tokenize``: CPT documents + EOS; SFT with the tokenizer's own chat template and
assistant-only masks; preference pairs as two documents, chosen then rejected, with loss on the
reply; the over-long policy; train/val split by uid hash), then the shards (``steps.shards``:
Parquet + token store, ``shard_rows`` documents each, whole pairs), quarantine, decision
log, length histograms, report.json, and manifest.json last. The local or the Ray Data
executor runs it (``ftscale.data.pipeline``); the output is the same with either, and with any
number of workers or any memory budget.

Resumable: the work directory keeps every finished unit of both passes under a fingerprint of
the config, the tokenizer and the input files (path, size, mtime); a re-run after a crash
redoes only what did not finish, and every output file is written atomically, so the result is
byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ftscale.config import PrepConfig, to_dict
from ftscale.data.format import Manifest, SourceEntry
from ftscale.data.faults import crash_at
from ftscale.errors import DataError
from ftscale.paths import expand_paths

CHAT_KINDS = ("sft", "preference")  # sources rendered with the chat template
ENGINE_KEYS = ("output", "num_threads", "executor", "workers", "memory_budget", "work_dir", "keep_work")
TOKENIZE_PASS = "tokenize"


def prep_settings(cfg: PrepConfig) -> dict[str, Any]:
    """The config as it determines the output (the engine keys do not)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ENGINE_KEYS}

# What a prep process holds besides its data: the engine's runtime plus transformers and a
# loaded tokenizer (measured with SmolLM2's: 611 MB resident once it is loaded, against ~170
# MiB for dedup) and the tokenizer's working memory while it encodes (another ~250 MB, not
# growing with the batch or the corpus). Part of the memory plan, so --memory-budget bounds
# the whole process.
PREP_RUNTIME_BYTES = 960 << 20


def run_prep(cfg: PrepConfig, stages: Any) -> Manifest:
    """Run prep; returns the manifest (also written to ``output/manifest.json``)."""
    from ftscale.data.atomic import ensure_dir, write_json
    from ftscale.data.dedup_run import DedupOptions, dedup_steps, key_rows_per_doc, source_names
    from ftscale.data.format import MANIFEST
    from ftscale.data.io import ReadOptions
    from ftscale.data.io.preference import PAIR_FIELD, PairFields
    from ftscale.data.pipeline import SourceInput, fingerprint, plan_job, remove_work_dir, run_global
    from ftscale.data.steps.base import SourceSpec
    from ftscale.data.steps.tokenize import tokenizer_for

    out = ensure_dir(Path(cfg.output))
    engine = cfg.engine_options()
    with stages.stage("load tokenizer", cfg.tokenizer.path):
        tok = tokenizer_for(cfg.tokenizer.path, cfg.tokenizer.chat_template)
        chat = _chat_engine(cfg, tok)
    sources = []
    for i, s in enumerate(cfg.sources):
        messages_field = s.messages_field if s.kind == "sft" else None
        pair = PairFields(s.prompt_field, s.chosen_field, s.rejected_field, s.messages_field) \
            if s.kind == "preference" else None
        sources.append(SourceInput(SourceSpec(s.name, s.text_field, messages_field, s.kind, s,
                                              pair_field=PAIR_FIELD if pair is not None else None),
                                   ReadOptions(text_field=s.text_field, messages_field=messages_field,
                                               max_record_bytes=s.max_record_bytes,
                                               role_map=tuple(sorted(s.role_map.items())), pair=pair),
                                   expand_paths(s.paths, f"sources.{i}.paths")))
    eval_sets = source_names(expand_paths(cfg.decontaminate.eval_paths, "decontaminate.eval_paths"))
    d, c = cfg.dedup, cfg.decontaminate
    opts = DedupOptions(inputs=[], out=cfg.output, threshold=d.threshold, num_perm=d.num_perm, ngram=d.ngram,
                        verify=d.verify, seed=cfg.seed, decontam_ngram=c.ngram, decontam_min_fraction=c.min_fraction,
                        decontam_roles=list(c.roles) if c.roles else None, engine=engine)
    steps = dedup_steps(opts, exact=d.exact, near=d.near, eval_sets=eval_sets, eval_text_field=c.text_field,
                        eval_messages_field=c.messages_field, score_column=None)
    settings = prep_settings(cfg)
    job_print = fingerprint({"config": settings, "tokenizer": tok.fingerprint})
    with stages.stage("plan", f"{len(sources)} source(s)"):
        job = plan_job(sources, out, engine, {"prep": job_print}, key_rows_per_doc(steps), stages,
                       runtime_bytes=PREP_RUNTIME_BYTES)
    try:
        run_global(job, steps, stages)
        with stages.stage("tokenize", f"{job.alive.sum():,} records", total=len(job.tasks)) as advance:
            metas = _tokenize_pass(job, cfg, chat, advance)
        stages.add_step_seconds(metas)
        crash_at("write shards")
        with stages.stage("write shards", str(out)):
            entries = _write_dataset(job, metas, cfg, out, chat)
        manifest = Manifest(seq_len=cfg.seq_len, seed=cfg.seed, sources=entries, tokenizer=tok.describe(),
                            config=settings, config_fingerprint=job_print)
        with stages.stage("plots", "length histograms"):
            for name, entry in entries.items():
                _plot_lengths(out, name, entry)
        report = {"format_version": manifest.to_json()["format_version"], **job.report,
                  "sources": {n: {**e.counts.to_json(), **({"chat": e.chat} if e.chat else {})}
                              for n, e in entries.items()}}
        write_json(report, out / "report.json")
        write_json(manifest.to_json(), out / MANIFEST)
    finally:
        job.executor.close()
    remove_work_dir(job.work, engine)
    return manifest


def _chat_engine(cfg: PrepConfig, tok: Any) -> Any:
    """The chat engine of the job's SFT and preference sources (None without any), chosen once from
    the template."""
    from ftscale.data.chat import ChatEncoder, choose_engine

    if not any(s.kind in CHAT_KINDS for s in cfg.sources):
        return None
    return choose_engine(tok.hf, ChatEncoder(tok.hf), cfg.tokenizer.chat_engine)


def _tokenize_pass(job: Any, cfg: PrepConfig, chat: Any, on_unit: Any = None) -> list[dict[str, Any]]:
    """The second pass: every unit's kept records tokenized, split and spilled (``on_unit(n)``
    as units finish)."""
    from ftscale.data.steps.tokenize import LoadKept, SpillTokens, Tokenize
    from ftscale.data.steps.write import source_schema

    schemas = [source_schema(job, s) for s in range(len(job.sources))]
    engine = chat.engine if chat is not None else "python"
    steps = [LoadKept(job.alive, job.bases, schemas), Tokenize(cfg, engine), SpillTokens(cfg.val_fraction, cfg.seed)]
    tasks = [replace(t, pass_name=TOKENIZE_PASS) for t in job.tasks]
    return job.executor.map_units(tasks, steps, on_unit)


CHAT_COUNTERS = ("python_rendered", "expanded_turns", "located_turns")


def _write_dataset(job: Any, metas: list[dict[str, Any]], cfg: PrepConfig, out: Path,
                   chat: Any) -> dict[str, SourceEntry]:
    """Shards, quarantine and decisions; the manifest's source entries."""
    import shutil

    from ftscale.data.format import SHARDS_DIR, VAL_DIR, Shard, StageCounts
    from ftscale.data.steps.shards import plan_shards, write_shard
    from ftscale.data.steps.write import write_quarantine
    from ftscale.data.workdir import unit_dir

    for s in job.sources:  # shards of an earlier, different run must not survive
        for d in (out / SHARDS_DIR / s.name, out / VAL_DIR / s.name):
            if d.exists():
                shutil.rmtree(d)
    written = job.executor.parallel(write_shard, plan_shards(job, metas, out, cfg.shard_rows), None)
    shards: dict[tuple[str, str], list[tuple[int, Shard]]] = {}
    for source, split, index, entry in zip(*(written.column(c).to_pylist() for c in written.column_names)):
        shards.setdefault((source, split), []).append((index, Shard.from_json(json.loads(entry), out)))
    counts = job.source_counts()
    entries: dict[str, Any] = {}
    for s, spec in enumerate(job.sources):
        src = spec.config
        mine = [(t, m) for t, m in zip(job.tasks, metas) if t.source_index == s]
        rejected = [unit_dir(t.work, t.index) / TOKENIZE_PASS / "rejected.arrow" for t, m in mine if m["rejected"]]
        write_quarantine(job, s, out / "quarantine" / f"{spec.name}.parquet", rejected)
        c = dict(counts[spec.name])
        moved = sum(int(m["rejected"]) for _, m in mine)
        by_reason = dict(c["quarantined_by_reason"])
        for _, m in mine:
            for reason, n in m["rejected_by_reason"].items():
                by_reason[reason] = by_reason.get(reason, 0) + int(n)
        train_docs = sum(int(m["train"]["rows"]) for _, m in mine)
        val_docs = sum(int(m["val"]["rows"]) for _, m in mine)
        stage_counts = StageCounts(
            read=c["read"], quarantined=c["quarantined"] + moved, exact_duplicate=c["exact_duplicate"],
            near_duplicate=c["near_duplicate"], contaminated=c["contaminated"], kept=c["kept"] - moved,
            quarantined_by_reason=dict(sorted(by_reason.items())),
            truncated=sum(int(m["counters"].get("truncated", 0)) for _, m in mine),
            train_docs=train_docs, val_docs=val_docs,
            extra_samples=sum(int(m["counters"].get("extra_samples", 0)) for _, m in mine))
        stage_counts.check(spec.name)
        lengths, supervised = _doc_stats(mine)
        if src.kind in CHAT_KINDS and c["kept"] and not len(lengths):
            reasons = sorted(r for _, m in mine for r in m["rejected_by_reason"])
            what = "pairs" if src.kind == "preference" else "conversations"
            raise DataError(f"source {spec.name!r}: none of its {c['kept']} {what} yields supervised tokens "
                            f"with the chat template of {cfg.tokenizer.path} (reasons: {', '.join(sorted(set(reasons)))}); "
                            "check the template (tokenizer.chat_template) and the messages field")
        train_tokens = sum(int(m["train"]["tokens"]) for _, m in mine)
        sup_train = sum(int(m["train"]["supervised"]) for _, m in mine)
        entries[spec.name] = SourceEntry(
            kind=src.kind, counts=stage_counts,
            train=tuple(sh for _, sh in sorted(shards.get((spec.name, "train"), []), key=lambda x: x[0])),
            val=tuple(sh for _, sh in sorted(shards.get((spec.name, "val"), []), key=lambda x: x[0])),
            train_tokens=train_tokens, val_tokens=sum(int(m["val"]["tokens"]) for _, m in mine),
            supervised_train_tokens=sup_train, supervised_share=sup_train / train_tokens if train_tokens else 0.0,
            lengths_histogram=_histogram(lengths, cfg.seq_len), warnings=tuple(_lint(src, cfg, lengths, supervised)),
            chat=None if src.kind not in CHAT_KINDS else {
                "engine": chat.engine, "engine_reason": chat.reason, "rewritten_turns": src.rewritten_turns,
                **{k: sum(int(m["counters"].get(k, 0)) for _, m in mine) for k in CHAT_COUNTERS}})
    job.write_decisions(out / "dedup" / "decisions.parquet")
    return entries


def _doc_stats(units: list[tuple[Any, dict[str, Any]]]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and supervised tokens of every tokenized document of a source (both splits)."""
    from ftscale.data.steps.records import read_ipc
    from ftscale.data.workdir import unit_dir

    lengths, supervised = [], []
    for task, meta in units:
        directory = unit_dir(task.work, task.index) / TOKENIZE_PASS
        for split in ("train", "val"):
            for name in meta[split]["docs"]:
                docs = read_ipc(directory / name)
                lengths.append(docs.column("length").to_numpy())
                supervised.append(docs.column("supervised").to_numpy())
    if not lengths:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(lengths).astype(np.int64), np.concatenate(supervised).astype(np.int64)


def _lint(src: Any, cfg: PrepConfig, lengths: np.ndarray, supervised: np.ndarray) -> list[str]:
    from ftscale.data.chat import lint_masks

    if src.kind not in CHAT_KINDS or not len(lengths):
        return []
    template_name = "override" if cfg.tokenizer.chat_template else f"the chat template of {cfg.tokenizer.path}"
    return lint_masks(src.name, template_name, supervised / lengths)


def _histogram(lengths: np.ndarray, seq_len: int) -> dict[str, list]:
    edges = np.unique(np.linspace(0, max(seq_len, int(lengths.max()) if len(lengths) else 1), 33).astype(int))
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

