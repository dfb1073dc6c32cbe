"""Preference objectives and preference batches: the DPO / IPO / hinge losses against an
independent float64 computation, per-sequence log-probs against full-logit log-softmax, packed
pairs against pairs run one at a time, the LoRA reference against the base model, and the
loader's pair layout on a hand-built prepared dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ftscale.data.format import IGNORE_INDEX, MANIFEST, Manifest, shard_name
from ftscale.data.loader import PackedLoader
from ftscale.data.store import write_shard
from ftscale.errors import ConfigError, DataError
from ftscale.train.preference import PairStats, pair_losses, pair_stats, sequence_logps, target_sequences
from pair_datasets import SEQ_LEN, VOCAB, build_pair_dataset, entry, pair_tokens


# --------------------------------------------------------------------------------------------
# the losses


def _reference_loss(pc, pr, rc, rr, beta, loss_type, eps):
    """The published formulas, per pair, in float64 Python arithmetic."""
    h = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        log_sig = lambda x: -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))  # noqa: E731
        return -(1 - eps) * log_sig(beta * h) - eps * log_sig(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return max(0.0, 1 - beta * h)


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.1), ("sigmoid", 0.3), ("ipo", 0.0),
                                           ("hinge", 0.0)])
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_pair_losses_equal_the_published_formulas(loss_type, eps, beta):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=g, dtype=torch.float64) * 5 - 30 for _ in range(4))
    losses, chosen_r, rejected_r = pair_losses(pc, pr, rc, rr, beta, loss_type, eps)
    expected = [_reference_loss(*map(float, v), beta, loss_type, eps) for v in zip(pc, pr, rc, rr)]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6, rel=1e-9)
    assert chosen_r.tolist() == pytest.approx((beta * (pc - rc)).tolist(), abs=1e-9)
    assert rejected_r.tolist() == pytest.approx((beta * (pr - rr)).tolist(), abs=1e-9)
    assert not chosen_r.requires_grad


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc = torch.tensor([-10.0], requires_grad=True)
    pr = torch.tensor([-10.0], requires_grad=True)
    loss, _, _ = pair_losses(pc, pr, torch.tensor([-10.0]), torch.tensor([-10.0]), 0.1)
    loss.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descending raises log π(chosen), lowers log π(rejected)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: -log σ(0)


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge"):
        pair_losses(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1, "kto")


def test_pair_stats_are_means_per_pair():
    losses = torch.tensor([1.0, 3.0])
    stats = pair_stats(losses, torch.tensor([0.5, -1.0]), torch.tensor([0.0, 0.0]), torch.tensor([-4.0, -6.0]),
                       torch.tensor([-5.0, -5.0]))
    twice = PairStats.from_list(stats.as_list())
    twice.add(stats)
    m = twice.metrics()
    assert m["loss"] == 2.0 and m["rewards/accuracy"] == 0.5 and m["rewards/margin"] == pytest.approx(-0.25)
    assert m["logps/chosen"] == -5.0 and twice.pairs == 4 and m["logps/accuracy"] == 0.5
    assert PairStats().metrics() == {}


def test_sequence_logps_equal_log_softmax_of_full_logits():
    from ftscale.train.loss import loss_positions

    g = torch.Generator().manual_seed(1)
    B, L = 2, 12
    logits = torch.randn(B, L, VOCAB, generator=g)
    labels = torch.randint(0, VOCAB, (B, L), generator=g)
    sequence_index = torch.tensor([[0] * 5 + [1] * 4 + [-1] * 3, [2] * 6 + [3] * 6])
    labels[torch.rand(B, L, generator=g) < 0.3] = IGNORE_INDEX
    labels[0, 9:] = IGNORE_INDEX  # padding
    labels[0, 0] = labels[0, 5] = labels[1, 0] = labels[1, 6] = IGNORE_INDEX  # first token of every sequence
    keep, targets = loss_positions(labels)
    sums, counts = sequence_logps(logits[keep], targets, target_sequences(labels, sequence_index), 4)
    logp = torch.log_softmax(logits.double(), -1)
    expected, expected_n = torch.zeros(4, dtype=torch.float64), torch.zeros(4)
    for b in range(B):
        for i in range(1, L):
            if labels[b, i] != IGNORE_INDEX:
                s = int(sequence_index[b, i])
                expected[s] += logp[b, i - 1, labels[b, i]]
                expected_n[s] += 1
    assert sums.tolist() == pytest.approx(expected.tolist(), abs=1e-4)
    assert counts.tolist() == expected_n.tolist()


# --------------------------------------------------------------------------------------------
# a tiny model: packed pairs == unpacked pairs; the LoRA reference == the base model


def _tiny_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ_LEN,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def _policy_logps(model, batch) -> torch.Tensor:
    from ftscale.train.attention import forward_kwargs
    from ftscale.train.loss import loss_positions
    from ftscale.train.model import keep_logits

    kwargs = forward_kwargs(batch, model.config._attn_implementation)
    keep, targets = loss_positions(batch["labels"])
    with keep_logits(model, keep):
        logits = model(**kwargs).logits
    sums, _ = sequence_logps(logits, targets, target_sequences(batch["labels"], batch["sequence_index"]),
                             len(batch["sequence_doc"]))
    return sums


def _alone(model, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """A side's log-prob from a forward of that sequence alone (no packing, no padding)."""
    x = torch.from_numpy(ids.astype(np.int64))[None]
    logp = torch.log_softmax(model(input_ids=x).logits.float(), -1)[0]
    sup = torch.from_numpy(mask.astype(bool))
    sup[0] = False
    pos = torch.nonzero(sup).flatten()
    return logp[pos - 1, x[0, pos]].sum()


