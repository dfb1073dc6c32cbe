"""benchmarks/gpu_check.py on CPU: every check of the GPU readiness script runs in its reduced
form (``--cpu-smoke``), so the script is known to work before a GPU is lent. What only a GPU
shows (flash-attn, CUDA peak memory, MFU against a datasheet peak) is reported as such."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
# --cpu-smoke's order: one process runs every check, the HF peer before the recipe's checks
ORDER = ["env", "parity_tiny", "parity_1b", "data", "throughput_hf", "qlora", "throughput_ftscale", "plan",
         "determinism"]

pytestmark = pytest.mark.integration


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cpu_smoke_runs_every_check(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = _run("--cpu-smoke", "--work-dir", str(tmp_path / "work"), "--json", str(out), "--budget-s", "400")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in ORDER:  # one line per check
        assert sum(line.split()[1:2] == [name] for line in lines) == 1, (name, proc.stdout)
    report = json.loads(out.read_text())
    c = report["checks"]
    assert report["finished"] and report["mode"] == "cpu-smoke" and list(c) == ORDER
    assert c["qlora"]["status"] == "ok" and c["qlora"]["cuda"] is False  # on CPU: the trainer's one-line refusal
    assert "needs a CUDA GPU" in c["qlora"]["error"]

    assert c["env"]["status"] == "ok" and c["env"]["cuda"] is False and c["env"]["peak_tflops"] is None
    assert c["env"]["flash_attn"] is False and c["env"]["sdpa_gqa_backends"]["MATH"] == "ok"

    for name, dtype in (("parity_tiny", "bfloat16"), ("parity_1b", "float32")):
        p = c[name]
        assert p["status"] == "ok" and p["dtype"] == dtype and p["flash_attention_2"] == "needs CUDA", p["summary"]
        assert set(p["variants"]) == {"sdpa_segments", "cross_document_control"}
        seg, leak, tol = p["variants"]["sdpa_segments"], p["variants"]["cross_document_control"], p["tolerance"]
        assert seg["hidden_rel"] <= tol["hidden_rel"] and seg["grad_rel"] <= tol["grad_rel"]
        assert leak["hidden_rel"] > 10 * tol["hidden_rel"] and leak["grad_rel"] > 10 * tol["grad_rel"]
        assert p["loss_tokens"] > 0 and p["documents"] == 13

    assert c["data"]["status"] == "ok" and c["data"]["documents"] == 80 and c["data"]["tokens"] > 0
    hf, ours = c["throughput_hf"], c["throughput_ftscale"]
    assert hf["status"] == "ok" and hf["real_tokens_per_s"] > 0 and 0 < hf["padding_fraction"] < 1
    assert hf["attn_implementation"] == "sdpa" and hf["steps"] == 2 and hf["mfu"] is None
    assert ours["status"] == "ok" and ours["tokens_per_s"] > 0 and ours["mfu"] is None
    assert ours["attn_implementation"] == "sdpa_segments" and ours["precision"] == "fp32"
    assert len(ours["losses"]) == 2 and all(0 < loss < 10 for loss in ours["losses"])
    assert ours["planned_total_bytes"] > 0 and ours["peak_allocated_bytes"] is None
    assert report["throughput_ratio"] == pytest.approx(ours["tokens_per_s"] / hf["real_tokens_per_s"])

    plan = c["plan"]
    assert plan["status"] == "ok" and [x["config"] for x in plan["configs"]] == ["full", "full + grad ckpt", "lora"]
    assert all(x["planned_bytes"] > 0 and x["measured_bytes"] is None for x in plan["configs"])
    assert plan["target_met"] is None  # the measured peak needs CUDA

    det = c["determinism"]
    assert det["status"] == "ok" and det["identical"] and det["max_loss_diff"] == 0.0
    assert det["losses"][0] == det["losses"][1] and len(det["losses"][0]) == 3

    # The README table renders every cell from these results; a CPU smoke run is refused as GPU results.
    sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "python")]
    import gpu_check

    table = gpu_check.render_table(report)
    assert "not run yet" not in table and "sdpa_segments" in table and "real tokens/s" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{gpu_check.README_START}\nold\n{gpu_check.README_END}\noutro\n")
    assert _run("--write-readme", "--json", str(out), "--readme", str(readme)).returncode == 2
    as_gpu = tmp_path / "as-gpu.json"
    as_gpu.write_text(json.dumps({**report, "mode": "full"}, default=str))
    written = _run("--write-readme", "--json", str(as_gpu), "--readme", str(readme))
    assert written.returncode == 0, written.stderr
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old" not in text
    assert gpu_check.render_table({**report, "mode": "full"}) in text


def test_deadline_skips_and_a_killed_check_leave_a_finished_json(tmp_path: Path) -> None:
    """A zero budget skips every check with its reason; a check killed at its cap is
    reported as a timeout, those after it as not started, and the JSON is still complete."""
    out = tmp_path / "skip.json"
    proc = _run("--cpu-smoke", "--work-dir", str(tmp_path / "w1"), "--json", str(out), "--budget-s", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = json.loads(out.read_text())["checks"]
    for name in ORDER:
        reason = "needs data" if name in ORDER[ORDER.index("data") + 1:] else "global deadline"
        assert checks[name]["status"] == "skipped" and reason in checks[name]["summary"], name

    out = tmp_path / "killed.json"
    proc = _run("--cpu-smoke", "--work-dir", str(tmp_path / "w2"), "--json", str(out), "--check-cap-s", "0.5")
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    statuses = [report["checks"][n]["status"] for n in ORDER]
    assert report["finished"] and statuses.count("timeout") == 1
    killed = statuses.index("timeout")
    assert all(s in ("ok", "not_built") for s in statuses[:killed])
    assert all(s == "skipped" for s in statuses[killed + 1:])
