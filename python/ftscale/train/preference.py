"""Preference objectives (DPO and variants) over packed pairs.

A preference micro-batch (``PackedLoader`` over ``kind: preference`` sources) holds whole pairs:
pieces ``2i`` (chosen) and ``2i + 1`` (rejected) of the micro-batch are pair ``i``, each with its
own positions and attention segment. The policy's log-probability of a side is the sum of the
token log-probs of its completion (the tokens prep supervised)::

    log π(y | x) = Σ_t log softmax(logits_t)[y_t]        over the side's supervised tokens

computed from the logits of the supervised positions only (``keep_logits``). With the
reference model's ``log π_ref`` of the same sides, the implicit reward of a side is
``r = β (log π - log π_ref)`` and the per-pair ``h = (log π_c - log π_ref,c) - (log π_r - log π_ref,r)``:

- ``sigmoid`` (DPO, Rafailov et al. 2023): ``-(1 - ε) log σ(β h) - ε log σ(-β h)``; ``ε`` is the
  label smoothing of conservative DPO (0: plain DPO);
- ``ipo`` (Azar et al. 2023): ``(h - 1 / (2β))²``, with ``h`` from length-normalised log-probs
  (the mean over a side's tokens), as IPO is defined on and TRL computes it;
- ``hinge`` (SLiC): ``max(0, 1 - β h)``.

The step loss is the mean over every pair of the global batch (all ranks and micro-batches),
normalised the way ``loss.scaled_loss`` normalises tokens, with pairs in place of tokens.

Memory per micro-batch: the kept logits (``n × V`` for ``n`` supervised tokens) as in SFT, plus
8 B per sequence; nothing per dataset document except with ``reference: precomputed``
(``ReferenceTable``: 4 B per document of the train and val splits, on every rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftscale.data.format import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
# Summed per step and divided by the step's pairs: the metrics every preference step reports.
METRIC_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
               "logps/rejected", "logps/accuracy")


def sequence_logps(kept_logits: torch.Tensor, targets: torch.Tensor, target_sequence: torch.Tensor,
                   num_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums, counts)`` per sequence: the summed log-probs (fp32) of the supervised tokens of
    every sequence of the micro-batch and how many there are.

    ``kept_logits`` ``[n, V]`` are the logits of the ``n`` positions that predict a supervised
    token (``loss.loss_positions`` order), ``targets`` ``[n]`` those tokens and
    ``target_sequence`` ``[n]`` the sequence each belongs to.
    """
    import torch
    import torch.nn.functional as F

    token_logps = -F.cross_entropy(kept_logits.float(), targets, reduction="none")
    sums = torch.zeros(num_sequences, dtype=torch.float32, device=kept_logits.device)
    sums = sums.index_add(0, target_sequence, token_logps)
    counts = torch.zeros(num_sequences, dtype=torch.float32, device=kept_logits.device)
    counts = counts.index_add(0, target_sequence, torch.ones_like(token_logps))
    return sums, counts


def target_sequences(labels: torch.Tensor, sequence_index: torch.Tensor) -> torch.Tensor:
    """The sequence of every supervised target, in ``loss.loss_positions`` order (row-major over
    the shifted labels)."""
    shifted = labels[:, 1:]
    return sequence_index[:, 1:][shifted != IGNORE_INDEX]


def pair_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
                label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(losses, chosen_rewards, rejected_rewards)``, one value per pair (fp32).

    The inputs are per-pair log-probs of the chosen and rejected sides under the policy and the
    reference (summed over the side's tokens; for ``ipo`` pass the per-token means). Rewards are
    ``β (log π - log π_ref)``, detached.
    """
    import torch.nn.functional as F

    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "hinge":
        losses = F.relu(1.0 - beta * h)
    else:
        raise ValueError(f"unknown preference loss {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


@dataclass
class PairStats:
    """Sums over the pairs of one or more micro-batches (host floats). ``rewards/accuracy``:
    the share of pairs whose chosen reward beats the rejected one (0 before the first update,
    when policy and reference agree); ``logps/accuracy``: the share the policy itself ranks
    right, meaningful before training too."""

    pairs: float = 0.0
    loss: float = 0.0
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    correct: float = 0.0
    chosen_logps: float = 0.0
    rejected_logps: float = 0.0
    prefers_chosen: float = 0.0  # pairs whose chosen side the policy finds likelier (log π_c > log π_r)

    def add(self, other: PairStats) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_list(self) -> list[float]:
        return [getattr(self, k) for k in self.__dataclass_fields__]

    @classmethod
    def from_list(cls, values: list[float]) -> PairStats:
        return cls(*values)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Means per pair: the loss and what ``METRIC_KEYS`` name (empty without pairs)."""
        if not self.pairs:
            return {}
        n = self.pairs
        return {f"{prefix}loss": self.loss / n,
                f"{prefix}rewards/chosen": self.chosen_reward / n,
                f"{prefix}rewards/rejected": self.rejected_reward / n,
                f"{prefix}rewards/margin": (self.chosen_reward - self.rejected_reward) / n,
                f"{prefix}rewards/accuracy": self.correct / n,
                f"{prefix}logps/chosen": self.chosen_logps / n,
                f"{prefix}logps/rejected": self.rejected_logps / n,
                f"{prefix}logps/accuracy": self.prefers_chosen / n}


def pair_stats(losses: Any, chosen_rewards: Any, rejected_rewards: Any, chosen_logps: Any,
               rejected_logps: Any) -> PairStats:
    """The host-side sums of one micro-batch's pairs (one device sync)."""
    import torch

    values = torch.stack([losses.detach().sum(), chosen_rewards.sum(), rejected_rewards.sum(),
                          (chosen_rewards > rejected_rewards).float().sum(), chosen_logps.detach().sum(),
                          rejected_logps.detach().sum(),
                          (chosen_logps.detach() > rejected_logps.detach()).float().sum()]).double().cpu().tolist()
    return PairStats(float(losses.numel()), *values)


class ReferenceTable:
    """``reference: precomputed``: the reference log-probs of every document (side) of a split,
    computed in one pass with the starting weights before the first step and kept in every
    checkpoint (``REFERENCE_FILE``), so a resumed run uses the same values.

    Per document of the loader's index: a float32 log-prob sum and a float32 supervised-token
    count (8 B per document, i.e. 16 B per pair) on every rank.
    """

    def __init__(self, logps: Any, counts: Any) -> None:
        import numpy as np

        self.logps = np.asarray(logps, dtype=np.float32)
        self.counts = np.asarray(counts, dtype=np.float32)

    def lookup(self, docs: torch.Tensor, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        index = docs.cpu().numpy()
        return (torch.from_numpy(self.logps[index]).to(device), torch.from_numpy(self.counts[index]).to(device))


__all__ = ["LOSS_TYPES", "METRIC_KEYS", "PairStats", "ReferenceTable", "pair_losses", "pair_stats",
           "sequence_logps", "target_sequences"]