def test_packed_pairs_give_the_loss_and_gradients_of_pairs_run_alone(tmp_path):
    pairs = pair_tokens(np.random.default_rng(3), 12)
    root = build_pair_dataset(tmp_path, {"prefs": pairs})
    loader = PackedLoader(root, None, SEQ_LEN, 2, 0, 1, 0, max_epochs=1)
    batch = next(iter(loader))
    assert batch["num_pairs"] >= 3  # several pairs share rows
    model = _tiny_model()
    packed = _policy_logps(model, batch)
    docs = batch["sequence_doc"].tolist()
    flat = [side for p in pairs for side in ((p[0], p[1]), (p[2], p[3]))]
    alone = torch.stack([_alone(model, *flat[d]) for d in docs])
    assert packed.tolist() == pytest.approx(alone.tolist(), abs=2e-4)

    ref = packed.detach() - 0.5
    loss_packed = pair_losses(packed[0::2], packed[1::2], ref[0::2], ref[1::2], 0.1)[0].sum()
    grads_packed = torch.autograd.grad(loss_packed, list(model.parameters()))
    alone = torch.stack([_alone(model, *flat[d]) for d in docs])
    loss_alone = pair_losses(alone[0::2], alone[1::2], ref[0::2], ref[1::2], 0.1)[0].sum()
    grads_alone = torch.autograd.grad(loss_alone, list(model.parameters()))
    assert loss_packed.item() == pytest.approx(loss_alone.item(), abs=1e-5)
    for a, b in zip(grads_packed, grads_alone):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)


def test_lora_reference_is_the_base_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    pairs = pair_tokens(np.random.default_rng(4), 6)
    root = build_pair_dataset(tmp_path, {"prefs": pairs})
    batch = next(iter(PackedLoader(root, None, SEQ_LEN, 2, 0, 1, 0, max_epochs=1)))
    base = _tiny_model(seed=5)
    base_logps = _policy_logps(base, batch)
    # Random B matrices, so the adapters change the output (peft's default init is an identity).
    adapted = get_peft_model(_tiny_model(seed=5), LoraConfig(r=4, target_modules="all-linear",
                                                             init_lora_weights=False)).eval()
    with torch.no_grad():
        policy = _policy_logps(adapted, batch)
        with adapted.disable_adapter():
            reference = _policy_logps(adapted, batch)
    assert torch.equal(reference, base_logps)
    assert not torch.allclose(policy, base_logps, atol=1e-3)


