"""Train/eval decontamination by word n-gram overlap (the Rust index does the work)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ftscale import _core
from ftscale.errors import ConfigError

DEFAULT_NGRAM = 13  # GPT-3 / Llama decontamination convention


@dataclass(frozen=True)
class Contamination:
    """contaminated: bool per training record; hits / ngrams: n-grams found in the eval index
    and in total per record; leaks: (training record, eval item) pairs for contaminated records."""

    contaminated: np.ndarray
    hits: np.ndarray
    ngrams: np.ndarray
    leak_record: np.ndarray
    leak_eval_item: np.ndarray
    eval_ngrams: int


def _segments(items: Sequence[str | Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """Flatten records that are a string or a list of segments (chat turns) with owner ids."""
    texts: list[str] = []
    owners: list[int] = []
    for i, item in enumerate(items):
        parts = [item] if isinstance(item, str) else list(item)
        texts.extend(parts)
        owners.extend([i] * len(parts))
    return texts, np.asarray(owners, dtype=np.uint32)


def find_contamination(
    train: Sequence[str | Sequence[str]],
    eval_items: Sequence[str | Sequence[str]],
    *,
    ngram: int = DEFAULT_NGRAM,
    min_fraction: float = 0.0,
    strip_punctuation: bool = True,
    num_threads: int | None = None,
) -> Contamination:
    """Flag training records sharing word ``ngram``-grams with any eval item.

    Each record (train or eval) is a string or a list of segments (for example chat turns);
    n-grams never span two segments. A record is contaminated when its share of n-grams
    found in the eval set is >= ``min_fraction`` (0: any single hit). Text is NFKC-normalised,
    lowercased, and punctuation becomes spaces unless ``strip_punctuation`` is False.
    """
    if ngram < 1:
        raise ConfigError(f"decontamination ngram must be >= 1, got {ngram}")
    if not 0.0 <= min_fraction <= 1.0:
        raise ConfigError(f"decontamination min_fraction must be in [0, 1], got {min_fraction}")
    eval_texts, eval_owners = _segments(eval_items)
    train_texts, train_owners = _segments(train)
    out = _core.decontaminate(
        eval_texts, eval_owners, train_texts, train_owners, len(train), ngram, min_fraction,
        strip_punctuation, num_threads,
    )
    return Contamination(
        contaminated=out["contaminated"],
        hits=out["hits"],
        ngrams=out["ngrams"],
        leak_record=out["leak_record"],
        leak_eval_item=out["leak_eval_item"],
        eval_ngrams=out["eval_ngrams"],
    )
