"""Which checkpoint a run resumes (or rolls back) from: one decision, the same on every rank.

Rank 0 scans the run directory (commit markers and sizes, ``runs.scan``), says which
checkpoints it skips and why, and broadcasts the candidates, newest first. Every rank then
hashes its share of the newest candidate's files (file ``i`` on rank ``i mod W``); the ranks
sum their mismatches, and a candidate with any is skipped for the next. Ranks on a network
filesystem with stale caches therefore never load different steps, and a checkpoint whose
bytes changed after it was committed is never loaded.

A run in object storage (``storage_path`` a URI) is chosen the same way on a mirror of its
small files, with the sizes asked of the store (``storage.remote_sizes``); every rank then
downloads the candidate into its own scratch directory and checks all of that copy's
checksums (the copies are separate, so no rank can vouch for another's), and loads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast(value: Any, device: Any) -> Any:
    """Rank 0's ``value`` on every rank (plain data, between this run's own processes)."""
    import torch.distributed as dist

    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def sum_over_ranks(value: int, device: Any) -> int:
    import torch
    import torch.distributed as dist

    if not _distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def barrier() -> None:
    import torch.distributed as dist

    if _distributed():
        dist.barrier()


def choose_checkpoint(run_dir: str | Path, rank: int, world_size: int, device: Any,
                      scratch: Path | None = None) -> Path | None:
    """The newest complete checkpoint of ``run_dir`` whose files match their checksums, agreed
    by every rank (call it on all of them); None when there is none. For a remote ``run_dir``
    (a URI) it is this rank's downloaded copy, inside ``scratch`` (required then)."""
    from ftscale.errors import InputError
    from ftscale.train.runs import committed_files, mismatched_files, scan
    from ftscale.train.storage import download, is_remote, join, local_path, mirrored, remote_sizes

    remote = is_remote(str(run_dir))
    candidates: list[str] | None = None
    if rank == 0:
        with mirrored(str(run_dir)) as directory:
            found, skipped = scan(directory, remote_sizes(str(run_dir), directory) if remote else None)
        for path, why in skipped:
            print(f"ftscale: skipping {path.name}: {why}", flush=True)
        candidates = [p.name for p in reversed(found)]
    for name in broadcast(candidates, device):
        try:
            if remote:
                assert scratch is not None, "a remote run needs a scratch directory to download into"
                path = download(join(str(run_dir), name), scratch / name)
                bad = mismatched_files(path)  # this rank's own copy: all of it
            else:
                path = Path(local_path(str(run_dir))) / name
                mine = sorted(committed_files(path))[rank::world_size]
                bad = mismatched_files(path, mine)
        except InputError as e:  # a marker this rank cannot read (a stale cache): skip it on every rank
            bad = [str(e)]
        if sum_over_ranks(len(bad), device) == 0:
            return path
        if bad:
            print(f"ftscale: skipping {name}: {bad[0]} does not match its checksum (seen by rank {rank})",
                  flush=True)
        if remote:
            shutil.rmtree(scratch / name, ignore_errors=True)  # type: ignore[operator]
    return None
