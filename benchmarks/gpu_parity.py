"""Packed-row attention parity: one packed micro-batch through the attention implementations
ftscale uses for packed rows (``flash_attention_2`` varlen, ``sdpa_segments``) against every
document run on its own (``sdpa``, causal) — the loss, the final hidden states at the
positions that carry a loss (what the output head sees) and every parameter's gradient.

A control runs the same rows with plain causal attention across documents (what a naive
packer does); its differences must exceed the tolerances, or the comparison could not have
failed and the check says so.

Memory (the ~1B case): the reference's gradients are kept (2 bytes per parameter in bf16)
and the hidden states at the loss positions (``tokens × hidden × 2`` bytes) per variant.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

# bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operation). Two
# attention kernels in bf16 differ by a few roundings per layer: the mean loss over
# thousands of tokens averages them out, hidden states and gradients keep them.
TOLERANCE = {
    "bfloat16": {"loss_rel": 2e-3, "hidden_rel": 3e-2, "grad_rel": 5e-2},
    "float32": {"loss_rel": 1e-5, "hidden_rel": 1e-4, "grad_rel": 1e-4},
}
CONTROL = "cross_document_control"


def row_layout(seq_len: int) -> list[list[int]]:
    """Document lengths (tokens) of three rows of ``seq_len``: long pieces ending in a
    1-token document (no loss token) and a padding run; one document filling the row (no
    padding segment); many short documents and padding."""
    first = [int(seq_len * f) for f in (0.44, 0.29, 0.17, 0.07)] + [1]
    short = max(2, seq_len // 8)
    return [first, [seq_len], [short] * 7]


def packed_batch(seq_len: int, vocab_size: int, seed: int = 0) -> tuple[dict[str, Any], list[tuple[Any, Any]]]:
    """A micro-batch in ``ftscale.data.loader``'s layout (CPT labels: every token but each
    document's first; padding: id 0, its own segment, positions from 0) and its documents
    ``(ids, labels)`` in row-major order."""
    import torch

    from ftscale.data.format import IGNORE_INDEX

    rows = row_layout(seq_len)
    rng = np.random.default_rng(seed)
    B = len(rows)
    ids = np.zeros((B, seq_len), dtype=np.int64)
    labels = np.full((B, seq_len), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((B, seq_len), dtype=np.int64)
    attention = np.zeros((B, seq_len), dtype=np.int64)
    segments, docs = [], []
    for r, lengths in enumerate(rows):
        col = 0
        for n in lengths:
            doc = rng.integers(1, vocab_size, n)
            lab = doc.copy()
            lab[0] = IGNORE_INDEX
            ids[r, col:col + n], labels[r, col:col + n] = doc, lab
            positions[r, col:col + n] = np.arange(n)
            attention[r, col:col + n] = 1
            docs.append((torch.from_numpy(doc), torch.from_numpy(lab)))
            segments.append(n)
            col += n
        if col < seq_len:
            positions[r, col:] = np.arange(seq_len - col)
            segments.append(seq_len - col)
    cu_seqlens = np.concatenate(([0], np.cumsum(segments))).astype(np.int32)
    batch = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
             "position_ids": torch.from_numpy(positions), "attention_mask": torch.from_numpy(attention),
             "cu_seqlens": torch.from_numpy(cu_seqlens), "max_seqlen": int(max(segments)),
             "num_loss_tokens": int((labels != IGNORE_INDEX).sum()), "num_tokens": int(attention.sum())}
    return batch, docs


def _run(model: Any, calls: list[Callable[[], tuple[Any, Any]]], total_loss_tokens: int) -> tuple[float, Any]:
    """Forward + backward of every call (each returns ``(logits, labels)``), the loss summed
    and divided by ``total_loss_tokens``; gradients accumulate over the calls. Returns the
    mean loss and the output head's inputs at the loss positions, concatenated."""
    import torch

    from ftscale.train.loss import loss_positions, loss_sum_and_count

    model.zero_grad(set_to_none=True)
    head_inputs: list[Any] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: head_inputs.append(args[0]))
    loss, kept = 0.0, []
    try:
        for call in calls:
            logits, labels = call()
            s, _ = loss_sum_and_count(logits, labels)
            (s / total_loss_tokens).backward()
            loss += float(s.detach())
            keep, _ = loss_positions(labels.to(logits.device))
            kept.append(head_inputs.pop()[keep].detach())
    finally:
        hook.remove()
    return loss / total_loss_tokens, torch.cat(kept)


