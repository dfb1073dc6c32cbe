"""The optimizer and learning-rate schedule.

``GuardedAdamW`` is torch's AdamW with the global gradient norm, clipping and the spike
guard's skip done in one place, inside ``step()``. DeepSpeed calls that ``step()`` on the
parameters this rank owns (all of them at ZeRO-0, a disjoint fp32 partition at ZeRO-1/2/3),
so the squared norms are summed over ranks when partitioned. DeepSpeed's own clipping is
turned off (``gradient_clipping: 0``) so the norm the guard sees is the raw one. A skipped
step leaves weights and Adam moments untouched (DeepSpeed still zeroes the gradients), and
the learning-rate schedule (``make_scheduler``) stays where it was: the schedule counts
applied steps, so a run with skips still warms up over ``warmup_steps`` real updates.
"""

from __future__ import annotations

import math
from typing import Any, Callable

NORM_CHUNK_ELEMENTS = 1 << 24  # elements per fp64 partial sum of squares (128 MiB of temporary)


def make_optimizer(params: Any, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                   clip_norm: float, partitioned: bool, judge: Callable[[float], bool]) -> Any:
    """``judge(pre_clip_grad_norm) -> skip`` is called on every rank with the same norm."""
    import torch
    import torch.distributed as dist

    class GuardedAdamW(torch.optim.AdamW):
        last_grad_norm: float = 0.0
        last_skipped: bool = False

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            sq = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else "cpu")
            for grad in grads:
                # fp64 sums in chunks: at ZeRO-1/2 `grad` is one flat fp32 tensor of every parameter,
                # and a whole-tensor .double() would add 8 bytes per parameter at once.
                for chunk in grad.reshape(-1).split(NORM_CHUNK_ELEMENTS):
                    wide = chunk.double()
                    sq += torch.dot(wide, wide)
            if partitioned and dist.is_available() and dist.is_initialized():
                dist.all_reduce(sq, op=dist.ReduceOp.SUM)
            norm = float(sq.sqrt())
            self.last_grad_norm = norm
            self.last_skipped = judge(norm)
            if self.last_skipped:
                return None
            if clip_norm > 0 and norm > clip_norm:
                scale = clip_norm / (norm + 1e-6)
                for grad in grads:
                    grad.mul_(scale)
            return super().step(closure)

    return GuardedAdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def make_scheduler(optimizer: Any, warmup_steps: int, total_steps: int, lr: float, min_lr: float) -> Any:
    """torch's LambdaLR over ``lr_lambda`` that does not advance on a step ``optimizer`` skipped.

    DeepSpeed steps the scheduler after every optimizer step that did not overflow; a
    spike-skipped step is not an overflow to it, so the skip is checked here."""
    import torch

    class SkipAwareLambdaLR(torch.optim.lr_scheduler.LambdaLR):
        def step(self, epoch: Any = None) -> None:
            if getattr(self.optimizer, "last_skipped", False):
                return
            super().step(epoch)

    return SkipAwareLambdaLR(optimizer, lr_lambda(warmup_steps, total_steps, lr, min_lr))


def lr_lambda(warmup_steps: int, total_steps: int, lr: float, min_lr: float) -> Callable[[int], float]:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at
    ``total_steps``; returned as a multiplier of ``lr`` (for torch's LambdaLR)."""
    floor = min_lr / lr

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
