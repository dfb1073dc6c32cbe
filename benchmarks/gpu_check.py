"""GPU readiness: one command that exercises ftscale's GPU-only paths on one H100/H200 in
under 8 minutes from a cold start, one line per check, results in ``benchmarks/results/gpu.json``.

    python benchmarks/gpu_check.py                # full, ~7.5 min budget on an H200
    python benchmarks/gpu_check.py --quick        # ~4.5 min: fewer steps, one planner configuration
    python benchmarks/gpu_check.py --cpu-smoke    # every check, tiny, on CPU (tests/integration runs it)
    python benchmarks/gpu_check.py --write-readme # README "GPU results" table from benchmarks/results/gpu.json

Checks, in order (H200 seconds estimated, imports and model initialisation included):
  env                 versions, GPU, datasheet bf16 peak, flash-attn status, measured bf16 matmul TFLOP/s (20 s)
  parity_tiny         packed rows: flash_attention_2 varlen and sdpa_segments vs each document alone (loss,
  parity_1b           hidden states, gradients, bf16 tolerance) + a cross-document control; tiny / ~1B (20 s / 45 s)
  data                CPT documents with log-normal lengths through `ftscale prep` (30 s)
  qlora               ~0.2B saved model as a 4-bit NF4 base + LoRA, 8 steps, adapter loads in peft (25 s, estimated;
                      skipped without bitsandbytes; on CPU: the trainer's refusal is checked)
  throughput_ftscale  ~1B Llama, bf16, packed 4x4096, ZeRO-2, one GPU: real tokens/s and MFU (90 s)
  throughput_hf       the named peer, HF Trainer + dynamic padding, same model, documents, slots (75 s)
  plan                `ftscale plan` vs torch.cuda.max_memory_allocated: full, full + grad ckpt, LoRA (110 s)
  determinism         two identical short runs: max loss difference, non-deterministic kernels (60 s)
Each check runs in its own child process (its own GPU memory; killed at its cap or at the
global deadline); a check that would not fit in the time left is skipped with the reason.
The JSON is rewritten after every check, so a killed run still leaves what it measured.
Nothing is downloaded: models are random inits of configs, data is generated, HF is offline.
Exit status: 0 when no check failed, errored or timed out; 1 otherwise; 2 on bad usage.

Install on the GPU machine
--------------------------
With network: the project's own install (``make install``: ftscale with its [train,test]
extras, DeepSpeed); then, optionally, ``pip install flash-attn --no-build-isolation``.
PyPI has no flash-attn wheel (its 77 files up to 2.8.3.post2 are all sdists); the sdist's
setup downloads a prebuilt wheel from the project's GitHub releases when one matches the
installed torch, CUDA and Python, and otherwise compiles CUDA for tens of minutes. Without
flash-attn, packed rows run with sdpa_segments and every check says so and why.

This workplace's lent H200 has no network; its python3 (3.12) has torch, transformers 5.17,
peft, accelerate, pyarrow, tokenizers, but no DeepSpeed, zstandard or Ray. Ray is not needed
(the checks drive the trainer's per-worker recipe directly: recipe_harness.py); the rest
travels as wheels, with the project's compiled extension:

    bash benchmarks/gpu_wheels.sh                 # here, once: fills .whl/ (git-ignored, ~25 MB)
    # device run: carry [".whl", "python/ftscale/_core.abi3.so"], timeout_s 540, command:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
      .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/python || exit; \\
      PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --json $OUT/gpu.json --work-dir /tmp/gc; \\
      rc=$?; tar czf $OUT/logs.tgz -C /tmp/gc logs; exit $rc
    # then here: copy gpu.json from the run's files to benchmarks/results/gpu.json and
    python benchmarks/gpu_check.py --write-readme
The full run leaves too little of the 15 device minutes for a second full one; rerun with
--quick (or a subset of fixes) if the first run breaks early. The children's logs are in
logs.tgz; every error's traceback and every timeout's log tail are in gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "python"), str(BENCH)]
from gpu_checks import CHECK_ORDER, CHECKS, IN_PARENT, MODES, SHARED_PROCESS_ORDER, Context, skip_reason  # noqa: E402

DEFAULT_JSON = BENCH / "results" / "gpu.json"
README = REPO / "README.md"
README_START, README_END = "<!-- gpu-results:start -->", "<!-- gpu-results:end -->"
GRACE_S = 15.0  # a child may finish this long after the global deadline before it is killed
POLL_S = 0.5
FAILED = ("fail", "error", "timeout")
CHILD_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def write_json(path: Path, data: Any) -> None:
    """Atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def print_line(name: str, result: dict[str, Any]) -> None:
    seconds = result.get("seconds")
    took = f"  [{seconds:.0f} s]" if isinstance(seconds, (int, float)) else ""
    print(f"{result['status'].upper():<9} {name:<19} {result.get('summary', '')}{took}", flush=True)
    if "traceback" in result:  # the JSON has it whole; the console gets where it broke
        print("\n".join("    " + line for line in result["traceback"].strip().splitlines()[-6:]), flush=True)


