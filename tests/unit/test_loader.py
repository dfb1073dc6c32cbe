"""Tests for ftscale.data.loader.PackedLoader on tiny hand-written prepared datasets.

Every token of the test datasets is unique (except EOS): CPT token ids count up from
CPT_BASE, SFT ids from SFT_BASE, so a token in a batch names its source, document and
position, and a document's tokens are consecutive integers.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftscale.data.format import (IGNORE_INDEX, MANIFEST, Manifest, Shard, SourceEntry, StageCounts, read_manifest,
                                 shard_name, verify_dataset)
from ftscale.data.loader import PackedLoader
from ftscale.data.store import write_shard
from ftscale.errors import ConfigError, DataError

EOS = 2
PAD = 0
CPT_BASE = 100_000
SFT_BASE = 500_000
SEQ_LEN = 256  # the prep seq_len in the manifest


# --------------------------------------------------------------------------------------------
# building prepared datasets by hand (per ftscale.data.format)


def _cpt_docs(n: int, rng: np.random.Generator, base: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """EOS-terminated documents of varied length; about 10% longer than SEQ_LEN."""
    docs, nxt = [], base
    for i in range(n):
        body = int(rng.integers(SEQ_LEN + 20, 3 * SEQ_LEN)) if i % 10 == 3 else int(rng.integers(4, 200))
        ids = np.concatenate((np.arange(nxt, nxt + body), [EOS])).astype(np.int32)
        nxt += body
        docs.append((ids, np.ones(len(ids), dtype=np.uint8)))
    return docs


def _sft_docs(n: int, rng: np.random.Generator, base: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Conversations (<= SEQ_LEN tokens) whose loss mask covers 1-2 assistant turns only."""
    docs, nxt = [], base
    for _ in range(n):
        length = int(rng.integers(12, SEQ_LEN + 1))
        ids = np.arange(nxt, nxt + length).astype(np.int32)
        nxt += length
        mask = np.zeros(length, dtype=np.uint8)
        a = int(rng.integers(2, length // 2))
        mask[a:a + int(rng.integers(1, length // 4 + 2))] = 1
        mask[length - int(rng.integers(1, 4)):] = 1
        docs.append((ids, mask))
    return docs


def _write_shards(root: Path, sub: str, name: str, docs, families, per_shard: int) -> list[Shard]:
    entries = []
    for k, lo in enumerate(range(0, len(docs), per_shard)):
        chunk = docs[lo:lo + per_shard]
        uids = np.arange(lo, lo + len(chunk), dtype=np.uint64) + (1_000_000 if name == "chat" else 0)
        entries.append(write_shard(root, f"{sub}/{name}/{shard_name(k)}", uids, [len(d[0]) for d in chunk],
                                   np.concatenate([d[0] for d in chunk]), np.concatenate([d[1] for d in chunk]),
                                   families[lo:lo + per_shard]))
    return entries


def build_dataset(root: Path, *, n_cpt: int = 160, n_sft: int = 200, n_val: int = 20, seed: int = 0) -> dict:
    """Writes a prepared dataset with sources "web" (cpt) and "chat" (sft); returns its documents."""
    rng = np.random.default_rng(seed)
    all_docs = {
        "web": {"train": _cpt_docs(n_cpt, rng, CPT_BASE), "val": _cpt_docs(n_val, rng, CPT_BASE + 10_000_000)},
        "chat": {"train": _sft_docs(n_sft, rng, SFT_BASE), "val": []},
    }
    sources = {}
    for name, kind in (("web", "cpt"), ("chat", "sft")):
        shards = {}
        for split, sub in (("train", "shards"), ("val", "val")):
            docs = all_docs[name][split]
            fams = [None] * len(docs) if kind == "cpt" else [f"task{i % 3}" for i in range(len(docs))]
            shards[split] = tuple(_write_shards(root, sub, name, docs, fams, per_shard=70)) if docs else ()
        train, val = all_docs[name]["train"], all_docs[name]["val"]
        kept = len(train) + len(val)
        supervised = int(sum(int(d[1].sum()) for d in train))
        train_tokens = sum(s.tokens for s in shards["train"])
        sources[name] = SourceEntry(
            kind=kind, counts=StageCounts(read=kept, quarantined=0, exact_duplicate=0, near_duplicate=0,
                                          contaminated=0, kept=kept, train_docs=len(train), val_docs=len(val)),
            train=shards["train"], val=shards["val"], train_tokens=train_tokens,
            val_tokens=sum(s.tokens for s in shards["val"]), supervised_train_tokens=supervised,
            supervised_share=supervised / train_tokens)
    manifest = Manifest(seq_len=SEQ_LEN, seed=0, sources=sources, created_by="test", tokenizer={
        "path": "none", "fingerprint": "0", "eos_token_id": EOS, "pad_token_id": PAD, "bos_token_id": None,
        "vocab_size": 1 << 20, "chat_template": None})
    (root / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2))
    return all_docs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("prepared")
    return root, build_dataset(root)


def make(root, mixture=None, *, seq_len=SEQ_LEN, B=2, rank=0, W=1, seed=7, **kw) -> PackedLoader:
    return PackedLoader(root, mixture, seq_len, B, rank, W, seed, **kw)


def token_info(docs: dict) -> tuple[Counter, dict]:
    """Multiset of all train tokens, and token -> loss mask (non-EOS tokens)."""
    counts: Counter = Counter()
    mask_of: dict = {}
    for name in ("web", "chat"):
        for ids, m in docs[name]["train"]:
            counts.update(ids.tolist())
            mask_of.update(zip(ids.tolist(), m.tolist()))
    mask_of.pop(EOS, None)
    return counts, mask_of


def real_tokens(batch) -> list[int]:
    ids = batch["input_ids"].numpy()
    return ids[batch["attention_mask"].numpy().astype(bool)].tolist()


def global_rows(W: int, B: int, root, epochs: int = 1, **kw) -> list[tuple[int, bytes]]:
    """(epoch, row bytes) of every row read by the W ranks, in global order."""
    loaders = [make(root, W=W, B=B, rank=r, max_epochs=epochs, **kw) for r in range(W)]
    out = []
    while True:
        batches = []
        for ld in loaders:
            try:
                batches.append(next(ld))
            except StopIteration:
                return out
        epoch = loaders[0].epoch  # after the step (a new epoch starts lazily inside next())
        for b in range(B):
            for r in range(W):
                row = np.stack([batches[r][k][b].numpy() for k in ("input_ids", "labels", "position_ids")])
                out.append((epoch, row.tobytes()))


# --------------------------------------------------------------------------------------------
# batch layout


def test_batches_respect_seq_len_and_piece_boundaries(dataset):
    root, docs = dataset
    _, mask_of = token_info(docs)
    mask_lut = np.full(max(mask_of) + 1, 255, dtype=np.uint8)
    mask_lut[list(mask_of)] = list(mask_of.values())
    L, B = 128, 3
    ld = make(root, seq_len=L, B=B, max_epochs=1)  # < prep seq_len: CPT docs split, SFT docs truncated
    n = 0
    for batch in ld:
        n += 1
        ids, lab, pos, att = (batch[k].numpy() for k in ("input_ids", "labels", "position_ids", "attention_mask"))
        assert ids.shape == lab.shape == pos.shape == att.shape == (B, L)
        assert all(batch[k].dtype.is_floating_point is False for k in ("input_ids", "labels", "position_ids"))
        assert str(batch["input_ids"].dtype) == "torch.int64" and str(batch["cu_seqlens"].dtype) == "torch.int32"
        cu = batch["cu_seqlens"].numpy()
        assert cu[0] == 0 and cu[-1] == B * L and np.all(np.diff(cu) > 0)
        assert batch["max_seqlen"] == int(np.diff(cu).max()) <= L
        assert batch["num_tokens"] == int(att.sum())
        assert batch["num_loss_tokens"] == int((lab != IGNORE_INDEX).sum()) > 0
        flat_ids, flat_lab, flat_pos, flat_att = ids.reshape(-1), lab.reshape(-1), pos.reshape(-1), att.reshape(-1)
        for s, e in zip(cu[:-1], cu[1:]):
            assert s // L == (e - 1) // L, "a segment crosses a row"
            assert np.array_equal(flat_pos[s:e], np.arange(e - s)), "position_ids must restart per piece"
            seg_att = flat_att[s:e]
            assert seg_att.min() == seg_att.max(), "a segment mixes real tokens and padding"
            if seg_att[0] == 0:
                assert np.all(flat_ids[s:e] == PAD) and np.all(flat_lab[s:e] == IGNORE_INDEX)
                assert e % L == 0, "padding must close its row"
                continue
            toks = flat_ids[s:e]
            assert flat_lab[s] == IGNORE_INDEX, "label at the first token of a piece crosses a boundary"
            body = toks[:-1] if toks[-1] == EOS else toks
            assert np.all(np.diff(body) == 1), "a piece holds tokens of more than one document"
            supervised = (toks == EOS) | (mask_lut[np.where(toks == EOS, 0, toks)] == 1)
            assert np.array_equal(flat_lab[s + 1:e], np.where(supervised, toks, IGNORE_INDEX)[1:])
    assert n == ld.plan(0).num_rows // B > 0


def test_sft_conversations_are_truncated_not_split(dataset):
    root, docs = dataset
    starts = {int(d[0][0]) for d in docs["chat"]["train"]}
    ld = make(root, {"chat": 1.0}, seq_len=64, B=4, max_epochs=1)
    seen = 0
    for batch in ld:
        flat = batch["input_ids"].numpy().reshape(-1)
        att = batch["attention_mask"].numpy().reshape(-1)
        cu = batch["cu_seqlens"].numpy()
        for s in cu[:-1]:
            if att[s]:
                assert int(flat[s]) in starts, "an SFT piece does not start at its conversation's start"
                seen += 1
    assert seen > 0
    assert ld.plan(0).stats["sft_pieces_truncated"] > 0


def _parquet_documents(root: Path, sources: list[str], split: str) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of every document of the sources, in the loader's document order, read
    from the Parquet shards (not from the token stores the loader reads)."""
    manifest = read_manifest(root)
    docs = []
    for _, shard in manifest.shards(split, sources):
        table = pq.read_table(root / shard.path, columns=["input_ids", "loss_mask"])
        docs += zip(table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist())
    return docs


def _expected_rows(plan, rows, docs, seq_len: int) -> dict:
    """The rows of ``plan``, laid out one token at a time in plain Python (module docstring)."""
    ids, labels, positions, segments = [], [], [], []
    for k in rows:
        row_ids, row_labels, row_pos = [], [], []
        lo, hi = (int(plan.row_offsets[k]), int(plan.row_offsets[k + 1])) if k < plan.num_rows else (0, 0)
        for p in range(lo, hi):
            doc_ids, doc_mask = docs[int(plan.piece_doc[p])]
            start, n = int(plan.piece_start[p]), int(plan.piece_len[p])
            for j in range(start, start + n):
                row_ids.append(doc_ids[j])
                row_labels.append(doc_ids[j] if doc_mask[j] and j > start else IGNORE_INDEX)
                row_pos.append(j - start)
            segments.append(n)
        pad = seq_len - len(row_ids)
        if pad:
            segments.append(pad)
        ids.append(row_ids + [PAD] * pad)
        labels.append(row_labels + [IGNORE_INDEX] * pad)
        positions.append(row_pos + list(range(pad)))
    return {"input_ids": ids, "labels": labels, "position_ids": positions,
            "cu_seqlens": np.concatenate(([0], np.cumsum(segments))).tolist()}


@pytest.mark.parametrize("W", [1, 2])
def test_batches_equal_batches_rebuilt_from_the_parquet_shards(dataset, W):
    root, _ = dataset
    L, B = 128, 3
    docs = _parquet_documents(root, ["web", "chat"], "train")
    for r in range(W):
        ld = make(root, {"web": 1.0, "chat": 2.0}, seq_len=L, B=B, W=W, rank=r)
        plan = ld.plan(0)
        for step in range(6):
            batch = next(ld)
            expected = _expected_rows(plan, [step * W * B + r + W * b for b in range(B)], docs, L)
            for key, value in expected.items():
                assert batch[key].tolist() == value, f"rank {r} step {step}: {key}"
            assert batch["num_tokens"] == int(batch["attention_mask"].sum())
        assert ld.epoch == 0


def test_resident_state_per_document_and_piece(dataset):
    """The arrays a loader keeps (module docstring): 8 B per document, plus the current plan's
    4 B + 1 B per piece and 4 B per row; no token is held."""
    root, _ = dataset
    ld = make(root)
    plan = ld.plan(0)
    docs, pieces = len(ld._doc_len), int(plan.row_offsets[-1])
    assert ld._doc_len.dtype == np.uint32 and ld._doc_start.dtype == np.uint32
    assert plan.piece_doc.dtype == np.uint32 and plan.piece_part.dtype == np.uint8
    assert plan.row_offsets.dtype == np.uint32 and len(plan.piece_doc) == pieces
    held = ld._doc_len.nbytes + ld._doc_start.nbytes + sum(
        a.nbytes for a in (plan.piece_doc, plan.piece_part, plan.row_offsets))
    assert held == 8 * docs + 5 * pieces + 4 * (plan.num_rows + 1)
    next(ld)
    assert ld.plan(1) is not plan and ld.plan(0) is not plan, "only one plan is kept"


def test_few_open_store_files_give_the_same_batches(dataset, monkeypatch):
    import ftscale.data.loader as loader_module

    root, _ = dataset
    ref = make(root, B=4)
    expected = [next(ref) for _ in range(5)]
    monkeypatch.setattr(loader_module, "MAX_OPEN_STORES", 2)
    ld = make(root, B=4)
    for want in expected:
        assert _same(next(ld), want)
        assert sum(store._fd is not None for store in ld._stores) <= 2 < len(ld._stores)
    ld.close()
    assert all(store._fd is None for store in ld._stores)


# --------------------------------------------------------------------------------------------
# coverage, sharding across ranks, global order


@pytest.mark.parametrize("W", [2, 3])
def test_every_planned_token_once_per_epoch_across_ranks(dataset, W):
    root, docs = dataset
    all_tokens, _ = token_info(docs)
    B = 2
    loaders = [make(root, W=W, B=B, rank=r, max_epochs=1) for r in range(W)]
    seen: Counter = Counter()
    per_rank = [0] * W
    for r, ld in enumerate(loaders):
        for batch in ld:
            seen.update(real_tokens(batch))
            per_rank[r] += 1
    plan = loaders[0].plan(0)
    steps = plan.num_rows // (W * B)
    assert per_rank == [steps] * W
    # The dropped tail: rows steps*W*B .. num_rows-1 of the global sequence.
    tail = loaders[0].assemble(plan, np.arange(steps * W * B, plan.num_rows))
    tail_tokens = tail["input_ids"][tail["attention_mask"].astype(bool)].tolist()
    assert 0 <= plan.num_rows - steps * W * B < W * B
    non_eos = {t: c for t, c in seen.items() if t != EOS}
    assert max(non_eos.values()) == 1, "a row was read by two ranks (or twice)"
    assert seen + Counter(tail_tokens) == all_tokens  # natural mix, one pass: every token exactly once


def test_global_order_independent_of_world_size(dataset):
    root, _ = dataset
    ref = global_rows(1, 2, root, epochs=2)
    assert len({e for e, _ in ref}) == 2
    for W in (2, 4):
        got = global_rows(W, 2, root, epochs=2)
        for epoch in (0, 1):
            a = [r for e, r in ref if e == epoch]
            b = [r for e, r in got if e == epoch]
            assert len(b) >= len(a) - 2 * W and len(b) > 0
            assert b == a[:len(b)], f"W={W}: epoch {epoch} global row order differs from W=1"


def test_plan_is_independent_of_rank_and_world_size(dataset):
    root, _ = dataset
    p1 = make(root, W=1, rank=0).plan(1)
    p3 = make(root, W=3, rank=2, B=4).plan(1)
    for k in ("piece_doc", "piece_start", "piece_len", "row_offsets"):
        assert np.array_equal(getattr(p1, k), getattr(p3, k))
    p0 = make(root).plan(0)
    assert p0.num_rows != p1.num_rows or not np.array_equal(p0.piece_doc, p1.piece_doc), "epochs must differ"
    other_seed = make(root, seed=8).plan(1)
    assert not np.array_equal(other_seed.piece_doc, p1.piece_doc)


def test_rows_are_shuffled_not_longest_first(dataset):
    root, _ = dataset
    plan = make(root).plan(0)
    # BFD places the longest piece of a row first and creates rows longest-first: without the
    # shuffle the first pieces' lengths would be non-increasing along the row sequence.
    first_len = plan.piece_len[plan.row_offsets[:-1].astype(np.int64)]
    assert abs(np.corrcoef(np.arange(plan.num_rows), first_len)[0, 1]) < 0.3
    assert int(plan.row_tokens().sum()) == int(plan.piece_len.sum())


# --------------------------------------------------------------------------------------------
# resume


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_resume_at_random_steps_is_bit_exact(dataset):
    root, _ = dataset
    W, B = 2, 3
    total = 0
    ref = []
    for r in range(W):
        ld = make(root, W=W, B=B, rank=r)
        total = ld.steps_per_epoch * 2 + 5  # crosses into a third epoch
        ref.append([next(ld) for _ in range(total)])
    rng = np.random.default_rng(1)
    for k in sorted({0, total - 1, *rng.integers(1, total - 1, size=3).tolist()}):
        for r in range(W):
            ld = make(root, W=W, B=B, rank=r)
            for _ in range(k):
                next(ld)
            state = ld.state_dict()
            assert set(state) == {"version", "seed", "epoch", "rows_consumed", "sequence"}
            fresh = make(root, W=W, B=B, rank=r)
            fresh.load_state_dict(json.loads(json.dumps(state)))  # survives JSON
            for i in range(k, total):
                assert _same(next(fresh), ref[r][i]), f"rank {r}: resume at step {k} differs at step {i}"


def test_resume_with_a_different_world_size_continues_the_global_sequence(dataset):
    root, _ = dataset
    B = 2
    ref = [r for e, r in global_rows(1, B, root, epochs=1)]
    old = [make(root, W=2, B=B, rank=r) for r in range(2)]
    steps_done = 7
    for ld in old:
        for _ in range(steps_done):
            next(ld)
    state = old[0].state_dict()
    assert state == old[1].state_dict() and state["rows_consumed"] == steps_done * 2 * B
    new = [make(root, W=4, B=B, rank=r, max_epochs=1) for r in range(4)]
    for ld in new:
        ld.load_state_dict(state)
    got = []
    while True:
        try:
            batches = [next(ld) for ld in new]
        except StopIteration:
            break
        for b in range(B):
            for r in range(4):
                got.append(np.stack([batches[r][k][b].numpy() for k in ("input_ids", "labels",
                                                                         "position_ids")]).tobytes())
    start = steps_done * 2 * B
    assert len(got) > 0 and got == ref[start:start + len(got)]
    assert len(ref) - start - len(got) < 4 * B


def test_skip_rows_equals_consuming_them(dataset):
    root, _ = dataset
    a, b = make(root, B=2), make(root, B=2)
    for _ in range(5):
        next(a)
    b.skip_rows(10)
    assert b.state_dict() == a.state_dict()
    assert _same(next(a), next(b))
    # across the epoch end: skipping a whole epoch lands on the same row of the next one
    c = make(root, B=2)
    n0 = c.rows_per_epoch
    c.skip_rows(n0 + 4)
    assert c.epoch == 1 and c.rows_consumed == 4
    d = make(root, B=2)
    d.load_state_dict({**d.state_dict(), "epoch": 1, "rows_consumed": 4})
    assert _same(next(c), next(d))
    with pytest.raises(ConfigError):
        c.skip_rows(-1)


def test_state_from_another_seed_is_refused(dataset):
    root, _ = dataset
    with pytest.raises(ConfigError, match="seed"):
        make(root, seed=1).load_state_dict({**make(root, seed=2).state_dict(), "epoch": 0, "rows_consumed": 0})


@pytest.mark.parametrize("change, named", [
    (dict(seq_len=SEQ_LEN // 2), "seq_len"),
    (dict(mixture={"web": 1.0}), "sources"),
    (dict(mixture={"web": 1.0, "chat": 3.0}), "weights"),
    (dict(strategy="ffd"), "strategy"),
])
def test_state_of_another_sequence_is_refused(dataset, change, named):
    root, _ = dataset
    state = make(root, {"web": 1.0, "chat": 1.0}).state_dict()
    other = make(root, **{"mixture": {"web": 1.0, "chat": 1.0}, **change})
    with pytest.raises(ConfigError, match=f"changed: .*{named}"):
        other.load_state_dict(state)
    make(root, {"chat": 1.0, "web": 1.0}).load_state_dict(state)  # the same mixture, spelt in another order


def test_state_of_a_re_prepared_dataset_is_refused(tmp_path):
    build_dataset(tmp_path / "a", seed=0)
    build_dataset(tmp_path / "b", seed=1)
    state = make(tmp_path / "a").state_dict()
    with pytest.raises(ConfigError, match="changed: dataset"):
        make(tmp_path / "b").load_state_dict(state)
    with pytest.raises(ConfigError, match="version 1"):
        make(tmp_path / "a").load_state_dict({**state, "version": 1})


def test_max_epochs_and_steps_per_epoch(dataset):
    root, _ = dataset
    ld = make(root, B=4, W=1, max_epochs=2)
    s0 = ld.steps_per_epoch
    n = sum(1 for _ in ld)
    assert ld.epoch == 2
    s1 = make(root, B=4).plan(1).num_rows // 4
    assert n == s0 + s1


# --------------------------------------------------------------------------------------------
# mixture


def test_mixture_proportions_over_an_epoch(dataset):
    root, docs = dataset
    weights = {"web": 1.0, "chat": 3.0}
    ld = make(root, weights, B=2, W=1, tokens_per_epoch=120_000, max_epochs=1)
    web = chat = 0
    for batch in ld:
        toks = np.array(real_tokens(batch))
        toks = toks[toks != EOS]
        chat += int((toks >= SFT_BASE).sum())
        web += int((toks < SFT_BASE).sum())
    share = chat / (web + chat)
    assert abs(share - 0.75) < 0.01, share
    stats = {s["name"]: s for s in ld.plan(0).stats["mixture"]}
    assert stats["chat"]["repetition"] > 1.0  # 90k chat tokens from ~26k unique: repeated
    # dict order does not matter
    swapped = make(root, {"chat": 3.0, "web": 1.0}, B=2, tokens_per_epoch=120_000)
    assert np.array_equal(swapped.plan(0).piece_doc, ld.plan(0).piece_doc)


def test_natural_mix_and_single_source(dataset):
    root, docs = dataset
    ld = make(root)
    web_tokens = sum(len(d[0]) for d in docs["web"]["train"])
    chat_tokens = sum(len(d[0]) for d in docs["chat"]["train"])
    assert ld.sources == ["web", "chat"] and ld.source_tokens == [web_tokens, chat_tokens]
    assert ld.plan(0).stats["tokens"] == web_tokens + chat_tokens
    only = make(root, {"web": 2.0})
    assert only.sources == ["web"]
    assert int(only.plan(0).piece_len.sum()) == web_tokens


@pytest.mark.parametrize("W", [1, 3])
def test_keep_last_covers_every_token_once_with_empty_filler_rows(dataset, W):
    root, docs = dataset
    expect = Counter()
    for ids, _ in docs["web"]["val"]:
        expect.update(ids.tolist())
    B = 4
    loaders = [make(root, {"web": 1.0}, split="val", B=B, W=W, rank=r, max_epochs=1, drop_last=False)
               for r in range(W)]
    rows = loaders[0].rows_per_epoch
    assert rows % (W * B) != 0, "the test needs a ragged tail"
    seen: Counter = Counter()
    steps = []
    empty_rows = 0
    for ld in loaders:
        n = 0
        for batch in ld:
            n += 1
            seen.update(real_tokens(batch))
            att = batch["attention_mask"].numpy()
            for b in range(B):
                if att[b].sum() == 0:
                    empty_rows += 1
                    assert np.all(batch["labels"][b].numpy() == IGNORE_INDEX)
            assert batch["cu_seqlens"][-1] == B * loaders[0].seq_len
        steps.append(n)
    assert steps == [loaders[0].steps_per_epoch] * W == [-(-rows // (W * B))] * W
    assert empty_rows == steps[0] * W * B - rows
    assert seen == expect


def test_val_split(dataset):
    root, docs = dataset
    ld = make(root, {"web": 1.0}, split="val", B=1, max_epochs=1)
    val = Counter()
    for ids, _ in docs["web"]["val"]:
        val.update(ids.tolist())
    seen = Counter()
    for batch in ld:
        seen.update(real_tokens(batch))
    assert seen and not (seen - val)


# --------------------------------------------------------------------------------------------
# errors


def test_tampered_shard_raises_data_error(tmp_path):
    """Checksums are verified once (``verify_dataset``, run by the train driver, or
    ``verify=True``); every loader still checks each store's header and size."""
    root = tmp_path / "ds"
    build_dataset(root, n_cpt=30, n_sft=30)
    assert verify_dataset(root) > 0
    manifest = read_manifest(root)
    chat, web = manifest.sources["chat"].train[0], manifest.sources["web"].train[0]
    # an edited store: same size, one token id changed
    store = root / chat.store
    data = bytearray(store.read_bytes())
    data[-chat.tokens * 5 + 3] ^= 0x01  # a byte of the first token id
    store.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{store.name} does not match the manifest"):
        verify_dataset(root)
    with pytest.raises(DataError, match=store.name):
        make(root, verify=True)
    verify_dataset(root, ["web"])  # only the named sources are hashed
    make(root, {"web": 1.0}, verify=True)
    # an edited Parquet shard (valid Parquet, one token changed) is caught as well
    shutil.rmtree(root)
    build_dataset(root, n_cpt=30, n_sft=30)
    shard = root / chat.path
    table = pq.read_table(shard)
    ids = table.column("input_ids").to_pylist()
    ids[0][0] += 1
    pq.write_table(table.set_column(1, "input_ids", pa.array(ids, type=pa.list_(pa.int32()))), shard)
    with pytest.raises(DataError, match=shard.name):
        verify_dataset(root, splits=("train",))
    # a torn store: every rank refuses it, without hashing
    web_store = root / web.store
    web_store.write_bytes(web_store.read_bytes()[: web.store_bytes // 2])
    with pytest.raises(DataError, match="part-00000.tokens is .* bytes, the manifest says"):
        make(root, {"web": 1.0})
    make(root, {"chat": 1.0})  # a chat-only mixture does not open the web stores


def test_bad_configuration_raises_config_error(dataset):
    root, _ = dataset
    with pytest.raises(ConfigError, match=r"unknown source.*'nope'.*'web', 'chat'"):
        make(root, {"web": 1.0, "nope": 1.0})
    with pytest.raises(ConfigError, match="no val documents"):
        make(root, {"chat": 1.0}, split="val")
    with pytest.raises(ConfigError, match=r"seq_len 512 .*set seq_len <= 256"):
        make(root, seq_len=512)  # chat is SFT, truncated at 256 during prep
    make(root, {"web": 1.0}, seq_len=512)  # CPT only: longer rows are fine
    with pytest.raises(ConfigError, match="weight"):
        make(root, {"web": 0.0})
    with pytest.raises(ConfigError, match="rank"):
        make(root, W=2, rank=2)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        make(root, B=10_000)  # not one step per epoch
    with pytest.raises(ConfigError, match="split"):
        make(root, split="test")


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, ftscale.data.loader; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
