"""Checks of a source's loss masks: what share of its tokens is supervised."""

from __future__ import annotations

import numpy as np

from ftscale.data.chat.encoder import EncodedChat
from ftscale.errors import DataError

# Lint thresholds. Heuristics, not literature values: real SFT sets supervise roughly 15-70%
# of tokens; a share outside [2%, 98%] almost always means the mask is wrong (template
# mismatch, assistant text in the wrong role) or the data is degenerate (one-word answers to
# long prompts, prompt-less records).
MIN_SUPERVISED_SHARE = 0.02
MAX_SUPERVISED_SHARE = 0.98
# An encoded conversation always has an assistant turn, so a zero share means its span was
# empty or whitespace; more than a few such records points at the template, not the data.
MAX_ZERO_SHARE_FRACTION = 0.05


def supervised_share(encoded: EncodedChat) -> float:
    """Fraction of the conversation's tokens that carry loss (0.0 for an empty one)."""
    n_tokens = len(encoded.loss_mask)
    return float(encoded.loss_mask.sum()) / n_tokens if n_tokens else 0.0


def lint_masks(
    source: str, template_name: str, shares: np.ndarray, token_counts: np.ndarray | None = None
) -> list[str]:
    """Check a source's loss masks; returns warnings, raises DataError when nothing is supervised.

    ``shares`` holds :func:`supervised_share` per encoded conversation. The source's share is
    their mean, or the token-weighted mean when ``token_counts`` (tokens per conversation) is
    given. A source with no encoded conversations yields no warnings (its counts say why).
    """
    shares = np.asarray(shares, dtype=np.float64)
    if shares.size == 0:
        return []
    if token_counts is None:
        total = float(shares.mean())
    else:
        counts = np.asarray(token_counts, dtype=np.float64)
        total = float((shares * counts).sum() / counts.sum()) if counts.sum() else 0.0
    if total == 0.0:
        raise DataError(
            f"source {source!r}: no token is supervised under {template_name}; check that the "
            "chat template renders assistant turns and that the messages field holds turns with "
            "role 'assistant'"
        )
    warnings = []
    if total < MIN_SUPERVISED_SHARE:
        warnings.append(
            f"source {source!r}: only {total:.1%} of tokens are supervised under {template_name} "
            f"(expected at least {MIN_SUPERVISED_SHARE:.0%}); check the template and the roles"
        )
    if total > MAX_SUPERVISED_SHARE:
        warnings.append(
            f"source {source!r}: {total:.1%} of tokens are supervised under {template_name} "
            f"(expected at most {MAX_SUPERVISED_SHARE:.0%}); are prompts missing or in the assistant role?"
        )
    zero_fraction = float((shares == 0.0).mean())
    if zero_fraction > MAX_ZERO_SHARE_FRACTION:
        warnings.append(
            f"source {source!r}: {zero_fraction:.1%} of conversations have no supervised token under "
            f"{template_name} (expected at most {MAX_ZERO_SHARE_FRACTION:.0%}); empty assistant replies "
            "or a template that drops them"
        )
    return warnings


