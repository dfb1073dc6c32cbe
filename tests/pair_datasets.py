"""Hand-built prepared datasets of preference pairs (per the data contract: a pair is two
adjacent documents of one shard, chosen then rejected), shared by the unit and integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ftscale.data.format import MANIFEST, Manifest, SourceEntry, StageCounts, shard_name
from ftscale.data.store import write_shard

SEQ_LEN = 128
VOCAB = 97


def pair_tokens(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(chosen ids, chosen mask, rejected ids, rejected mask): a shared prompt, supervised completions."""
    pairs = []
    for _ in range(n):
        prompt = rng.integers(3, VOCAB, int(rng.integers(3, 12)))
        sides = []
        for _ in range(2):
            completion = rng.integers(3, VOCAB, int(rng.integers(2, 14)))
            ids = np.concatenate([prompt, completion]).astype(np.int32)
            mask = np.concatenate([np.zeros(len(prompt)), np.ones(len(completion))]).astype(np.uint8)
            sides += [ids, mask]
        pairs.append(tuple(sides))
    return pairs


def build_pair_dataset(root: Path, sources: dict[str, list], *, per_shard: int = 5, val: dict | None = None,
                       extra: dict | None = None) -> Path:
    """A prepared dataset whose sources are ``kind: preference`` (pairs as adjacent chosen /
    rejected documents, per the data contract); ``extra``: name → (kind, docs) of other kinds."""
    entries = {}
    uid = 0
    for name, pairs in sources.items():
        shards = {}
        for split, sub, items in (("train", "shards", pairs), ("val", "val", (val or {}).get(name, []))):
            written = []
            for k, lo in enumerate(range(0, len(items), per_shard)):
                chunk = items[lo:lo + per_shard]
                docs = [side for p in chunk for side in ((p[0], p[1]), (p[2], p[3]))]
                uids = np.repeat(np.arange(uid, uid + len(chunk), dtype=np.uint64), 2)
                uid += len(chunk)
                written.append(write_shard(root, f"{sub}/{name}/{shard_name(k)}", uids, [len(d[0]) for d in docs],
                                           np.concatenate([d[0] for d in docs]), np.concatenate([d[1] for d in docs]),
                                           [None] * len(docs)))
            shards[split] = tuple(written)
        entries[name] = entry("preference", shards, len(pairs), len((val or {}).get(name, [])), per_record=2)
    for name, (kind, docs) in (extra or {}).items():
        uids = np.arange(uid, uid + len(docs), dtype=np.uint64)
        uid += len(docs)
        shard = write_shard(root, f"shards/{name}/{shard_name(0)}", uids, [len(d[0]) for d in docs],
                            np.concatenate([d[0] for d in docs]), np.concatenate([d[1] for d in docs]),
                            [None] * len(docs))
        entries[name] = entry(kind, {"train": (shard,), "val": ()}, len(docs), 0)
    manifest = Manifest(seq_len=SEQ_LEN, seed=0, sources=entries, created_by="test", tokenizer={
        "path": "none", "fingerprint": "0", "eos_token_id": 2, "pad_token_id": 0, "bos_token_id": None,
        "vocab_size": VOCAB, "chat_template": None})
    (root / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2))
    return root


def entry(kind: str, shards: dict, train: int, val: int, per_record: int = 1) -> SourceEntry:
    """Counts in records (pairs); train_docs / val_docs in documents (two per pair)."""
    train_tokens = sum(s.tokens for s in shards["train"])
    return SourceEntry(kind=kind, counts=StageCounts(read=train + val, quarantined=0, exact_duplicate=0,
                                                     near_duplicate=0, contaminated=0, kept=train + val,
                                                     train_docs=per_record * train, val_docs=per_record * val),
                       train=shards["train"], val=shards["val"], train_tokens=train_tokens,
                       val_tokens=sum(s.tokens for s in shards["val"]), supervised_train_tokens=train_tokens,
                       supervised_share=1.0)


def learnable_pairs(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Pairs a tiny model can learn to rank: chosen completions draw from the lower half of the
    vocabulary, rejected ones from the upper half."""
    pairs = []
    for _ in range(n):
        prompt = rng.integers(3, VOCAB, int(rng.integers(3, 10)))
        sides = []
        for lo, hi in ((3, VOCAB // 2), (VOCAB // 2, VOCAB)):
            completion = rng.integers(lo, hi, int(rng.integers(3, 10)))
            sides += [np.concatenate([prompt, completion]).astype(np.int32),
                      np.concatenate([np.zeros(len(prompt)), np.ones(len(completion))]).astype(np.uint8)]
        pairs.append(tuple(sides))
    return pairs
