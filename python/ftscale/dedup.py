"""Public dedup API: MinHash signatures, near-duplicate and exact-duplicate clusters.

All three accept ``list[str]`` or a pyarrow string array / chunked array (read in place,
no copy). Work runs in Rust on all cores (``num_threads`` or ``FTSCALE_NUM_THREADS``) with
the GIL released; results do not depend on the thread count or on the input order (the
keep rule uses ``uids`` and ``scores``, never positions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ftscale import _core
from ftscale.errors import ConfigError

# Candidates are verified, so an LSH false positive costs only a signature comparison while
# a false negative is a duplicate kept: weigh misses 9x (datasketch weighs both 0.5, which
# at threshold 0.8 / 128 permutations catches a pair of Jaccard 0.8 only 40% of the time).
DEFAULT_FP_WEIGHT = 0.1
DEFAULT_FN_WEIGHT = 0.9

# Signatures and near-duplicate decisions are comparable only between builds with the same
# version (word splitting, hashing and permutations); dedup and prep reports record it.
MINHASH_SIGNATURE_VERSION: int = _core.MINHASH_SIGNATURE_VERSION


@dataclass(frozen=True)
class DedupResult:
    """Clusters of duplicates.

    keep: bool array, True for the one record kept per cluster.
    cluster: int64 array, index of the kept representative of each record's cluster (a
        record with no duplicate is its own representative).
    similarity: float32 array, similarity of each record to its representative (1.0 for kept).
    """

    keep: np.ndarray
    cluster: np.ndarray
    similarity: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_removed(self) -> int:
        return int((~self.keep).sum())


def texts_arg(texts: Any) -> list:
    """The list form `_core` accepts: str items, or Arrow string chunks (read in place)."""
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pa = None
    if pa is not None:
        if isinstance(texts, pa.ChunkedArray):
            chunks = texts.chunks
        elif isinstance(texts, pa.Array):
            chunks = [texts]
        else:
            chunks = None
        if chunks is not None:
            out = []
            for chunk in chunks:
                if pa.types.is_string_view(chunk.type) if hasattr(pa.types, "is_string_view") else False:
                    chunk = chunk.cast(pa.large_string())
                if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
                    raise ConfigError(f"texts must be a string array, got Arrow type {chunk.type}")
                out.append(chunk)
            return out
    if isinstance(texts, str):
        raise ConfigError("texts must be a sequence of strings, not one string")
    return texts if isinstance(texts, list) else list(texts)


def _uids_arg(uids: Sequence[int] | np.ndarray | None) -> np.ndarray | None:
    return None if uids is None else np.ascontiguousarray(uids, dtype=np.uint64)


def _scores_arg(scores: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
    return None if scores is None else np.ascontiguousarray(scores, dtype=np.float64)


def _check_ngram(ngram: int, num_perm: int) -> None:
    if ngram < 1:
        raise ConfigError(f"ngram must be >= 1, got {ngram}")
    if not 1 <= num_perm <= 4096:
        raise ConfigError(f"num_perm must be in 1..4096, got {num_perm}")


def minhash(
    texts: Any,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 0,
    *,
    char_ngrams: bool = False,
    nfkc: bool = True,
    strip_punctuation: bool = False,
    num_threads: int | None = None,
) -> np.ndarray:
    """MinHash signatures: uint32 array of shape (len(texts), num_perm).

    Shingles are ``ngram`` consecutive words of ``text.lower().split()`` after NFKC (or
    ``ngram`` characters with ``char_ngrams=True``); a text with fewer words is one shingle;
    an empty text has the all-0xFFFFFFFF signature. Comparable only with signatures made by a
    build with the same ``MINHASH_SIGNATURE_VERSION``.
    """
    _check_ngram(ngram, num_perm)
    sigs, _ = _core.minhash(
        texts_arg(texts), num_perm, ngram, seed, char_ngrams, nfkc, strip_punctuation, num_threads
    )
    return sigs


def _result(cluster: np.ndarray, similarity: np.ndarray, info: dict[str, Any]) -> DedupResult:
    keep = cluster == np.arange(len(cluster), dtype=np.int64)
    return DedupResult(keep=keep, cluster=cluster, similarity=similarity, info=info)


def near_duplicates(
    texts: Any,
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 0,
    *,
    bands: int | None = None,
    rows: int | None = None,
    verify: str = "auto",
    uids: Sequence[int] | np.ndarray | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    char_ngrams: bool = False,
    nfkc: bool = True,
    strip_punctuation: bool = False,
    fp_weight: float = DEFAULT_FP_WEIGHT,
    fn_weight: float = DEFAULT_FN_WEIGHT,
    audit_pairs: int = 0,
    num_threads: int | None = None,
) -> DedupResult:
    """Near-duplicate clusters by MinHash LSH.

    bands, rows: LSH banding; by default derived from ``threshold`` by minimising
        ``fp_weight``·(false-positive area) + ``fn_weight``·(false-negative area).
    verify: "auto" (default: the signature estimate, but exact Jaccard of the shingle sets for
        pairs whose estimate is within 3 standard errors of the threshold), "estimate"
        (signature agreement only), "exact" (always exact) or "none" (every LSH candidate is a
        duplicate).
    uids, scores: keep rule — the highest score wins, then the lowest uid (default uid: the
        position). uids must be unique.
    audit_pairs: when > 0, also sample that many flagged and near-threshold unflagged pairs,
        compute exact Jaccard, and put estimated precision/recall in ``info["audit"]``.
    """
    _check_ngram(ngram, num_perm)
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    out = _core.near_duplicates(
        texts_arg(texts), threshold, num_perm, ngram, seed, bands, rows, verify,
        _uids_arg(uids), _scores_arg(scores), char_ngrams, nfkc, strip_punctuation,
        fp_weight, fn_weight, audit_pairs, num_threads,
    )
    cluster = out.pop("cluster")
    similarity = out.pop("similarity")
    return _result(cluster, similarity, out)


def exact_duplicates(
    texts: Any,
    *,
    nfkc: bool = True,
    lowercase: bool = True,
    collapse_whitespace: bool = True,
    strip_punctuation: bool = False,
    uids: Sequence[int] | np.ndarray | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    num_threads: int | None = None,
) -> DedupResult:
    """Exact-duplicate clusters of the normalised texts (128-bit hash; same keep rule)."""
    cluster = _core.exact_duplicates(
        texts_arg(texts), nfkc, lowercase, collapse_whitespace, strip_punctuation,
        _uids_arg(uids), _scores_arg(scores), num_threads,
    )
    similarity = np.ones(len(cluster), dtype=np.float32)
    return _result(cluster, similarity, {})


def lsh_params(
    threshold: float, num_perm: int = 128, fp_weight: float = DEFAULT_FP_WEIGHT,
    fn_weight: float = DEFAULT_FN_WEIGHT,
) -> tuple[int, int]:
    """(bands, rows) for ``threshold`` minimising the weighted false-positive/negative areas."""
    return _core.lsh_params(threshold, num_perm, fp_weight, fn_weight)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability ``1 - (1 - s**rows)**bands`` that a pair becomes an LSH candidate."""
    return _core.lsh_candidate_probability(similarity, bands, rows)
