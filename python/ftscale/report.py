"""HTML reports of a training run and of a prepared dataset (`ftscale report`).

A report is a directory holding ``index.html`` and the PNG plots it shows, linked relatively,
with no script or remote asset: it reads offline and can be moved as a whole.

A run's ``metrics.jsonl`` is append-only, and a resumed run or a spike rollback logs again
from its checkpoint on. ``load_run_metrics`` keeps the final timeline: a record for step s
supersedes every earlier record for a step >= s (so the last record of a step wins, and steps
of a timeline that was later abandoned are dropped); a rollback to step s supersedes the
records after s.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from ftscale.data.atomic import atomic_path
from ftscale.data.format import SourceEntry, StageCounts
from ftscale.errors import InputError

METRICS_FILE = "metrics.jsonl"
REPORT_DIR = "report"
INDEX = "index.html"
VAL_PREFIX = "val_loss/"
TASK_PREFIX = "task/"  # task/<task>/<metric>, written by evaluations with eval.tasks
STAGES = (("quarantined", "quarantined", "#C44E52"), ("exact_duplicate", "exact dups", "#DD8452"),
          ("near_duplicate", "near dups", "#CCB974"), ("contaminated", "contaminated", "#8172B3"),
          ("kept", "kept", "#55A868"))  # manifest count key, label, colour: the order records leave in


def render(path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Report of a run directory or of a prepared dataset, told apart by the files they hold.
    A run in object storage (a URI) is read through a local mirror of its metrics and run
    files; its report goes to ``out_dir``, by default ``./<run name>-report``."""
    from ftscale.data.format import MANIFEST
    from ftscale.train.storage import is_remote, local_path, mirrored, remote_sizes

    if is_remote(str(path)):
        with mirrored(str(path)) as mirror:
            if not (mirror / METRICS_FILE).is_file():
                raise InputError(f"{path}: no {METRICS_FILE}; expected a run directory written by `ftscale train`")
            return render_run(mirror, out_dir or Path(f"{str(path).rstrip('/').rsplit('/', 1)[-1]}-report"),
                              remote_sizes(str(path), mirror))
    p = Path(local_path(str(path)))
    if (p / METRICS_FILE).is_file():
        return render_run(p, out_dir)
    if (p / MANIFEST).is_file():
        return render_dataset(p, out_dir)
    raise InputError(f"{p}: expected a run directory (holding {METRICS_FILE}, written by `ftscale train` into "
                     f"<storage_path>/<run_name>) or a prepared dataset (holding {MANIFEST}, written by "
                     "`ftscale prep`)")


# ---------------------------------------------------------------------------------------
# Training runs


@dataclass
class RunMetrics:
    records: list[dict[str, Any]]  # the final timeline: at most one record per step, ascending
    rollbacks: list[dict[str, Any]]  # distinct rollback windows {at_step, epoch, from_row, rows_skipped}
    superseded: int  # records replaced by a later resume or rollback
    unreadable_lines: int  # lines that are not a JSON record with a step (a write torn by a crash)

    @property
    def train(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "loss" in r]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "val_loss" in r]

    @property
    def task_metrics(self) -> list[str]:
        """Per-task metric names (``task/<task>/<metric>``), in the order first logged."""
        names: dict[str, None] = {}
        for r in self.records:
            names.update((k, None) for k in r if k.startswith(TASK_PREFIX) and k.count("/") == 2)
        return list(names)

    @property
    def val_sources(self) -> list[str]:
        names: dict[str, None] = {}
        for r in self.records:
            names.update((k[len(VAL_PREFIX):], None) for k in r if k.startswith(VAL_PREFIX))
        return list(names)


