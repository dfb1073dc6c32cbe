"""Tests for ftscale.train.{model,attention,loss} on a tiny random LLaMA (2 layers, hidden 64).

The acceptance test: a packed batch run through ``forward_kwargs`` gives exactly the loss
of running each document on its own with plain transformers, for sdpa and eager; without
the block mask it does not.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ftscale.data.format import IGNORE_INDEX  # noqa: E402
from ftscale.errors import ConfigError  # noqa: E402
from ftscale.train.attention import block_causal_mask, forward_kwargs, segment_ids  # noqa: E402
from ftscale.train.loss import loss_sum_and_count, scaled_loss  # noqa: E402
from ftscale.train.model import (  # noqa: E402
    apply_lora,
    flops_per_token,
    load_model,
    matmul_parameters,
    trainable_parameters,
)

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 64}
PAD = 0
SEQ_LEN = 16
# Two rows of document pieces (token counts), each row then padded to SEQ_LEN; the 1-token
# piece exercises a segment with no loss token. Supervised spans (SFT-like) are in LOSS_FROM.
ROWS = [[5, 6, 1, 2], [7, 4]]
LOSS_FROM = {(1, 0): 3}  # row 1, piece 0: loss only from its 4th token on (a "prompt" of 3)


def _packed_batch(seed: int = 0) -> tuple[dict, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A loader-style micro-batch (see ftscale.data.loader) and its documents (ids, labels)."""
    rng = np.random.default_rng(seed)
    B = len(ROWS)
    input_ids = np.full((B, SEQ_LEN), PAD, dtype=np.int64)
    labels = np.full((B, SEQ_LEN), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((B, SEQ_LEN), dtype=np.int64)
    attention_mask = np.zeros((B, SEQ_LEN), dtype=np.int64)
    segments, docs = [], []
    for r, pieces in enumerate(ROWS):
        col = 0
        for i, n in enumerate(pieces):
            ids = rng.integers(1, TINY["vocab_size"], n)
            lab = ids.copy()
            lab[: LOSS_FROM.get((r, i), 1)] = IGNORE_INDEX  # always the piece's first token
            input_ids[r, col:col + n], labels[r, col:col + n] = ids, lab
            position_ids[r, col:col + n] = np.arange(n)
            attention_mask[r, col:col + n] = 1
            docs.append((torch.from_numpy(ids), torch.from_numpy(lab)))
            segments.append(n)
            col += n
        if col < SEQ_LEN:  # the padding run: its own segment, positions from 0
            position_ids[r, col:] = np.arange(SEQ_LEN - col)
            segments.append(SEQ_LEN - col)
    cu_seqlens = np.concatenate(([0], np.cumsum(segments))).astype(np.int32)
    batch = {
        "input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(position_ids), "attention_mask": torch.from_numpy(attention_mask),
        "cu_seqlens": torch.from_numpy(cu_seqlens), "max_seqlen": int(max(segments)),
        "num_loss_tokens": int((labels != IGNORE_INDEX).sum()), "num_tokens": int(attention_mask.sum()),
    }
    return batch, docs


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def tiny(request: pytest.FixtureRequest) -> torch.nn.Module:
    return load_model(None, TINY, attn_implementation=request.param, seed=0).eval()


def _per_document(model: torch.nn.Module, docs: list) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, lab in docs:
            s, n = loss_sum_and_count(model(input_ids=ids[None]).logits, lab[None])
            total, count = total + float(s), count + int(n)
    return total, count


def _packed(model: torch.nn.Module, **kwargs) -> tuple[float, int]:
    batch, _ = _packed_batch()
    with torch.no_grad():
        s, n = loss_sum_and_count(model(**kwargs).logits, batch["labels"])
    return float(s), int(n)


# --------------------------------------------------------------------------------------------
# packed attention: the acceptance test


def test_packed_loss_equals_per_document_loss(tiny: torch.nn.Module) -> None:
    batch, docs = _packed_batch()
    impl = tiny.config._attn_implementation
    packed_sum, packed_count = _packed(tiny, **forward_kwargs(batch, impl, dtype=tiny.dtype))
    doc_sum, doc_count = _per_document(tiny, docs)
    assert packed_count == doc_count == batch["num_loss_tokens"] == 17  # 4+5+0+1 | 4+3
    assert packed_sum == pytest.approx(doc_sum, rel=1e-5)


def test_segment_attention_equals_per_document_loss() -> None:
    """sdpa_segments (our CPU varlen stand-in) gives the per-document losses too."""
    model = load_model(None, TINY, attn_implementation="sdpa_segments", seed=0).eval()
    assert model.config._attn_implementation == "sdpa_segments"
    batch, docs = _packed_batch()
    packed_sum, packed_count = _packed(model, **forward_kwargs(batch, "sdpa_segments"))
    reference = load_model(None, TINY, attn_implementation="sdpa", seed=0).eval()
    doc_sum, doc_count = _per_document(reference, docs)
    assert packed_count == doc_count == 17
    assert packed_sum == pytest.approx(doc_sum, rel=1e-5)


def test_without_block_mask_documents_leak(tiny: torch.nn.Module) -> None:
    """What a naive caller would pass: each differs from the per-document loss."""
    batch, docs = _packed_batch()
    doc_sum, _ = _per_document(tiny, docs)
    ids, pos = batch["input_ids"], batch["position_ids"]
    # a plain causal mask with padding (the usual HF call), restarting positions or not
    padding_mask = batch["attention_mask"]
    for kwargs in ({"attention_mask": padding_mask, "position_ids": pos}, {"attention_mask": padding_mask}):
        assert _packed(tiny, input_ids=ids, **kwargs)[0] != pytest.approx(doc_sum, rel=1e-3)
    # position_ids alone: transformers' packed-sequence inference is off because LlamaModel
    # makes a DynamicCache (config.use_cache is True), see ftscale.train.attention
    assert _packed(tiny, input_ids=ids, position_ids=pos)[0] != pytest.approx(doc_sum, rel=1e-3)


def test_transformers_infers_packing_from_position_ids_only_without_cache(tiny: torch.nn.Module) -> None:
    """Documents the installed transformers: masking_utils.find_packed_sequence_indices makes
    the mask block-diagonal from restarting position_ids when there is no cache and no
    attention_mask. We do not rely on it (forward_kwargs passes a 4D mask); this test says
    when that behaviour changes."""
    batch, docs = _packed_batch()
    doc_sum, _ = _per_document(tiny, docs)
    inferred, _ = _packed(tiny, input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    assert inferred == pytest.approx(doc_sum, rel=1e-5)


def test_block_causal_mask_layout() -> None:
    batch, _ = _packed_batch()
    seg = segment_ids(batch["cu_seqlens"], 2, SEQ_LEN)
    assert seg[0].tolist() == [0] * 5 + [1] * 6 + [2] + [3] * 2 + [4] * 2
    assert seg[1].tolist() == [5] * 7 + [6] * 4 + [7] * 5
    mask = block_causal_mask(batch["cu_seqlens"], 2, SEQ_LEN)
    assert mask.shape == (2, 1, SEQ_LEN, SEQ_LEN) and mask.dtype == torch.bool
    assert mask[0, 0, 4, 0] and mask[0, 0, 4, 4] and not mask[0, 0, 4, 5]  # causal within a piece
    assert not mask[0, 0, 5, 4] and mask[0, 0, 10, 5]  # piece 2 starts fresh
    assert mask[1, 0].sum(-1).min() >= 1  # padding attends to itself: no empty softmax row
    eager = forward_kwargs(batch, "eager", dtype=torch.bfloat16)["attention_mask"]
    assert eager.dtype == torch.bfloat16 and eager[0, 0, 4, 0] == 0 and eager[0, 0, 5, 4] < -1e30
    with pytest.raises(ValueError, match="cu_seqlens"):
        segment_ids(torch.tensor([0, 5, 30], dtype=torch.int32), 2, SEQ_LEN)


def test_flash_kwargs_carry_cu_seqlens_and_no_mask() -> None:
    batch, _ = _packed_batch()
    kw = forward_kwargs(batch, "flash_attention_2")
    assert "attention_mask" not in kw and kw["use_cache"] is False
    assert kw["cu_seq_lens_q"].dtype == torch.int32 and kw["cu_seq_lens_q"].tolist() == batch["cu_seqlens"].tolist()
    assert kw["cu_seq_lens_k"] is kw["cu_seq_lens_q"] and kw["max_length_q"] == kw["max_length_k"] == 7
    assert torch.equal(kw["position_ids"], batch["position_ids"])
    with pytest.raises(ConfigError, match="model.attn_implementation"):
        forward_kwargs(batch, "flex_attention")


# --------------------------------------------------------------------------------------------
# loss normalisation


def _micro_batch(lengths_and_loss_from: list[tuple[int, int]], seed: int) -> dict:
    """One row per document (no packing needed here), labels masked before ``loss_from``."""
    rng = np.random.default_rng(seed)
    L = max(n for n, _ in lengths_and_loss_from)
    B = len(lengths_and_loss_from)
    ids = np.full((B, L), PAD, dtype=np.int64)
    labels = np.full((B, L), IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros((B, L), dtype=np.int64)
    segs = []
    for r, (n, loss_from) in enumerate(lengths_and_loss_from):
        ids[r, :n] = rng.integers(1, TINY["vocab_size"], n)
        labels[r, loss_from:n] = ids[r, loss_from:n]
        pos[r, :n] = np.arange(n)
        pos[r, n:] = np.arange(L - n)
        segs += [n] + ([L - n] if n < L else [])
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos), "max_seqlen": L,
            "cu_seqlens": torch.from_numpy(np.concatenate(([0], np.cumsum(segs))).astype(np.int32))}


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, retain_graph=True))


