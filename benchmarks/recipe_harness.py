"""Driving ftscale's per-worker recipe (``ftscale.train.recipe.Recipe``) in this process, as
rank 0 of a world of 1, without Ray.

``ftscale train`` runs the same ``Recipe.setup`` and ``Recipe._train_step`` inside a Ray
Train worker; on one device Ray only adds the launch. It is left out because the lent GPU
machine has no network and Ray's wheel alone is larger than what can be carried there
(README of ``benchmarks/gpu_check.py``). A step here is exactly a trainer step: packed rows
from ``PackedLoader``, the model through DeepSpeed (ZeRO stage from the config), the
global-token loss, ``GuardedAdamW``; only checkpointing, evaluation and logging are not run.
"""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_process_group(device: str) -> None:
    """A torch.distributed group of one (nccl on CUDA, gloo on CPU) for this process, made
    once and kept: DeepSpeed caches the group, so a second one in the same process breaks
    the next engine. DeepSpeed then uses it as it is (no MPI discovery). An HF Trainer run
    must happen in a process without it (it would wrap its model in DDP)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
    os.environ.setdefault("DS_ACCELERATOR", device)
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)


def train_config(dataset: Path, run_dir: Path, model: dict, *, device: str, seq_len: int, micro_batch: int,
                 steps: int, method: str = "full", grad_ckpt: bool = False, zero_stage: int = 2,
                 seed: int = 0) -> dict[str, Any]:
    """A train config for one rank: bf16 on CUDA, fp32 on CPU (the trainer's ``auto``);
    attention ``auto`` (flash-attention varlen when installed, else sdpa_segments); no
    evaluation, checkpoints, export or spike guard; the schedule spans ``steps``."""
    return {
        "run_name": "gpu-check", "storage_path": str(run_dir), "data": {"path": str(dataset)},
        "model": {"config": model, "attn_implementation": "auto", "gradient_checkpointing": grad_ckpt},
        "method": method, "lora": {"r": 16, "alpha": 32.0, "target_modules": "all-linear"},
        "seq_len": seq_len, "micro_batch_size": micro_batch, "max_steps": steps, "zero_stage": zero_stage,
        "num_workers": 1, "use_gpu": device == "cuda", "precision": "auto", "seed": seed,
        "checkpoint_every": 10**6, "eval_every": 0, "export_on_finish": False, "spike": {"enabled": False},
        "optim": {"lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 1},
    }


@contextmanager
def recipe(config: dict[str, Any], run_dir: Path) -> Iterator[Any]:
    """A set-up ``Recipe`` (rank 0 of 1, ``ensure_process_group`` first). On exit its files
    are closed and its engine, model and optimizer released (so the next one in the same
    process starts from the same free memory)."""
    from ftscale.config import TrainConfig, build
    from ftscale.train.recipe import Recipe

    ensure_process_group("cuda" if config["use_gpu"] else "cpu")
    r = Recipe(build(TrainConfig, config), 0, 1, run_dir)
    try:
        r.setup()
        yield r
    finally:
        r.cleanup()
        engine = getattr(r, "engine", None)
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()  # removes DeepSpeed's hooks, which hold references to the parameters
        for name in ("engine", "optimizer", "client_optimizer", "scheduler", "loader"):
            if hasattr(r, name):
                delattr(r, name)
        del r
        release_memory()


def release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_steps(r: Any, n: int) -> list[dict[str, float]]:
    """``n`` trainer steps; each step's stats (loss, global tokens, loss tokens, slots) plus
    the recipe's own metrics for it (``tokens_per_s``, ``mfu`` when the peak is known)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        stats = r._train_step()
        elapsed = time.perf_counter() - t0
        r.step += 1
        out.append({**stats, **r._step_metrics(stats, elapsed)})
    return out


def timed_steps(r: Any, n: int, device: str) -> tuple[list[dict[str, float]], float]:
    """``(stats, seconds)`` of ``n`` steps, the clock read after the device drained the
    work queued before and during them."""
    synchronize(device)
    t0 = time.perf_counter()
    stats = run_steps(r, n)
    synchronize(device)
    return stats, time.perf_counter() - t0
