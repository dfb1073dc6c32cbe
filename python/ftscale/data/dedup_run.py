"""`ftscale dedup`: read → quarantine → exact dedup → near dedup → decontamination → write,
one step list run by the local or the Ray Data executor (``ftscale.data.pipeline``).

Outputs under ``--out``::

    data/<source>/part-NNNNN.parquet  kept records, all original columns + uid, source, file,
                                      row; a new part every ``--part-rows`` records
    removed/decisions.parquet         one row per removed record: uid, source, file, row, reason,
                                      matched_uid (the record it duplicates, at its stage),
                                      kept_uid (the end of the matched chain: a kept record, or
                                      one removed as contaminated), similarity (to matched_uid),
                                      eval_set, eval_items (leaked eval uids)
    quarantine/<source>.parquet       rejected input records with a reason
    report.json                       options, per-source and total counts per stage, LSH
                                      parameters, leaked eval items, audit

Counts are conserved per source: ``read == kept + quarantined + exact_duplicate +
near_duplicate + contaminated``. Dedup is global across all inputs. Output bytes depend only
on the inputs and options (never on thread, worker, partition or executor count); timings are
printed, not written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftscale.data.faults import crash_at
from ftscale.data.pipeline import EngineOptions
from ftscale.errors import ConfigError

REPORT_FORMAT_VERSION = 2  # 2: kept records in data/<source>/part-NNNNN.parquet
DEFAULT_PART_ROWS = 100_000


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
    part_rows: int = DEFAULT_PART_ROWS
    engine: EngineOptions = field(default_factory=EngineOptions)

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
        if self.bands is not None and (self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise ConfigError(f"--bands x --rows must be between 1 and --num-perm ({self.num_perm}); got "
                              f"{self.bands} x {self.rows}")
        if self.keep != "lowest-uid" and not (self.keep.startswith("max:") and len(self.keep) > 4):
            raise ConfigError(f"--keep must be 'lowest-uid' or 'max:COLUMN', got {self.keep!r}")
        if self.audit < 0:
            raise ConfigError(f"--audit must be >= 0, got {self.audit}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.part_rows < 1:
            raise ConfigError(f"--part-rows must be >= 1, got {self.part_rows}")
        if not 0.0 <= self.decontam_min_fraction <= 1.0:
            raise ConfigError(f"--decontam-min-fraction must be in [0, 1], got {self.decontam_min_fraction}")
        if self.decontam_roles:
            from ftscale.data.texts import ROLES

            bad = sorted(set(self.decontam_roles) - set(ROLES))
            if bad:
                raise ConfigError(f"--decontam-roles: unknown roles {bad}; allowed: {', '.join(ROLES)}")
        self.engine.check()

    def settings(self) -> dict[str, Any]:
        """What determines the output (the report records it, so it too is identical whatever
        the threads, workers or executor)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "engine")}


def source_names(inputs: list[str]) -> list[tuple[str, str]]:
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


def dedup_steps(opts: DedupOptions, *, exact: bool, near: bool, eval_sets: list[tuple[str, str]],
                eval_text_field: str, eval_messages_field: str | None, score_column: str | None) -> list[Any]:
    """The dedup stage list both commands share: exact → near → decontamination, then the spill."""
    from ftscale.data.steps.decontam import Decontaminate, DecontamOptions
    from ftscale.data.steps.exact import ExactDedup
    from ftscale.data.steps.near import NearDedup, NearOptions
    from ftscale.data.steps.records import SpillRecords

    threads = opts.engine.num_threads
    steps: list[Any] = []
    if exact:
        steps.append(ExactDedup(lowercase=opts.lowercase, strip_punctuation=opts.strip_punctuation, num_threads=threads))
    if near:
        steps.append(NearDedup(NearOptions(
            threshold=opts.threshold, num_perm=opts.num_perm, ngram=opts.ngram, seed=opts.seed, bands=opts.bands,
            rows=opts.rows, verify=opts.verify, char_ngrams=opts.char_ngrams, strip_punctuation=opts.strip_punctuation,
            audit_pairs=opts.audit, num_threads=threads)))
    if eval_sets:
        steps.append(Decontaminate(DecontamOptions(
            eval_sets=eval_sets, text_field=eval_text_field, messages_field=eval_messages_field,
            ngram=opts.decontam_ngram, min_fraction=opts.decontam_min_fraction, roles=opts.decontam_roles,
            num_threads=threads)))
    steps.append(SpillRecords(score_column))
    return steps


