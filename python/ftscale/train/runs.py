"""Run directories: where a run's checkpoints, metrics and export live.

``{storage_path}/{run_name}/`` is Ray Train's run directory; checkpoints are the
``checkpoint_NNNNNNN`` folders Ray persists there (one per report), each complete once it
holds ``ftscale_run.json`` (written by rank 0 last, before the report). That file also holds
the forgetting gate's state (``gate``), which names the best checkpoint of the run so far.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftscale.errors import InputError

RUN_FILE = "ftscale_run.json"
DS_TAG = "ds"  # DeepSpeed checkpoint tag inside every checkpoint directory


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:07d}"


def run_dir(storage_path: str, run_name: str) -> Path:
    return Path(storage_path).expanduser().resolve() / run_name


def checkpoints(run_directory: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    if not run_directory.is_dir():
        return []
    found = [p for p in run_directory.glob("checkpoint_*") if (p / RUN_FILE).is_file() and p.is_dir()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_directory: Path) -> Path | None:
    found = checkpoints(run_directory)
    return found[-1] if found else None


def best_checkpoint(run_directory: Path) -> Path | None:
    """The best checkpoint (``eval.select``, respecting ``eval.guard``) recorded by the run's
    latest checkpoint; None when the run selects none (no ``eval.select``, or no evaluation of
    a trained step respected the guard)."""
    latest = latest_checkpoint(run_directory)
    if latest is None:
        return None
    try:
        gate = json.loads((latest / RUN_FILE).read_text(encoding="utf-8")).get("gate") or {}
    except (OSError, ValueError) as e:
        raise InputError(f"{latest / RUN_FILE} cannot be read: {e}") from e
    step = gate.get("best_step")
    if step is None:
        return None
    best = run_directory / checkpoint_name(int(step))
    if not (best / RUN_FILE).is_file():
        raise InputError(f"{run_directory}: the best checkpoint (step {step}) is missing from the run directory")
    return best
