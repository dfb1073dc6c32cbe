"""Preference tuning end to end on a real local Ray cluster with real DeepSpeed (CPU, gloo):
2 workers, ZeRO-2, a tiny LLaMA, hand-built pairs it can learn to rank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ftscale.config import TrainConfig, build
from conftest import tiny_train_config
from pair_datasets import SEQ_LEN, VOCAB, build_pair_dataset, learnable_pairs
from test_train import checkpoint_weights, losses, ray_cluster  # noqa: F401 - the cluster fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def pairs_dataset(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    return build_pair_dataset(tmp_path_factory.mktemp("dpo"), {"prefs": learnable_pairs(rng, 160)},
                              val={"prefs": learnable_pairs(rng, 24)})


def run(dataset: Path, storage: Path, **overrides) -> dict:
    from ftscale.train.launch import launch

    cfg = tiny_train_config(dataset, storage, **{"data.mixture": None, "model.config.vocab_size": VOCAB,
                                                 "model.config.max_position_embeddings": SEQ_LEN,
                                                 "seq_len": SEQ_LEN, "tokens_per_step": 1024, **overrides})
    return launch(build(TrainConfig, cfg))


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_dpo_learns_to_rank_pairs(ray_cluster, pairs_dataset, tmp_path):  # noqa: F811
    summary = run(pairs_dataset, tmp_path, run_name="lora", method="lora", max_steps=16, eval_every=16,
                  checkpoint_every=16, eval_on_start=True, **{"optim.lr": 5e-3, "lora.dropout": 0.0, "preference.beta": 0.5})
    rows = metric_rows(Path(summary["run_dir"]))
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 16
    assert steps[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)  # policy == reference before the first update
    assert abs(steps[0]["rewards/margin"]) < 1e-5
    assert np.mean([r["rewards/accuracy"] for r in steps[-3:]]) > 0.9, [r["rewards/accuracy"] for r in steps]
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.1, [r["loss"] for r in steps]
    evals = [r for r in rows if "val_rewards/accuracy/prefs" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 16
    assert evals[-1]["val_rewards/accuracy/prefs"] > evals[0]["val_rewards/accuracy/prefs"]
    assert evals[-1]["val_rewards/accuracy/prefs"] > 0.9
    assert evals[-1]["val_loss/prefs"] < evals[0]["val_loss/prefs"]


def test_full_ipo_under_zero3_with_a_precomputed_reference_resumes_bit_exactly(ray_cluster, pairs_dataset,  # noqa: F811
                                                                             tmp_path):
    # ZeRO-3 partitions the parameters the reference pass runs on; at step 1 the policy is the
    # reference, so IPO's loss is exactly (0 - 1/(2β))² whatever the pairs. k steps, a relaunch,
    # then N - k steps equal N steps bit for bit (the reference table comes from the checkpoint).
    opts = {"zero_stage": 3, "max_steps": 6, "checkpoint_every": 3,
            **{"preference.loss": "ipo", "preference.beta": 0.1, "optim.lr": 1e-3}}
    full = run(pairs_dataset, tmp_path, run_name="full", **opts)
    first = run(pairs_dataset, tmp_path, run_name="split", stop_at_step=3, **opts)
    assert first["checkpoint"].endswith("checkpoint_0000003")
    assert (Path(first["checkpoint"]) / "ftscale_reference.npz").is_file()
    resumed = run(pairs_dataset, tmp_path, run_name="split", **opts)
    assert resumed["resumed_from"].endswith("checkpoint_0000003")
    curve = losses(Path(full["run_dir"]))
    assert len(curve) == 6 and curve == losses(Path(resumed["run_dir"]))
    assert curve[0] == pytest.approx(25.0, abs=1e-4) and curve[-1] < curve[0]
    a, b = checkpoint_weights(full["checkpoint"]), checkpoint_weights(resumed["checkpoint"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with np.load(Path(full["checkpoint"]) / "ftscale_reference.npz") as last, \
            np.load(Path(first["checkpoint"]) / "ftscale_reference.npz") as early:
        assert set(last.files) == {"train:logps", "train:counts", "val/prefs:logps", "val/prefs:counts"}
        assert all(np.array_equal(last[k], early[k]) for k in last.files)
