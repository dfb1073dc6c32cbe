"""End-of-job summary tables (rich) for the CLI."""

from __future__ import annotations

from typing import Any

LOG_WIDTH = 120  # columns when stdout is a file or a pipe (CI logs): rich would assume 80


def console() -> Any:
    """A rich console for stdout; wide when it is not a terminal, so tables are not truncated."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=LOG_WIDTH)


def _print_times(out: Any, seconds: dict[str, float], step_seconds: dict[str, float]) -> None:
    out.print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    if step_seconds:
        out.print("in steps (summed over units of work): "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in step_seconds.items()))


def print_dedup_summary(report: dict[str, Any], seconds: dict[str, float],
                        step_seconds: dict[str, float] | None = None) -> None:
    from rich.table import Table

    out = console()
    table = Table(title="ftscale dedup")
    headers = {"read": "read", "quarantined": "quarantined", "exact_duplicate": "exact dup",
               "near_duplicate": "near dup", "contaminated": "leaked", "kept": "kept"}
    cols = tuple(headers)
    table.add_column("source")
    for c in cols:
        table.add_column(headers[c], justify="right")
    for name, counts in report["sources"].items():
        table.add_row(name, *(f"{counts[c]:,}" for c in cols))
    table.add_row("[bold]total[/bold]", *(f"[bold]{report['totals'][c]:,}[/bold]" for c in cols))
    out.print(table)
    near = report.get("near_dedup")
    if near:
        out.print(f"near dedup: threshold {near['threshold']}, {near['bands']} bands × {near['rows']} rows, "
                      f"{near['candidate_pairs_checked']:,} candidate pairs checked, "
                      f"{near['verified_pairs']:,} merges")
    for name, d in report.get("decontamination", {}).items():
        out.print(f"decontamination vs {name}: {d['eval_items_leaked']} of {d['eval_items']} eval items leaked "
                      f"into {d['contaminated_records']} training records")
    audit = report.get("audit")
    if audit:
        out.print(f"audit: precision ≈ {audit['precision']:.3f}, recall ≈ {audit['recall']:.3f} "
                      f"({len(audit['sampled_pairs'])} pairs with exact Jaccard)")
    _print_times(out, seconds, step_seconds or {})


def print_rows(title: str, rows: list[dict[str, Any]], seconds: dict[str, float],
               step_seconds: dict[str, float] | None = None) -> None:
    """A table from a list of same-keyed dicts (numbers right-aligned, thousands separated)."""
    from rich.table import Table

    out = console()
    table = Table(title=title)
    if rows:
        for key in rows[0]:
            table.add_column(key, justify="right" if isinstance(rows[0][key], (int, float)) else "left")
        for r in rows:
            table.add_row(*(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in r.values()))
    out.print(table)
    if seconds:
        _print_times(out, seconds, step_seconds or {})
