"""Runs where users keep them: object storage (a real S3 API served by moto on loopback) and
file:// URIs, experiment trackers (W&B offline, MLflow to a local file store), the peft
family under ZeRO-2/3 with the optimizer offloaded to CPU, and a Hub id from a local cache —
each through the real `ftscale train` path (Ray Train + DeepSpeed on CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import tiny_train_config
from ftscale.config import TrainConfig, build

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "ftscale-test"
HUB_ID = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """A moto S3 server on 127.0.0.1, a Hub cache holding the tiny model, then a local Ray
    cluster whose workers inherit that environment."""
    import boto3
    import ray
    from moto.server import ThreadedMotoServer

    from hub_cache import fill_hub_cache
    from ftscale.train.model import load_model

    root = tmp_path_factory.mktemp("eco")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    model_dir = root / "model"
    load_model(None, tiny_train_config(root, root)["model"]["config"], seed=0).save_pretrained(model_dir)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "MLFLOW_ALLOW_FILE_STORE": "true",
           "HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true", "DS_ACCELERATOR": "cpu"}
    previous = {k: os.environ.get(k) for k in [*env, "RAY_ADDRESS"]}
    os.environ.update(env)
    fill_hub_cache(root / "hub", HUB_ID, model_dir)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield {"root": root, "model_config": tiny_train_config(root, root)["model"]["config"]}
    ray.shutdown()
    server.stop()
    for k, v in previous.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def s3_keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def s3_text(key: str) -> str:
    import boto3

    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def steps_logged(metrics_jsonl: str) -> list[int]:
    return [r["step"] for r in map(json.loads, metrics_jsonl.splitlines()) if "loss" in r]


def launch(cfg: dict) -> dict:
    from ftscale.train.launch import launch as run

    return run(build(TrainConfig, cfg))


def test_s3_run_dora_zero2_offload_trackers_resume_export_report(services, tiny_dataset, tmp_path):
    """DoRA, ZeRO-2 with the optimizer offloaded to CPU, checkpoints and metrics in S3, W&B
    offline and MLflow; the relaunch resumes from S3; export and report read the run there."""
    import mlflow
    from peft import PeftModel

    from ftscale.report import render
    from ftscale.train.export import export
    from ftscale.train.model import load_model
    from ftscale.train.storage import download
    from ftscale.train.tracking import wandb_run_id

    storage = f"s3://{BUCKET}/runs"
    mlruns = f"file://{tmp_path / 'mlruns'}"
    cfg = tiny_train_config(tiny_dataset, tmp_path, run_name="dora", storage_path=storage, method="dora",
                            zero_stage=2, offload_optimizer=True, max_steps=6, stop_at_step=4, checkpoint_every=2,
                            **{"lora.r": 4, "lora.alpha": 8.0, "lora.dropout": 0.0,
                               "logging.wandb": {"project": "ftscale-test", "mode": "offline", "dir": str(tmp_path)},
                               "logging.mlflow": {"tracking_uri": mlruns, "experiment": "eco"}})
    first = launch(cfg)
    assert first["checkpoint"] == f"{storage}/dora/checkpoint_0000004"
    keys = s3_keys("runs/dora/")
    assert {"runs/dora/checkpoint_0000002/ftscale_run.json", "runs/dora/checkpoint_0000004/ftscale_run.json",
            "runs/dora/metrics.jsonl"} <= set(keys), keys
    # committed in the store as in a local run: each rank's file list, then rank 0's marker
    for step in (2, 4):
        marker = json.loads(s3_text(f"runs/dora/checkpoint_000000{step}/ftscale_commit.json"))
        assert marker["step"] == step and marker["world_size"] == 2
        assert {f"ftscale_rng_rank{r}.json" for r in (0, 1)} <= set(marker["files"])
    assert any(k.startswith("runs/dora/tensorboard/") for k in keys)
    assert steps_logged(s3_text("runs/dora/metrics.jsonl")) == [1, 2, 3, 4]
    assert not any(Path(p).exists() for p in (tmp_path / "dora", Path("runs") / "dora"))  # nothing written locally

    cfg["stop_at_step"] = None
    resumed = launch(cfg)
    assert resumed["resumed_from"] == f"{storage}/dora/checkpoint_0000004"
    assert steps_logged(s3_text("runs/dora/metrics.jsonl")) == [1, 2, 3, 4, 5, 6]

    # W&B offline: one run id for both launches, its log holds the metrics; MLflow: a run per launch
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{wandb_run_id(f'{storage}/dora')}"))
    assert len(runs) == 2 and all(b"tokens_per_s" in next(r.glob("*.wandb")).read_bytes() for r in runs)
    client = mlflow.tracking.MlflowClient(tracking_uri=mlruns)
    experiment = client.get_experiment_by_name("eco")
    found = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    assert [r.info.run_name for r in found] == ["dora", "dora"]
    history = [[m.step for m in client.get_metric_history(r.info.run_id, "loss")] for r in found]
    assert sorted(history[0]) == [1, 2, 3, 4] and sorted(history[1]) == [5, 6]
    assert found[0].data.params["method"] == "dora" and found[0].data.params["offload_optimizer"] == "True"

    out = export(f"{storage}/dora", f"s3://{BUCKET}/exports/dora")
    assert out == f"s3://{BUCKET}/exports/dora"
    assert "exports/dora/adapter_config.json" in s3_keys("exports/dora/")
    local = download(out, tmp_path / "adapter")
    assert json.loads((local / "adapter_config.json").read_text())["use_dora"] is True
    model = PeftModel.from_pretrained(load_model(None, services["model_config"], seed=0), str(local))
    assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())

    html = render(f"{storage}/dora", tmp_path / "report")
    assert html.name == "index.html" and html.is_file()


def test_file_uri_ia3_zero3_offload_from_a_hub_id(services, tiny_dataset, tmp_path):
    """IA3 under ZeRO-3 with the optimizer offloaded to CPU, the model given as a Hub id from
    the local cache, the run under a file:// URI; the adapter loads in plain peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftscale.train.export import export

    cfg = tiny_train_config(tiny_dataset, tmp_path, run_name="ia3", storage_path=f"file://{tmp_path}/runs",
                            method="ia3", zero_stage=3, offload_optimizer=True, max_steps=2, checkpoint_every=2,
                            model={"path": HUB_ID}, optim={"lr": 0.3, "min_lr": 0.03, "warmup_steps": 1})
    summary = launch(cfg)
    run = tmp_path / "runs" / "ia3"
    assert summary["checkpoint"] == str(run / "checkpoint_0000002")
    saved = json.loads((run / "checkpoint_0000002" / "ftscale_run.json").read_text())["config"]["model"]["path"]
    assert saved.startswith(f"{HUB_ID}@")  # pinned to the cached commit
    adapter = Path(export(str(run), str(tmp_path / "adapter")))
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "IA3"
    base_dir = services["root"] / "model"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter))
    scales = [p for n, p in model.named_parameters() if "ia3_l" in n]
    assert scales and any(not torch.equal(p, torch.ones_like(p)) for p in scales)  # trained away from identity
    merged = Path(export(str(run), str(tmp_path / "merged"), merge_lora=True))
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()


