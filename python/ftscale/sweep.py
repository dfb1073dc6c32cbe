"""`ftscale sweep CONFIG optim.lr=1e-5,2e-5,5e-5 [...]`: train configs as Ray Tune trials.

Each trial is an ordinary ftscale run (``ftscale.train.launch``: its own Ray Train
``TorchTrainer``, checkpoints and resume) in ``<storage_path>/<name>/trial-NNN``, launched
from a Tune function trainable, the Ray Train V2 way of composing the two: Tune schedules
trial drivers, each driver starts its Ray Train run, and Ray Train's ``TuneReportCallback``
forwards every report (checkpoints and evaluations) to Tune, where ASHA can stop a trial on
the selection metric. Re-running the same sweep resumes each trial from its own latest
checkpoint (a finished trial does nothing).

The trials are fixed before Tune starts: the grid of every ``KEY=V1,V2,...`` axis, or
``--samples N`` draws (seeded) over the axes and ``KEY=loguniform:LO:HI`` / ``uniform:LO:HI``
ranges; so trial names and configs do not depend on Tune's search order.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftscale.errors import ConfigError, FtscaleError

SWEEP_FILE = "sweep.json"
RANGE_KINDS = ("uniform", "loguniform")


@dataclass(frozen=True)
class SweepOptions:
    config: str
    overrides: list[str] = field(default_factory=list)
    name: str | None = None
    samples: int | None = None
    seed: int = 0
    asha: bool = False
    max_concurrent: int = 1

    def check(self) -> None:
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"--samples: must be >= 1, got {self.samples}")
        if self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent: must be >= 1, got {self.max_concurrent}")
        if self.seed < 0:
            raise ConfigError(f"--seed: must be >= 0, got {self.seed}")


def parse_axes(overrides: list[str]) -> tuple[list[str], dict[str, list[Any]], dict[str, tuple[str, float, float]]]:
    """``(fixed overrides, grid axes {key: values}, ranges {key: (kind, lo, hi)})``. A value
    with commas is an axis (values parsed as YAML), unless it is a YAML list or mapping."""
    import yaml

    fixed, axes, ranges = [], {}, {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE or KEY=V1,V2,... (e.g. optim.lr=1e-5,2e-5)")
        kind, _, bounds = raw.partition(":")
        if kind in RANGE_KINDS:
            lo_hi = bounds.split(":")
            try:
                lo, hi = (float(v) for v in lo_hi)
            except ValueError as e:
                raise ConfigError(f"{key}: expected {kind}:LOW:HIGH with two numbers, got {raw!r}") from e
            if not lo < hi or (kind == "loguniform" and lo <= 0):
                raise ConfigError(f"{key}: {kind} needs LOW < HIGH{' and LOW > 0' if kind == 'loguniform' else ''}")
            ranges[key] = (kind, lo, hi)
        elif "," in raw and not raw.lstrip().startswith(("[", "{")):
            axes[key] = [_scalar(yaml.safe_load(v)) for v in raw.split(",")]
        else:
            fixed.append(item)
    return fixed, axes, ranges


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads 1e-5 (no dot) as a string; a sweep value that is a number is a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def draw_trials(axes: dict[str, list[Any]], ranges: dict[str, tuple[str, float, float]], samples: int | None,
                seed: int) -> list[dict[str, Any]]:
    """The overrides of every trial: the full grid, or ``samples`` seeded draws."""
    if samples is None:
        if ranges:
            raise ConfigError(f"{next(iter(ranges))}: a range is sampled; give --samples N")
        keys = list(axes)
        return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))] or [{}]
    rng = random.Random(seed)
    trials = []
    for _ in range(samples):
        trial = {k: rng.choice(v) for k, v in axes.items()}
        for k, (kind, lo, hi) in ranges.items():
            trial[k] = (math.exp(rng.uniform(math.log(lo), math.log(hi))) if kind == "loguniform"
                        else rng.uniform(lo, hi))
        trials.append(trial)
    return trials


def _trial_configs(opts: SweepOptions) -> tuple[str, Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """``(sweep name, sweep dir, trial overrides, trial train configs as dicts)``, every config
    built and checked against its dataset before anything runs."""
    from ftscale.config import TrainConfig, apply_overrides, build, check_against_dataset, load_yaml, to_dict
    from ftscale.config.base import PLAIN_NAME_RULE, plain_name
    from ftscale.data.format import read_manifest
    from ftscale.train.launch import absolute_paths

    fixed, axes, ranges = parse_axes(opts.overrides)
    base = apply_overrides(load_yaml(opts.config), fixed)
    first = build(TrainConfig, base)
    name = opts.name or f"{first.run_name}-sweep"
    if not plain_name(name):
        raise ConfigError(f"--name: {name!r} must be {PLAIN_NAME_RULE} (it names the sweep's directory)")
    if "://" in first.storage_path and not first.storage_path.startswith("file://"):
        raise ConfigError(f"storage_path: a sweep keeps its trials in a local or shared directory, not "
                          f"{first.storage_path} (train single runs into object storage)")
    sweep_dir = Path(first.storage_path.removeprefix("file://")).expanduser().resolve() / name
    overrides = draw_trials(axes, ranges, opts.samples, opts.seed)
    configs = []
    for i, trial in enumerate(overrides):
        data = apply_overrides(copy.deepcopy(base), [f"{k}={json.dumps(v)}" for k, v in trial.items()])
        data.update(run_name=f"trial-{i:03d}", storage_path=str(sweep_dir), export_on_finish=False)
        cfg = absolute_paths(build(TrainConfig, data))
        check_against_dataset(cfg, read_manifest(cfg.data.path))
        configs.append(to_dict(cfg))
    return name, sweep_dir, overrides, configs


def objective(cfg: Any) -> tuple[str, bool] | None:
    """``(metric, maximize)`` a sweep optimises: ``eval.select``, else the val loss when the
    run evaluates, else None (the winner is then the lowest final train loss)."""
    if cfg.eval.select is not None:
        return cfg.eval.select.metric, cfg.eval.select.maximize
    if cfg.eval_every:
        return "val_loss", False
    return None


def run_sweep(opts: SweepOptions) -> dict[str, Any]:
    """Run every trial on Ray Tune; write ``sweep.json`` and the report; return the summary."""
    import os

    from ftscale.config import TrainConfig, build
    from ftscale.ray_cluster import init_ray
    from ftscale.report_sweep import render_sweep, summarize_sweep
    from ftscale.train.launch import WORKER_ENV

    opts.check()
    name, sweep_dir, overrides, configs = _trial_configs(opts)
    first = build(TrainConfig, configs[0])
    goal = objective(first)
    if opts.asha and goal is None:
        raise ConfigError("--asha: ASHA stops trials on an evaluation metric; set eval_every > 0")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "trials.json").write_text(json.dumps(
        [{"name": c["run_name"], "overrides": o} for c, o in zip(configs, overrides)], indent=2, default=str))
    # A trial's reports carry the objective only at evaluations (checkpoint-only reports lack it).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    init_ray(WORKER_ENV)
    import ray.tune

    scheduler = None
    if opts.asha:
        from ray.tune.schedulers import ASHAScheduler

        assert goal is not None
        scheduler = ASHAScheduler(time_attr="step", max_t=first.max_steps, grace_period=first.eval_every,
                                  reduction_factor=2)
    tuner = ray.tune.Tuner(
        # The trial driver only waits for its Ray Train workers, which hold the CPUs/GPUs. Tune
        # refuses an empty request, and any CPU share could leave an exactly-sized cluster one
        # short for the workers: one byte of memory is a request that always fits.
        ray.tune.with_resources(_trial_fn(configs), {"memory": 1}),
        param_space={"trial": ray.tune.grid_search(list(range(len(configs))))},
        tune_config=ray.tune.TuneConfig(metric=goal[0] if goal else None,
                                        mode=("max" if goal[1] else "min") if goal else None,
                                        scheduler=scheduler, max_concurrent_trials=opts.max_concurrent,
                                        trial_dirname_creator=lambda t: "tune-" + configs[t.config["trial"]]["run_name"]),
        run_config=ray.tune.RunConfig(name="tune", storage_path=str(sweep_dir)),
    )
    grid = tuner.fit()
    errors = {configs[r.config["trial"]]["run_name"]: str(r.error).strip().splitlines()[-1]
              for r in grid if r.error is not None and r.config}
    summary = summarize_sweep(sweep_dir, name, configs, overrides, goal, errors)
    summary["report"] = str(render_sweep(summary, sweep_dir / "report"))
    (sweep_dir / SWEEP_FILE).write_text(json.dumps(summary, indent=2, default=str))
    if len(errors) == len(configs):
        raise FtscaleError(f"every trial of sweep {name} failed; first: {next(iter(errors.values()))}")
    return summary


def _trial_fn(configs: list[dict[str, Any]]) -> Any:
    """The Tune trainable: launch trial ``config["trial"]`` as an ordinary ftscale run."""
    def trial(config: dict[str, Any]) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        from ftscale.config import TrainConfig, build
        from ftscale.train.launch import launch

        launch(build(TrainConfig, configs[config["trial"]]), callbacks=[TuneReportCallback()])

    return trial


def print_sweep(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from ftscale.summary import console

    goal = summary["objective"]
    table = Table(title=f"ftscale sweep {summary['name']} ({len(summary['trials'])} trials)")
    keys = sorted({k for t in summary["trials"] for k in t["overrides"]})
    for col in ("trial", *keys, "steps", "final loss", "val loss", *((goal["metric"],) if goal else ()), "status"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    for t in summary["trials"]:
        mark = " *" if t["name"] == summary["winner"] else ""
        table.add_row(t["name"] + mark, *(str(t["overrides"].get(k, "")) for k in keys), str(t["last_step"]),
                      _fmt(t["final_loss"]), _fmt(t["final_val_loss"]),
                      *((_fmt(t["objective"]),) if goal else ()), t["status"])
    out = console()
    out.print(table)
    out.print(f"winner: {summary['winner'] or 'none'}" + (f" ({summary['winner_reason']})" if summary["winner"] else "")
              + f"\nreport: {summary['report']}")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


__all__ = ["SweepOptions", "draw_trials", "objective", "parse_axes", "print_sweep", "run_sweep"]
