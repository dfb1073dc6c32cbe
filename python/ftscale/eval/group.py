"""The processes that share one model's parameters during an evaluation.

Under DeepSpeed ZeRO-3 every forward pass gathers parameter shards from all ranks, so every
rank must run the same number of forward passes, even a rank whose share of the items ran
out: the evaluation loops agree on a common number of batches (``max_int``) and run dummy
batches past their own. Outside ZeRO-3 the agreement is harmless (one small all-reduce per
loop). Results travel as picklable records (``gather``).
"""

from __future__ import annotations

from typing import Any, Protocol


class Group(Protocol):
    rank: int
    world_size: int
    synced: bool  # forward passes must stay in lockstep across ranks (ZeRO-3 with > 1 rank)

    def max_int(self, value: int) -> int:
        """The maximum of ``value`` over the group."""
        ...

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        ...


class Solo:
    """One process holding the whole model: nothing to agree on."""

    rank = 0
    world_size = 1
    synced = False

    def max_int(self, value: int) -> int:
        return value

    def gather(self, obj: Any) -> list[Any]:
        return [obj]


class TorchGroup:
    """The default ``torch.distributed`` process group (the Ray Train workers of a run)."""

    def __init__(self, device: Any, synced: bool) -> None:
        import torch.distributed as dist

        self.device = device
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.synced = synced and self.world_size > 1

    def max_int(self, value: int) -> int:
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


__all__ = ["Group", "Solo", "TorchGroup"]
