"""What an evaluation asks of a causal LM: log-likelihoods of continuations, negative
log-likelihoods of text windows, and greedy generations. Works on any ``transformers`` causal
LM (a peft model, a DeepSpeed ZeRO-3 module) through its ordinary forward; no loss is
computed by the model.

Multiple choice shares the prompt: one forward pass over the contexts (right-padded) keeps
their key/value cache, which is then indexed once per option (``batch_select_indices``) so
each option's tokens are run on top of its context. The options' common leading tokens (a
chat answer's "It is from the book of") join the context pass and are scored once, for all
options. An item with ``k`` options costs ``len(context) + p + Σ (len(option) - p)`` token
positions instead of ``k · len(context) + Σ len(option)`` — the saving over
lm-evaluation-harness's one sequence per (context, option) pair. Only the positions whose
next token is scored reach the output head (``keep_logits``), so no ``[B, L, V]`` logits are
materialised. Right padding keeps every query row attending to
at least one real token (no fully masked softmax rows); the padding is masked out of the
options' attention and never scored.

Memory per batch: the contexts' cache, ``R · L_ctx · layers · 2 · kv_heads · head_dim``
values for ``R`` option rows, and ``n · V`` fp32 log-probabilities for the ``n`` scored
positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ftscale.errors import DataError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ChoiceRequest:
    """One multiple-choice item as tokens: a non-empty context and non-empty options. The
    last ``shared`` tokens of ``context`` are the options' common first tokens: scored once and
    counted in every option's log-likelihood."""

    context: list[int]
    options: list[list[int]]
    shared: int = 0


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)`` with the continuation's ids taken from the encoding
    of the whole string, so tokens merge across the join as in running text; trailing spaces
    of the context move to the continuation first (both as lm-evaluation-harness does, which
    makes scores comparable with it). No special tokens are added: a chat template writes its
    own."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return ctx, whole[len(ctx):]


def choice_request(tokenizer: Any, context: str, options: Sequence[str], max_len_tokens: int) -> ChoiceRequest:
    """Tokens of one item; the context loses tokens on the left when context + the longest
    option would exceed ``max_len_tokens`` (the model's context window)."""
    pairs = [encode_pair(tokenizer, context, o) for o in options]
    ctx = pairs[0][0]
    conts = [c for _, c in pairs]
    if not ctx or not all(conts):
        raise DataError(f"an item's prompt or an option encodes to no tokens: {context[:60]!r}")
    room = max_len_tokens - max(len(c) for c in conts)
    if room < 1:
        raise DataError(f"an option is longer than the model's context of {max_len_tokens} tokens")
    # common leading tokens, leaving every option at least one token of its own
    shared = 0
    while shared < min(len(c) for c in conts) - 1 and len({c[shared] for c in conts}) == 1:
        shared += 1
    return ChoiceRequest(ctx[-room:] + conts[0][:shared], [c[shared:] for c in conts], shared)


def choice_logliks(model: Any, requests: Sequence[ChoiceRequest], *, pad_id: int,
                   device: torch.device) -> list[list[float]]:
    """Summed log-probabilities (nats) of each option given its context, per request. Two
    forward passes per call (contexts, then options on the shared cache), whatever the batch."""
    import torch

    from ftscale.train.model import keep_logits

    ctx_lens = torch.tensor([len(r.context) for r in requests])
    shared = torch.tensor([r.shared for r in requests])
    ids, mask = _right_padded([r.context for r in requests], pad_id)
    # scored in the context pass: the shared tokens (predicted from the positions before them)
    # and, at the last position, each option's first token
    col = torch.arange(ids.shape[1])[None, :]
    kept = (col >= (ctx_lens - shared - 1)[:, None]) & (col < ctx_lens[:, None])
    positions = torch.arange(ids.shape[1]).expand(ids.shape)
    with keep_logits(model, kept.to(device)):
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    use_cache=True)
    logp = torch.log_softmax(out.logits.float(), dim=-1)  # [Σ (shared + 1), V], row-major
    on_shared = kept & (col < (ctx_lens - 1)[:, None])  # positions predicting a shared token
    is_shared = on_shared[kept].to(device)  # per kept row
    first = logp[~is_shared]  # [B, V]: each option's first token, one row per request
    shared_sum = torch.zeros(len(requests), dtype=torch.float64, device=device)
    if bool(is_shared.any()):
        targets = ids[:, 1:][on_shared[:, :-1]].to(device)
        owners = torch.arange(len(requests))[:, None].expand(ids.shape)[on_shared].to(device)
        shared_sum.index_add_(0, owners, logp[is_shared].gather(1, targets[:, None]).squeeze(1).double())
    # transformers 5.24 names the cache `cache` (input and output) and deprecates `past_key_values`
    cache_name = "cache" if "cache" in out.keys() else "past_key_values"
    cache = out.get(cache_name)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        raise DataError(f"{type(model).__name__} returns no key/value cache; multiple-choice scoring needs one")

    owner = torch.tensor([b for b, r in enumerate(requests) for _ in r.options])
    options = [o for r in requests for o in r.options]
    opt_ids, opt_mask = _right_padded(options, pad_id)
    opt_lens = torch.tensor([len(o) for o in options])
    scored = torch.arange(opt_ids.shape[1])[None, :] < (opt_lens[:, None] - 1)  # predicts the next option token
    cache.batch_select_indices(owner.to(device))
    with keep_logits(model, scored.to(device)):
        out = model(input_ids=opt_ids.to(device), attention_mask=torch.cat([mask[owner], opt_mask], 1).to(device),
                    position_ids=(ctx_lens[owner, None] + torch.arange(opt_ids.shape[1])).to(device),
                    use_cache=True, **{cache_name: cache})
    rest = torch.log_softmax(out.logits.float(), dim=-1)  # [n, V], row-major over (option, position)
    targets = opt_ids[:, 1:][scored[:, :-1]].to(device)
    per_token = rest.gather(1, targets[:, None]).squeeze(1)
    rows = torch.arange(len(options))[:, None].expand(scored.shape)[scored].to(device)
    totals = first[owner.to(device), opt_ids[:, 0].to(device)].double() + shared_sum[owner.to(device)]
    totals.index_add_(0, rows, per_token.double())
    flat = totals.tolist()
    out_lists, at = [], 0
    for r in requests:
        out_lists.append(flat[at:at + len(r.options)])
        at += len(r.options)
    return out_lists


