"""Training on a real local Ray cluster with real DeepSpeed (CPU, gloo), 2 workers, tiny LLaMA."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from ftscale.config import TrainConfig, build
from conftest import tiny_train_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    os.environ["DS_ACCELERATOR"] = "cpu"
    ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False)
    # Ray Train's helper processes must find this cluster even if another one is running.
    previous = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = previous


def run(dataset: Path, storage: Path, **overrides) -> dict:
    from ftscale.train.launch import launch

    return launch(build(TrainConfig, tiny_train_config(dataset, storage, **overrides)))


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in rows if "loss" in r}
    return [by_step[s] for s in sorted(by_step)]


def checkpoint_weights(ckpt: str) -> dict[str, torch.Tensor]:
    from ftscale.train.export import fp32_state_dict

    return fp32_state_dict(Path(ckpt))


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_zero_stages_train_and_loss_falls(ray_cluster, tiny_dataset, tmp_path, stage):
    summary = run(tiny_dataset, tmp_path, run_name=f"zero{stage}", zero_stage=stage, max_steps=8,
                  checkpoint_every=8, eval_every=8)
    curve = losses(Path(summary["run_dir"]))
    assert len(curve) == 8
    assert sum(curve[-2:]) / 2 < sum(curve[:2]) / 2 - 0.3, curve
    assert "val_loss/bible" in summary["metrics"] and "val_loss/chat" in summary["metrics"]
    weights = checkpoint_weights(summary["checkpoint"])
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_resume_is_bit_exact_and_elastic(ray_cluster, tiny_dataset, tmp_path):
    full = run(tiny_dataset, tmp_path, run_name="full")
    first = run(tiny_dataset, tmp_path, run_name="split", stop_at_step=3)
    assert first["checkpoint"].endswith("checkpoint_0000003")
    shutil.copytree(tmp_path / "split", tmp_path / "elastic")
    shutil.copytree(tmp_path / "split", tmp_path / "grown")
    resumed = run(tiny_dataset, tmp_path, run_name="split")
    assert resumed["resumed_from"].endswith("checkpoint_0000003")
    assert losses(Path(full["run_dir"])) == losses(Path(resumed["run_dir"]))
    a, b = checkpoint_weights(full["checkpoint"]), checkpoint_weights(resumed["checkpoint"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The same ZeRO-2 checkpoint on 1 worker (DeepSpeed's universal form; accumulation 2 -> 4): the
    # same global batch and data sequence, so the same curve up to the order of float sums.
    elastic = run(tiny_dataset, tmp_path, run_name="elastic", num_workers=1)
    assert json.loads((Path(elastic["checkpoint"]) / "ftscale_run.json").read_text())["world_size"] == 1
    assert losses(tmp_path / "elastic") == pytest.approx(losses(Path(full["run_dir"])), rel=1e-4)
    c = checkpoint_weights(elastic["checkpoint"])
    assert all(torch.allclose(a[k], c[k], rtol=1e-3, atol=1e-5) for k in a)
    assert not (tmp_path / "elastic" / ".ftscale-universal" / "checkpoint_0000003").exists()  # removed once loaded
    # And on 4 workers (accumulation 2 -> 1).
    grown = run(tiny_dataset, tmp_path, run_name="grown", num_workers=4)
    assert json.loads((Path(grown["checkpoint"]) / "ftscale_run.json").read_text())["world_size"] == 4
    assert losses(tmp_path / "grown") == pytest.approx(losses(Path(full["run_dir"])), rel=1e-4)
    d = checkpoint_weights(grown["checkpoint"])
    assert all(torch.allclose(a[k], d[k], rtol=1e-3, atol=1e-5) for k in a)


def test_torn_checkpoints_are_skipped_by_export_and_resume(ray_cluster, tiny_dataset, tmp_path, capsys):
    from ftscale.train.export import export

    summary = run(tiny_dataset, tmp_path, run_name="torn", max_steps=4, checkpoint_every=1)
    run_dir = Path(summary["run_dir"])
    first_losses = losses(run_dir)
    (run_dir / "checkpoint_0000004" / "ftscale_commit.json").unlink()  # interrupted before its commit
    shard = run_dir / "checkpoint_0000003" / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum sees it
    shard.write_bytes(bytes(data))
    out = export(str(run_dir), str(tmp_path / "hf"))
    assert json.loads((out / "ftscale_export.json").read_text())["step"] == 2
    err = capsys.readouterr().err
    assert "skipping checkpoint_0000004: no commit marker" in err
    assert "skipping checkpoint_0000003: ds/zero_pp_rank_1_mp_rank_00_optim_states.pt does not match" in err
    again = run(tiny_dataset, tmp_path, run_name="torn", max_steps=4, checkpoint_every=1)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    replayed = [r["loss"] for r in rows if "loss" in r][4:]
    assert replayed == first_losses[2:]  # resumed from step 2, bit-exactly
    assert again["checkpoint"].endswith("checkpoint_0000004")
    assert json.loads((Path(again["checkpoint"]) / "ftscale_commit.json").read_text())["step"] == 4


def test_killed_worker_resumes_automatically(ray_cluster, tiny_dataset, tmp_path):
    reference = run(tiny_dataset, tmp_path, run_name="reference", max_steps=8, checkpoint_every=2)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        run(tiny_dataset, tmp_path, run_name="victim", max_steps=8, checkpoint_every=2)))
    thread.start()
    victim_dir = tmp_path / "victim"
    deadline = time.time() + 300
    while not (victim_dir / "checkpoint_0000004" / "ftscale_commit.json").exists():
        assert time.time() < deadline and thread.is_alive(), "run did not reach step 4"
        time.sleep(0.5)
    pids = [int(line.split()[0]) for line in subprocess.run(
        ["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
        if "RayTrainWorker" in line and "victim" not in line]
    assert pids, "no Ray Train worker process found"
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive() and result, "the run did not finish after the worker was killed"
    assert losses(victim_dir)[-1] == losses(Path(reference["run_dir"]))[-1]
    a, b = checkpoint_weights(reference["checkpoint"]), checkpoint_weights(result["checkpoint"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_loads_in_plain_transformers(ray_cluster, tiny_dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftscale.train.export import export

    summary = run(tiny_dataset, tmp_path, run_name="exp", zero_stage=3, max_steps=3)
    out = export(summary["checkpoint"], str(tmp_path / "hf"))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    trained = checkpoint_weights(summary["checkpoint"])
    state = model.state_dict()
    for k, v in trained.items():
        assert torch.equal(state[k].float(), v), k
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("In the beginning", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 5


def test_lora_changes_only_adapters_and_adapter_loads(ray_cluster, tiny_dataset, tmp_path):
    from peft import PeftModel

    from ftscale.train.export import export
    from ftscale.train.model import load_model

    cfg = tiny_train_config(tiny_dataset, tmp_path, run_name="lora", method="lora", max_steps=4,
                            **{"lora.r": 4, "lora.alpha": 8.0, "lora.dropout": 0.0})
    summary = run(tiny_dataset, tmp_path, **{k: v for k, v in cfg.items() if k not in ("data", "storage_path")})
    trained = checkpoint_weights(summary["checkpoint"])
    base = load_model(None, cfg["model"]["config"], seed=0).state_dict()
    lora_keys = [k for k in trained if "lora_" in k]
    assert lora_keys and any(not torch.equal(trained[k], torch.zeros_like(trained[k]))
                             for k in lora_keys if "lora_B" in k)
    for k, v in trained.items():
        if "lora_" in k:
            continue
        name = k.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(v, base[name].float()), f"frozen weight {name} changed"
    adapter = export(summary["checkpoint"], str(tmp_path / "adapter"))
    assert (adapter / "adapter_config.json").exists()
    model = PeftModel.from_pretrained(load_model(None, cfg["model"]["config"], seed=0), str(adapter))
    merged = export(summary["checkpoint"], str(tmp_path / "merged"), merge_lora=True)
    assert (merged / "config.json").exists() and not (merged / "adapter_config.json").exists()
    assert sum(1 for n, _ in model.named_parameters() if "lora_" in n) == len(lora_keys)
