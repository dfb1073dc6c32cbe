"""Experiment trackers of a run (``logging.wandb``, ``logging.mlflow``), fed by rank 0 with the
same metrics as ``metrics.jsonl``. Sessions are opened with Ray's own integrations
(``ray.air.integrations.wandb.setup_wandb``, ``...mlflow.setup_mlflow``) on rank 0 only.

W&B: one run per ftscale run — its id is derived from the run directory, so a relaunch that
resumes the run continues the same W&B run. MLflow: one run per launch in the experiment,
named after ``run_name``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ftscale.errors import ConfigError

MAX_PARAM_CHARS = 500  # longer config values (inline model configs, task lists) are not logged as params


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 2e-4, ...}``: the config's scalar leaves by dotted key, for trackers'
    parameter tables (None and long values left out)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        elif value is not None and len(str(value)) <= MAX_PARAM_CHARS:
            out[name] = value
    return out


def wandb_run_id(run_dir: str) -> str:
    """A W&B run id that is the same for every launch of the run in ``run_dir``."""
    return hashlib.sha256(run_dir.encode()).hexdigest()[:16]


class Trackers:
    """The trackers configured in ``cfg.logging`` (none: every method is a no-op)."""

    def __init__(self, cfg: Any, run_dir: str, params: dict[str, Any]) -> None:
        self.wandb: Any = None
        self.mlflow: Any = None
        flat = flat_params(params)
        if cfg.logging.wandb is not None:
            self.wandb = _open_wandb(cfg.logging.wandb, cfg.run_name, run_dir, flat)
        if cfg.logging.mlflow is not None:
            self.mlflow = _open_mlflow(cfg.logging.mlflow, cfg.run_name, flat)

    def log(self, metrics: dict[str, float], step: int) -> None:
        values = {k: v for k, v in metrics.items() if k != "step"}
        if not values:
            return
        if self.wandb is not None:
            self.wandb.log(values, step=step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.mlflow is not None:
            self.mlflow.end_run()
            self.mlflow = None


def _open_wandb(w: Any, run_name: str, run_dir: str, params: dict[str, Any]) -> Any:
    try:
        from ray.air.integrations.wandb import setup_wandb
    except ImportError as e:
        raise ConfigError("logging.wandb: needs the wandb package (pip install 'ftscale[tracking]')") from e
    kwargs: dict[str, Any] = {"project": w.project, "mode": w.mode, "name": run_name, "id": wandb_run_id(run_dir),
                              "tags": list(w.tags)}
    for key in ("entity", "group", "dir"):
        if getattr(w, key) is not None:
            kwargs[key] = getattr(w, key)
    if w.mode != "online":
        # Ray asks for an API key unless WANDB_MODE says offline/disabled (this rank-0 process only)
        os.environ["WANDB_MODE"] = w.mode
    try:
        return setup_wandb(config=params, rank_zero_only=False, **kwargs)
    except RuntimeError as e:  # Ray's "Wandb was not found"
        raise ConfigError(f"logging.wandb: {e}") from e
    except ValueError as e:  # Ray's "No WandB API key found"
        raise ConfigError("logging.wandb: no W&B API key on the rank-0 worker; run `wandb login` there, set "
                          "WANDB_API_KEY in its environment, or use mode: offline") from e


def _open_mlflow(m: Any, run_name: str, params: dict[str, Any]) -> Any:
    try:
        from ray.air.integrations.mlflow import setup_mlflow
    except ImportError as e:
        raise ConfigError("logging.mlflow: needs the mlflow package (pip install 'ftscale[tracking]')") from e
    try:
        return setup_mlflow(config=params, tracking_uri=m.tracking_uri, experiment_name=m.experiment,
                            run_name=run_name, create_experiment_if_not_exists=True, tags=dict(m.tags),
                            rank_zero_only=False)
    except RuntimeError as e:  # Ray's "mlflow was not found"
        raise ConfigError(f"logging.mlflow: {e}") from e