@pytest.mark.parametrize(("method", "zero_stage"), [("prompt_tuning", 3), ("prefix_tuning", 2)])
def test_prompt_and_prefix_tuning_train_packed_and_export_to_plain_peft(services, tiny_dataset, tmp_path, method,
                                                                       zero_stage):
    """Prompt tuning (ZeRO-3) and prefix tuning (ZeRO-2) on packed rows, attention forced to
    sdpa from auto; validation before and after; the exported adapter holds the trained
    virtual tokens and loads in plain peft; merging is refused."""
    from peft import PeftModel

    from ftscale.errors import ConfigError
    from ftscale.train.export import export, fp32_state_dict
    from ftscale.train.model import load_model

    cfg = tiny_train_config(tiny_dataset, tmp_path, run_name=method, method=method, zero_stage=zero_stage,
                            max_steps=2, checkpoint_every=2, eval_every=2, eval_on_start=True, eval_batches=2,
                            optim={"lr": 0.3, "min_lr": 0.03, "warmup_steps": 1},
                            **{"peft.num_virtual_tokens": 8})
    summary = launch(cfg)
    run = tmp_path / method
    assert summary["checkpoint"] == str(run / "checkpoint_0000002")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    vals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in vals] == [0, 2]
    assert vals[1]["val_loss"] < vals[0]["val_loss"], vals  # the virtual tokens learned

    adapter = Path(export(str(run), str(tmp_path / "adapter")))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == method.upper() and config["num_virtual_tokens"] == 8
    trained = fp32_state_dict(run / "checkpoint_0000002")["peft_model.prompt_encoder.default.embedding.weight"]
    model = PeftModel.from_pretrained(load_model(None, services["model_config"], seed=0), str(adapter))
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, trained)
    with torch.no_grad():
        ids = torch.arange(1, 17)[None]
        logits = model(input_ids=ids).logits[:, -16:]
        assert torch.isfinite(logits).all()
        assert (logits - model.get_base_model()(input_ids=ids).logits).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="nothing to merge"):
        export(str(run), str(tmp_path / "merged"), merge_lora=True)
