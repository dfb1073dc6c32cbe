"""Which checkpoint a run resumes (or rolls back) from: one decision, the same on every rank.

Rank 0 scans the run directory (commit markers and sizes, ``runs.scan``), says which
checkpoints it skips and why, and broadcasts the candidates, newest first. Every rank then
hashes its share of the newest candidate's files (file ``i`` on rank ``i mod W``); the ranks
sum their mismatches, and a candidate with any is skipped for the next. Ranks on a network
filesystem with stale caches therefore never load different steps, and a checkpoint whose
bytes changed after it was committed is never loaded.
"""

from __future__ import annotations

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


def choose_checkpoint(run_dir: Path, rank: int, world_size: int, device: Any) -> Path | None:
    """The newest complete checkpoint of ``run_dir`` whose files match their checksums, agreed
    by every rank (call it on all of them); None when there is none."""
    from ftscale.errors import InputError
    from ftscale.train.runs import committed_files, mismatched_files, scan

    candidates: list[str] | None = None
    if rank == 0:
        found, skipped = scan(run_dir)
        for path, why in skipped:
            print(f"ftscale: skipping {path.name}: {why}", flush=True)
        candidates = [str(p) for p in reversed(found)]
    for candidate in broadcast(candidates, device):
        path = Path(candidate)
        try:
            mine = sorted(committed_files(path))[rank::world_size]
            bad = mismatched_files(path, mine)
        except InputError as e:  # a marker this rank cannot read (a stale cache): skip it on every rank
            bad = [str(e)]
        if sum_over_ranks(len(bad), device) == 0:
            return path
        if bad:
            print(f"ftscale: skipping {path.name}: {bad[0]} does not match its checksum (seen by rank {rank})",
                  flush=True)
    return None
