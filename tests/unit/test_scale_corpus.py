"""Tests for the scale benchmark's corpus, ground truth, scoring and process-tree memory sampler
(benchmarks/scale_corpus.py, benchmarks/proc_tree.py, benchmarks/bench_scale.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return sys.modules[name]


sc = _load("scale_corpus")
proc_tree = _load("proc_tree")
kjv = _load("corpus")  # shingles() and exact_pairs() need no KJV text
scoring = _load("scale_scoring")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "c"
    spec = sc.CorpusSpec(4000, seed=7, shard_docs=1500, dup_fraction=0.1)
    return spec, out, sc.build(spec, out, log=lambda *a: None)


def _digests(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != "corpus.json"}


def test_generator_is_deterministic(small, tmp_path):
    spec, out, meta = small
    again = sc.build(spec, tmp_path / "again", log=lambda *a: None)
    assert _digests(out) == _digests(tmp_path / "again")
    assert {k: v for k, v in again.items() if k != "build_s"} == {k: v for k, v in meta.items() if k != "build_s"}
    other = sc.build(sc.CorpusSpec(4000, seed=8, shard_docs=1500, dup_fraction=0.1), tmp_path / "other",
                     log=lambda *a: None)
    assert _digests(tmp_path / "other")["shards/shard_00000.parquet"] != _digests(out)["shards/shard_00000.parquet"]
    assert other["copies"] == meta["copies"]  # same share planted


def test_cached_corpus_is_reused_and_a_changed_spec_rebuilds(small, tmp_path):
    spec = sc.CorpusSpec(300, seed=1, shard_docs=100)
    sc.build(spec, tmp_path / "c", log=lambda *a: None)
    marker = tmp_path / "c" / "shards" / "marker"
    marker.write_text("x")
    sc.build(spec, tmp_path / "c", log=lambda *a: None)
    assert marker.exists()  # same spec: nothing regenerated
    sc.build(sc.CorpusSpec(300, seed=2, shard_docs=100), tmp_path / "c", log=lambda *a: None)
    assert not marker.exists()


def test_sizes_and_ids(small):
    spec, out, meta = small
    ids, texts = sc.read_texts(out)
    assert len(texts) == spec.docs == meta["docs"]
    assert np.array_equal(ids, np.arange(spec.docs))
    assert [s["docs"] for s in meta["shards"]] == [1500, 1500, 1000]
    assert [s["first_id"] for s in meta["shards"]] == [0, 1500, 3000]
    nbytes = sum(len(t.encode()) for t in texts)
    assert nbytes == meta["text_bytes"]
    assert 0.85 * spec.mean_doc_bytes <= nbytes / spec.docs <= 1.15 * spec.mean_doc_bytes
    words = np.array([len(t.split()) for t in texts])
    assert words.min() >= sc.NGRAM + 1
    assert np.percentile(words, 90) > 2 * np.percentile(words, 10)  # a lognormal spread, not one length
    assert meta["copies"] == round(spec.dup_fraction * spec.docs)
    for t in texts[:200]:
        assert t.lower().split() == [w for w in t.lower().split() if w.isalpha() and w.isascii()]


@pytest.mark.parametrize("docs", [1, 10, 3000])
def test_layout_places_each_source_before_its_copies(docs):
    lay = sc.plan_layout(sc.CorpusSpec(docs, seed=3))
    assert len(lay.copy_ids) == round(0.05 * docs)
    assert np.all(np.diff(lay.copy_ids) > 0) and np.all(lay.copy_source < lay.copy_ids)
    assert not set(lay.copy_ids.tolist()) & set(lay.copies_left)  # a source is no copy
    assert sum(lay.copies_left.values()) == len(lay.copy_ids)
    assert set(lay.copies_left.values()) <= set(sc.CLUSTER_COPIES)


def test_jsonl_zst_variant_has_the_same_documents(small, tmp_path):
    spec, out, _ = small
    jspec = sc.CorpusSpec(4000, seed=7, shard_docs=1500, dup_fraction=0.1, fmt="jsonl.zst")
    meta = sc.build(jspec, tmp_path / "j", log=lambda *a: None)
    assert [s["file"] for s in meta["shards"]][0] == "shard_00000.jsonl.zst"
    assert sc.read_texts(tmp_path / "j")[1] == sc.read_texts(out)[1]


def test_planted_pairs_have_their_recorded_jaccard(small):
    spec, out, meta = small
    _, texts = sc.read_texts(out)
    truth = pq.read_table(out / "truth.parquet").to_pydict()
    assert len(truth["id_a"]) == meta["truth_pairs"] > 0
    near = []
    for a, b, j, rel, target in zip(truth["id_a"], truth["id_b"], truth["jaccard"], truth["relation"],
                                    truth["target"]):
        assert a < b
        exact = kjv.jaccard(kjv.shingles(texts[a]), kjv.shingles(texts[b]))
        assert exact == pytest.approx(j, abs=1e-12)
        if rel == "source-near":
            assert j >= target
            near.append(j)
        elif rel == "source-format":
            assert j == 1.0 and texts[a] != texts[b]
            assert texts[a].lower().split() == texts[b].lower().split()
    lo, hi = spec.near_jaccard
    near = np.array(near)
    assert len(near) > 100
    assert near.min() >= lo and near.max() <= hi
    assert (near < 0.8).mean() > 0.3 and (near >= 0.8).mean() > 0.3  # straddles the threshold


def test_no_accidental_pairs_beyond_the_planted_ones(small):
    _, out, _ = small
    check = sc.check_no_accidental_pairs(out, sample_docs=4000, threshold=0.5)
    assert check["sample_docs"] == 4000
    assert check["planted_pairs"] > 0
    assert check["accidental_pairs"] == 0 and check["planted_missed"] == 0


def test_removal_scores_on_hand_made_cases():
    # Group {0, 1, 2}: 0-1 0.9 and 1-2 0.85 (0-2 0.7 is no edge); {5, 6} at 0.75 is below;
    # {7, 8} at 0.95. Positives: 2 + 1 = 3.
    a, b = np.array([0, 1, 0, 5, 7]), np.array([1, 2, 2, 6, 8])
    j = np.array([0.9, 0.85, 0.7, 0.75, 0.95])

    def score(removed):
        return scoring.removal_scores(np.array(removed, dtype=np.int64), 10, a, b, j, 0.8)

    perfect = score([1, 2, 8])
    assert (perfect["tp"], perfect["fp"], perfect["fn"], perfect["f1"]) == (3, 0, 0, 1.0)
    assert score([0, 2, 7])["f1"] == 1.0  # any member may be the kept one
    # 1 and 2 right (0 kept); 6 is a copy below the threshold, 9 unrelated; group {7, 8} missed.
    s = score([1, 2, 6, 9])
    assert (s["tp"], s["fp"], s["fn"]) == (2, 2, 1)
    assert (s["fp_below_threshold_copies"], s["fp_unrelated"]) == (1, 1)
    assert s["precision"] == 0.5 and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # Removing a whole group loses its content: both removals are false positives.
    s = score([7, 8])
    assert (s["tp"], s["fp"], s["fn"], s["fp_whole_group_removed"]) == (0, 2, 3, 2)
    nothing = score([])
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (1.0, 0.0, 0.0)


def test_tree_sampler_sums_memory_over_descendants(tmp_path):
    # A child starts two grandchildren that each hold ~120 MB at the same time.
    hold = textwrap.dedent("""
        import time
        block = bytearray(120 * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        time.sleep(1.5)
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys
        procs = [subprocess.Popen([sys.executable, "-c", {hold!r}]) for _ in range(2)]
        sys.exit(max(p.wait() for p in procs))
    """)
    m = proc_tree.run_measured([sys.executable, "-c", parent], log_path=tmp_path / "log")
    assert m["rc"] == 0 and not m["timed_out"]
    assert m["max_processes"] >= 3
    # The tree peak sees both grandchildren (2 x 120 MiB = 252 MB); one process alone is ~130 MB.
    assert m["peak_tree_rss_bytes"] >= 0.9 * 2 * 120 * 2**20
    assert 120 * 2**20 <= m["peak_process_rss_bytes"] < 0.75 * m["peak_tree_rss_bytes"]
    assert m["kernel_maxrss_bytes"] >= 120 * 2**20  # the kernel saw a grandchild's block too
    assert m["peak_tree_pss_bytes"] > 0
    assert m["wall_s"] >= 1.5


def test_cpu_time_counts_a_descendant_nobody_reaps(tmp_path):
    # The grandchild burns 0.6 s of CPU, says so, and outlives its parent, which exits without
    # waiting for it (as a multiprocessing forkserver's workers do): the kernel never adds its
    # CPU time to the child's; the sampler saw it.
    burn = textwrap.dedent("""
        import time
        t0 = time.process_time()
        while time.process_time() - t0 < 0.6:
            pass
        print("done", flush=True)
        time.sleep(1.0)
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", {burn!r}], stdout=subprocess.PIPE)
        p.stdout.readline()
        time.sleep(0.3)
    """)
    m = proc_tree.run_measured([sys.executable, "-c", parent], log_path=tmp_path / "log")
    assert m["rc"] == 0
    assert m["cpu_s_kernel"] < 0.5  # the parent's own start-up only
    assert m["cpu_s"] == m["cpu_s_sampled"] >= 0.6


def test_run_measured_reports_failures_and_timeouts(tmp_path):
    m = proc_tree.run_measured([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                               log_path=tmp_path / "log")
    assert m["rc"] == 3 and "boom" in (tmp_path / "log").read_text()
    m = proc_tree.run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5)
    assert m["timed_out"] and m["rc"] != 0 and m["wall_s"] < 10


def test_ftscale_dedup_removals_map_to_document_ids(small, tmp_path):
    """The bench's (file, row) -> id mapping agrees with the ids of the documents ftscale keeps."""
    bench = _load("bench_scale")
    _, out, meta = small
    res = bench.run_ftscale_dedup(out, meta, tmp_path, [], timeout_s=300)
    kept = np.concatenate([pq.read_table(f, columns=["id"])["id"].to_numpy()
                           for f in sorted((tmp_path / "ftscale_dedup" / "data").glob("*/part-*.parquet"))])
    assert res["removed"] + len(kept) == meta["docs"]
    assert res["removed"] == sum(res["removed_by_reason"].values()) > 0
    assert res["f1"] > 0.9 and res["fp_unrelated"] == 0
    report = json.loads((tmp_path / "ftscale_dedup" / "report.json").read_text())
    assert report["totals"]["kept"] == len(kept)