def test_scaled_loss_gives_the_global_token_mean_gradient() -> None:
    model = load_model(None, TINY, attn_implementation="sdpa", seed=1)
    W, G = 2, 2  # 2 simulated ranks × 2 micro-batches, with 3 to 20 loss tokens each
    shards = [[_micro_batch([(9, 6), (6, 1)], 10), _micro_batch([(12, 1)], 11)],
              [_micro_batch([(5, 2)], 12), _micro_batch([(8, 1), (10, 7), (4, 1)], 13)]]
    losses = [[loss_sum_and_count(model(**forward_kwargs(b, "sdpa")).logits, b["labels"]) for b in rank]
              for rank in shards]
    counts = [int(n) for rank in losses for _, n in rank]
    assert len(set(counts)) == 4  # every micro-batch weighs differently
    T = sum(counts)

    # what DeepSpeed does: backward(x / G) accumulated over G micro-batches, then mean over ranks
    per_rank = []
    for rank in losses:
        micro_grads = [_grads(model, scaled_loss(s, T, W, G) / G) for s, _ in rank]
        per_rank.append([sum(gs) for gs in zip(*micro_grads)])
    step = [sum(rs) / W for rs in zip(*per_rank)]

    # reference: one token-mean loss over all the data of the step
    reference = _grads(model, torch.stack([s for rank in losses for s, _ in rank]).sum() / T)
    for got, want in zip(step, reference):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

    # the usual per-micro-batch mean weighs tokens unequally: a different gradient
    naive = _grads(model, sum(s / n for rank in losses for s, n in rank) / (W * G))
    assert max(float((a - b).abs().max()) for a, b in zip(naive, reference)) > 1e-4


