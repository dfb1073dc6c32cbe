"""Run directories: where a run's checkpoints, metrics and export live.

``{storage_path}/{run_name}/`` is Ray Train's run directory; checkpoints are the
``checkpoint_NNNNNNN`` folders Ray persists there (one per report), each complete once it
holds ``ftscale_run.json`` (written by rank 0 last, before the report).
"""

from __future__ import annotations

from pathlib import Path

RUN_FILE = "ftscale_run.json"
DS_TAG = "ds"  # DeepSpeed checkpoint tag inside every checkpoint directory


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