def load_run_metrics(run_dir: str | Path) -> RunMetrics:
    """The de-duplicated records of ``<run_dir>/metrics.jsonl`` (see the module docstring)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise InputError(f"{path} not found: {run_dir} is not a training run directory (`ftscale train` writes "
                         f"{METRICS_FILE} into <storage_path>/<run_name>)")
    timeline: list[dict[str, Any]] = []
    rollbacks: dict[str, dict[str, Any]] = {}
    superseded = unreadable = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, TypeError, KeyError):
            unreadable += 1
            continue
        rollback = record.get("rollback")
        last_kept = step if isinstance(rollback, dict) else step - 1
        while timeline and timeline[-1]["step"] > last_kept:
            timeline.pop()
            superseded += 1
        if isinstance(rollback, dict):
            rollbacks.setdefault(json.dumps(rollback, sort_keys=True), {"at_step": step, **rollback})
        else:
            timeline.append(record)
    return RunMetrics(timeline, list(rollbacks.values()), superseded, unreadable)


def summarize_run(m: RunMetrics) -> dict[str, Any]:
    """The numbers of the run summary table (None where the run has none)."""
    train = m.train
    accepted = [r for r in train if "skipped" not in r and math.isfinite(r["loss"])]
    timed = [r for r in train if "tokens_per_s" in r and "step_time_s" in r]
    train_time_s = sum(r["step_time_s"] for r in timed)
    tokens_trained = sum(r["tokens_per_s"] * r["step_time_s"] for r in timed)
    mfu = [r["mfu"] for r in train if "mfu" in r]
    padding = [r["padding_fraction"] for r in train if "padding_fraction" in r]
    best = min(accepted, key=lambda r: r["loss"], default=None)
    best_val = min(m.evals, key=lambda r: r["val_loss"], default=None)
    val_by_source = {}
    for name in m.val_sources:
        seen = [r for r in m.records if VAL_PREFIX + name in r]
        val_by_source[name] = {"first_step": seen[0]["step"], "first": seen[0][VAL_PREFIX + name],
                               "last_step": seen[-1]["step"], "last": seen[-1][VAL_PREFIX + name]}
    tasks = {}
    for key in m.task_metrics:
        seen = [r for r in m.records if key in r]
        tasks[key] = {"first_step": seen[0]["step"], "first": seen[0][key],
                      "last_step": seen[-1]["step"], "last": seen[-1][key]}
    best_records = [r for r in m.records if r.get("best")]
    return {
        "last_step": m.records[-1]["step"] if m.records else 0,
        "train_steps": len(train),
        "final_loss": train[-1]["loss"] if train else None,
        "best_loss": best["loss"] if best else None,
        "best_loss_step": best["step"] if best else None,
        "final_val_loss": m.evals[-1]["val_loss"] if m.evals else None,
        "best_val_loss": best_val["val_loss"] if best_val else None,
        "best_val_loss_step": best_val["step"] if best_val else None,
        "val_by_source": val_by_source,
        "tasks": tasks,
        "best_step": best_records[-1]["step"] if best_records else None,
        "guard_stop_step": next((r["step"] for r in m.records if r.get("guard_stop")), None),
        "skipped_steps": [(r["step"], str(r["skipped"])) for r in train if "skipped" in r],
        "rollbacks": len(m.rollbacks),
        "tokens_trained": tokens_trained,
        "train_time_s": train_time_s,
        "mean_tokens_per_s": tokens_trained / train_time_s if train_time_s > 0 else None,
        "mean_mfu": sum(mfu) / len(mfu) if mfu else None,
        "mean_padding_fraction": sum(padding) / len(padding) if padding else None,
        "early_stop_step": next((r["step"] for r in m.records if r.get("early_stop")), None),
    }


def run_config(run_dir: str | Path, sizes: Any = None) -> dict[str, Any] | None:
    """The config of the run's latest complete checkpoint, or None before the first one.
    ``sizes``: for a remote run's mirror, see ``ftscale.train.runs.Sizes``."""
    from ftscale.train.runs import RUN_FILE, latest_checkpoint

    checkpoint = latest_checkpoint(Path(run_dir), sizes)
    if checkpoint is None:
        return None
    try:
        return json.loads((checkpoint / RUN_FILE).read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{checkpoint / RUN_FILE} cannot be read: {e}") from e


def render_run(run_dir: str | Path, out_dir: str | Path | None = None, sizes: Any = None) -> Path:
    """Plots and a one-page summary of a training run; returns the path of ``index.html``."""
    run = Path(run_dir)
    metrics = load_run_metrics(run)
    config = run_config(run, sizes)
    out = Path(out_dir) if out_dir is not None else run / REPORT_DIR
    s = summarize_run(metrics)
    body = [_section("Summary", _table(["", ""], _run_rows(s, metrics, config)))]
    if s["val_by_source"]:
        rows = [[name, f"{v['first']:.4f}", f"{v['last']:.4f}", _change(v["first"], v["last"]),
                 f"{math.exp(min(v['first'], 50)):,.2f} → {math.exp(min(v['last'], 50)):,.2f}"]
                for name, v in s["val_by_source"].items()]
        first_step = min(v["first_step"] for v in s["val_by_source"].values())
        last_step = max(v["last_step"] for v in s["val_by_source"].values())
        body.append(_section("Validation loss per source (nats/token)", _table(
            ["source", f"first (step {first_step:,})", f"last (step {last_step:,})", "change", "perplexity"],
            rows, numeric_from=1)))
    if s["tasks"]:
        rows = [[key[len(TASK_PREFIX):], f"{v['first']:.4f}", f"{v['last']:.4f}", _change(v["first"], v["last"])]
                for key, v in s["tasks"].items()]
        body.append(_section("Task scores (eval.tasks)", _table(["task / metric", "first", "last", "change"], rows,
                                                                numeric_from=1)))
    body.append(_section("Plots", _figures(_run_plots(metrics, out))))
    if config is not None:
        body.append(_section("Config (latest checkpoint)", _table(["key", "value"], _config_rows(config))))
    return _write_page(out, f"Training run {run.resolve().name}", str(run), body)


def _run_rows(s: dict[str, Any], m: RunMetrics, config: dict[str, Any] | None) -> list[list[str]]:
    max_steps = config.get("max_steps") if config else None
    rows = [["steps", f"{s['last_step']:,}" + (f" of {max_steps:,}" if max_steps else "")
             + f" ({s['train_steps']:,} train records)"]]
    if s["final_loss"] is not None:
        rows.append(["final train loss", f"{s['final_loss']:.4f} nats/token"])
    if s["best_loss"] is not None:
        rows.append(["best train loss", f"{s['best_loss']:.4f} nats/token (step {s['best_loss_step']:,})"])
    if s["final_val_loss"] is not None:
        rows.append(["final val loss", f"{s['final_val_loss']:.4f} nats/token"])
        rows.append(["best val loss", f"{s['best_val_loss']:.4f} nats/token (step {s['best_val_loss_step']:,})"])
    skipped = s["skipped_steps"]
    rows.append(["skipped steps (spike guard)", f"{len(skipped):,}" + (
        ": " + ", ".join(f"step {step:,} ({reason})" for step, reason in skipped) if skipped else "")])
    rows.append(["rollbacks", f"{s['rollbacks']:,}" + (": " + "; ".join(
        f"to step {r['at_step']:,}, {r.get('rows_skipped', 0):,} rows skipped" for r in m.rollbacks)
        if m.rollbacks else "")])
    if m.superseded:
        rows.append(["superseded records", f"{m.superseded:,} (logged again after a resume or rollback)"])
    if m.unreadable_lines:
        rows.append(["unreadable lines", f"{m.unreadable_lines:,} (not JSON records; e.g. torn by a crash)"])
    if s["mean_tokens_per_s"] is not None:
        rows.append(["tokens trained", f"{_si(s['tokens_trained'])} tokens"])
        rows.append(["mean throughput", f"{_si(s['mean_tokens_per_s'])} tokens/s (tokens ÷ step time)"])
        rows.append(["training time", f"{_duration(s['train_time_s'])} (sum of step times)"])
    if s["mean_mfu"] is not None:
        rows.append(["mean MFU", _percent(s["mean_mfu"])])
    if s["mean_padding_fraction"] is not None:
        rows.append(["mean padding", _percent(s["mean_padding_fraction"])])
    if s["early_stop_step"] is not None:
        why = " (forgetting guard broken)" if s["guard_stop_step"] is not None else ""
        rows.append(["early stop", f"at step {s['early_stop_step']:,}{why}"])
    gate = (config or {}).get("eval") or {}
    if gate.get("select"):
        guard = gate.get("guard")
        budget = (f"{100 * guard['max_regression']:g} %" if guard.get("relative", True) else f"{guard['max_regression']:g}"
                  ) if guard else ""
        within = f", within {guard['metric']} +{budget}" if guard else ""
        rows.append(["best checkpoint", (f"step {s['best_step']:,}" if s["best_step"] is not None else "none yet")
                     + f" (by {gate['select']['metric']}{within})"])
    return rows


def _config_rows(config: dict[str, Any]) -> list[list[str]]:
    data, optim = config.get("data") or {}, config.get("optim") or {}
    shown = {"run_name": config.get("run_name"), "method": config.get("method"),
             "zero_stage": config.get("zero_stage"), "seq_len": config.get("seq_len"),
             "micro_batch_size": config.get("micro_batch_size"), "tokens_per_step": config.get("tokens_per_step"),
             "num_workers": config.get("num_workers"), "max_steps": config.get("max_steps"),
             "precision": config.get("precision"), "optim.lr": optim.get("lr"),
             "data.path": data.get("path"), "data.mixture": data.get("mixture")}
    return [[k, json.dumps(v) if isinstance(v, dict) else str(v)] for k, v in shown.items() if v is not None]


def _run_plots(m: RunMetrics, out: Path) -> list[tuple[str, str]]:
    """Write the run's plots; returns (file name, caption) of each."""
    plt = _pyplot()
    train, evals = m.train, m.evals
    accepted = [r for r in train if "skipped" not in r]
    skipped_steps = [r["step"] for r in train if "skipped" in r]
    rollback_steps = [r["at_step"] for r in m.rollbacks]
    plots = []
    if train or evals:
        fig, ax = _axes(plt, "loss", "loss (nats/token)")
        ax.plot(*_series(accepted, "loss"), lw=1.2, label="train loss")
        if evals:
            ax.plot(*_series(evals, "val_loss"), "o-", ms=4, label="val loss (all sources)")
        _mark_events(ax, skipped_steps, rollback_steps)
        plots.append(_save(plt, fig, out / "loss.png", "Train loss (spike-skipped steps left out) and val loss"))
    for key, title, ylabel, log_y in (("lr", "learning rate", "lr", False),
                                      ("grad_norm", "gradient norm (before clipping)", "global grad norm", True),
                                      ("tokens_per_s", "throughput", "tokens/s", False)):
        steps, values = _series(train, key)
        if not steps:
            continue
        fig, ax = _axes(plt, title, ylabel)
        ax.plot(steps, values, lw=1.2)
        if log_y and all(v > 0 for v in values if math.isfinite(v)):
            ax.set_yscale("log")
        if key == "grad_norm":
            _mark_events(ax, skipped_steps, rollback_steps)
        plots.append(_save(plt, fig, out / f"{key}.png", title.capitalize()))
    # scores in [0, 1] share one plot; losses and perplexities would squash them
    scores = [k for k in m.task_metrics if all(0.0 <= v <= 1.0 for v in _series(m.records, k)[1])]
    if scores:
        fig, ax = _axes(plt, "task scores", "score")
        for key in scores:
            ax.plot(*_series(m.records, key), "o-", ms=4, label=_plain(key[len(TASK_PREFIX):]))
        ax.legend(fontsize=8)
        plots.append(_save(plt, fig, out / "task_scores.png", "Task scores at each evaluation"))
    if m.val_sources:
        fig, ax = _axes(plt, "validation loss per source", "val loss (nats/token)")
        for name in m.val_sources:
            ax.plot(*_series(m.records, VAL_PREFIX + name), "o-", ms=4, label=_plain(name))
        ax.legend(fontsize=8)
        plots.append(_save(plt, fig, out / "val_loss_by_source.png", "Validation loss of each source"))
    return plots


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def _mark_events(ax: Any, skipped_steps: list[int], rollback_steps: list[int]) -> None:
    for i, step in enumerate(skipped_steps):
        ax.axvline(step, color="#C44E52", lw=0.8, ls=":", label="skipped step" if i == 0 else None)
    for i, step in enumerate(rollback_steps):
        ax.axvline(step, color="0.4", lw=1.0, ls="--", label="rollback: resumed here" if i == 0 else None)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


# ---------------------------------------------------------------------------------------
# Prepared datasets


def render_dataset(dataset_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Counts, tokens, dedup/decontamination numbers and length histograms of a prepared
    dataset (``ftscale prep`` output); returns the path of ``index.html``."""
    from ftscale.data.format import read_manifest

    root = Path(dataset_dir)
    manifest = read_manifest(root)
    out = Path(out_dir) if out_dir is not None else root / REPORT_DIR
    sources = manifest.sources
    tokenizer = manifest.tokenizer
    meta = (f"{root} · seq_len {manifest.seq_len:,} tokens · seed {manifest.seed} · tokenizer "
            f"{tokenizer.get('path', '?')} (vocabulary {tokenizer.get('vocab_size') or 0:,} tokens)")
    body = [_section("Records per stage", _stage_table(sources)),
            _section("Tokens per source", _token_table(sources))]
    reasons = [[name, reason, f"{n:,}"] for name, e in sources.items()
               for reason, n in sorted(e.counts.quarantined_by_reason.items())]
    if reasons:
        body.append(_section("Quarantine reasons", _table(["source", "reason", "records"], reasons, numeric_from=2)))
    prep_report = root / "report.json"
    if prep_report.is_file():
        body.append(_section("Dedup and decontamination",
                             _dedup_html(json.loads(prep_report.read_text(encoding="utf-8")))))
    warnings = _dataset_warnings(sources)
    body.append(_section("Warnings", "<ul>" + "".join(f"<li>{_esc(w)}</li>" for w in warnings) + "</ul>"
                         if warnings else "<p>none</p>"))
    body.append(_section("Plots", _figures(_dataset_plots(sources, manifest.seq_len, out))))
    return _write_page(out, f"Prepared dataset {root.resolve().name}", meta, body)


def _stage_table(sources: dict[str, SourceEntry]) -> str:
    headers = ["source", "kind", "input"] + [label for _, label, _ in STAGES] + ["conserved", "train docs",
                                                                                 "val docs"]

    def cells(c: StageCounts) -> list[str]:
        return [f"{c.read:,}", *(f"{getattr(c, k):,}" for k, _, _ in STAGES),
                "NO" if c.violations() else "yes", f"{c.train_docs:,}", f"{c.val_docs:,}"]

    rows = [[name, e.kind, *cells(e.counts)] for name, e in sources.items()]
    rows.append(["total", "", *cells(sum((e.counts for e in sources.values()), StageCounts.zero()))])
    note = ("<p>Records (documents or conversations). Each record leaves at the first stage that removes it: "
            "input = quarantined + exact dups + near dups + contaminated + kept; kept = train docs + val docs.</p>")
    return note + _table(headers, rows, numeric_from=2)


def _token_table(sources: dict[str, SourceEntry]) -> str:
    total_train_tokens = sum(e.train_tokens for e in sources.values())
    rows = []
    for name, e in sources.items():
        c = e.counts
        docs = c.train_docs + c.val_docs
        rows.append([name, e.kind, f"{e.train_tokens:,}", f"{e.val_tokens:,}",
                     _percent(e.train_tokens / total_train_tokens) if total_train_tokens else "–",
                     f"{e.supervised_train_tokens:,}", _percent(e.supervised_share),
                     f"{(e.train_tokens + e.val_tokens) / docs:,.1f}" if docs else "–", f"{c.truncated:,}"])
    return _table(["source", "kind", "train tokens", "val tokens", "share of train tokens", "supervised tokens",
                   "supervised share", "mean tokens/doc", "truncated docs"], rows, numeric_from=2)


def _dedup_html(report: dict[str, Any]) -> str:
    rows = []
    near = report.get("near_dedup")
    if near:
        rows.append(["near dedup", f"Jaccard threshold {near['threshold']}, {near['num_perm']} permutations, "
                     f"{near['bands']} bands × {near['rows']} rows; {near['candidate_pairs_checked']:,} candidate "
                     f"pairs checked, {near['verified_pairs']:,} duplicates removed"])
    audit = report.get("audit")
    if audit:
        rows.append(["near dedup audit", f"precision ≈ {audit['precision']:.3f}, recall ≈ {audit['recall']:.3f}"])
    for name, d in (report.get("decontamination") or {}).items():
        rows.append([f"decontamination vs {name}", f"{d['eval_items_leaked']:,} of {d['eval_items']:,} eval items "
                     f"leaked into {d['contaminated_records']:,} training records (removed)"])
    return _table(["stage", "result"], rows) if rows else "<p>near dedup and decontamination were off</p>"


def _dataset_warnings(sources: dict[str, SourceEntry]) -> list[str]:
    warnings = []
    for name, e in sources.items():
        c = e.counts
        warnings += [f"{name}: {w}" for w in e.warnings]
        warnings += [f"{name}: the stage counts do not add up: {v}" for v in c.violations()]
        if not c.kept:
            warnings.append(f"{name}: no record was kept")
        elif not c.val_docs:
            warnings.append(f"{name}: no val documents, so training evaluates no val loss for it")
    return warnings


def _dataset_plots(sources: dict[str, SourceEntry], seq_len: int, out: Path) -> list[tuple[str, str]]:
    plt = _pyplot()
    names = [_plain(n) for n in sources]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(names)), dpi=100)
    left = [0.0] * len(names)
    for key, label, colour in STAGES:
        shares = [getattr(e.counts, key) / e.counts.read if e.counts.read else 0.0 for e in sources.values()]
        ax.barh(names, shares, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of input records")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=len(STAGES), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    plots = [_save(plt, fig, out / "stages.png", "Where each source's input records went")]
    for name, e in sources.items():
        hist = e.lengths_histogram
        if not hist:
            continue
        fig, ax = _axes(plt, f"{_plain(name)}: {sum(hist['counts']):,} kept documents ({e.kind})", "documents")
        edges = hist["edges"]
        ax.bar(edges[:-1], hist["counts"], width=[b - a for a, b in zip(edges, edges[1:])], align="edge",
               color="#4C72B0")
        ax.axvline(seq_len, color="#C44E52", ls="--", lw=1.0, label=f"seq_len {seq_len:,}")
        ax.set_xlabel("tokens per document")
        ax.legend(fontsize=8)
        plots.append(_save(plt, fig, out / f"lengths_{name}.png", f"Document lengths of {name}"))
    return plots


# ---------------------------------------------------------------------------------------
# Plotting and HTML


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes(plt: Any, title: str, ylabel: str) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=100)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _plain(text: str) -> str:
    """Text from data as a matplotlib label: a '$' must not start math mode."""
    return text.replace("$", r"\$")


def _save(plt: Any, fig: Any, path: Path, caption: str) -> tuple[str, str]:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})  # no version stamp: reproducible bytes
    plt.close(fig)
    return path.name, caption


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _si(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:,.2f}{suffix}"
    return f"{value:,.1f}"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def _change(before: float, after: float) -> str:
    relative = f" ({100 * (after / before - 1):+.1f} %)" if before > 0 else ""
    return f"{after - before:+.4f}{relative}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _table(headers: list[str], rows: Iterable[list[str]], numeric_from: int | None = None) -> str:
    """An HTML table; every cell is escaped. Columns from ``numeric_from`` on are right-aligned."""
    def cell(tag: str, i: int, value: str) -> str:
        right = numeric_from is not None and i >= numeric_from
        return f"<{tag}{' class=num' if right else ''}>{_esc(value)}</{tag}>"

    head = "" if not any(headers) else "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(headers)) + "</tr>"
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def _figures(plots: list[tuple[str, str]]) -> str:
    if not plots:
        return "<p>nothing to plot yet</p>"
    return "".join(f'<figure><img src="{_esc(quote(name))}" alt="{_esc(caption)}">'
                   f"<figcaption>{_esc(caption)}</figcaption></figure>" for name, caption in plots)


def _section(title: str, content_html: str) -> str:
    return f"<section><h2>{_esc(title)}</h2>{content_html}</section>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}.meta{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5em 0}th,td{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.5em}img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}"""


def _write_page(out: Path, title: str, meta: str, sections: list[str]) -> Path:
    page = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head>\n<body><h1>{_esc(title)}</h1><p class=meta>{_esc(meta)}</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    path = out / INDEX
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