def test_loss_shift_convention_and_scaled_loss_formula() -> None:
    labels = torch.tensor([[3, IGNORE_INDEX, 5, 6]])
    total, n = loss_sum_and_count(torch.zeros(1, 4, 8), labels)
    assert int(n) == 2 and float(total) == pytest.approx(2 * np.log(8))  # uniform logits: ln V each
    # logits[:, i] predicts labels[:, i + 1]: a confident right guess there costs ~0
    logits = torch.zeros(1, 4, 8)
    logits[0, 1, 5] = logits[0, 2, 6] = 50.0
    assert float(loss_sum_and_count(logits, labels)[0]) < 1e-6
    model = load_model(None, TINY, seed=2)  # and agrees with transformers' own causal-LM loss
    ids = torch.randint(1, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf = model(input_ids=ids, labels=ids)
    s, n = loss_sum_and_count(hf.logits, ids)
    assert int(n) == 16 and float(s) / 16 == pytest.approx(float(hf.loss), rel=1e-5)

    s = torch.tensor(12.0)
    assert float(scaled_loss(s, 48, 4, 2)) == pytest.approx(12.0 * 4 * 2 / 48)
    assert float(scaled_loss(s, torch.tensor(0), 2, 1)) == pytest.approx(24.0)  # T=0: no NaN


# --------------------------------------------------------------------------------------------
# loading, LoRA, FLOPs


def test_inline_config_is_seeded_and_typed() -> None:
    a, b = load_model(None, TINY, seed=3), load_model(None, TINY, seed=3)
    c = load_model(None, TINY, seed=4, dtype="bfloat16")
    assert a.config._attn_implementation == "sdpa_segments"  # auto on CPU
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight.float())
    assert {p.dtype for p in c.parameters()} == {torch.bfloat16}


