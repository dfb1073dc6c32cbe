"""How a packed micro-batch reaches the model without tokens attending across documents.

A loader batch (``ftscale.data.loader``) holds several document pieces per row, then a
padding run; ``position_ids`` restart at 0 for every piece and for the padding run, and
``cu_seqlens`` (int32) marks the same segments over the flattened ``[B·L]`` batch. Each
attention implementation needs a different encoding of that layout:

- ``flash_attention_2``: the varlen kernel over the flattened batch, fed ``cu_seqlens``
  directly (``cu_seq_lens_q/k``, ``max_length_q/k``); no mask is materialised, the cost
  is that of the real document lengths.
- ``sdpa``: a 4D boolean block-diagonal causal mask ``[B, 1, L, L]`` (True = attend).
- ``eager``: the same mask as an additive float (0 / dtype minimum) in the model's dtype,
  because eager attention adds the mask to the scores.
- ``sdpa_segments`` (ours, registered with transformers' ``AttentionInterface``): causal
  sdpa run on each segment of the flattened batch separately, from ``cu_seqlens``. Costs
  ``Σ len²`` instead of ``B·L²`` — the CPU stand-in for flash varlen. It is registered
  with sdpa's mask builder, so calls without ``cu_seq_lens_q`` (generation, padded
  batches) fall back to plain sdpa with the usual mask; transformers passes the
  ``cu_seq_lens_*`` kwargs down to the attention function.

The 4D masks cost ``B·L²`` elements (bool: 1 byte, float32: 4 bytes), e.g. 128 MiB as bool
for B=8, L=4096 — fine at the sizes sdpa/eager are used for (CPU, tests, small GPUs); use
flash-attention for long rows. Padding forms its own segment, so every query attends to
at least itself and no softmax row is fully masked (no NaN).

What the installed transformers (5.23) does, verified in its source and by
``tests/unit/test_train_model.py``:

- ``masking_utils._preprocess_mask_arguments``: a 4D ``attention_mask`` is returned as-is
  (early exit), so ``create_causal_mask`` passes our mask to every layer untouched.
- The same function infers a packed layout from ``position_ids``
  (``find_packed_sequence_indices``: a new sequence wherever the position does not step
  by +1) and ``create_causal_mask`` then ands in ``packed_sequence_mask_function`` —
  but only when ``attention_mask is None`` *and* ``past_key_values is None``.
  ``LlamaModel.forward`` (decorated with ``utils.generic.merge_with_config_defaults``)
  takes ``use_cache`` from ``config.use_cache`` (True for LLaMA) and then creates a
  ``DynamicCache``, even in train mode, which silently switches the inference off; a
  2D padding mask switches it off too. Passing position_ids alone is therefore not
  enough: we pass ``use_cache=False`` and an explicit 4D mask, which does not depend on
  that heuristic.
- ``modeling_flash_attention_utils._flash_attention_forward``: with ``attention_mask``
  None and all of ``cu_seq_lens_q``, ``cu_seq_lens_k``, ``max_length_q``,
  ``max_length_k`` given (``utils.generic.TransformersKwargs`` carries them from
  ``LlamaForCausalLM.forward`` down to attention), it flattens q/k/v to ``[B·L, H, D]``
  and calls the varlen kernel with those boundaries — exactly the loader's
  ``cu_seqlens`` layout, for any B. Its position_ids fallback (``_is_packed_sequence``)
  only applies to batch size 1, and a 2D ``attention_mask`` takes precedence over the
  varlen kwargs, so we pass none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ftscale.errors import ConfigError

if TYPE_CHECKING:
    import torch

ATTN_IMPLEMENTATIONS = ("auto", "flash_attention_2", "sdpa_segments", "sdpa", "eager")
SEGMENTS = "sdpa_segments"


def _segment_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention within each ``cu_seq_lens_q`` segment of the flattened batch.
    query ``[B, H, L, D]``, key/value ``[B, H_kv, L, D]`` → ``[B, L, H, D]``."""
    import torch
    import torch.nn.functional as F

    cu = kwargs.pop("cu_seq_lens_q", None)
    if cu is None:  # an ordinary (unpacked) call, e.g. generation: plain sdpa with its mask
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    B, H, L, D = query.shape
    q = query.transpose(0, 1).reshape(H, B * L, D)
    k = key.transpose(0, 1).reshape(key.shape[1], B * L, D)
    v = value.transpose(0, 1).reshape(value.shape[1], B * L, D)
    bounds = cu.tolist()
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    p = dropout if module.training else 0.0
    # split, not one slice per segment: the backward of a slice writes a full-size gradient
    # buffer per segment; split's backward concatenates once (attention fwd+bwd 21 → 17 ms
    # for 4 rows × 512 tokens of ~4 documents each, CPU).
    parts = [F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling, dropout_p=p,
                                            enable_gqa=H != k.shape[0])
             for qs, ks, vs in zip(q.split(lengths, dim=1), k.split(lengths, dim=1), v.split(lengths, dim=1))]
    return torch.cat(parts, dim=1).reshape(H, B, L, D).permute(1, 2, 0, 3).contiguous(), None