class Run:
    """One orchestrated run: the report, its JSON file, the children."""

    def __init__(self, mode: str, budget_s: float, json_path: Path, work: Path) -> None:
        self.mode, self.json_path, self.work = mode, json_path, work
        self.start = time.time()
        self.ctx = Context(mode, MODES[mode], work, self.start + budget_s)
        self.report: dict[str, Any] = {
            "schema": 1, "mode": mode, "budget_s": budget_s, "finished": False, "work_dir": str(work),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "checks": self.ctx.results}

    def record(self, name: str, result: dict[str, Any]) -> None:
        self.ctx.results[name] = result
        self.report["elapsed_s"] = time.time() - self.start
        write_json(self.json_path, self.report)
        print_line(name, result)

    def run(self, check_cap_s: float | None) -> int:
        for name in IN_PARENT:
            self.record(name, run_check(name, self.ctx))
        # On a GPU every check gets a fresh process (its own memory, killable); on CPU one
        # child runs them all (the imports alone take ~15 s on this project's 2-core machines).
        if self.mode == "cpu-smoke":
            groups = [list(SHARED_PROCESS_ORDER)]
        else:
            groups = [[n] for n in CHECK_ORDER if n not in IN_PARENT]
        for group in groups:
            reason = skip_reason(group[0], self.ctx, time.time())
            if reason is not None and len(group) == 1:
                self.record(group[0], {"status": "skipped", "summary": reason})
                continue
            self.run_child(group, check_cap_s)
        self.add_ratio()
        self.report.update(finished=True, elapsed_s=time.time() - self.start)
        write_json(self.json_path, self.report)
        bad = [n for n, r in self.ctx.results.items() if r["status"] in FAILED]
        print(f"{len(self.ctx.results)} checks in {self.report['elapsed_s']:.0f} s; "
              + (f"not passed: {', '.join(bad)}" if bad else "none failed") + f"; {self.json_path}", flush=True)
        return 1 if bad else 0

    def run_child(self, names: list[str], check_cap_s: float | None) -> None:
        tag = names[0] if len(names) == 1 else "all"
        results_file, log_file = self.work / f"child-{tag}.json", self.work / "logs" / f"{tag}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(names), "--mode", self.mode,
               "--work-dir", str(self.work), "--results", str(results_file), "--prior", str(self.json_path),
               "--deadline", repr(self.ctx.deadline)]
        env = {**os.environ, **CHILD_ENV, "DS_ACCELERATOR": self.ctx.device,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "python"), str(BENCH),
                                                           os.environ.get("PYTHONPATH")]))}
        kill_at = self.ctx.deadline + GRACE_S
        if check_cap_s is not None:
            kill_at = min(kill_at, time.time() + check_cap_s)
        elif len(names) == 1:
            kill_at = min(kill_at, time.time() + max(60.0, 3 * self.ctx.sizes.estimate_s.get(names[0], 20.0)))
        seen: set[str] = set()
        killed = False
        with open(log_file, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            while True:
                rc = proc.poll()
                for name, result in (read_json(results_file) or {}).items():
                    if name not in seen:
                        seen.add(name)
                        self.record(name, result)
                if rc is not None:
                    break
                if time.time() > kill_at:
                    os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and what it started
                    proc.wait()
                    killed = True
                    break
                time.sleep(POLL_S)
        missing = [n for n in names if n not in seen]
        if not missing:
            return
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        print(tail, flush=True)
        if killed:
            first = {"status": "timeout", "summary": "killed at its time cap or the global deadline", "log_tail": tail}
        else:
            first = {"status": "error", "summary": f"child exited {proc.returncode} before reporting", "log_tail": tail}
        self.record(missing[0], first)
        for name in missing[1:]:
            self.record(name, {"status": "skipped", "summary": f"not started: the process was lost during {missing[0]}"})

    def add_ratio(self) -> None:
        ours, peer = self.ctx.results.get("throughput_ftscale", {}), self.ctx.results.get("throughput_hf", {})
        if ours.get("status") == "ok" and peer.get("status") == "ok":
            ratio = ours["tokens_per_s"] / peer["real_tokens_per_s"]
            self.report["throughput_ratio"] = ratio
            print(f"{'RATIO':<9} {'ftscale/hf':<19} real tokens/s, same model, documents and token slots per "
                  f"micro-batch: {ratio:.2f}x", flush=True)


def run_check(name: str, ctx: Context) -> dict[str, Any]:
    """One check, timed, its exceptions turned into an ``error`` result (the run goes on)."""
    reason = skip_reason(name, ctx, time.time())
    if reason is not None:
        return {"status": "skipped", "summary": reason}
    t0 = time.time()
    try:
        result = CHECKS[name](ctx)
    except Exception as e:  # noqa: BLE001 - any failure is a result to report, not a crash of the run
        result = {"status": "error", "summary": f"{type(e).__name__}: {e}"[:400],
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = time.time() - t0
    return result


def run_child(names: list[str], mode: str, work: Path, results_file: Path, prior: Path, deadline: float) -> int:
    os.environ.setdefault("DS_ACCELERATOR", MODES[mode].device)
    ctx = Context(mode, MODES[mode], work, deadline, dict((read_json(prior) or {}).get("checks", {})))
    out: dict[str, Any] = {}
    for name in names:
        out[name] = ctx.results[name] = run_check(name, ctx)
        write_json(results_file, out)
    return 0


# ---------------------------------------------------------------------------- README table

def _cell(name: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run yet"
    if r["status"] != "ok" or name not in ("parity_tiny", "parity_1b", "throughput_ftscale", "throughput_hf"):
        prefix = "" if r["status"] in ("ok", "not_built") else f"{r['status']}: "
        return f"{prefix}{r.get('summary', '')}".replace("|", "/")
    if name.startswith("parity"):
        impl = "flash_attention_2" if r["flash_attention_2"] == "ran" else "sdpa_segments"
        v = r["variants"][impl]
        return (f"{impl}, {r['params'] / 1e6:,.1f}M params, {r['rows']}×{r['seq_len']}: loss {v['loss_rel']:.1e}, "
                f"hidden {v['hidden_rel']:.1e}, grads {v['grad_rel']:.1e}")
    if name == "throughput_ftscale":
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        return (f"{r['tokens_per_s']:,.0f} real tokens/s, MFU {mfu}, {r['micro_batch']}×{r['seq_len']} "
                f"({r['attn_implementation']})")
    return (f"{r['real_tokens_per_s']:,.0f} real tokens/s, padding {r['padding_fraction']:.0%}, batch "
            f"{r['batch_size']} ({r['attn_implementation']})")


TABLE_ROWS = (
    ("parity_tiny", "packed-row loss/grads vs per-document, tiny, bf16", "within bf16 tolerance"),
    ("parity_1b", "packed-row loss/grads vs per-document, ~1B, bf16", "within bf16 tolerance"),
    ("throughput_ftscale", "ftscale ~1B, bf16, packed rows of 4096, ZeRO-2, 1 GPU", "MFU ≥ 50%"),
    ("throughput_hf", "HF Trainer + dynamic padding (peer), same model and data", "—"),
    ("plan", "`ftscale plan` vs `torch.cuda.max_memory_allocated`", "within 15%"),
    ("qlora", "QLoRA smoke", "loss falls, adapter exports"),
    ("determinism", "two identical runs", "report max difference"),
    ("env", "environment", "—"),
)


def render_table(report: dict[str, Any] | None) -> str:
    """The README's "GPU results" table (markdown) from a report; "not run yet" without one."""
    checks = (report or {}).get("checks", {})
    if report is None:
        head = "Not run yet: no GPU has been lent to a session since `benchmarks/gpu_check.py` was written."
    else:
        head = (f"`gpu_check.py` ({report['mode']} mode), started {report['started']}, "
                f"{report.get('elapsed_s', 0):.0f} s; device: {checks.get('env', {}).get('device', '?')}.")
    lines = [head, "", "| check | result | target |", "|---|---|---|"]
    for name, what, target in TABLE_ROWS:
        lines.append(f"| {what} | {_cell(name, checks.get(name))} | {target} |")
    if report is not None and "throughput_ratio" in report:
        lines.append(f"| ftscale / HF real tokens/s | {report['throughput_ratio']:.2f}× | — |")
    return "\n".join(lines)


def write_readme(json_path: Path, readme: Path) -> int:
    report = read_json(json_path)
    if report is None:
        print(f"gpu_check: no results at {json_path}; run the checks on a GPU first", file=sys.stderr)
        return 2
    if report.get("mode") == "cpu-smoke":
        print(f"gpu_check: {json_path} holds a CPU smoke run, not GPU results", file=sys.stderr)
        return 2
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        print(f"gpu_check: {readme} has no {README_START} ... {README_END} block", file=sys.stderr)
        return 2
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    readme.write_text(f"{before}{README_START}\n{render_table(report)}\n{README_END}{after}")
    print(f"gpu_check: README table written from {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ftscale GPU readiness check (see the module docstring)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer steps and one planner configuration (~4.5 min)")
    mode.add_argument("--cpu-smoke", action="store_true", help="every check with tiny sizes on CPU")
    mode.add_argument("--write-readme", action="store_true", help="only write README's GPU results table from --json")
    parser.add_argument("--json", type=Path, help=f"results file (default {DEFAULT_JSON.relative_to(REPO)}; "
                                                  "--cpu-smoke: in the work dir)")
    parser.add_argument("--budget-s", type=float, help="global deadline in seconds (default: 450 full, 270 quick)")
    parser.add_argument("--check-cap-s", type=float, help="kill any one check after this many seconds")
    parser.add_argument("--work-dir", type=Path, help="scratch directory (default: a new temporary one)")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prior", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child.split(","), args.mode, args.work_dir, args.results, args.prior, args.deadline)
    if args.write_readme:
        return write_readme(args.json or DEFAULT_JSON, args.readme)
    name = "cpu-smoke" if args.cpu_smoke else "quick" if args.quick else "full"
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ftscale-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    json_path = args.json or (work / "gpu-cpu-smoke.json" if args.cpu_smoke else DEFAULT_JSON)
    budget = args.budget_s if args.budget_s is not None else MODES[name].budget_s
    print(f"gpu_check {name}: budget {budget:.0f} s, results {json_path}, work {work}", flush=True)
    return Run(name, budget, json_path, work).run(args.check_cap_s)


if __name__ == "__main__":
    sys.exit(main())
