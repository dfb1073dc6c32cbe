"""`ftscale prep` end to end on real tokenizers and real Parquet."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from ftscale.cli import main

GPT2_TIKTOKEN = str(Path(importlib.util.find_spec("whisper").origin).parent / "assets" / "gpt2.tiktoken")
EOS_GPT2 = 50256


def write_docs(path: Path, n: int, seed: int, dup_every: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(3000)]
    texts = []
    for i in range(n):
        texts.append(" ".join(rng.choice(vocab) for _ in range(rng.randrange(20, 400))))
        if dup_every and i % dup_every == 0:
            texts.append(texts[-1].upper())
    with gzip.open(path, "wt") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "topic": f"t{i % 3}"}) + "\n")
        f.write("{broken\n")
    return texts


def write_config(tmp: Path, out: Path, sources: list[dict], **extra) -> Path:
    cfg = {"output": str(out), "seq_len": 512, "val_fraction": 0.1, "shard_rows": 50,
           "tokenizer": {"path": GPT2_TIKTOKEN}, "sources": sources, **extra}
    path = tmp / "prep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture()
def two_sources(tmp_path):
    write_docs(tmp_path / "a.jsonl.gz", 300, 1, dup_every=10)
    write_docs(tmp_path / "b.jsonl.gz", 200, 2)
    return [{"name": "domain", "paths": [str(tmp_path / "a.jsonl.gz")], "family_field": "topic"},
            {"name": "general", "paths": [str(tmp_path / "b.jsonl.gz")]}]


def test_cpt_prep_manifest_shards_and_counts(tmp_path, two_sources, capsys):
    out = tmp_path / "out"
    assert main(["prep", str(write_config(tmp_path, out, two_sources)), "--json"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    printed = json.loads(capsys.readouterr().out)
    assert printed["sources"] == manifest["sources"] and "tokenize" in printed["timings_s"]
    dom = manifest["sources"]["domain"]
    c = dom["counts"]
    assert c["read"] == 331 and c["quarantined"] == 1 and c["exact_duplicate"] == 30
    assert c["read"] == c["kept"] + c["quarantined"] + c["exact_duplicate"] + c["near_duplicate"] + c["contaminated"]
    assert c["train_docs"] + c["val_docs"] == c["kept"] and 0 < c["val_docs"] < c["kept"] * 0.25
    assert manifest["tokenizer"]["eos_token_id"] == EOS_GPT2
    rows = 0
    for shard in dom["train"]:
        t = pq.read_table(out / shard["path"])
        assert t.num_rows == shard["rows"] <= 50
        rows += t.num_rows
        for r in t.to_pylist():
            assert r["input_ids"][-1] == EOS_GPT2 and EOS_GPT2 not in r["input_ids"][:-1]
            assert r["loss_mask"] == [1] * len(r["input_ids"]) and r["length"] == len(r["input_ids"])
            assert r["family"] in ("t0", "t1", "t2")
    assert rows == c["train_docs"]
    assert dom["tokens"]["train"] == sum(s["tokens"] for s in dom["train"])
    assert (out / "plots" / "domain_lengths.png").stat().st_size > 1000
    assert not (out / ".prep-progress.json").exists()


def test_val_split_depends_on_uid_not_position():
    from ftscale.data.steps.tokenize import val_mask

    uids = np.random.default_rng(0).integers(0, 2**63, 10_000, dtype=np.uint64)
    mask = val_mask(uids, 0.1, seed=0)
    assert 0.08 < mask.mean() < 0.12
    perm = np.random.default_rng(1).permutation(len(uids))
    np.testing.assert_array_equal(val_mask(uids[perm], 0.1, seed=0), mask[perm])
    assert not np.array_equal(val_mask(uids, 0.1, seed=1), mask)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_output_identical_for_one_and_two_threads(tmp_path, two_sources):
    trees = []
    for threads in (1, 2):
        out = tmp_path / f"out{threads}"
        cfg = write_config(tmp_path, out, two_sources)
        assert main(["prep", str(cfg), f"num_threads={threads}"]) == 0
        trees.append(tree_bytes(out))
    assert trees[0].keys() == trees[1].keys() and len(trees[0]) > 8
    for name in trees[0]:
        assert trees[0][name] == trees[1][name], name


@pytest.mark.slow
@pytest.mark.parametrize("point", ["unit:2", "reduce:near dedup", "write shards"])
def test_killed_prep_rerun_is_byte_identical(tmp_path, point):
    sources = []
    for k in range(4):
        write_docs(tmp_path / f"s{k}.jsonl.gz", 600, 10 + k)
        sources.append({"name": f"s{k}", "paths": [str(tmp_path / f"s{k}.jsonl.gz")]})
    clean = tmp_path / "clean"
    assert main(["prep", str(write_config(tmp_path, clean, sources, shard_rows=20))]) == 0
    crashed = tmp_path / "crashed"
    cfg = write_config(tmp_path, crashed, sources, shard_rows=20)
    # SIGKILL at a chosen point (FTSCALE_CRASH_AT, see ftscale/data/faults.py): in the first
    # pass, in a global step, or once the tokenized units are done and shards are being written.
    env = {**os.environ, "FTSCALE_CRASH_AT": point}
    proc = subprocess.run([sys.executable, "-m", "ftscale.cli", "prep", str(cfg), "--workers", "1"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (crashed / "manifest.json").exists()
    assert main(["prep", str(cfg)]) == 0
    a, b = tree_bytes(clean), tree_bytes(crashed)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name


@pytest.mark.parametrize("override,expected", [
    ("sources.0.kind=pretrain", "sources.0.kind: 'pretrain' is not allowed; choose one of cpt, sft"),
    ("seq_len=abc", "seq_len: expected an integer"),
    ("dedup.threshold=1.5", "dedup.threshold: must be in (0, 1]"),
    ("dedup.treshold=0.5", "did you mean 'threshold'"),
    ("sources.0.overlong=split", None),
])
def test_invalid_values_name_the_key(tmp_path, two_sources, capsys, override, expected):
    cfg = write_config(tmp_path, tmp_path / "o", two_sources)
    if expected is None:  # a valid override: just validate
        from ftscale.config import PrepConfig, load_config

        assert load_config(PrepConfig, cfg, [override]).sources[0].overlong == "split"
        return
    assert main(["prep", str(cfg), override]) == 2
    assert expected in capsys.readouterr().err


def test_every_shipped_prep_config_validates():
    from ftscale.config import PrepConfig, load_config

    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("prep_*.yaml"))
    assert configs
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ftscale "), f"{path.name}: first line must be the launch command"
        load_config(PrepConfig, path)


def write_chats(path: Path, n: int) -> None:
    rng = random.Random(5)
    with open(path, "w") as f:
        for i in range(n):
            turns = []
            for t in range(rng.randrange(1, 3)):
                turns += [{"role": "user", "content": f"question {i}.{t} about item {rng.randrange(1000)}?"},
                          {"role": "assistant", "content": f"answer {i}.{t}: " + " ".join(
                              f"w{rng.randrange(500)}" for _ in range(rng.randrange(5, 60)))}]
            f.write(json.dumps({"messages": turns}) + "\n")
        f.write(json.dumps({"messages": [{"role": "user", "content": "no answer here"}]}) + "\n")
        f.write(json.dumps({"instruction": "Name a colour.", "output": "Blue."}) + "\n")


def test_sft_prep_masks_only_assistant_tokens(tmp_path, smol_tokenizer_dir):
    write_chats(tmp_path / "chat.jsonl", 80)
    out = tmp_path / "out"
    cfg = write_config(tmp_path, out, [{"name": "chat", "kind": "sft", "overlong": "truncate",
                                        "paths": [str(tmp_path / "chat.jsonl")]}],
                       tokenizer={"path": str(smol_tokenizer_dir)}, seq_len=96)
    assert main(["prep", str(cfg)]) == 0
    entry = json.loads((out / "manifest.json").read_text())["sources"]["chat"]
    c = entry["counts"]
    assert c["read"] == 82 and c["quarantined_by_reason"] == {"no_assistant_turn": 1}
    assert c["truncated"] > 0 and 0.05 < entry["supervised_share"] < 0.9
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smol_tokenizer_dir))
    rows = pq.read_table(out / entry["train"][0]["path"]).to_pylist()
    for r in rows:
        ids, mask = np.array(r["input_ids"]), np.array(r["loss_mask"], dtype=bool)
        assert len(ids) <= 96
        supervised = tok.decode(ids[mask])
        assert "question" not in supervised and "<|im_start|>" not in supervised and "user" not in supervised
        assert "answer" in supervised or len(ids) == 96


def test_zero_coverage_source_is_refused(tmp_path, smol_tokenizer_dir, capsys):
    write_chats(tmp_path / "chat.jsonl", 10)
    # A template that never renders assistant turns: nothing could ever be learned.
    users_only = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    cfg = write_config(tmp_path, tmp_path / "out", [{"name": "chat", "kind": "sft", "overlong": "truncate",
                                                     "paths": [str(tmp_path / "chat.jsonl")]}],
                       tokenizer={"path": str(smol_tokenizer_dir), "chat_template": users_only})
    assert main(["prep", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "source 'chat'" in err and "supervised" in err and "chat template" in err


def test_every_shipped_train_config_validates():
    from ftscale.config import TrainConfig, load_config

    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("train_*.yaml"))
    assert len(configs) >= 5
    seen = set()
    for path in configs:
        assert path.read_text().splitlines()[0] == f"# ftscale train configs/{path.name}", path.name
        cfg = load_config(TrainConfig, path)
        seen.add((cfg.method, cfg.zero_stage))
    assert {("lora", 2), ("full", 3), ("lora", 3), ("full", 2)} <= seen
