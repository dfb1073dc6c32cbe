"""Token-level loss, normalised over the whole global batch.

The objective of one optimizer step is the mean cross-entropy over every loss token of
the global batch (all ranks, all accumulation micro-batches)::

    L_step = (Σ_r Σ_m S_rm) / T        S_rm: sum of token losses of micro-batch m on rank r
                                       T:    loss tokens of the whole step (Σ_r Σ_m n_rm)

so a token weighs the same whichever micro-batch or rank it lands in; averaging per
micro-batch means instead would weigh the tokens of a sparsely supervised SFT batch up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftscale.data.format import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


def loss_sum_and_count(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, n)``: the sum of the token cross-entropies (nats, fp32 0-dim tensor) and the
    number of loss tokens (int64 0-dim tensor, left on the device: no host sync).

    HF shift convention: ``logits[:, i]`` predicts ``labels[:, i + 1]``; labels equal to
    -100 carry no loss. The loader sets -100 at the first token of every packed piece, so
    no prediction crosses a document boundary, and ``labels[:, 0]`` (dropped by the shift)
    is always -100 there: ``n`` equals the loader's ``num_loss_tokens``.

    The logits are upcast to fp32 for the log-softmax (a ``B·L·V·4``-byte copy).

    The trainer computes the same ``S`` from the kept positions only (``loss_positions`` +
    ``kept_loss_sum``); this full-logits form is the definition the tests check it against.
    """
    import torch.nn.functional as F

    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    loss_sum = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (shift_labels != IGNORE_INDEX).sum()


def loss_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, targets)``: where logits are needed and what they must predict.

    ``keep`` ``[B, L]`` bool is true at position ``i`` of row ``b`` when ``labels[b, i + 1]``
    carries loss; ``targets`` ``[n]`` are those labels in row-major order, the order of
    ``hidden[keep]``. Projecting only these ``n`` hidden states onto the vocabulary
    (``keep_logits``) gives the same loss as ``loss_sum_and_count`` on all logits, without the
    ``B·L·V`` logits of the positions that carry none: prompts, system turns and template
    text in SFT (84% of the positions in the demo's instruction set), boundaries in CPT.
    """
    import torch

    shifted = labels[:, 1:]
    supervised = shifted != IGNORE_INDEX
    keep = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    keep[:, :-1] = supervised
    return keep, shifted[supervised]


def kept_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies of ``logits`` ``[n, V]`` (the kept positions, upcast to fp32)
    against ``targets`` ``[n]``: ``S`` of ``loss_sum_and_count``; 0 when ``n`` is 0."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), targets, reduction="sum")


def scaled_loss(loss_sum: torch.Tensor, global_loss_tokens: int | torch.Tensor, world_size: int,
                grad_accum_steps: int) -> torch.Tensor:
    """The value to backpropagate for one micro-batch: ``S · W · G / T``.

    ``loss_sum`` is this micro-batch's ``S``; ``global_loss_tokens`` is ``T``, the loss
    tokens of the whole step over every rank and micro-batch (the trainer all-reduces the
    loaders' ``num_loss_tokens`` of the step's ``G`` micro-batches before the first
    backward); ``W`` = ``world_size``, ``G`` = ``grad_accum_steps``.

    Derivation: DeepSpeed's ``engine.backward`` divides each micro-batch loss by ``G``
    (gradient accumulation scaling), accumulates the ``G`` gradients, and the data-parallel
    all-reduce averages them over the ``W`` ranks. Backpropagating ``x_rm = S_rm · W·G / T``
    therefore yields::

        g = (1/W) Σ_r Σ_m (1/G) ∇x_rm = (1/W) Σ_r Σ_m (1/G) (W·G/T) ∇S_rm = ∇(Σ_r Σ_m S_rm) / T

    the gradient of the global token-mean loss. A step without any loss token (``T = 0``)
    gives zero gradients instead of a division by zero.
    """
    import torch

    tokens = torch.as_tensor(global_loss_tokens, device=loss_sum.device).clamp(min=1).to(loss_sum.dtype)
    return loss_sum * (world_size * grad_accum_steps) / tokens


__all__ = ["kept_loss_sum", "loss_positions", "loss_sum_and_count", "scaled_loss"]