def register_segment_attention() -> None:
    """Make ``attn_implementation="sdpa_segments"`` known to transformers (idempotent). Masks
    are built as for sdpa, so unpacked calls with padding stay correct; packed calls pass
    ``cu_seq_lens_q`` and the mask is not used."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(SEGMENTS, _segment_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SEGMENTS, sdpa_mask)


def flash_attn_available() -> bool:
    """True when a CUDA device and the ``flash_attn`` package are both present."""
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def resolve_attn_implementation(requested: str, dtype: str) -> str:
    """The implementation to load the model with: ``auto`` picks flash_attention_2 when it
    can run (CUDA, flash_attn installed, bfloat16 — the kernel has no fp32 path), else
    sdpa_segments (same results as the masked sdpa, without computing masked-out blocks:
    316 vs 378 ms per forward+backward of 4×512 packed tokens on 2 CPU cores)."""
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"model.attn_implementation: {requested!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if requested == "auto":
        if dtype == "bfloat16" and flash_attn_available():
            return "flash_attention_2"
        requested = SEGMENTS
    if requested == "flash_attention_2":
        if not flash_attn_available():
            raise ConfigError("model.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn "
                              "package; use sdpa (or auto)")
        if dtype != "bfloat16":
            raise ConfigError("model.attn_implementation: flash_attention_2 runs in bfloat16 only; "
                              "use sdpa for float32")
    if requested == SEGMENTS:
        register_segment_attention()
    return requested


def segment_ids(cu_seqlens: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """``[B, L]`` int64: the index of the segment (piece or padding run) of every token,
    numbered over the flattened batch, from the boundaries in ``cu_seqlens``."""
    import torch

    total = batch_size * seq_len
    cu = cu_seqlens.to(torch.int64)
    if cu.ndim != 1 or len(cu) < 2 or int(cu[0]) != 0 or int(cu[-1]) != total or not bool((cu.diff() > 0).all()):
        raise ValueError(f"cu_seqlens must rise strictly from 0 to B·L = {total}; got {cu_seqlens.tolist()}")
    starts = torch.zeros(total, dtype=torch.int64, device=cu.device)
    starts[cu[1:-1]] = 1
    return starts.cumsum(0).view(batch_size, seq_len)


def block_causal_mask(cu_seqlens: torch.Tensor, batch_size: int, seq_len: int,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """``[B, 1, L, L]`` bool, True where query ``q`` may attend key ``k``: same segment and
    ``k <= q``. ``B·L²`` bytes."""
    import torch

    seg = segment_ids(cu_seqlens, batch_size, seq_len).to(device)
    col = torch.arange(seq_len, device=seg.device)
    causal = col[:, None] >= col[None, :]
    return ((seg[:, :, None] == seg[:, None, :]) & causal)[:, None]


def forward_kwargs(batch: Mapping[str, Any], attn_implementation: str, *, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``model(**kwargs)`` (no ``labels``: the loss is ours, see
    ``ftscale.train.loss``) that keep the documents of a packed batch independent.

    ``batch``: a loader micro-batch (``input_ids``, ``position_ids``, ``cu_seqlens``,
    ``max_seqlen``; tensors or arrays). ``attn_implementation``: the model's resolved
    implementation (``model.config._attn_implementation``). ``dtype``: the model's dtype,
    for the eager additive mask (default float32). ``device``: where the model runs
    (default: where ``input_ids`` is). ``use_cache=False`` always: a cache is useless in
    training and, in transformers 5.23, disables its packed-sequence handling.
    """
    import torch

    input_ids = torch.as_tensor(batch["input_ids"])
    device = input_ids.device if device is None else torch.device(device)
    B, L = input_ids.shape
    out: dict[str, Any] = {
        "input_ids": input_ids.to(device),
        "position_ids": torch.as_tensor(batch["position_ids"]).to(device),
        "use_cache": False,
    }
    cu_seqlens = torch.as_tensor(batch["cu_seqlens"])
    if attn_implementation in ("flash_attention_2", SEGMENTS):
        cu = cu_seqlens.to(device=device, dtype=torch.int32)
        max_len = int(batch["max_seqlen"])
        out.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_len, max_length_k=max_len)
    elif attn_implementation == "sdpa":
        out["attention_mask"] = block_causal_mask(cu_seqlens, B, L, device)
    elif attn_implementation == "eager":
        mask_dtype = torch.float32 if dtype is None else dtype
        allowed = block_causal_mask(cu_seqlens, B, L, device)
        out["attention_mask"] = torch.zeros(allowed.shape, dtype=mask_dtype, device=device).masked_fill_(
            ~allowed, torch.finfo(mask_dtype).min)
    else:
        raise ConfigError(f"model.attn_implementation: packed batches support flash_attention_2, sdpa_segments, "
                          f"sdpa and eager, "
                          f"not {attn_implementation!r}")
    return out


__all__ = ["ATTN_IMPLEMENTATIONS", "SEGMENTS", "block_causal_mask", "register_segment_attention", "flash_attn_available", "forward_kwargs",
           "resolve_attn_implementation", "segment_ids"]
