"""Experiment trackers through Ray's own integrations, outside a training run: MLflow to a local
file store, W&B offline, and the one-line error for W&B online without an API key."""

from __future__ import annotations

import pytest

from ftscale.config import TrainConfig, build
from ftscale.errors import ConfigError
from ftscale.train.tracking import MAX_PARAM_CHARS, Trackers, flat_params, wandb_run_id

BASE = {"data": {"path": "data/x"}, "model": {"path": "models/m"}, "run_name": "tracked"}


def test_params_are_the_scalar_leaves_by_dotted_key() -> None:
    params = flat_params({"optim": {"lr": 2e-4, "betas": [0.9, 0.95]}, "seed": 0, "resume": None,
                          "model": {"config": {"blob": "x" * (MAX_PARAM_CHARS + 1)}}})
    assert params == {"optim.lr": 2e-4, "optim.betas": [0.9, 0.95], "seed": 0}


def test_the_wandb_id_is_the_same_for_every_launch_of_a_run() -> None:
    assert wandb_run_id("s3://b/runs/a") == wandb_run_id("s3://b/runs/a")
    assert wandb_run_id("s3://b/runs/a") != wandb_run_id("s3://b/runs/b")


def test_mlflow_gets_params_and_metrics_by_step(tmp_path, monkeypatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path / 'mlruns'}"
    cfg = build(TrainConfig, {**BASE, "logging": {"mlflow": {"tracking_uri": uri, "experiment": "unit",
                                                              "tags": {"team": "ft"}}}})
    trackers = Trackers(cfg, str(tmp_path / "run"), {"optim": {"lr": 1e-3}, "method": "lora"})
    trackers.log({"step": 1, "loss": 2.5}, step=1)
    trackers.log({"step": 2}, step=2)  # nothing but the step: nothing sent
    trackers.log({"step": 3, "loss": 2.0, "lr": 1e-3}, step=3)
    trackers.close()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert run.info.run_name == "tracked" and run.data.tags["team"] == "ft"
    assert run.data.params == {"optim.lr": "0.001", "method": "lora"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(1, 2.5), (3, 2.0)]


def test_wandb_offline_writes_a_local_run_without_an_api_key(tmp_path, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no login to fall back on
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = build(TrainConfig, {**BASE, "logging": {"wandb": {"project": "unit", "mode": "offline",
                                                            "dir": str(tmp_path)}}})
    trackers = Trackers(cfg, "runs/tracked", {"seed": 0})
    trackers.log({"step": 1, "loss": 2.5}, step=1)
    trackers.close()
    wandb.teardown()  # the service writes the run file out as it shuts down (at exit in a worker)
    (run,) = (tmp_path / "wandb").glob(f"offline-run-*-{wandb_run_id('runs/tracked')}")
    assert b"loss" in next(run.glob("*.wandb")).read_bytes()


def test_wandb_online_without_an_api_key_is_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SETUP_API_KEY_HOOK", raising=False)
    cfg = build(TrainConfig, {**BASE, "logging": {"wandb": {"project": "unit"}}})
    with pytest.raises(ConfigError, match=r"^logging\.wandb: no W&B API key .* or use mode: offline$"):
        Trackers(cfg, "runs/tracked", {})
