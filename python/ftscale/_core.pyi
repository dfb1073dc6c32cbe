"""Typed surface of the Rust extension (``rust/ftscale-py``). Private: use ``ftscale``."""

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "MINHASH_SIGNATURE_VERSION",
    "decontaminate",
    "default_num_threads",
    "exact_duplicates",
    "lsh_candidate_probability",
    "lsh_params",
    "minhash",
    "near_duplicates",
    "pack",
    "apply_overlong",
    "plan_mixture",
]

MINHASH_SIGNATURE_VERSION: int

def minhash(
    texts: list[Any],
    num_perm: int,
    ngram: int,
    seed: int,
    char_ngrams: bool,
    nfkc: bool,
    strip_punctuation: bool,
    num_threads: int | None = None,
) -> npt.NDArray[np.uint32]: ...
def near_duplicates(
    texts: list[Any],
    threshold: float,
    num_perm: int,
    ngram: int,
    seed: int,
    bands: int | None,
    rows: int | None,
    verify: str,
    uids: npt.NDArray[np.uint64] | None,
    scores: npt.NDArray[np.float64] | None,
    char_ngrams: bool,
    nfkc: bool,
    strip_punctuation: bool,
    fp_weight: float,
    fn_weight: float,
    audit_pairs: int = 0,
    num_threads: int | None = None,
) -> dict[str, Any]: ...
def exact_duplicates(
    texts: list[Any],
    nfkc: bool,
    lowercase: bool,
    collapse_whitespace: bool,
    strip_punctuation: bool,
    uids: npt.NDArray[np.uint64] | None,
    scores: npt.NDArray[np.float64] | None,
    num_threads: int | None = None,
) -> npt.NDArray[np.int64]: ...
def lsh_params(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]: ...
def lsh_candidate_probability(s: float, bands: int, rows: int) -> float: ...
def decontaminate(
    eval_texts: list[Any],
    eval_owners: npt.NDArray[np.uint32],
    train_texts: list[Any],
    train_owners: npt.NDArray[np.uint32],
    num_records: int,
    ngram: int,
    min_fraction: float,
    strip_punctuation: bool,
    num_threads: int | None = None,
) -> dict[str, Any]: ...
def default_num_threads() -> int: ...
def pack(lengths: npt.NDArray[np.uint32], seq_len: int, strategy: str) -> dict[str, Any]: ...
def apply_overlong(lengths: npt.NDArray[np.uint32], seq_len: int, policy: str) -> dict[str, Any]: ...
def plan_mixture(
    names: list[str],
    lengths: list[npt.NDArray[np.uint32]],
    weights: list[float],
    families: list[npt.NDArray[np.uint32] | None],
    max_repeats: list[float | None],
    target_tokens: int,
    temperature: float,
    max_repeat: float,
    family_cap: float | None,
    seed: int,
    epoch: int,
) -> dict[str, Any]: ...
