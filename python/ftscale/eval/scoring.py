"""Scores of one generated answer against its references, and corpus-level diversity.

Pure functions of strings: no model, no tokenizer. Each per-item score is in [0, 1]; a task
reports the mean over its items. With several references an item scores its best match (the
usual convention for alternative gold answers).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

from ftscale.errors import ConfigError

GEN_METRICS = ("exact_match", "contains", "rouge_l")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str, *, ignore_case: bool = False, ignore_punctuation: bool = False) -> str:
    """``text`` with runs of whitespace collapsed to one space and the ends stripped; optionally
    lower-cased and with ASCII punctuation removed (before the whitespace is collapsed)."""
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCTUATION)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two (already normalised) strings are equal, else 0.0."""
    return float(prediction == reference)


def contains(prediction: str, reference: str) -> float:
    """1.0 when the reference occurs in the prediction (both already normalised); an empty
    reference never counts as contained, so a blank gold answer cannot score."""
    return float(bool(reference) and reference in prediction)


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ConfigError("metric rouge_l needs the rouge-score package: pip install 'ftscale[eval]'") from e
    # rouge-score's own tokenizer: lower-cases and splits on anything but [a-z0-9]; no stemming,
    # so the score depends on the words alone (the ROUGE-1.5.5 default without -m).
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of words) from the ``rouge-score`` package."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


SCORERS: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match, "contains": contains,
                                                    "rouge_l": rouge_l}


def extract(text: str, pattern: re.Pattern[str] | None) -> str:
    """The part of a generation that is scored: with ``pattern``, its first match's first
    group (or the whole match when it has no group), '' when nothing matches; else ``text``."""
    if pattern is None:
        return text
    found = pattern.search(text)
    if found is None:
        return ""
    return found.group(1) if pattern.groups else found.group(0)


def score_generation(prediction: str, references: Sequence[str], metrics: Sequence[str], *,
                     pattern: re.Pattern[str] | None = None, ignore_case: bool = False,
                     ignore_punctuation: bool = False) -> dict[str, float]:
    """``{metric: score}`` of one generation: ``extract`` then ``normalize`` (the references
    are normalised the same way), then each metric's best score over the references."""
    pred = normalize(extract(prediction, pattern), ignore_case=ignore_case, ignore_punctuation=ignore_punctuation)
    refs = [normalize(r, ignore_case=ignore_case, ignore_punctuation=ignore_punctuation) for r in references]
    return {m: max(SCORERS[m](pred, r) for r in refs) for m in metrics}


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct word n-grams over all n-grams of all ``texts``
    (whitespace words, lower-cased). 1.0 when no n-gram repeats, near 0 when the model says
    the same thing to every prompt (mode collapse); 0.0 when there is no n-gram at all."""
    if n < 1:
        raise ConfigError(f"distinct_n: n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = text.lower().split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def choice_accuracy(logliks: Sequence[Sequence[float]], choices: Sequence[Sequence[str]],
                    answers: Sequence[int]) -> dict[str, float]:
    """``acc`` (argmax of the summed log-likelihoods) and ``acc_norm`` (argmax of the
    log-likelihood per character of the option, lm-evaluation-harness's length
    normalisation) over items; ties go to the first option, as ``argmax`` does."""
    if not answers:
        return {"acc": 0.0, "acc_norm": 0.0}
    correct = correct_norm = 0
    for ll, opts, answer in zip(logliks, choices, answers):
        correct += _argmax(ll) == answer
        correct_norm += _argmax([v / max(len(o), 1) for v, o in zip(ll, opts)]) == answer
    return {"acc": correct / len(answers), "acc_norm": correct_norm / len(answers)}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def compile_pattern(pattern: str | None, key: str) -> re.Pattern[str] | None:
    """``pattern`` compiled, or a ConfigError naming ``key`` when it is not a valid regex."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{key}: not a valid regular expression ({e}): {pattern!r}") from e


__all__ = ["GEN_METRICS", "SCORERS", "choice_accuracy", "compile_pattern", "contains", "distinct_n", "exact_match",
           "extract", "normalize", "rouge_l", "score_generation"]
