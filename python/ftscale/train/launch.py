"""`ftscale train`: start (or join) a Ray cluster and run the recipe on N Ray Train workers.

Local by default; with ``RAY_ADDRESS`` set — as inside ``ray job submit`` — it joins that
cluster (``ftscale.ray_cluster``), so the same command works in both places. Relaunching a run with the same ``run_name`` and ``storage_path`` resumes from its latest
complete checkpoint; Ray Train also restarts failed workers from it (``max_failures``). The
workers choose that checkpoint themselves (``train.resume``); the driver's lookup only names
it in the summary. A finished run exports to ``run_dir/export``, or ``export-2``, ``export-3``,
... when an earlier export is there: an export is never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from ftscale.config import TrainConfig, check_against_dataset, to_dict
from ftscale.errors import FtscaleError
from ftscale.paths import pin_model_ref
from ftscale.train.storage import exists, filesystem, is_remote, join, local_path, mirrored, remote_sizes
from ftscale.ray_cluster import init_ray

# No per-tensor progress bars while loading a model (one per worker would flood the log):
# transformers' own bars follow the first variable, its GGUF loader's plain tqdm only the second.
QUIET_LOADING_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    # Ray Train's print patch tees every print to its logger *and* to the wrapped stdout,
    # so each worker line reached the driver twice; plain prints reach it once.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    **QUIET_LOADING_ENV,
}


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Paths resolved against the launch directory, so workers on any cwd find them."""
    from ftscale.eval.tasks import load_tasks

    data = dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).expanduser().resolve()))
    model = cfg.model
    if model.path:
        model = dataclasses.replace(model, path=pin_model_ref(model.path))
    tasks = cfg.eval.tasks
    if isinstance(tasks, str):
        tasks = str(Path(tasks).expanduser().resolve())
    elif tasks is not None:
        tasks = load_tasks(tasks)  # the items' paths, made absolute
    storage = cfg.storage_path if is_remote(cfg.storage_path) else str(
        Path(local_path(cfg.storage_path)).expanduser().resolve())
    return dataclasses.replace(cfg, data=data, model=model, eval=dataclasses.replace(cfg.eval, tasks=tasks),
                               storage_path=storage)


def _root_cause(error: BaseException) -> str:
    """The last line of the worker traceback Ray wraps: usually the user-facing message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else repr(error)


def launch(cfg: TrainConfig, callbacks: list[Any] | None = None, live_progress: bool = True) -> dict[str, Any]:
    """Run training; returns a summary (run dir, last and best checkpoint, final metrics,
    export dir). ``callbacks``: Ray Train callbacks (a sweep passes Tune's reporter).
    ``live_progress``: a bar on the driver's terminal (when stderr is one) instead of the
    workers' step lines."""
    from ftscale.data.format import read_manifest, verify_dataset
    from ftscale.train.compat import check_model_tokenizer

    cfg = absolute_paths(cfg)
    run = run_location(cfg)
    manifest = read_manifest(cfg.data.path)
    check_against_dataset(cfg, manifest)
    check_model_tokenizer(cfg, manifest.tokenizer)
    # Checksums once, here, before any worker starts; the workers' loaders check store headers
    # and sizes only. What the run reads: the mixture's train shards and, when it evaluates,
    # every source's val shards.
    verify_dataset(cfg.data.path, list(cfg.data.mixture) if cfg.data.mixture else None, ("train",))
    if cfg.eval_every:
        verify_dataset(cfg.data.path, None, ("val",))
    init_ray(WORKER_ENV)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from ftscale.progress import TrainProgress
    from ftscale.train.recipe import KEEP_SCORE, train_loop

    cfg, use_gpu = _scaling(cfg, ray.cluster_resources().get("GPU", 0))
    env = dict(WORKER_ENV)
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(cfg.cpus_per_worker)
        os.environ["DS_ACCELERATOR"] = "cpu"  # the driver imports DeepSpeed too, for export
    resume, _ = _latest_and_best(run)
    # A live bar on the driver's terminal (rank 0 sends it its steps); logs and sweeps get the
    # workers' step lines with pace and ETA instead.
    live = live_progress and sys.stderr.isatty() and not callbacks
    progress = Queue(actor_options={"num_cpus": 0}) if live else None
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": to_dict(cfg), "run_dir": run, "progress": progress},
        scaling_config=ScalingConfig(num_workers=_workers(cfg.num_workers), use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.run_name, storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=_checkpoint_config(cfg, CheckpointConfig, KEEP_SCORE),
            worker_runtime_env={"env_vars": env},
            callbacks=list(callbacks or []),
        ),
    )
    try:
        with TrainProgress().follow(progress) if progress is not None else contextlib.nullcontext():
            result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise FtscaleError(f"training failed: {_root_cause(e)}") from e
    if result.error is not None:
        raise FtscaleError(f"training failed: {_root_cause(result.error)}") from result.error
    last, best = _latest_and_best(run)
    summary: dict[str, Any] = {"run_dir": run, "checkpoint": last, "best_checkpoint": best,
                               "metrics": dict(result.metrics or {}), "resumed_from": resume,
                               "workers": cfg.num_workers, "use_gpu": use_gpu}
    if cfg.export_on_finish and last is not None:
        from ftscale.train.export import export

        summary["export"] = str(export(last, _new_export_dir(run)))
    return summary


