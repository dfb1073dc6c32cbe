"""The streaming data engine behind `ftscale dedup` and `ftscale prep`: its out-of-core
decisions equal the in-memory API's, its bytes do not depend on workers, memory budget or a
crash, and its memory stays inside the budget on a corpus larger than the budget."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ftscale
from ftscale.cli import main
from ftscale.data.io import read_source


def chains_corpus(directory: Path, n: int = 2500, seed: int = 0) -> list[Path]:
    """Two sources: a Parquet file with many row groups and a JSONL file. A third of the
    documents are edited copies of earlier ones (chains of copies, so clusters form through
    intermediate documents), some exact copies differ only in case and spacing."""
    rng = random.Random(seed)
    docs: list[dict] = []
    for i in range(n):
        if docs and rng.random() < 0.35:
            words = rng.choice(docs)["text"].split()
            for _ in range(rng.randrange(0, 6)):
                words[rng.randrange(len(words))] = f"e{rng.randrange(10_000)}"
            text = " ".join(words)
            if rng.random() < 0.3:
                text = "  " + text.upper() + "\n"
        else:
            text = " ".join(f"w{rng.randrange(3000)}" for _ in range(rng.randrange(15, 120)))
        docs.append({"text": text, "score": rng.random(), "id": i})
    directory.mkdir(parents=True, exist_ok=True)
    cut = int(n * 0.6)
    parquet = directory / "web.parquet"
    pq.write_table(pa.Table.from_pylist(docs[:cut]), parquet, row_group_size=97)
    jsonl = directory / "books.jsonl"
    with open(jsonl, "w") as f:
        for d in docs[cut:]:
            f.write(json.dumps(d) + "\n")
        f.write("{broken\n")
    return [parquet, jsonl]


def digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and ".ftscale-work" not in p.parts}


def dedup(*args: str) -> None:
    assert main(["dedup", *args]) == 0


@pytest.mark.parametrize("verify,keep", [("auto", "lowest-uid"), ("exact", "max:score"), ("estimate", "lowest-uid")])
def test_out_of_core_decisions_equal_the_in_memory_api(tmp_path, verify, keep):
    inputs = chains_corpus(tmp_path / "in")
    out = tmp_path / "out"
    # A small budget and four workers: several key partitions, units and batches.
    dedup(*map(str, inputs), "--out", str(out), "--verify", verify, "--keep", keep, "--threshold", "0.75",
          "--workers", "4", "--memory-budget", "256MiB")
    reads = [read_source(p.name.split(".")[0], [p]) for p in inputs]
    uids = np.concatenate([r.records.column("uid").to_numpy() for r in reads])
    texts = pa.chunked_array([c for r in reads for c in r.records.column("text").chunks])
    scores = np.concatenate([r.records.column("score").to_numpy() for r in reads]) if keep != "lowest-uid" else None
    exact = ftscale.exact_duplicates(texts, uids=uids, scores=scores)
    alive = np.flatnonzero(exact.keep)
    near = ftscale.near_duplicates(texts.take(pa.array(alive)), threshold=0.75, verify=verify, uids=uids[alive],
                                   scores=None if scores is None else scores[alive])
    expected = {int(uids[i]): ("exact_duplicate", int(uids[exact.cluster[i]]), 1.0)
                for i in np.flatnonzero(~exact.keep)}
    for j in np.flatnonzero(~near.keep):
        expected[int(uids[alive[j]])] = ("near_duplicate", int(uids[alive[near.cluster[j]]]),
                                         float(near.similarity[j]))
    decisions = pq.read_table(out / "removed" / "decisions.parquet").to_pylist()
    found = {d["uid"]: (d["reason"], d["matched_uid"], d["similarity"]) for d in decisions}
    assert len(expected) > 300 and {r for r, _, _ in expected.values()} == {"exact_duplicate", "near_duplicate"}
    assert found == expected
    report = json.loads((out / "report.json").read_text())
    assert report["near_dedup"]["verified_pairs"] == near.info["verified_pairs"]
    assert report["near_dedup"]["candidate_pairs_checked"] == near.info["candidate_pairs_checked"]
    kept = pa.concat_tables([pq.read_table(out / "data" / name) for name in ("web", "books")])
    assert sorted(kept.column("uid").to_pylist()) == sorted(set(uids.tolist()) - set(expected))


def test_bytes_identical_for_any_workers_and_budget(tmp_path):
    inputs = chains_corpus(tmp_path / "in", n=3000, seed=1)
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"text": pq.read_table(inputs[0]).column("text")[5].as_py()}) + "\n")
    results = []
    for workers, budget in (("1", "8GiB"), ("2", "256MiB"), ("4", "300MiB")):
        out = tmp_path / f"out-{workers}"
        dedup(*map(str, inputs), "--out", str(out), "--workers", workers, "--memory-budget", budget,
              "--decontaminate", str(evals), "--audit", "20", "--part-rows", "400")
        results.append(digests(out))
    assert sum(name.startswith("data/web/part-") for name in results[0]) >= 3
    assert results[0] == results[1] == results[2]


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    code = "import sys; from ftscale.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["unit:1", "reduce:near dedup", "band:4", "write"])
def test_killed_job_reruns_to_identical_bytes(tmp_path, point):
    inputs = [str(p) for p in chains_corpus(tmp_path / "in", n=3000, seed=2)]
    clean = tmp_path / "clean"
    assert _cli(["dedup", *inputs, "--out", str(clean), "--workers", "1"]).returncode == 0
    out = tmp_path / "out"
    args = ["dedup", *inputs, "--out", str(out), "--workers", "1", "--memory-budget", "256MiB", "--keep-work"]
    crashed = _cli(args, {"FTSCALE_CRASH_AT": point})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    work = out / ".ftscale-work" / "units"
    finished = {p: p.stat().st_mtime_ns for p in work.glob("*/meta-read.json")}
    assert finished, "the crash came before any unit finished"
    assert _cli(args).returncode == 0
    # Units finished before the crash were reused, not redone.
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert digests(out) == digests(clean)


def fixed_width_corpus(directory: Path, n_docs: int, seed: int = 0) -> int:
    """~1 KB documents of Zipf-distributed 5-letter words (built with numpy: fast), 5% of them
    edited copies of another document; Parquet shards of 50,000 documents. Returns text bytes."""
    rng = np.random.default_rng(seed)
    vocab = np.full((20_000, 6), ord(" "), np.uint8)
    vocab[:, :5] = rng.integers(ord("a"), ord("z") + 1, (20_000, 5))
    directory.mkdir(parents=True, exist_ok=True)
    total = 0
    for s, lo in enumerate(range(0, n_docs, 50_000)):
        n = min(50_000, n_docs - lo)
        words = np.clip(rng.lognormal(np.log(170), 0.4, n).astype(np.int64), 10, 1500)
        offsets = np.concatenate([[0], np.cumsum(words)])
        idx = (rng.zipf(1.2, int(offsets[-1])) - 1) % len(vocab)
        copies = np.flatnonzero(rng.random(n) < 0.05)
        copies = copies[copies > 0]
        sources = (rng.random(len(copies)) * copies).astype(np.int64)
        for i, j in zip(copies.tolist(), sources.tolist()):
            m = int(min(words[i], words[j]))
            idx[offsets[i]:offsets[i] + m] = idx[offsets[j]:offsets[j] + m]
            idx[offsets[i] + rng.integers(0, m, 2)] = rng.integers(0, len(vocab), 2)
        data = vocab[idx].reshape(-1)
        texts = pa.StringArray.from_buffers(n, pa.py_buffer((offsets * 6).astype(np.int32).tobytes()),
                                            pa.py_buffer(data.tobytes()))
        pq.write_table(pa.table({"text": texts, "id": np.arange(lo, lo + n)}), directory / f"part-{s:03d}.parquet",
                       row_group_size=10_000, compression="none")
        total += len(data)
    return total


@pytest.mark.slow
def test_memory_stays_under_the_budget_on_a_larger_corpus(tmp_path):
    budget = 256 << 20
    text_bytes = fixed_width_corpus(tmp_path / "in", 1_000_000)
    assert text_bytes > 4 * budget
    # VmHWM, the peak RSS of the process's own address space: ru_maxrss would also count the
    # parent's pages at fork time (Linux keeps that high-water mark across exec).
    code = ("import sys; from ftscale.cli import main; rc = main(sys.argv[1:]); "
            "hwm = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]; "
            "print('PEAK', int(hwm) * 1024); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code, "dedup", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                          "--memory-budget", "256MiB"], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    peak = int(run.stdout.split("PEAK")[-1].split()[0])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["totals"]["read"] == 1_000_000 and report["totals"]["near_duplicate"] > 5_000
    print(f"peak RSS {peak / 2**20:.0f} MiB")
    assert peak < budget, f"peak RSS {peak / 2**20:.0f} MiB over the {budget / 2**20:.0f} MiB budget"
