"""Synthetic web-like corpus for the scale benchmark, with planted near-duplicates of known Jaccard.

    python benchmarks/scale_corpus.py OUT_DIR [--docs N] [--seed S] [--format parquet|jsonl.zst]

Documents are words drawn from a Zipf distribution over a made-up vocabulary (default 50,000
words, exponent 1.1). Words are consonant-vowel syllables from a restricted alphabet
("kamilo", "te", ...): lowercase ASCII letters only, so ``text.lower().split()`` (ftscale's
shingling after NFKC), datatrove's ``simplify_text`` + spaCy word tokenizer and every other
word splitter see the same words; the 70 one-syllable and 4,900 two-syllable words are the most
frequent (short frequent words, as in real text). Document lengths in words are lognormal
(sigma 0.6, at least ``min_words``), scaled so that the mean document is ~``mean_doc_bytes``.

Planted duplicates: ``dup_fraction`` of all documents are copies. Copies come in clusters of a
source and 1-3 copies (mean ~1.55), placed at uniformly random positions of the corpus (the
source is the earliest position of its cluster, so copies can be written while streaming: only
sources waiting for a later copy are held, as uint16 word ids, ~2 bytes per word). A copy is:

* "near" (share ``1 - format_share``): random word substitutions (1/2), insertions (1/4) and
  deletions (1/4) of the source, applied while its exact word-5-gram Jaccard to the source stays
  >= a target drawn uniformly from ``near_jaccard``; so copies spread over 0.6-1.0 around the
  0.8 threshold (a target near 1.0 can leave the copy unedited: a byte-identical copy);
* "format" (share ``format_share``): the source's words with other case and whitespace, Jaccard
  1.0 under ``lower().split()`` but a different byte string.

Ground truth (``truth.parquet``): every pair inside every cluster (source-copy and copy-copy),
with its exact Jaccard computed from the two documents' 5-gram sets (5-grams of word ids, equal
to 5-grams of ``text.lower().split()`` because the vocabulary is lowercase and whitespace-free).
Pairs across clusters are not listed because random Zipf documents essentially never reach
Jaccard 0.6: two random 5-grams coincide with probability ``(sum_k p_k**2)**5`` ~= 2e-8 for this
vocabulary (``sum_k p_k**2`` ~= 0.029), so two ~240-shingle documents (the mean) share
~240**2 * 2e-8 ~= 1e-3 shingles on average, while a pair at >= 0.6 needs 75 % of them shared.
Even the shortest documents (``min_words`` = 20, 16 shingles) would need 12 shared shingles. ``check_no_accidental_pairs``
verifies it on a sample with benchmarks/corpus.py's exact ``exact_pairs``.

Layout of ``out_dir``: ``shards/shard_00000.parquet`` ... (columns ``id`` int64 = global
document index, ``text``; zstd, row groups of 10,000) or ``shards/shard_00000.jsonl.zst``
(``{"id": .., "text": ..}`` per line); ``truth.parquet``; ``corpus.json`` (spec, shard table,
counts), written last, so its presence marks a finished corpus. Same spec -> same bytes.
Generation runs on one core: ~100 s per million documents on the project's 2-core machine, and
~0.7 GB peak RSS whatever the size (one shard's texts and Arrow buffers; measured at 300k docs).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

NGRAM = 5
GENERATOR_VERSION = 2  # bump when the same spec would produce other documents
CONSONANTS = "bdfgklmnprstvz"  # no c/h/j/q/w/x/y: keeps English tokenizer exceptions ("cant") out
VOWELS = "aeiou"
CLUSTER_COPIES = (1, 2, 3)
CLUSTER_COPIES_P = (0.60, 0.25, 0.15)
PARQUET_ROW_GROUP_ROWS = 10_000
FORMATS = ("parquet", "jsonl.zst")


@dataclass(frozen=True)
class CorpusSpec:
    """What to generate; every field is part of the cache key."""

    docs: int
    seed: int = 0
    shard_docs: int = 100_000
    fmt: str = "parquet"
    vocab_words: int = 50_000
    zipf_exponent: float = 1.1
    mean_doc_bytes: int = 1000
    length_sigma: float = 0.6
    min_words: int = 20
    dup_fraction: float = 0.05
    format_share: float = 0.2
    near_jaccard: tuple[float, float] = (0.6, 1.0)

    def check(self) -> None:
        if self.docs < 1 or self.shard_docs < 1:
            raise ValueError("docs and shard_docs must be >= 1")
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}")
        if not 70 + 4900 < self.vocab_words <= 65_535:  # uint16 word ids
            raise ValueError("vocab_words must be in 4971..65535")
        if self.min_words < NGRAM or not 0.0 <= self.dup_fraction < 0.5:
            raise ValueError("min_words must be >= 5 and dup_fraction in [0, 0.5)")

    def key(self) -> str:
        return f"docs{self.docs}_seed{self.seed}_shard{self.shard_docs}_{self.fmt.replace('.', '')}"


# --------------------------------------------------------------------------------------------
# Vocabulary and words


def vocabulary(size: int, seed: int) -> list[str]:
    """``size`` distinct lowercase words, most frequent (shortest) first."""
    syll = [c + v for c in CONSONANTS for v in VOWELS]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x766F63]))
    one = list(syll)
    two = [a + b for a in syll for b in syll]
    rng.shuffle(one)
    rng.shuffle(two)
    longer: dict[str, None] = {}  # insertion-ordered set: deterministic order
    while len(one) + len(two) + len(longer) < size:
        n_syll = rng.choice((3, 4), size=size, p=(0.7, 0.3))
        picks = rng.integers(0, len(syll), size=(size, 4))
        for k, row in zip(n_syll.tolist(), picks.tolist()):
            longer["".join(syll[i] for i in row[:k])] = None
            if len(one) + len(two) + len(longer) == size:
                break
    words = one + two + sorted(longer, key=len, reverse=False)
    return words[:size]


def zipf_cdf(size: int, exponent: float) -> np.ndarray:
    """Cumulative probabilities of ranks 1..size with p_k proportional to k**-exponent."""
    p = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    return cdf


def draw_words(rng: np.random.Generator, cdf: np.ndarray, n: int, chunk: int = 1 << 20) -> np.ndarray:
    """``n`` Zipf-distributed word ids (uint16), by inverse-CDF sampling. In chunks: the
    float64 draws and int64 indices take 16 bytes per word, the result 2 (the same numbers as
    one call: the generator's stream does not depend on how it is sliced)."""
    out = np.empty(n, dtype=np.uint16)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        out[lo:hi] = np.searchsorted(cdf, rng.random(hi - lo), side="right")
    return out


def shingle_set(ids) -> set:
    """Word 5-gram set of a sequence of word ids (a shorter non-empty one is one shingle)."""
    ids = list(ids)
    if len(ids) < NGRAM:
        return {tuple(ids)} if ids else set()
    return set(zip(*(ids[k:] for k in range(NGRAM))))


def jaccard(a: set, b: set) -> float:
    inter = len(a & b)
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


# --------------------------------------------------------------------------------------------
# Copies


def _edit_draws(rng: np.random.Generator, cdf: np.ndarray, batch: int = 32):
    """Endless (op, position fraction, word id) draws, made in batches (one numpy call each)."""
    while True:
        ops, pos, words = rng.random(batch), rng.random(batch), draw_words(rng, cdf, batch)
        yield from zip(ops.tolist(), pos.tolist(), words.tolist())


def _edit(words: list[int], draw: tuple[float, float, int]) -> None:
    """One substitution (1/2), insertion (1/4) or deletion (1/4) at a random position."""
    op, frac, new = draw
    if op < 0.5 or len(words) <= NGRAM + 1:
        words[int(frac * len(words))] = new
    elif op < 0.75:
        words.insert(int(frac * (len(words) + 1)), new)
    else:
        del words[int(frac * len(words))]


def near_copy(source: np.ndarray, target: float, rng: np.random.Generator, cdf: np.ndarray) -> tuple[np.ndarray, float]:
    """Word edits of ``source`` kept while the exact Jaccard stays >= target; (copy, Jaccard)."""
    src_set = shingle_set(source.tolist())
    words = source.tolist()
    draws = _edit_draws(rng, cdf)
    # One edit removes at most NGRAM of the source's shingles and adds at most NGRAM new ones,
    # so after k edits J >= (S - 5k) / (S + 5k): the first k_safe edits need no check.
    s = len(src_set)
    k_safe = int(s * (1.0 - target) / (NGRAM * (1.0 + target))) if s > NGRAM else 0
    for _ in range(k_safe):
        _edit(words, next(draws))
    sim = jaccard(src_set, shingle_set(words)) if k_safe else 1.0
    while True:
        trial = list(words)
        _edit(trial, next(draws))
        trial_sim = jaccard(src_set, shingle_set(trial))
        if trial_sim < target:
            return np.array(words, dtype=np.uint16), sim
        words, sim = trial, trial_sim


_SEPARATORS = np.array([" ", " ", " ", "  ", "\n", "\t", " \n "])


def format_text(words: list[str], rng: np.random.Generator) -> str:
    """The same words under ``lower().split()``, with other case and whitespace."""
    style = int(rng.integers(3))
    if style == 0:
        words = [w.upper() for w in words]
    elif style == 1:
        words = [w.capitalize() for w in words]
    else:
        up = rng.random(len(words)) < 0.2
        words = [w.upper() if u else w for w, u in zip(words, up.tolist())]
    seps = _SEPARATORS[rng.integers(len(_SEPARATORS), size=len(words))].tolist()
    seps[-1] = ""
    return "\n" + "".join(w + s for w, s in zip(words, seps)) + "  "


# --------------------------------------------------------------------------------------------
# Layout: which positions are copies of which source


@dataclass
class Layout:
    """Planted clusters. Arrays are sorted by copy position; a source precedes its copies."""

    copy_ids: np.ndarray  # int64
    copy_source: np.ndarray  # int64
    copy_kind: np.ndarray  # uint8: 0 near, 1 format
    copy_target: np.ndarray  # float64 (1.0 for format copies)
    copies_left: dict  # source id -> number of its copies (for holding sources while streaming)


def plan_layout(spec: CorpusSpec) -> Layout:
    """Cluster sizes, then ``clusters + copies`` distinct random positions dealt out to the
    clusters; the earliest position of each cluster is its source."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, spec.docs, 0x6C6179]))
    n_copies = int(round(spec.dup_fraction * spec.docs))
    sizes = rng.choice(CLUSTER_COPIES, size=max(n_copies, 1), p=CLUSTER_COPIES_P)
    n_clusters = int(np.searchsorted(np.cumsum(sizes), n_copies)) + 1 if n_copies else 0
    sizes = sizes[:n_clusters]
    if n_clusters:
        sizes[-1] -= int(sizes.sum()) - n_copies  # the last cluster is cut to hit n_copies exactly
    positions = rng.choice(spec.docs, size=n_clusters + n_copies, replace=False).astype(np.int64)
    cluster = np.repeat(np.arange(n_clusters), sizes + 1)
    order = np.lexsort((positions, cluster))  # by cluster, then position
    positions, cluster = positions[order], cluster[order]
    first = np.ones(len(cluster), dtype=bool)
    first[1:] = cluster[1:] != cluster[:-1]
    source_of = positions[first][cluster]  # each member's source: its cluster's earliest position
    copy_ids, copy_source = positions[~first], source_of[~first]
    kind = (rng.random(n_copies) < spec.format_share).astype(np.uint8)
    lo, hi = spec.near_jaccard
    target = np.where(kind == 1, 1.0, rng.uniform(lo, hi, n_copies))
    by_id = np.argsort(copy_ids, kind="stable")
    src_ids, counts = np.unique(copy_source, return_counts=True)
    return Layout(copy_ids[by_id], copy_source[by_id], kind[by_id], target[by_id],
                  dict(zip(src_ids.tolist(), counts.tolist())))


# --------------------------------------------------------------------------------------------
# Writing


def _write_shard(path: Path, ids: np.ndarray, texts: list[str], fmt: str) -> int:
    """Write one shard; returns its text bytes (UTF-8)."""
    import pyarrow as pa

    arr = pa.array(texts, type=pa.string())
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": arr}), path,
                       compression="zstd", row_group_size=PARQUET_ROW_GROUP_ROWS)
    else:
        import zstandard

        with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
            for i, t in zip(ids.tolist(), texts):
                out.write((json.dumps({"id": i, "text": t}) + "\n").encode())
    import pyarrow.compute as pc

    return int(pc.sum(pc.binary_length(arr)).as_py() or 0)


def build(spec: CorpusSpec, out_dir: Path, *, log=print) -> dict:
    """Generate the corpus into ``out_dir`` (replacing an unfinished one) unless ``corpus.json``
    there already records the same spec; returns that record.

    Memory: one shard's texts and word ids at a time, plus, for clusters still waiting for a
    later copy, the source's and the copies' word ids (2 bytes per word; shingle sets would take
    ~100 bytes per word), the layout (~25 bytes per copy) and the truth pairs (~300 bytes each
    as Python lists, ~1.5 per copy).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec.check()
    out_dir = Path(out_dir)
    meta_path = out_dir / "corpus.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("spec") == _spec_json(spec) and meta.get("generator_version") == GENERATOR_VERSION:
            return meta
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shards_dir = out_dir / "shards"
    shards_dir.mkdir(parents=True)
    t0 = time.perf_counter()

    vocab = vocabulary(spec.vocab_words, spec.seed)
    cdf = zipf_cdf(spec.vocab_words, spec.zipf_exponent)
    p = np.diff(np.concatenate(([0.0], cdf)))
    bytes_per_word = float(p @ (np.array([len(w) for w in vocab]) + 1))
    mean_words = spec.mean_doc_bytes / bytes_per_word
    mu = math.log(mean_words) - spec.length_sigma ** 2 / 2  # lognormal mean = exp(mu + sigma^2/2)
    max_words = int(mean_words * 20)
    layout = plan_layout(spec)
    waiting: dict[int, np.ndarray] = {}  # source id -> word ids, until its last copy is written
    left = dict(layout.copies_left)
    pairs: dict[str, list] = {k: [] for k in ("id_a", "id_b", "jaccard", "relation", "target")}
    cluster_copies: dict[int, list] = {}  # source id -> [(copy id, word ids)] of its copies so far
    shards, total_bytes, total_words = [], 0, 0
    ci = 0  # next copy (index into layout arrays)
    suffix = ".parquet" if spec.fmt == "parquet" else ".jsonl.zst"
    for s, first in enumerate(range(0, spec.docs, spec.shard_docs)):
        last = min(first + spec.shard_docs, spec.docs)
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, spec.docs, s]))
        n = last - first
        lengths = np.clip(np.round(rng.lognormal(mu, spec.length_sigma, n)), spec.min_words, max_words).astype(np.int64)
        words = draw_words(rng, cdf, int(lengths.sum()))
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        texts: list[str] = []
        for local in range(n):
            doc = first + local
            if ci < len(layout.copy_ids) and layout.copy_ids[ci] == doc:
                src = int(layout.copy_source[ci])
                src_words = waiting[src]
                if layout.copy_kind[ci] == 1:
                    ids_ = src_words
                    text = format_text(_words(vocab, src_words), rng)
                    sim, relation = 1.0, "source-format"
                else:
                    ids_, sim = near_copy(src_words, float(layout.copy_target[ci]), rng, cdf)
                    text = " ".join(_words(vocab, ids_))
                    relation = "source-near"
                _add_pair(pairs, src, doc, sim, relation, float(layout.copy_target[ci]))
                siblings = cluster_copies.setdefault(src, [])
                if siblings:
                    copy_set = shingle_set(ids_.tolist())
                    for other, other_ids in siblings:
                        _add_pair(pairs, other, doc, jaccard(shingle_set(other_ids.tolist()), copy_set), "copy-copy",
                                  float("nan"))
                left[src] -= 1
                if left[src] == 0:
                    del waiting[src], left[src], cluster_copies[src]
                else:
                    siblings.append((doc, ids_))
                ci += 1
                total_words += len(ids_)
            else:
                ids_ = words[offsets[local]:offsets[local + 1]]
                text = " ".join(_words(vocab, ids_))
                if doc in left:
                    waiting[doc] = ids_.copy()
                total_words += len(ids_)
            texts.append(text)
        name = f"shard_{s:05d}{suffix}"
        nbytes = _write_shard(shards_dir / name, np.arange(first, last, dtype=np.int64), texts, spec.fmt)
        total_bytes += nbytes
        shards.append({"file": name, "first_id": first, "docs": n, "text_bytes": nbytes})
        log(f"  shard {s}: docs {first:,}..{last - 1:,}, {nbytes / 1e6:.0f} MB "
            f"({time.perf_counter() - t0:.0f} s)")
    if waiting:  # a bug, not bad input: every source precedes its copies
        raise AssertionError(f"{len(waiting)} sources never got their copies")

    truth = pa.table({
        "id_a": pa.array(pairs["id_a"], pa.int64()), "id_b": pa.array(pairs["id_b"], pa.int64()),
        "jaccard": pa.array(pairs["jaccard"], pa.float64()), "relation": pa.array(pairs["relation"], pa.string()),
        "target": pa.array(pairs["target"], pa.float64()),
    })
    pq.write_table(truth, out_dir / "truth.parquet")
    jac = np.asarray(pairs["jaccard"])
    meta = {
        "generator_version": GENERATOR_VERSION,
        "spec": _spec_json(spec),
        "shards": shards,
        "docs": spec.docs,
        "text_bytes": total_bytes,
        "words": total_words,
        "mean_doc_bytes": total_bytes / spec.docs,
        "copies": int(len(layout.copy_ids)),
        "format_copies": int((layout.copy_kind == 1).sum()),
        "clusters": len(layout.copies_left),
        "truth_pairs": len(jac),
        "truth_pairs_ge_0.8": int((jac >= 0.8).sum()),
        "truth_jaccard_histogram": np.histogram(jac, bins=np.linspace(0.0, 1.0, 21))[0].tolist(),
        "build_s": time.perf_counter() - t0,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _words(vocab: list[str], ids: np.ndarray) -> list[str]:
    """The words of ``ids`` (itemgetter: one C call per document, not one per word)."""
    return list(operator.itemgetter(*ids.tolist())(vocab)) if len(ids) > 1 else [vocab[int(i)] for i in ids]


def _add_pair(pairs: dict, a: int, b: int, sim: float, relation: str, target: float) -> None:
    pairs["id_a"].append(min(a, b))
    pairs["id_b"].append(max(a, b))
    pairs["jaccard"].append(sim)
    pairs["relation"].append(relation)
    pairs["target"].append(target)


def _spec_json(spec: CorpusSpec) -> dict:
    d = asdict(spec)
    d["near_jaccard"] = list(spec.near_jaccard)
    return d


# --------------------------------------------------------------------------------------------
# Reading back, and the accidental-pair check


def read_texts(out_dir: Path, shard: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(ids, texts) of one shard, or of the whole corpus (small corpora only)."""
    import pyarrow.parquet as pq

    meta = json.loads((Path(out_dir) / "corpus.json").read_text())
    files = [s["file"] for s in meta["shards"]] if shard is None else [meta["shards"][shard]["file"]]
    ids, texts = [], []
    for f in files:
        path = Path(out_dir) / "shards" / f
        if f.endswith(".parquet"):
            t = pq.read_table(path)
            ids.append(t["id"].to_numpy())
            texts += t["text"].to_pylist()
        else:
            import zstandard

            with open(path, "rb") as raw:
                rows = [json.loads(line) for line in
                        zstandard.ZstdDecompressor().stream_reader(raw).read().decode().splitlines()]
            ids.append(np.array([r["id"] for r in rows], dtype=np.int64))
            texts += [r["text"] for r in rows]
    return np.concatenate(ids), texts


def check_no_accidental_pairs(out_dir: Path, sample_docs: int = 20_000, threshold: float = 0.5) -> dict:
    """Exact pairs (benchmarks/corpus.py ``exact_pairs``) among the first ``sample_docs``
    documents at ``threshold``, compared with the planted pairs among them."""
    import sys

    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import corpus as kjv_corpus

    ids, texts = [], []
    meta = json.loads((Path(out_dir) / "corpus.json").read_text())
    for s in range(len(meta["shards"])):
        i, t = read_texts(out_dir, s)
        ids.append(i)
        texts += t
        if len(texts) >= sample_docs:
            break
    ids = np.concatenate(ids)[:sample_docs]
    texts = texts[:sample_docs]
    found = {(int(ids[a]), int(ids[b])) for a, b in kjv_corpus.exact_pairs(texts, threshold)}
    truth = pq.read_table(Path(out_dir) / "truth.parquet").to_pydict()
    hi = int(ids.max()) if len(ids) else -1
    planted = {(a, b) for a, b, j in zip(truth["id_a"], truth["id_b"], truth["jaccard"])
               if b <= hi and j >= threshold}
    return {"sample_docs": len(texts), "threshold": threshold, "exact_pairs": len(found),
            "planted_pairs": len(planted), "accidental_pairs": len(found - planted),
            "planted_missed": len(planted - found)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", dest="fmt", choices=FORMATS, default="parquet")
    ap.add_argument("--shard-docs", type=int, default=100_000)
    args = ap.parse_args()
    meta = build(CorpusSpec(args.docs, args.seed, args.shard_docs, args.fmt), args.out_dir)
    print(json.dumps({k: v for k, v in meta.items() if k != "shards"}, indent=2))
    print(json.dumps(check_no_accidental_pairs(args.out_dir), indent=2))


if __name__ == "__main__":
    main()
