"""A Hugging Face Hub cache laid out on disk as `hf download` leaves it, for tests of Hub ids
(huggingface_hub then resolves them offline, for real)."""

from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo_id: str, files_from: Path, commit: str = COMMIT) -> Path:
    """``files_from``'s files as revision ``main`` (= ``commit``) of model ``repo_id`` in the
    Hub cache layout (``models--org--name/refs/main``, ``snapshots/<commit>/...``)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files_from, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
