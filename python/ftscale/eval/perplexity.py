"""Perplexity of a prepared dataset's validation split, per source: the trainer's val loss
(same packed rows, same loss tokens) as an evaluation task, usable on any model.

The rows come from ``ftscale.data.loader.PackedLoader`` with ``split="val"`` and
``drop_last=False``, which gives every rank the same number of micro-batches (short ranks get
empty rows), so ZeRO-3 passes stay matched without extra agreement. A rank holds one packed
micro-batch at a time.
"""

from __future__ import annotations

from typing import Any

from ftscale.errors import DataError
from ftscale.eval.tasks import TaskConfig


def dataset_records(model: Any, task: TaskConfig, *, device: Any, rank: int, world_size: int,
                    batch_size: int) -> list[dict[str, Any]]:
    """``{"source", "index", "nll", "tokens"}`` per micro-batch of this rank, for every source
    with a val split. ``task.max_items`` caps the packed rows scored per source: the first N
    rows of the val plan, whatever the ranks and batch size (rows past it lose their labels)."""
    import torch

    from ftscale.data.format import IGNORE_INDEX, read_manifest
    from ftscale.data.loader import PackedLoader
    from ftscale.train.attention import forward_kwargs
    from ftscale.train.loss import kept_loss_sum, loss_positions
    from ftscale.train.model import keep_logits

    assert task.dataset is not None
    manifest = read_manifest(task.dataset)
    sources = [name for name, entry in sorted(manifest.sources.items()) if entry.val]
    if not sources:
        raise DataError(f"task {task.name}: {task.dataset} has no val split (prep with val_fraction > 0)")
    attn = model.config._attn_implementation
    dtype = next(model.parameters()).dtype
    records = []
    for name in sources:
        loader = PackedLoader(task.dataset, {name: 1.0}, manifest.seq_len, batch_size, rank, world_size, 0,
                              split="val", max_epochs=1, drop_last=False)
        steps = loader.steps_per_epoch
        if task.max_items is not None:
            steps = min(steps, -(-task.max_items // (batch_size * world_size)))
        for i, batch in zip(range(steps), loader):
            labels = torch.as_tensor(batch["labels"])
            if task.max_items is not None:  # rank r's row j of step i is row i·B·W + r + j·W of the plan
                rows = i * batch_size * world_size + rank + world_size * torch.arange(labels.shape[0])
                labels = labels.masked_fill((rows >= task.max_items)[:, None], IGNORE_INDEX)
            keep, targets = loss_positions(labels.to(device))
            with keep_logits(model, keep):
                logits = model(**forward_kwargs(batch, attn, dtype=dtype, device=device)).logits
            records.append({"source": name, "index": i, "nll": float(kept_loss_sum(logits, targets)),
                            "tokens": int(targets.numel())})
    return records


__all__ = ["dataset_records"]
