"""Task evaluation during training, the forgetting gate and sweeps, on a real local Ray cluster
with real DeepSpeed (CPU, gloo), 2 workers, a tiny LLaMA and a tiny prepared dataset."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import yaml

from ftscale.config import TrainConfig, build
from conftest import sample_texts, tiny_train_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    os.environ["DS_ACCELERATOR"] = "cpu"
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
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


def records(run_dir: str | Path) -> list[dict]:
    from ftscale.report import load_run_metrics

    return load_run_metrics(run_dir).records


def write_tasks(root: Path, dataset: Path) -> Path:
    """Multiple choice (next word of a verse), chat generation (the SFT source's style),
    perplexity of verses and of the first val rows of each source: every task kind."""
    rng = random.Random(0)
    texts = sample_texts(40)[-12:]
    words = sorted({w for t in texts for w in t.split()})
    mc = []
    for t in texts[:7]:
        w = t.split()
        mc.append({"prompt": " ".join(w[:8]), "choices": [w[8], *rng.sample(words, 2)], "answer": 0})
    gen = [{"prompt": f"Tell me about {q}?", "answer": f"The {q}."} for q in
           ("light water", "bread king", "city river", "stone field", "house door")]
    (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (root / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    (root / "ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[7:]))
    (root / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [
        {"name": "next_word", "kind": "multiple_choice", "path": "mc.jsonl"},
        {"name": "chat", "kind": "generate", "path": "gen.jsonl", "metrics": ["exact_match", "rouge_l"],
         "max_new_tokens": 8, "stop": ["\n"]},
        {"name": "verses", "kind": "perplexity", "path": "ppl.jsonl", "window_tokens": 48},
        {"name": "val", "kind": "perplexity", "dataset": str(dataset), "max_items": 5}]}))
    return root / "tasks.yaml"


def test_zero3_in_training_eval_equals_eval_of_the_export(ray_cluster, tiny_dataset, tmp_path):
    from ftscale.eval.command import EvalOptions, run_eval
    from ftscale.train.export import export

    tasks = write_tasks(tmp_path, tiny_dataset)
    summary = run(tiny_dataset, tmp_path, run_name="z3", zero_stage=3, max_steps=3, checkpoint_every=3,
                  eval_every=3, eval_batches=1, **{"eval.tasks": str(tasks), "eval.batch_size": 2})
    in_training = {k: v for k, v in summary["metrics"].items() if k.startswith("task/")}
    assert {"task/next_word/acc", "task/next_word/acc_norm", "task/chat/rouge_l", "task/chat/distinct_1",
            "task/verses/loss", "task/val/bible/loss", "task/val/chat/ppl", "task/acc"} <= in_training.keys()
    step3 = [r for r in records(summary["run_dir"]) if r["step"] == 3][0]
    assert step3["task/verses/loss"] == in_training["task/verses/loss"]

    exported = export(summary["checkpoint"], str(tmp_path / "hf"))
    alone = run_eval(EvalOptions(model=str(exported), tasks=str(tasks), batch_size=3))
    # from the run directory (consolidated once), items sharded over 2 Ray workers
    sharded = run_eval(EvalOptions(model=summary["run_dir"], tasks=str(tasks), batch_size=5, workers=2))
    for key, value in in_training.items():
        assert alone["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-4), key
        assert sharded["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-4), key
    assert len(alone["outputs"]["chat"]) == 5


def test_guard_stops_a_run_that_forgets_and_best_is_within_budget(ray_cluster, tiny_dataset, tmp_path):
    """A model first trained on the verses (`bible`), then fine-tuned on the chat source alone
    at a high learning rate: its verse loss rises until the guard stops the run."""
    from ftscale.report import render_run
    from ftscale.train.export import export

    base = run(tiny_dataset, tmp_path, run_name="base", max_steps=8, checkpoint_every=8,
               **{"data.mixture": {"bible": 1.0}})
    base_model = export(base["checkpoint"], str(tmp_path / "base_model"))
    summary = run(tiny_dataset, tmp_path, run_name="forget", model={"path": str(base_model)}, max_steps=16,
                  eval_every=1, eval_on_start=True, eval_batches=2, checkpoint_every=100, keep_checkpoints=1,
                  **{"data.mixture": {"chat": 1.0}, "optim.lr": 1e-2, "optim.warmup_steps": 0,
                     "eval.select": {"metric": "val_loss/chat", "maximize": False},
                     "eval.guard": {"metric": "val_loss/bible", "max_regression": 0.05, "patience": 2}})
    evals = [r for r in records(summary["run_dir"]) if "guard/regression" in r]
    assert evals[0]["step"] == 0 and evals[0]["guard/regression"] == 0.0
    last = evals[-1]
    assert last.get("guard_stop") and last["step"] < 16, [(r["step"], r["guard/regression"]) for r in evals]
    assert all(r["guard/regression"] > 0.05 for r in evals[-2:])
    best = [r for r in evals if r.get("best")][-1]
    assert best["guard/regression"] <= 0.05
    assert summary["best_checkpoint"].endswith(f"checkpoint_{best['step']:07d}")
    # the best checkpoint survived keep_checkpoints=1 (scored), next to the latest one
    exported = export(summary["run_dir"], str(tmp_path / "best"), best=True)
    assert json.loads((exported / "ftscale_export.json").read_text())["step"] == best["step"]
    page = render_run(summary["run_dir"]).read_text()
    assert "forgetting guard broken" in page and f"step {best['step']}" in page


def test_two_trial_sweep_with_asha_finishes_with_a_report(ray_cluster, tiny_dataset, tmp_path):
    """One trial at a time: lr 1e-2 runs first and finishes; lr 1e-5 barely learns, so its val
    loss is worse at every ASHA rung (steps 2, 4, 8, 16) and ASHA stops it well before step 30
    (a stop takes effect a moment after the decision, hence the steps to spare)."""
    from ftscale.sweep import SweepOptions, run_sweep

    config = tiny_train_config(tiny_dataset, tmp_path, max_steps=30, eval_every=2, eval_batches=1,
                               checkpoint_every=10)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    summary = run_sweep(SweepOptions(config=str(tmp_path / "train.yaml"), overrides=["optim.lr=1e-2,1e-5", "optim.min_lr=1e-6"],
                                     name="lr", asha=True))
    first, second = summary["trials"]
    assert first["overrides"] == {"optim.lr": 0.01} and second["overrides"] == {"optim.lr": 1e-5}
    assert first["status"] == "finished" and first["last_step"] == 30, first
    assert (Path(first["run_dir"]) / "checkpoint_0000030" / "ftscale_run.json").is_file()
    assert second["status"].startswith("stopped by ASHA") and 2 <= second["last_step"] < 30, second
    assert summary["winner"] == "trial-000" and summary["objective"]["metric"] == "val_loss"
    assert first["objective"] < second["objective"]
    page = Path(summary["report"])
    assert page.is_file() and "trial-000 (winner)" in page.read_text() and "trial-001" in page.read_text()
    assert (page.parent / "loss.png").is_file() and (page.parent / "val_loss.png").is_file()
    assert json.loads((tmp_path / "lr" / "sweep.json").read_text())["winner"] == "trial-000"