def window_nll(model: Any, windows: Sequence[list[int]], *, pad_id: int, device: torch.device) -> list[float]:
    """Summed negative log-likelihood (nats) of tokens ``1..n-1`` of each window given the
    tokens before them in the window; one forward pass."""
    import torch

    from ftscale.train.model import keep_logits

    ids, mask = _right_padded(windows, pad_id)
    lens = torch.tensor([len(w) for w in windows])
    scored = torch.arange(ids.shape[1])[None, :] < (lens[:, None] - 1)
    with keep_logits(model, scored.to(device)):
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                    position_ids=torch.arange(ids.shape[1]).expand(ids.shape).to(device), use_cache=False)
    targets = ids[:, 1:][scored[:, :-1]].to(device)
    nll = torch.nn.functional.cross_entropy(out.logits.float(), targets, reduction="none").double()
    rows = torch.arange(len(windows))[:, None].expand(scored.shape)[scored].to(device)
    return torch.zeros(len(windows), dtype=torch.float64, device=device).index_add_(0, rows, nll).tolist()


def text_windows(tokenizer: Any, text: str, window_tokens: int, prefix_id: int) -> list[list[int]]:
    """A document as overlapping-by-one windows of at most ``window_tokens + 1`` tokens:
    ``[prefix_id] + tokens`` cut so that every document token is predicted exactly once, from
    at most ``window_tokens`` tokens of context that restart at each window."""
    ids = [prefix_id, *tokenizer.encode(text, add_special_tokens=False)]
    return [ids[s:s + window_tokens + 1] for s in range(0, len(ids) - 1, window_tokens)]


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str],
             device: torch.device, synced: bool) -> list[str]:
    """Greedy continuations of ``prompts`` (already templated text), decoded without special
    tokens and cut before the first ``stop`` string. Generation ends at EOS (the tokenizer's
    and the model's generation config's), at a stop string, or after ``max_new_tokens``.
    ``synced``: keep forward passes in lockstep with the other ranks (ZeRO-3)."""
    import torch
    from transformers import GenerationConfig

    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    pad_id = _pad_id(tokenizer)
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):  # left padding: every row's next token follows its last real one
        ids[i, width - len(e):] = torch.tensor(e)
        mask[i, width - len(e):] = 1
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                              eos_token_id=_eos_ids(model, tokenizer), stop_strings=list(stop) or None)
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                             tokenizer=tokenizer if stop else None, synced_gpus=synced)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [_cut(t, stop) for t in texts]


def dummy_passes(model: Any, tokenizer: Any, kind: str, *, device: torch.device, synced: bool) -> None:
    """The forward passes of one batch of ``kind`` on a one-token input, results discarded:
    what a rank with no items left runs so that ZeRO-3's parameter gathers stay matched."""
    import torch

    pad_id = _pad_id(tokenizer)
    if kind == "multiple_choice":
        choice_logliks(model, [ChoiceRequest([pad_id], [[pad_id]])], pad_id=pad_id, device=device)
    elif kind == "generate":
        ids = torch.tensor([[pad_id]], device=device)
        config = _dummy_generation_config(pad_id, _eos_ids(model, tokenizer))
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                           synced_gpus=synced)
    else:
        window_nll(model, [[pad_id, pad_id]], pad_id=pad_id, device=device)


def _dummy_generation_config(pad_id: int, eos: list[int]) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=1, do_sample=False, pad_token_id=pad_id, eos_token_id=eos)


def _right_padded(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = {int(tokenizer.eos_token_id)}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(int(i) for i in (configured if isinstance(configured, list) else [configured]))
    return sorted(ids)


def _cut(text: str, stop: Sequence[str]) -> str:
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(ends)] if ends else text


__all__ = ["ChoiceRequest", "choice_logliks", "choice_request", "dummy_passes", "encode_pair", "generate",
           "text_windows", "window_nll"]