# --------------------------------------------------------------------------------------------
# the loader over preference sources


@pytest.fixture(scope="module")
def pairs_dataset(tmp_path_factory) -> tuple[Path, list]:
    rng = np.random.default_rng(0)
    pairs = {"a": pair_tokens(rng, 37), "b": pair_tokens(rng, 23)}
    root = build_pair_dataset(tmp_path_factory.mktemp("pairs"), pairs, val={"a": pair_tokens(rng, 9)})
    return root, pairs


def _sides(batch) -> list[tuple[int, list[int]]]:
    """(document, its tokens) of every sequence of a batch, in order, from the batch alone."""
    ids, seq = batch["input_ids"].numpy(), batch["sequence_index"].numpy()
    docs = batch["sequence_doc"].numpy()
    return [(int(docs[s]), ids[seq == s].tolist()) for s in range(len(docs))]


@pytest.mark.parametrize("W", [1, 2])
def test_every_pair_once_per_epoch_with_chosen_then_rejected_in_one_row(pairs_dataset, W):
    root, pairs = pairs_dataset
    flat = [side for name in ("a", "b") for p in pairs[name] for side in (p[0], p[2])]
    seen = []
    for rank in range(W):
        loader = PackedLoader(root, None, SEQ_LEN, 2, rank, W, 11, max_epochs=1, drop_last=False)
        for batch in loader:
            sides = _sides(batch)
            assert batch["num_pairs"] * 2 == len(sides)
            seq = batch["sequence_index"].numpy()
            for i in range(0, len(sides), 2):
                (dc, tc), (dr, tr) = sides[i], sides[i + 1]
                assert dc % 2 == 0 and dr == dc + 1  # chosen (even document), then its rejected
                assert tc == flat[dc].tolist() and tr == flat[dr].tolist()
                rows_c = set(np.nonzero(seq == i)[0].tolist())
                assert rows_c == set(np.nonzero(seq == i + 1)[0].tolist()) and len(rows_c) == 1
            labels, pos = batch["labels"].numpy(), batch["position_ids"].numpy()
            for s in range(len(sides)):
                first = np.argwhere(seq == s)[0]
                assert pos[tuple(first)] == 0 and labels[tuple(first)] == IGNORE_INDEX
            seen += [d for d, _ in sides[0::2]]
    assert sorted(seen) == list(range(0, len(flat), 2))


def test_pair_pass_scores_every_pair_once_with_the_same_batch_count_on_every_rank(pairs_dataset):
    root, pairs = pairs_dataset
    counts, seen = [], []
    for rank in range(3):
        loader = PackedLoader(root, {"a": 1.0, "b": 3.0}, SEQ_LEN, 2, rank, 3, 5)
        batches = list(loader.pair_pass())
        counts.append(len(batches))
        seen += [d for b in batches for d in b["sequence_doc"].tolist()]
        assert loader.rows_consumed == 0  # the training sequence is untouched
    assert len(set(counts)) == 1
    assert sorted(seen) == list(range(2 * (len(pairs["a"]) + len(pairs["b"]))))


def test_pair_plan_is_deterministic_and_resumes_bit_exactly(pairs_dataset):
    root, _ = pairs_dataset
    a = PackedLoader(root, None, SEQ_LEN, 2, 0, 1, 3)
    first = [next(a)["input_ids"].clone() for _ in range(7)]
    state = None
    b = PackedLoader(root, None, SEQ_LEN, 2, 0, 1, 3)
    for i in range(7):
        if i == 4:
            state = b.state_dict()
        out = next(b)
        assert torch.equal(out["input_ids"], first[i])
    c = PackedLoader(root, None, SEQ_LEN, 2, 0, 1, 3)
    c.load_state_dict(state)
    assert torch.equal(next(c)["input_ids"], first[4])