def _rel(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


def compare(model_config: dict, seq_len: int, device: str, dtype: str, flash: bool) -> dict[str, Any]:
    """Every variant's relative differences to the per-document reference: ``loss_rel``,
    ``hidden_rel`` (L2 over the head inputs), ``grad_rel`` (L2 over all gradients) and
    ``grad_max_tensor_rel`` (the worst parameter tensor). ``flash``: include
    ``flash_attention_2`` (needs CUDA, bf16 and flash-attn)."""
    import torch

    from ftscale.train.attention import SEGMENTS, forward_kwargs, register_segment_attention
    from ftscale.train.model import load_model

    with torch.device(device):  # initialised on the device: seconds less for a 1B model
        model = load_model(None, model_config, dtype=dtype, attn_implementation="sdpa", seed=0)
    model.train()
    register_segment_attention()
    batch, docs = packed_batch(seq_len, model.config.vocab_size)
    total = batch["num_loss_tokens"]
    labels = batch["labels"].to(device)

    def packed(impl: str) -> Callable[[], tuple[Any, Any]]:
        def call() -> tuple[Any, Any]:
            model.set_attn_implementation(impl)
            kwargs = forward_kwargs(batch, impl, dtype=model.dtype, device=device)
            return model(**kwargs).logits, labels
        return call

    def leak() -> tuple[Any, Any]:
        model.set_attn_implementation("sdpa")
        return model(input_ids=batch["input_ids"].to(device), use_cache=False).logits, labels

    def per_document(ids: Any, lab: Any) -> Callable[[], tuple[Any, Any]]:
        def call() -> tuple[Any, Any]:
            model.set_attn_implementation("sdpa")
            return model(input_ids=ids[None].to(device), use_cache=False).logits, lab[None].to(device)
        return call

    params = [p for p in model.parameters() if p.requires_grad]
    ref_loss, ref_hidden = _run(model, [per_document(i, lab) for i, lab in docs], total)
    ref_grads = [p.grad.detach().clone() for p in params]
    variants = {SEGMENTS: [packed(SEGMENTS)], CONTROL: [leak]}
    if flash:
        variants["flash_attention_2"] = [packed("flash_attention_2")]
    out: dict[str, Any] = {}
    for name, calls in variants.items():
        loss, hidden = _run(model, calls, total)
        diff_sq = ref_sq = 0.0
        worst = 0.0
        for p, g in zip(params, ref_grads):
            d = float((p.grad.float() - g.float()).norm()) ** 2
            r = float(g.float().norm()) ** 2
            diff_sq, ref_sq = diff_sq + d, ref_sq + r
            if r > 0:
                worst = max(worst, (d / r) ** 0.5)
        out[name] = {"loss": loss, "loss_rel": abs(loss - ref_loss) / abs(ref_loss), "hidden_rel": _rel(hidden, ref_hidden),
                     "grad_rel": (diff_sq / ref_sq) ** 0.5, "grad_max_tensor_rel": worst}
    return {"reference_loss": ref_loss, "loss_tokens": total, "rows": len(row_layout(seq_len)),
            "documents": len(docs), "params": sum(p.numel() for p in params), "variants": out}


def verdict(result: dict[str, Any], dtype: str) -> tuple[bool, list[str]]:
    """``(passed, problems)``: every packed variant within ``TOLERANCE[dtype]`` and the
    control outside it on every measure (else the comparison is not discriminating)."""
    tol = TOLERANCE[dtype]
    problems = []
    for name, v in result["variants"].items():
        for key, limit in tol.items():
            if name == CONTROL and v[key] <= limit and key != "loss_rel":
                problems.append(f"control {key} {v[key]:.1e} <= tolerance {limit:.0e}: not discriminating")
            elif name != CONTROL and v[key] > limit:
                problems.append(f"{name} {key} {v[key]:.1e} > {limit:.0e}")
    return not problems, problems
