"""The summary and HTML report of a sweep (`ftscale sweep`): every trial's outcome, its curves
overlaid on the others', and the winner.

A trial's numbers come from its own run directory (``metrics.jsonl`` through
``ftscale.report.load_run_metrics``, and the gate state in its latest checkpoint), so a
trial stopped by ASHA or by its forgetting guard reports what it reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftscale.report import _axes, _esc, _figures, _plain, _pyplot, _save, _section, _series, _table, _write_page


def _trial_summary(run_dir: Path, config: dict[str, Any], overrides: dict[str, Any],
                   goal: tuple[str, bool] | None, error: str | None) -> dict[str, Any]:
    from ftscale.report import load_run_metrics, summarize_run
    from ftscale.train.runs import RUN_FILE, latest_checkpoint

    out: dict[str, Any] = {"name": config["run_name"], "overrides": overrides, "run_dir": str(run_dir),
                           "last_step": 0, "final_loss": None, "final_val_loss": None, "objective": None,
                           "objective_step": None, "best_checkpoint": None, "status": "not started"}
    if (run_dir / "metrics.jsonl").is_file():
        m = load_run_metrics(run_dir)
        s = summarize_run(m)
        out.update(last_step=s["last_step"], final_loss=s["final_loss"], final_val_loss=s["final_val_loss"])
        latest = latest_checkpoint(run_dir)
        gate = json.loads((latest / RUN_FILE).read_text())["gate"] if latest else {}
        if goal is None:
            out["objective"], out["objective_step"] = s["final_loss"], s["last_step"]
        elif config["eval"]["select"] is not None:
            out["objective"], out["objective_step"] = gate.get("best_value"), gate.get("best_step")
            if gate.get("best_step") is not None:
                out["best_checkpoint"] = str(run_dir / f"checkpoint_{gate['best_step']:07d}")
        else:
            out["objective"], out["objective_step"] = s["best_val_loss"], s["best_val_loss_step"]
        if any(r.get("guard_stop") for r in m.records):
            out["status"] = f"stopped by the guard at step {s['last_step']}"
        elif s["early_stop_step"] is not None:
            out["status"] = f"early stop at step {s['early_stop_step']}"
        elif s["last_step"] < config["max_steps"]:
            out["status"] = f"stopped by ASHA at step {s['last_step']}"
        else:
            out["status"] = "finished"
    if error is not None:
        out["status"] = f"failed: {error}"
    return out


def summarize_sweep(sweep_dir: Path, name: str, configs: list[dict[str, Any]], overrides: list[dict[str, Any]],
                    goal: tuple[str, bool] | None, errors: dict[str, str]) -> dict[str, Any]:
    """Every trial's outcome and the winner: the best objective among the trials that have one
    (with ``eval.select``, only evaluations that respected the guard count)."""
    trials = [_trial_summary(sweep_dir / c["run_name"], c, o, goal, errors.get(c["run_name"]))
              for c, o in zip(configs, overrides)]
    scored = [t for t in trials if t["objective"] is not None and not t["status"].startswith("failed")]
    maximize = bool(goal and goal[1])
    winner = max(scored, key=lambda t: t["objective"] if maximize else -t["objective"], default=None)
    metric = goal[0] if goal else "final train loss"
    reason = None
    if winner is not None:
        reason = f"{'highest' if maximize else 'lowest'} {metric} {winner['objective']:.4f} at step " \
                 f"{winner['objective_step']}"
        if configs[0]["eval"]["guard"] is not None and configs[0]["eval"]["select"] is not None:
            reason += " within the forgetting guard"
    return {"name": name, "sweep_dir": str(sweep_dir),
            "objective": {"metric": metric, "maximize": maximize} if goal else None,
            "guard": (configs[0]["eval"]["guard"] or {}).get("metric"),
            "trials": trials, "winner": winner["name"] if winner else None, "winner_reason": reason}


def render_sweep(summary: dict[str, Any], out_dir: Path) -> Path:
    """``index.html`` with the trials table and the curves of every trial overlaid."""
    from ftscale.report import load_run_metrics

    keys = sorted({k for t in summary["trials"] for k in t["overrides"]})
    goal = summary["objective"]
    rows = [[t["name"] + (" (winner)" if t["name"] == summary["winner"] else ""),
             *(str(t["overrides"].get(k, "")) for k in keys), f"{t['last_step']:,}", _num(t["final_loss"]),
             _num(t["final_val_loss"]), *((_num(t["objective"]),) if goal else ()), t["status"]]
            for t in summary["trials"]]
    headers = ["trial", *keys, "steps", "final train loss", "final val loss",
               *((f"{'best' if goal['maximize'] else 'lowest'} {goal['metric']}",) if goal else ()), "status"]
    winner = (f"<p><b>winner: {_esc(summary['winner'])}</b> — {_esc(summary['winner_reason'])}</p>"
              if summary["winner"] else "<p>no trial has a score yet</p>")
    runs = {t["name"]: load_run_metrics(t["run_dir"]) for t in summary["trials"]
            if (Path(t["run_dir"]) / "metrics.jsonl").is_file()}
    curves = [("loss", "train loss", "train"), ("val_loss", "val loss (all sources)", "evals")]
    if goal and goal["metric"] not in ("val_loss", "final train loss"):
        curves.append((goal["metric"], goal["metric"], "records"))
    if summary["guard"] and summary["guard"] not in (c[0] for c in curves):
        curves.append((summary["guard"], f"{summary['guard']} (guarded)", "records"))
    plt = _pyplot()
    plots = []
    for key, title, which in curves:
        fig, ax = _axes(plt, title, key)
        drawn = False
        for name, m in runs.items():
            steps, values = _series(getattr(m, which), key)
            if steps:
                ax.plot(steps, values, "o-" if which != "train" else "-", ms=3, lw=1.2, label=_plain(name))
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.legend(fontsize=8)
        plots.append(_save(plt, fig, out_dir / f"{key.replace('/', '_')}.png", f"{title}, every trial"))
    body = [_section("Trials", winner + _table(headers, rows, numeric_from=1 + len(keys))),
            _section("Curves", _figures(plots))]
    return _write_page(out_dir, f"Sweep {summary['name']}", summary["sweep_dir"], body)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


__all__ = ["render_sweep", "summarize_sweep"]
