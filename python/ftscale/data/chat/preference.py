"""Preference pairs for DPO: a pair becomes two documents, chosen then rejected, that share
their prompt's tokens and carry loss on their final assistant turn only.

Each side is the conversation ``prompt + [reply]`` encoded by the SFT engine the driver chose
(``ChatEncoder`` or ``RustChatEncoder``: the model's own chat template, the SFT span rule), so a
reply is supervised exactly as an SFT assistant turn is: its content and the template's
end-of-turn marker. SFT supervises every assistant turn; a preference document keeps only the
last run of supervised tokens (the reply's span, the last span of the rendering) and clears the
mask before it, so earlier assistant turns of a multi-turn prompt are context. Samples the
encoder adds for turns the template rewrites belong to the prompt and are not kept.

The tokens before the reply are the prompt; they must be the same in both documents (the
template renders the prompt independently of the reply), else the pair is a
``template_mismatch``. Lengths are per side, ``max_side_tokens`` (``seq_len // 2``, so a pair
fits one packed row): a prompt that fills it is ``prompt_overlong``; a longer side has its
reply's end cut (``overlong == "truncate"``) or the pair is quarantined (``overlong``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Message = dict[str, Any]
Pair = tuple[list[Message], Message, Message, Any]  # (template prompt messages, chosen, rejected, tools)


@dataclass
class EncodedPairs:
    """The documents of a batch of pairs: for each kept pair, its chosen then its rejected document.

    ``ids`` (int32) and ``masks`` (uint8) per document; ``owners[k]`` is the index of the pair
    document ``k`` belongs to; ``failures`` maps a pair index to (reason, detail).
    """

    ids: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)
    prompt_tokens: list[int] = field(default_factory=list)  # per kept pair: tokens of the shared prompt
    truncated: int = 0  # kept pairs with a reply cut to the side limit
    python_rendered: int = 0  # sides the Rust engine handed to the Python one
    located_turns: int = 0


def final_turn_start(mask: np.ndarray) -> int | None:
    """Index of the first token of the last run of supervised tokens (None when there is none)."""
    ones = np.flatnonzero(mask)
    if not len(ones):
        return None
    end = int(ones[-1]) + 1
    before = np.flatnonzero(mask[:end] == 0)
    return int(before[-1]) + 1 if len(before) else 0


def encode_pairs(encoder: Any, pairs: Sequence[Pair], max_side_tokens: int, overlong: str) -> EncodedPairs:
    """Encode a batch of pairs with one ``encoder.encode_batch`` call (see the module docstring).

    Held: the pairs' 2 x N conversations and their samples (4 + 1 bytes per token).
    """
    conversations = []
    for prompt, chosen, rejected, tools in pairs:
        conversations.append(([*prompt, chosen], tools))
        conversations.append(([*prompt, rejected], tools))
    encoded = encoder.encode_batch(conversations)
    out = EncodedPairs(python_rendered=encoded.python_rendered, located_turns=encoded.located_turns)
    failed = {i: (reason, detail) for i, reason, detail in encoded.failures}
    full: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for ids, mask, owner in zip(encoded.ids, encoded.masks, encoded.owners):
        full.setdefault(owner, (np.asarray(ids, np.int32), np.asarray(mask, np.uint8)))  # first: the full rendering
    for p in range(len(pairs)):
        try:
            sides, prompt_len, cut = _pair(p, failed, full, max_side_tokens, overlong)
        except _Rejected as exc:
            out.failures[p] = (exc.reason, exc.detail)
            continue
        for ids, mask in sides:
            out.ids.append(ids)
            out.masks.append(mask)
            out.owners.append(p)
        out.prompt_tokens.append(prompt_len)
        out.truncated += cut
    return out


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


Side = tuple[np.ndarray, np.ndarray]  # (ids, mask) of one document


def _pair(p: int, failed: dict[int, tuple[str, str]], full: dict[int, Side], max_side_tokens: int,
          overlong: str) -> tuple[list[Side], int, bool]:
    """(chosen and rejected documents, prompt tokens, whether a reply was cut) of pair ``p``;
    raises ``_Rejected`` with its quarantine reason."""
    sides = []
    for k, name in ((2 * p, "chosen"), (2 * p + 1, "rejected")):
        if k in failed:
            reason, detail = failed[k]
            raise _Rejected(reason, f"{name} side: {detail}")
        start = final_turn_start(full[k][1]) if k in full else None
        if start is None:
            raise _Rejected("template_mismatch", f"{name} side: the chat template's rendering supervises no token "
                                                 "of the reply")
        ids, mask = full[k]
        mask = mask.copy()
        mask[:start] = 0
        sides.append((ids, mask, start))
    (c_ids, c_mask, c_start), (r_ids, r_mask, r_start) = sides
    if c_start != r_start or not np.array_equal(c_ids[:c_start], r_ids[:r_start]):
        raise _Rejected("template_mismatch", (
            f"the prompt's tokens differ between the chosen ({c_start} tokens) and the rejected ({r_start} tokens) "
            "rendering; the template renders the prompt differently depending on the reply"))
    if c_start >= max_side_tokens:
        raise _Rejected("prompt_overlong", (f"the prompt is {c_start} tokens, leaving no room for a reply in a side "
                                            f"of at most seq_len // 2 = {max_side_tokens} tokens"))
    cut = max(len(c_ids), len(r_ids)) > max_side_tokens
    if cut and overlong == "drop":
        raise _Rejected("overlong", (f"chosen {len(c_ids)} / rejected {len(r_ids)} tokens; each side may hold "
                                     f"seq_len // 2 = {max_side_tokens}"))
    if cut:
        c_ids, c_mask = c_ids[:max_side_tokens], c_mask[:max_side_tokens]
        r_ids, r_mask = r_ids[:max_side_tokens], r_mask[:max_side_tokens]
    return [(c_ids, c_mask), (r_ids, r_mask)], c_start, cut