def test_load_saved_directory(tmp_path) -> None:
    model = load_model(None, TINY, seed=5)
    model.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"), None, attn_implementation="eager")
    assert again.config._attn_implementation == "eager"
    want = model.state_dict()
    for name, tensor in again.state_dict().items():
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=0)


@pytest.mark.parametrize(("path", "inline", "kwargs", "message"), [
    (None, None, {}, "model.path / model.config"),
    ("x", TINY, {}, "model.path / model.config"),
    ("/nonexistent/model", None, {}, "model.path: .* not found"),
    ("pkg:no_such_module_ftscale/m.gguf", None, {}, "model.path: .*not installed"),
    (None, {"hidden_size": 64}, {}, "model.config.model_type: missing"),
    (None, {"model_type": "no-such-arch"}, {}, "model.config.model_type: 'no-such-arch'"),
    (None, TINY, {"dtype": "float16"}, "dtype"),
    (None, TINY, {"attn_implementation": "flash"}, "model.attn_implementation"),
])
def test_config_errors(path, inline, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_model(path, inline, **kwargs)


def test_config_error_for_unusable_directories(tmp_path) -> None:
    with pytest.raises(ConfigError, match="model.path: .*neither"):
        load_model(str(tmp_path), None)
    (tmp_path / "config.json").write_text('{"model_type": "no-such-arch"}')
    with pytest.raises(ConfigError, match="model.path: cannot load a causal LM"):
        load_model(str(tmp_path), None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_flash_attention_refused_without_gpu() -> None:
    with pytest.raises(ConfigError, match="flash_attention_2 needs a CUDA GPU"):
        load_model(None, TINY, dtype="bfloat16", attn_implementation="flash_attention_2")


# LoRA parameters: r · (in + out) per adapted linear; k/v project 64 → 32 (2 kv heads of 16)
@pytest.mark.parametrize(("targets", "in_plus_out"), [
    (["q_proj", "v_proj"], (64 + 64) + (64 + 32)),
    ("all-linear", (64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 128)),  # q k v o gate up down
])
def test_lora_trains_only_adapters(targets, in_plus_out) -> None:
    base = load_model(None, TINY, seed=6)
    _, base_total = trainable_parameters(base)
    model = apply_lora(base, r=4, alpha=8.0, dropout=0.0, target_modules=targets)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    trainable, total = trainable_parameters(model)
    assert trainable == total - base_total == TINY["num_hidden_layers"] * 4 * in_plus_out
    batch, _ = _packed_batch()  # the packed path works through the PEFT wrapper
    with torch.no_grad():
        s, n = loss_sum_and_count(model(**forward_kwargs(batch, "sdpa")).logits, batch["labels"])
    assert int(n) == batch["num_loss_tokens"] and torch.isfinite(s)
    with pytest.raises(ConfigError, match="lora.target_modules"):
        apply_lora(load_model(None, TINY), r=4, alpha=8.0, dropout=0.0, target_modules=["no_such_proj"])


def test_flops_per_token() -> None:
    config = load_model(None, TINY).config
    V, H, layers = 256, 64, 2
    per_layer = H * H + 2 * H * 32 + H * H + 3 * H * 128 + 2 * H  # q, k+v (2 kv heads), o, mlp, 2 norms
    n = layers * per_layer + H + V * H  # + final norm + untied head; the input embedding is not a matmul
    assert matmul_parameters(config) == n
    f16 = flops_per_token(config, 16)
    assert f16 == 6 * n + 12 * layers * H * 16
    assert flops_per_token(config, 32) > f16 > 0
    assert flops_per_token(config, 16, trainable_fraction=0.01) < f16
    tied = load_model(None, {**TINY, "tie_word_embeddings": True}).config
    assert matmul_parameters(tied) == n  # the tied matrix counts once, as the head


# --------------------------------------------------------------------------------------------
# logits only where a loss is (the trainer's path)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kept_logits_give_the_full_loss_and_gradients(method: str) -> None:
    from ftscale.train.loss import kept_loss_sum, loss_positions
    from ftscale.train.model import keep_logits

    batch, _ = _packed_batch()
    model = load_model(None, TINY, attn_implementation="sdpa_segments", seed=0)
    if method == "lora":
        model = apply_lora(model, 4, 8.0, 0.0, "all-linear")
    kwargs = forward_kwargs(batch, "sdpa_segments")
    params = [p for p in model.parameters() if p.requires_grad]

    full_sum, full_count = loss_sum_and_count(model(**kwargs).logits, batch["labels"])
    full_grads = torch.autograd.grad(full_sum, params)
    keep, targets = loss_positions(batch["labels"])
    with keep_logits(model, keep):
        logits = model(**kwargs).logits
    kept_sum = kept_loss_sum(logits, targets)
    kept_grads = torch.autograd.grad(kept_sum, params)

    assert logits.shape == (int(keep.sum()), TINY["vocab_size"])  # not B·L rows
    assert int(keep.sum()) < keep.numel()  # the batch has a prompt, boundaries and padding
    assert targets.numel() == int(full_count) == batch["num_loss_tokens"]
    assert float(kept_sum) == pytest.approx(float(full_sum), rel=1e-5)
    for g_full, g_kept in zip(full_grads, kept_grads):
        torch.testing.assert_close(g_kept, g_full, rtol=1e-4, atol=1e-6)
    assert model(**kwargs).logits.shape[:2] == batch["input_ids"].shape  # the hook is gone


def test_kept_logits_with_no_loss_token_give_zero() -> None:
    from ftscale.train.loss import kept_loss_sum, loss_positions
    from ftscale.train.model import keep_logits

    batch, _ = _packed_batch()
    labels = torch.full_like(batch["labels"], IGNORE_INDEX)
    model = load_model(None, TINY, attn_implementation="sdpa_segments", seed=0)
    keep, targets = loss_positions(labels)
    with keep_logits(model, keep):
        total = kept_loss_sum(model(**forward_kwargs(batch, "sdpa_segments")).logits, targets)
    total.backward()
    assert float(total) == 0.0 and targets.numel() == 0
