"""Typed surface of the Rust extension (``rust/ftscale-py``). Private: use ``ftscale``."""

from typing import Any, final

from typing_extensions import Self

import numpy as np
import numpy.typing as npt

__all__ = [
    "MINHASH_SIGNATURE_VERSION",
    "ChatEncoder",
    "EvalIndex",
    "SpillStore",
    "UnionFind",
    "audit_loose_params",
    "audit_score",
    "audit_summarize",
    "audit_universe",
    "band_keys",
    "exact_hashes",
    "exact_keep",
    "find_buckets",
    "jsonl_chunks",
    "pair_similarities",
    "preference_ranks",
    "verify_buckets",
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
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]: ...
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

_U32 = npt.NDArray[np.uint32]
_U64 = npt.NDArray[np.uint64]

def exact_hashes(
    texts: list[Any],
    nfkc: bool,
    lowercase: bool,
    collapse_whitespace: bool,
    strip_punctuation: bool,
    num_threads: int | None = None,
) -> tuple[_U64, _U64]: ...
def exact_keep(hi: _U64, lo: _U64, rank: _U32, num_threads: int | None = None) -> npt.NDArray[np.int64]: ...
def jsonl_chunks(path: str, target_bytes: int) -> tuple[list[int], list[int], int]: ...
def preference_ranks(
    uids: _U64, scores: npt.NDArray[np.float64] | None = None, num_threads: int | None = None
) -> _U32: ...
def band_keys(sigs: npt.NDArray[np.uint32], bands: int, rows: int, num_threads: int | None = None) -> _U64: ...
def find_buckets(
    bands: _U32, keys: _U64, docs: _U32, rank: _U32, num_threads: int | None = None
) -> tuple[_U32, npt.NDArray[np.int64], _U32]: ...
def audit_loose_params(threshold: float, num_perm: int) -> tuple[int, int]: ...
def audit_universe(bands: _U32, keys: _U64, docs: _U32, num_threads: int | None = None) -> tuple[_U32, _U32]: ...

@final
class UnionFind:
    def __new__(cls, n: int) -> Self: ...
    def __len__(self) -> int: ...
    def find_many(self, docs: _U32) -> _U32: ...
    def union_many(self, a: _U32, b: _U32) -> int: ...
    def representatives(self, rank: _U32) -> _U32: ...

@final
class SpillStore:
    def __new__(
        cls,
        signatures: list[str],
        texts: list[tuple[str, str]] | None,
        counts: list[int],
        num_perm: int,
        ngram: int,
        seed: int,
        char_ngrams: bool,
        nfkc: bool,
        strip_punctuation: bool,
    ) -> Self: ...
    @property
    def num_docs(self) -> int: ...

def verify_buckets(
    store: SpillStore,
    members: _U32,
    roots: _U32,
    offsets: npt.NDArray[np.int64],
    threshold: float,
    bands: int,
    rows: int,
    verify: str,
    num_threads: int | None = None,
) -> tuple[_U32, _U32, int]: ...
def pair_similarities(
    store: SpillStore,
    a: _U32,
    b: _U32,
    threshold: float,
    bands: int,
    rows: int,
    verify: str,
    num_threads: int | None = None,
) -> npt.NDArray[np.float32]: ...
def audit_score(
    store: SpillStore,
    a: _U32,
    b: _U32,
    threshold: float,
    bands: int,
    rows: int,
    verify: str,
    num_threads: int | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]: ...
def audit_summarize(
    store: SpillStore,
    a: _U32,
    b: _U32,
    estimated: npt.NDArray[np.float64],
    flagged: npt.NDArray[np.bool_],
    threshold: float,
    loose_bands: int,
    loose_rows: int,
    n: int,
    seed: int,
    num_threads: int | None = None,
) -> dict[str, Any]: ...

@final
class EvalIndex:
    def __new__(
        cls,
        eval_texts: list[Any],
        eval_owners: _U32,
        ngram: int,
        min_fraction: float,
        strip_punctuation: bool,
        num_threads: int | None = None,
    ) -> Self: ...
    @staticmethod
    def from_bytes(bytes: bytes) -> EvalIndex: ...
    def to_bytes(self) -> bytes: ...
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...
    @property
    def num_ngrams(self) -> int: ...
    def scan(
        self, train_texts: list[Any], train_owners: _U32, num_records: int, num_threads: int | None = None
    ) -> dict[str, Any]: ...

@final
class ChatEncoder:
    def __new__(cls, template: str, special_tokens: list[tuple[str, str]], tokenizer_json: str, policy: str) -> Self: ...
    def render(self, messages: Any, tools: Any | None = None, add_generation_prompt: bool = False) -> str: ...
    def encode_batch(self, conversations: list[Any], num_threads: int | None = None) -> dict[str, Any]: ...
    def encode_columns(self, offsets: npt.NDArray[np.int64], role_offsets: npt.NDArray[np.int64],
                       role_data: npt.NDArray[np.uint8], content_offsets: npt.NDArray[np.int64],
                       content_data: npt.NDArray[np.uint8], role_first: bool, system_prompt: str | None = None,
                       num_threads: int | None = None) -> dict[str, Any]: ...
    def tokenize(self, text: str) -> tuple[npt.NDArray[np.int32], list[tuple[int, int]]]: ...
    @property
    def fast_path(self) -> bool: ...
    @property
    def fused_concatenations(self) -> bool: ...
    @property
    def prefixes_from_one_render(self) -> bool: ...