def _workers(num_workers: int | list[int]) -> int | tuple[int, int]:
    """Ray's form of a resolved num_workers: a count, or (min, max) for elastic scaling."""
    return num_workers if isinstance(num_workers, int) else (num_workers[0], num_workers[1])


def _new_export_dir(run: str) -> str:
    """``run/export``, or the first free ``export-N`` (N >= 2) beside it (``run``: a local
    directory or a storage URI)."""
    candidate, n = join(run, "export"), 1
    while exists(candidate) if is_remote(run) else Path(candidate).exists():
        n += 1
        candidate = join(run, f"export-{n}")
    return candidate


def run_location(cfg: TrainConfig) -> str:
    """The run directory ``{storage_path}/{run_name}``: a local path, or a URI (checked here,
    before Ray starts, so a wrong bucket or missing credentials is one line)."""
    from ftscale.train.runs import run_dir

    if not is_remote(cfg.storage_path):
        return str(run_dir(cfg.storage_path, cfg.run_name))
    filesystem(cfg.storage_path)
    return join(cfg.storage_path, cfg.run_name)


def _latest_and_best(run: str) -> tuple[str | None, str | None]:
    """The run's latest and best complete checkpoints, as paths or URIs inside ``run`` (the
    workers choose the one they resume from themselves: ``train.resume``)."""
    from ftscale.train.runs import best_checkpoint, latest_checkpoint

    with mirrored(run) as directory:
        sizes = remote_sizes(run, directory) if is_remote(run) else None
        found = latest_checkpoint(directory, sizes), best_checkpoint(directory, sizes)
    return tuple(join(run, p.name) if p is not None else None for p in found)  # type: ignore[return-value]


def _scaling(cfg: TrainConfig, cluster_gpus: float) -> tuple[TrainConfig, bool]:
    """``(cfg with num_workers resolved, use_gpu)`` for a cluster with ``cluster_gpus`` GPUs:
    "auto" becomes a count; a count or an elastic [min, max] stays."""
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else cluster_gpus >= 1
    workers = cfg.workers(cluster_gpus, use_gpu)
    least = workers if isinstance(workers, int) else workers[0]
    if use_gpu and least > cluster_gpus:  # not an error: an autoscaler may still add GPUs
        print(f"ftscale train: warning: {least} GPU workers asked for, the Ray cluster has {cluster_gpus:g} GPU(s) "
              "now; Ray waits for more (num_workers: auto uses the GPUs there are)", file=sys.stderr, flush=True)
    return dataclasses.replace(cfg, num_workers=workers), use_gpu


def _checkpoint_config(cfg: TrainConfig, checkpoint_config: Any, score: str) -> Any:
    """Keep the last ``keep_checkpoints``; with ``eval.select``, the best-at-the-time ones by
    score instead (see ``recipe.KEEP_SCORE``), so the run's best checkpoint is never deleted.
    Ray always keeps the latest as well."""
    if cfg.eval.select is None:
        return checkpoint_config(num_to_keep=cfg.keep_checkpoints)
    return checkpoint_config(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=score,
                             checkpoint_score_order="max")
