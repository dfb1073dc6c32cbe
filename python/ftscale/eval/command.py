"""`ftscale eval MODEL_OR_RUN --tasks TASKS.yaml`: load a model, run the tasks in this process
or sharded over Ray workers, and write the results (JSON + a table, and the change from a
``--baseline`` model when one is given).

``MODEL_OR_RUN`` is a Hugging Face model directory (an ``ftscale export`` among them), a
``.gguf`` file or ``pkg:`` path, a training checkpoint, or a run directory (its latest
checkpoint, or with ``--best`` the best one that respected the forgetting guard). A checkpoint
is consolidated once into a temporary model directory (``ftscale export``, LoRA merged), which
every worker then loads.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftscale.errors import ConfigError, InputError


@dataclass(frozen=True)
class EvalOptions:
    model: str
    tasks: str
    baseline: str | None = None
    best: bool = False  # a run directory: its best checkpoint instead of its latest
    workers: int = 0  # 0: in this process; N: N Ray workers, each a shard of every task
    batch_size: int = 16
    precision: str = "auto"  # bf16 on GPU, fp32 on CPU
    use_gpu: bool | None = None  # None: when one is available
    out: str | None = None  # results JSON path
    harness_tasks: list[str] = field(default_factory=list)  # lm-evaluation-harness task names
    harness_include: str | None = None  # directory of local lm-eval task YAMLs

    def check(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"--workers: must be >= 0 (0 evaluates in this process), got {self.workers}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: must be >= 1, got {self.batch_size}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision: choose auto, bf16 or fp32, got {self.precision!r}")
        if self.harness_tasks and not self.harness_include:
            raise ConfigError("--harness: give --harness-include DIR (local lm-eval task files; no hub tasks)")


def resolve_model(source: str, best: bool, scratch: ExitStack) -> tuple[str, str]:
    """``(model path, label)``: a path ``load_model`` and ``load_tokenizer`` both accept. A
    checkpoint or run directory is exported into a temporary directory owned by ``scratch``."""
    from ftscale.paths import resolve_model_ref
    from ftscale.train.runs import RUN_FILE, best_checkpoint, latest_checkpoint
    from ftscale.train.storage import export_remote, is_remote

    if is_remote(source):  # a run or checkpoint in object storage: its checkpoint, exported here
        tmp = scratch.enter_context(tempfile.TemporaryDirectory(prefix="ftscale-eval-model-"))
        export_remote(source, tmp, merge_lora=True, best=best)
        return tmp, source
    p = resolve_model_ref(source)
    checkpoint: Path | None = None
    if (p / RUN_FILE).is_file():
        checkpoint = p
    elif p.is_dir() and not (p / "config.json").is_file():
        checkpoint = best_checkpoint(p) if best else latest_checkpoint(p)
        if checkpoint is None:
            what = "a best checkpoint (train with eval.select)" if best else "a checkpoint"
            raise InputError(f"{source}: neither a model directory (config.json) nor a run with {what}")
    elif best:
        raise ConfigError(f"--best: {source} is not a run directory")
    if checkpoint is None:
        if not p.exists():
            raise InputError(f"{source} not found: give a model directory, a .gguf file, a checkpoint or a run")
        return source, source
    from ftscale.train.export import export

    tmp = scratch.enter_context(tempfile.TemporaryDirectory(prefix="ftscale-eval-model-"))
    export(str(checkpoint), tmp, merge_lora=True)
    return tmp, str(checkpoint)


def load_for_eval(path: str, precision: str, use_gpu: bool | None) -> tuple[Any, Any, Any]:
    """``(model, HF tokenizer, device)`` in eval mode. sdpa attention: evaluation batches are
    padded, never packed across documents."""
    import torch

    from ftscale.data.tokenize import load_tokenizer
    from ftscale.train.ds_config import resolve_precision
    from ftscale.train.model import load_model

    on_gpu = torch.cuda.is_available() and use_gpu is not False
    if use_gpu and not on_gpu:
        raise ConfigError("--gpu: no CUDA device is available")
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    dtype = "bfloat16" if resolve_precision(precision, on_gpu) == "bf16" else "float32"
    tokenizer = load_tokenizer(path).hf
    if tokenizer is None:
        raise ConfigError(f"{path}: evaluation needs a Hugging Face tokenizer (tokenizer.json or GGUF)")
    model = load_model(path, None, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    return model, tokenizer, device


def _shard_worker(path: str, tasks: list[Any], batch_size: int, rank: int, world_size: int, precision: str,
                  use_gpu: bool | None) -> dict[str, list[dict[str, Any]]]:
    """One Ray worker: load the model, evaluate shard ``rank`` of every task."""
    from ftscale.eval.runner import TaskSuite

    model, tokenizer, device = load_for_eval(path, precision, use_gpu)
    suite = TaskSuite(tasks, batch_size)
    return suite.run_shard(model, tokenizer, device=device, rank=rank, world_size=world_size)


def evaluate_model(path: str, label: str, tasks: list[Any], opts: EvalOptions) -> dict[str, Any]:
    """Results of one model: ``{"model", "tasks": {name: {metric: value}}, "metrics": flat,
    "outputs": {task: [generations]}, "seconds"}``."""
    from ftscale.eval.runner import TaskSuite, flatten, merge_records

    suite = TaskSuite(tasks, opts.batch_size)  # items validated here, before any worker starts
    started = time.perf_counter()
    model = tokenizer = None
    if opts.workers:
        records = merge_records(_on_ray(path, tasks, opts))
    else:
        model, tokenizer, device = load_for_eval(path, opts.precision, opts.use_gpu)
        records = suite.run_shard(model, tokenizer, device=device)
    seconds = time.perf_counter() - started
    harness: dict[str, float] = {}
    if opts.harness_tasks:
        from ftscale.eval.harness import run_harness

        if model is None:
            model, tokenizer, _ = load_for_eval(path, opts.precision, opts.use_gpu)
        assert opts.harness_include is not None
        harness = run_harness(model, tokenizer, opts.harness_tasks, opts.harness_include, opts.batch_size)
    results = suite.aggregate(records)
    outputs = {t.name: [_generation(suite.items[t.name][r["index"]], r)
                        for r in sorted(records.get(t.name, []), key=lambda r: r["index"])]
               for t in tasks if t.kind == "generate"}
    return {"model": label, "tasks": results, "metrics": {**flatten(results), **harness}, "outputs": outputs,
            "seconds": seconds}


def _generation(item: Any, record: dict[str, Any]) -> dict[str, Any]:
    """One generation as the results JSON shows it."""
    return {"index": record["index"], "prompt": item.prompt, "output": record["output"],
            "references": item.references, "scores": record["scores"]}


def _on_ray(path: str, tasks: list[Any], opts: EvalOptions) -> list[dict[str, list[dict[str, Any]]]]:
    """Every shard's records, one Ray task per shard (a GPU each when the cluster has GPUs)."""
    import ray

    from ftscale.ray_cluster import init_ray
    from ftscale.train.launch import QUIET_LOADING_ENV

    init_ray({**QUIET_LOADING_ENV, "TOKENIZERS_PARALLELISM": "false"})
    gpu = opts.use_gpu if opts.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= 1
    remote = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0)(_shard_worker)
    return ray.get([remote.remote(path, tasks, opts.batch_size, r, opts.workers, opts.precision, gpu)
                    for r in range(opts.workers)])