def key_rows_per_doc(steps: list[Any]) -> int:
    """Key rows a document emits (for sizing partitions)."""
    from ftscale.data.steps.near import NearDedup

    rows = 1
    for step in steps:
        if isinstance(step, NearDedup):
            rows += step.bands + (step.loose[0] if step.loose else 0)
    return rows


def run_dedup(opts: DedupOptions, stages: Any) -> dict[str, Any]:
    """Run the job; returns the report (also written to ``out/report.json``)."""
    from ftscale.data.atomic import ensure_dir, write_json
    from ftscale.data.format import StageCounts
    from ftscale.data.io import ReadOptions
    from ftscale.data.pipeline import SourceInput, plan_job, remove_work_dir, run_global
    from ftscale.data.steps.base import SourceSpec
    from ftscale.paths import expand_paths

    if not opts.inputs:
        raise ConfigError("give at least one INPUT path")
    opts.validate()
    out = ensure_dir(Path(opts.out))
    names = source_names(opts.inputs)
    read = ReadOptions(text_field=opts.text_field, messages_field=opts.messages_field,
                       max_record_bytes=opts.max_record_bytes)
    sources = [SourceInput(SourceSpec(name, opts.text_field, opts.messages_field), read,
                           expand_paths([path], "INPUT")) for name, path in names]
    eval_sets = source_names(opts.decontaminate)
    for _, path in eval_sets:
        expand_paths([path], "--decontaminate")
    steps = dedup_steps(opts, exact=opts.exact, near=opts.near, eval_sets=eval_sets,
                        eval_text_field=opts.eval_text_field or opts.text_field,
                        eval_messages_field=opts.eval_messages_field,
                        score_column=opts.keep[4:] if opts.keep.startswith("max:") else None)
    settings = opts.settings()
    with stages.stage("plan", f"{len(sources)} source(s)"):
        job = plan_job(sources, out, opts.engine, {"dedup": settings, "evals": eval_sets},
                       key_rows_per_doc(steps), stages)
    try:
        run_global(job, steps, stages, scores=opts.keep.startswith("max:"))
        report: dict[str, Any] = {"format_version": REPORT_FORMAT_VERSION, "options": settings, **job.report}
        counts = job.source_counts()
        for name, c in counts.items():
            StageCounts(**c).check(name)
        crash_at("write")
        with stages.stage("write", str(out)):
            written = _write_outputs(job, out, opts.part_rows)
        report["sources"] = counts
        report["totals"] = {k: sum(s[k] for s in report["sources"].values()) for k in
                            ("read", "quarantined", "exact_duplicate", "near_duplicate", "contaminated", "kept")}
        report["outputs"] = written
        write_json(report, out / "report.json")
    finally:
        job.executor.close()
    remove_work_dir(job.work, opts.engine)
    return report


def _write_outputs(job: Any, out: Path, part_rows: int) -> dict[str, Any]:
    import shutil

    from ftscale.data.steps.write import plan_parts, write_part, write_quarantine

    written: dict[str, Any] = {"data": [], "quarantine": []}
    tasks = []
    for s, spec in enumerate(job.sources):
        directory = out / "data" / spec.name
        if directory.exists():  # parts of an earlier run with other inputs must not survive
            shutil.rmtree(directory)
        tasks.extend(plan_parts(job, s, directory, part_rows))
    parts = job.executor.parallel(write_part, tasks, None)
    written["data"] = sorted(str(Path(p).relative_to(out)) for p in parts.column("path").to_pylist())
    for s, spec in enumerate(job.sources):
        qpath = out / "quarantine" / f"{spec.name}.parquet"
        write_quarantine(job, s, qpath)
        written["quarantine"].append(str(qpath.relative_to(out)))
    dpath = out / "removed" / "decisions.parquet"
    job.write_decisions(dpath)
    written["decisions"] = str(dpath.relative_to(out))
    return written
