"""Prompt tuning and prefix tuning on packed rows: every document sees the virtual tokens.

peft's own prompt-learning forward (``PeftModelForCausalLM.forward``, peft 0.21) handles one
sequence per row: prompt tuning prepends ``n`` learned embeddings to the row and drops
``position_ids``; prefix tuning passes ``n`` learned keys/values per layer as a key/value
cache. On a packed row only its first document would see them, at the wrong positions. For
one unpacked document peft gives (checked in its and transformers 5.24's code, and by
``tests/unit/test_prompt_methods.py`` to 1e-5 against plain peft on each document alone):

- prompt tuning: the sequence ``[virtual (n); document (L)]``, causal, ``position_ids`` left
  to transformers: ``0..n-1`` for the virtual tokens, ``n..n+L-1`` for the document's.
- prefix tuning: a cache holding the ``n`` prefix keys/values (not rotated: they enter the
  cache directly); the document's queries and keys at positions ``n..n+L-1``
  (``cache_position`` starts at the cache's length; peft shifts given position ids by ``n``),
  every query attending to all ``n`` prefix entries, then causally to the document.

``PackedPromptModel`` reproduces that for every document of a packed row at once. It takes
the loader's kwargs as ``ftscale.train.attention.forward_kwargs`` builds them for sdpa or
eager — a 4D block-diagonal document mask ``[B, 1, L, L]`` (bool, or additive float for
eager) — and widens that mask with the virtual columns, visible to every real token:

- prompt tuning: one virtual block at the row start (``[B, n + L]`` embeddings), the mask
  ``[B, 1, n + L, n + L]``: the virtual block causal on itself and visible to every real
  row, the document mask below it; real positions ``position_ids + n``. The output head
  runs on the last ``L`` positions only (``logits_to_keep=L``), so logits are ``[B, L, V]``
  as for any other method and ``keep_logits`` still works.
- prefix tuning: the prefix cache (peft's ``get_prompt``) and the mask ``[B, 1, L, n + L]``;
  positions ``position_ids + n``.

The padding run stays its own segment (it sees the virtual tokens too; it carries no loss).
The 4D mask costs ``B·(n+L)²`` elements, which is why these methods run with sdpa or eager
attention only (``ftscale.train.adapters.attn_implementation_for``): flash-attention varlen
and ``sdpa_segments`` have no way to share one block of keys across segments.

The trainable parameters are peft's (``prompt_encoder``): ``save_pretrained`` writes peft's
adapter, which ``PeftModel.from_pretrained`` loads on the original base.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ftscale.config.train import PROMPT_METHODS
from ftscale.errors import ConfigError


def widen_mask(mask: torch.Tensor, n_virtual: int, *, virtual_rows: bool) -> torch.Tensor:
    """``mask`` (``[B, 1, L, L]``, bool True = attend, or additive float 0 / dtype min) with
    ``n_virtual`` key columns in front, visible to every row; with ``virtual_rows`` also
    ``n_virtual`` query rows on top (causal among themselves, blind to the real tokens)."""
    B, _, L, _ = mask.shape
    n = n_virtual
    left = torch.ones(B, 1, L, n, dtype=torch.bool, device=mask.device)
    rows = torch.cat([_like(left, mask), mask], dim=3)
    if not virtual_rows:
        return rows
    top = torch.zeros(B, 1, n, n + L, dtype=torch.bool, device=mask.device)
    top[:, :, :, :n] = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    return torch.cat([_like(top, mask), rows], dim=2)


def _like(allowed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Boolean ``allowed`` in ``mask``'s convention (bool, or additive float 0 / dtype min)."""
    if mask.dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=mask.dtype, device=mask.device).masked_fill_(
        ~allowed, torch.finfo(mask.dtype).min)


class PackedPromptModel(torch.nn.Module):
    """A peft prompt-tuning or prefix-tuning model (``PeftModelForCausalLM``) run on packed
    rows, each document seeing the virtual tokens as peft would show them to it alone.

    Called like the model itself with ``forward_kwargs``' output for sdpa or eager:
    ``input_ids`` / ``position_ids`` ``[B, L]`` and a 4D ``attention_mask``; returns the base
    model's output with ``logits`` ``[B, L, V]``. ``save_pretrained`` writes peft's adapter."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        from peft import PeftType

        self.peft_model = peft_model
        config = peft_model.active_peft_config
        if config.peft_type not in (PeftType.PROMPT_TUNING, PeftType.PREFIX_TUNING):
            raise ValueError(f"PackedPromptModel wraps prompt or prefix tuning, not {config.peft_type}")
        self.num_virtual_tokens = int(config.num_virtual_tokens)
        self.prefix = config.peft_type == PeftType.PREFIX_TUNING
        base_params = inspect.signature(peft_model.base_model.forward).parameters
        # transformers 5.24 names the cache argument `cache` and deprecates `past_key_values`
        self._cache_arg = "cache" if "cache" in base_params else "past_key_values"

    @property
    def config(self) -> Any:
        return self.peft_model.config

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.peft_model.get_output_embeddings()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.peft_model.get_input_embeddings()

    def save_pretrained(self, directory: str, **kwargs: Any) -> None:
        self.peft_model.save_pretrained(directory, **kwargs)

    def merge_and_unload(self) -> Any:
        kind = "prefix" if self.prefix else "prompt"
        raise ConfigError(f"{kind} tuning learns virtual tokens, not weight deltas: there is nothing to merge into "
                          "the base model; export the adapter and load it with peft's PeftModel.from_pretrained")

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                **kwargs: Any) -> Any:
        if attention_mask is None or attention_mask.ndim != 4:
            raise ValueError("PackedPromptModel needs the 4D document mask that forward_kwargs builds for sdpa or "
                             "eager attention")
        B, L = input_ids.shape
        n = self.num_virtual_tokens
        peft_model = self.peft_model
        if self.prefix:
            cache = peft_model.get_prompt(batch_size=B, max_cache_len=n + L)
            return peft_model.base_model(input_ids=input_ids, position_ids=position_ids + n,
                                         attention_mask=widen_mask(attention_mask, n, virtual_rows=False),
                                         **{self._cache_arg: cache}, **kwargs)
        embeds = peft_model.word_embeddings(input_ids)
        prompts = peft_model.get_prompt(batch_size=B).to(embeds.dtype)
        virtual_positions = torch.arange(n, device=position_ids.device, dtype=position_ids.dtype).expand(B, n)
        return peft_model.base_model(inputs_embeds=torch.cat([prompts, embeds], dim=1),
                                     position_ids=torch.cat([virtual_positions, position_ids + n], dim=1),
                                     attention_mask=widen_mask(attention_mask, n, virtual_rows=True),
                                     logits_to_keep=L, **kwargs)


__all__ = ["PROMPT_METHODS", "PackedPromptModel", "widen_mask"]