def run_eval(opts: EvalOptions) -> dict[str, Any]:
    """Evaluate ``opts.model`` (and ``opts.baseline``); write and return the results."""
    from ftscale.data.atomic import atomic_path
    from ftscale.eval.tasks import load_tasks

    opts.check()
    tasks = load_tasks(opts.tasks)
    with ExitStack() as scratch:
        result: dict[str, Any] = {"tasks_file": str(Path(opts.tasks).resolve())}
        if opts.baseline is not None:
            path, label = resolve_model(opts.baseline, False, scratch)
            result["baseline"] = evaluate_model(path, label, tasks, opts)
        path, label = resolve_model(opts.model, opts.best, scratch)
        result.update(evaluate_model(path, label, tasks, opts))
    if "baseline" in result:
        before = result["baseline"]["metrics"]
        result["change"] = {k: v - before[k] for k, v in result["metrics"].items() if k in before}
    if opts.out:
        with atomic_path(Path(opts.out)) as tmp:
            tmp.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return result


def print_results(result: dict[str, Any]) -> None:
    """The metrics table: one row per task metric; with a baseline, before → after and change."""
    from rich.table import Table

    from ftscale.summary import console

    base = result.get("baseline")
    table = Table(title=f"ftscale eval: {result['model']}")
    for col in ("metric", *(("baseline",) if base else ()), "value", *(("change",) if base else ())):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, value in result["metrics"].items():
        row = [key]
        if base:
            row.append(f"{base['metrics'][key]:.4f}" if key in base["metrics"] else "–")
        row.append(f"{value:.4f}")
        if base:
            row.append(f"{result['change'][key]:+.4f}" if key in result.get("change", {}) else "–")
        table.add_row(*row)
    out = console()
    out.print(table)
    items = sum(int(m.get("items", 0)) for m in result["tasks"].values())
    out.print(f"{items:,} items in {result['seconds']:.1f} s" + (
        f" (baseline {base['seconds']:.1f} s)" if base else ""))


__all__ = ["EvalOptions", "evaluate_model", "load_for_eval", "print_results", "resolve_model", "run_eval"]