def test_preference_sources_are_not_mixed_with_token_sources(tmp_path):
    rng = np.random.default_rng(1)
    sft = [(np.arange(10, 30, dtype=np.int32), np.ones(20, dtype=np.uint8))]
    root = build_pair_dataset(tmp_path, {"prefs": pair_tokens(rng, 4)}, extra={"chat": ("sft", sft)})
    with pytest.raises(ConfigError, match="cannot be mixed with cpt/sft"):
        PackedLoader(root, None, SEQ_LEN, 1, 0, 1, 0)
    assert PackedLoader(root, {"prefs": 1.0}, SEQ_LEN, 1, 0, 1, 0).paired
    assert not PackedLoader(root, {"chat": 1.0}, SEQ_LEN, 1, 0, 1, 0).paired


def test_a_pair_longer_than_seq_len_and_a_cut_pair_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    root = build_pair_dataset(tmp_path / "ok", {"prefs": pair_tokens(rng, 4)})
    with pytest.raises(ConfigError, match="longest preference pair"):
        PackedLoader(root, None, 16, 1, 0, 1, 0)
    odd = tmp_path / "odd"
    odd.mkdir()
    doc = (np.arange(5, 15, dtype=np.int32), np.ones(10, dtype=np.uint8))
    shard = write_shard(odd, f"shards/prefs/{shard_name(0)}", np.arange(3, dtype=np.uint64), [10, 10, 10],
                        np.concatenate([doc[0]] * 3), np.concatenate([doc[1]] * 3), [None] * 3)
    manifest = Manifest(seq_len=SEQ_LEN, seed=0, sources={"prefs": entry("preference", {"train": (shard,), "val": ()},
                                                                          1, 0, per_record=3)},
                        created_by="test", tokenizer={"path": "none", "fingerprint": "0", "eos_token_id": 2,
                                                      "pad_token_id": 0, "bos_token_id": None, "vocab_size": VOCAB,
                                                      "chat_template": None})
    (odd / MANIFEST).write_text(json.dumps(manifest.to_json()))
    with pytest.raises(DataError, match="odd number of documents"):
        PackedLoader(odd, None, SEQ_LEN, 1, 0, 1, 0)


def test_config_checks_refuse_mixed_kinds_and_an_adapter_reference_without_adapters(tmp_path):
    from ftscale.config import TrainConfig, build, check_against_dataset
    from ftscale.data.format import read_manifest

    rng = np.random.default_rng(1)
    sft = [(np.arange(10, 30, dtype=np.int32), np.ones(20, dtype=np.uint8))]
    root = build_pair_dataset(tmp_path, {"prefs": pair_tokens(rng, 4)}, extra={"chat": ("sft", sft)})
    base = {"data": {"path": str(root)}, "model": {"config": {"model_type": "llama"}}, "seq_len": SEQ_LEN}
    with pytest.raises(ConfigError, match="cannot be mixed"):
        check_against_dataset(build(TrainConfig, base), read_manifest(root))
    check_against_dataset(build(TrainConfig, {**base, "data": {"path": str(root), "mixture": {"prefs": 1.0}}}),
                          read_manifest(root))
    with pytest.raises(ConfigError, match="preference.reference"):
        build(TrainConfig, {**base, "preference": {"reference": "adapters"}})
    with pytest.raises(ConfigError, match="label_smoothing"):
        build(TrainConfig, {**base, "preference": {"loss": "ipo", "label_smoothing": 0.1}})
    cfg = build(TrainConfig, {**base, "method": "lora"})
    assert cfg.preference.reference_for(cfg.method) == "adapters"
    assert build(TrainConfig, base).preference.reference_for("full") == "precomputed"
