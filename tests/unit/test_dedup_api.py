"""The public dedup API across the Rust boundary, checked against slow Python references."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest

import ftscale
from ftscale.decontam import find_contamination


def py_shingles(text: str, n: int = 5) -> set[str]:
    """The documented default shingling, in plain Python."""
    words = text.lower().split()
    if not words:
        return set()
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def vocab_text(rng: random.Random, n_words: int, vocab: int = 50_000) -> list[str]:
    return [f"w{rng.randrange(vocab)}" for _ in range(n_words)]


def pair_with_jaccard(rng: random.Random, shared: int, only: int) -> tuple[str, str]:
    """Two texts of 1-word shingles sharing `shared` words, each with `only` words of its own."""
    common = vocab_text(rng, shared, 10**9)
    a = common + vocab_text(rng, only, 10**9)
    b = common + vocab_text(rng, only, 10**9)
    return " ".join(a), " ".join(b)


def test_signature_shape_dtype_and_input_kinds_agree():
    texts = ["The quick brown fox jumps over the lazy dog", "", "a b", "x " * 100]
    sig = ftscale.minhash(texts, num_perm=64)
    assert sig.shape == (4, 64) and sig.dtype == np.uint32
    assert (sig[1] == np.iinfo(np.uint32).max).all()  # empty text: no shingles
    np.testing.assert_array_equal(sig, ftscale.minhash(pa.array(texts), num_perm=64))
    np.testing.assert_array_equal(sig, ftscale.minhash(pa.array(texts, pa.large_string()), num_perm=64))
    chunked = pa.chunked_array([texts[:1], texts[1:3], texts[3:]])
    np.testing.assert_array_equal(sig, ftscale.minhash(chunked, num_perm=64))
    sliced = pa.array(["zzz"] + texts)[1:]
    np.testing.assert_array_equal(sig, ftscale.minhash(sliced, num_perm=64))


def test_signatures_follow_python_shingling():
    # Equal Python shingle sets (case, spacing, repeats differ) => equal signatures.
    a = "One two three four five six seven"
    b = "one  TWO three\tfour five six seven one two three four five"
    assert py_shingles(a) <= py_shingles(b)
    c = "one two three four five six seven"
    assert py_shingles(a) == py_shingles(c)
    sig = ftscale.minhash([a, c, "one two three", "One Two  three"])
    np.testing.assert_array_equal(sig[0], sig[1])
    np.testing.assert_array_equal(sig[2], sig[3])


@pytest.mark.parametrize("seed", [0, 1])
def test_jaccard_estimates_within_three_sigma(seed):
    rng = random.Random(seed)
    k = 128
    pairs, exact = [], []
    for _ in range(300):
        shared, only = rng.randrange(0, 200), rng.randrange(1, 150)
        a, b = pair_with_jaccard(rng, shared, only)
        pairs += [a, b]
        exact.append(jaccard(py_shingles(a, 1), py_shingles(b, 1)))
    sig = ftscale.minhash(pairs, num_perm=k, ngram=1, seed=seed)
    est = (sig[0::2] == sig[1::2]).mean(axis=1)
    exact = np.array(exact)
    sigma = np.sqrt(exact * (1 - exact) / k)
    outside = np.abs(est - exact) > 3 * sigma + 1 / k
    assert outside.mean() <= 0.01, f"{outside.sum()} of {len(exact)} outside 3 sigma"
    assert abs((est - exact).mean()) < 0.01


def test_lsh_candidate_curve_matches_formula():
    bands, rows = 8, 4
    rng = random.Random(3)
    for s in (0.3, 0.5, 0.7):
        n_pairs = 400
        texts = []
        for _ in range(n_pairs):
            # shared/(shared + 2*only) = s
            only = 30
            shared = round(2 * only * s / (1 - s))
            texts += pair_with_jaccard(rng, shared, only)
        res = ftscale.near_duplicates(texts, threshold=0.5, num_perm=32, ngram=1, bands=bands, rows=rows,
                                      verify="none", seed=11)
        observed = (res.cluster[0::2] == res.cluster[1::2]).mean()
        expected = ftscale.candidate_probability(s, bands, rows)
        assert expected == pytest.approx(1 - (1 - s**rows) ** bands)
        tol = 4 * math.sqrt(expected * (1 - expected) / n_pairs) + 0.01
        assert abs(observed - expected) <= tol, (s, observed, expected)


def corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = vocab_text(rng, rng.randrange(20, 120), 3000)
        docs.append(" ".join(words))
        if rng.random() < 0.3:
            copy = list(words)
            for _ in range(rng.randrange(0, 3)):
                copy[rng.randrange(len(copy))] = "edit"
            docs.append(" ".join(copy))
        if rng.random() < 0.1:
            docs.append(" ".join(words).upper())
    return docs


def test_same_result_for_any_thread_count():
    texts = corpus()
    one = ftscale.near_duplicates(texts, num_threads=1)
    two = ftscale.near_duplicates(texts, num_threads=2)
    np.testing.assert_array_equal(one.cluster, two.cluster)
    np.testing.assert_array_equal(one.similarity, two.similarity)
    assert one.num_removed > 50
    e1 = ftscale.exact_duplicates(texts, num_threads=1)
    e2 = ftscale.exact_duplicates(texts, num_threads=2)
    np.testing.assert_array_equal(e1.cluster, e2.cluster)
    np.testing.assert_array_equal(ftscale.minhash(texts, num_threads=1), ftscale.minhash(texts, num_threads=2))


@pytest.mark.parametrize("verify", ["estimate", "exact"])
def test_shuffled_input_gives_same_clusters_by_uid(verify):
    texts = corpus(1)
    uids = np.arange(1000, 1000 + len(texts), dtype=np.uint64) * 7919 % 100_003
    assert len(set(uids.tolist())) == len(uids)
    base = ftscale.near_duplicates(texts, uids=uids, verify=verify)
    perm = np.random.default_rng(5).permutation(len(texts))
    shuffled = ftscale.near_duplicates([texts[i] for i in perm], uids=uids[perm], verify=verify)
    kept_base = set(uids[base.keep].tolist())
    kept_shuf = set(uids[perm][shuffled.keep].tolist())
    assert kept_base == kept_shuf
    rep_base = dict(zip(uids.tolist(), uids[base.cluster].tolist()))
    rep_shuf = dict(zip(uids[perm].tolist(), uids[perm][shuffled.cluster].tolist()))
    assert rep_base == rep_shuf


def test_keep_rule_lowest_uid_or_highest_score():
    text = "alpha beta gamma delta epsilon zeta eta theta"
    texts = [text, text.upper(), "unrelated words only here today ok", text + " "]
    res = ftscale.exact_duplicates(texts, uids=[30, 10, 50, 20])
    assert res.keep.tolist() == [False, True, True, False]
    assert res.cluster.tolist() == [1, 1, 2, 1]
    res = ftscale.exact_duplicates(texts, uids=[30, 10, 50, 20], scores=[0.1, 0.2, 0.0, 0.9])
    assert res.cluster.tolist() == [3, 3, 2, 3]
    strict = ftscale.exact_duplicates(texts, lowercase=False, collapse_whitespace=False)
    assert strict.keep.tolist() == [True, True, True, True]


def test_exact_dedup_normalisation_options():
    texts = ["Hello, World!", "hello world", "ＨＥＬＬＯ, world!", "hello,   world!"]
    default = ftscale.exact_duplicates(texts)
    assert default.cluster.tolist() == [0, 1, 0, 0]  # NFKC folds fullwidth; punctuation kept
    stripped = ftscale.exact_duplicates(texts, strip_punctuation=True)
    assert stripped.cluster.tolist() == [0, 0, 0, 0]
    no_nfkc = ftscale.exact_duplicates(texts, nfkc=False)
    assert no_nfkc.cluster.tolist() == [0, 1, 2, 0]


def test_exact_verification_never_keeps_pairs_below_threshold_together():
    texts = corpus(2)
    res = ftscale.near_duplicates(texts, threshold=0.8, verify="exact")
    sets = [py_shingles(t) for t in texts]
    for i in np.flatnonzero(~res.keep):
        # A removed record was merged through verified edges; its direct link may be via a
        # chain, but the pair with its representative is reported with exact similarity.
        assert res.similarity[i] == pytest.approx(jaccard(sets[i], sets[res.cluster[i]]), abs=1e-6)


def test_audit_reports_precision_and_recall():
    res = ftscale.near_duplicates(corpus(3, 600), audit_pairs=20)
    audit = res.info["audit"]
    assert 0.0 <= audit["precision"] <= 1.0 and 0.0 <= audit["recall"] <= 1.0
    assert sum(1 for p in audit["pairs"] if p[4]) == min(20, audit["flagged_pairs"])


def test_decontamination_finds_planted_leaks_and_nothing_in_disjoint_text():
    rng = random.Random(9)
    eval_items = [" ".join(vocab_text(rng, 40)) + "?" for _ in range(20)]
    train = [" ".join(vocab_text(rng, 200)) for _ in range(300)]
    clean = find_contamination(train, eval_items)
    assert not clean.contaminated.any() and clean.hits.sum() == 0
    planted = {}
    for rec in rng.sample(range(300), 12):
        item = rng.randrange(20)
        words = eval_items[item].split()
        start = rng.randrange(0, len(words) - 13)
        leak = " ".join(words[start:start + 13]).upper()
        tw = train[rec].split()
        pos = rng.randrange(len(tw))
        train[rec] = " ".join(tw[:pos] + [leak] + tw[pos:])
        planted[rec] = item
    found = find_contamination(train, eval_items)
    assert set(np.flatnonzero(found.contaminated).tolist()) == set(planted)
    assert set(zip(found.leak_record.tolist(), found.leak_eval_item.tolist())) == set(planted.items())
    # A 12-word overlap is below the 13-gram and is not flagged.
    short = " ".join(eval_items[0].split()[:12])
    assert not find_contamination([short + " tail words here"], eval_items).contaminated.any()


def test_chat_turns_are_separate_segments():
    words = [f"t{i}" for i in range(20)]
    eval_items = [" ".join(words)]
    split_across_turns = [[" ".join(words[:8]), " ".join(words[8:16])]]
    assert not find_contamination(split_across_turns, eval_items).contaminated.any()
    assert find_contamination([[" ".join(words[:14])]], eval_items).contaminated.all()


def test_bad_arguments_raise_config_errors():
    with pytest.raises(ftscale.ConfigError, match="threshold"):
        ftscale.near_duplicates(["a"], threshold=1.5)
    with pytest.raises(ftscale.ConfigError, match="str or Arrow"):
        ftscale.minhash(["a", 3])
    with pytest.raises(ftscale.ConfigError, match="bands"):
        ftscale.near_duplicates(["a"], bands=100, rows=100)
    with pytest.raises(ftscale.ConfigError, match="unique"):
        ftscale.exact_duplicates(["a", "b"], uids=[1, 1])
    with pytest.raises(ftscale.ConfigError, match="string array"):
        ftscale.minhash(pa.array([1, 2]))
    with pytest.raises(ftscale.ConfigError, match="verify"):
        ftscale.near_duplicates(["a"], verify="maybe")
