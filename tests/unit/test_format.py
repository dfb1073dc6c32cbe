"""Tests for ftscale.data.format: the typed manifest read as untrusted JSON, and StageCounts."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from ftscale.data.format import (MANIFEST, Manifest, Shard, SourceEntry, StageCounts, read_manifest,
                                 verify_dataset)
from ftscale.data.store import store_bytes
from ftscale.errors import DataError, InputError

SHA = "ab" * 32


def counts(**changes) -> StageCounts:
    base = dict(read=10, quarantined=2, quarantined_by_reason={"empty": 1, "bad_json": 1}, exact_duplicate=3,
                near_duplicate=1, contaminated=0, kept=4, truncated=1, train_docs=3, val_docs=1)
    return StageCounts(**{**base, **changes})


def manifest() -> Manifest:
    def shard(k: int, rows: int, tokens: int, sub: str = "shards") -> Shard:
        return Shard(path=f"{sub}/web/part-{k:05d}.parquet", rows=rows, tokens=tokens, sha256=SHA,
                     store=f"{sub}/web/part-{k:05d}.tokens", store_bytes=store_bytes(rows, tokens), store_sha256=SHA)

    web = SourceEntry(kind="cpt", counts=counts(), train=(shard(0, 2, 30), shard(1, 1, 12)),
                      val=(shard(0, 1, 9, "val"),), train_tokens=42, val_tokens=9, supervised_train_tokens=42,
                      supervised_share=1.0, lengths_histogram={"edges": [0, 8, 16], "counts": [1, 3]},
                      warnings=("a warning",))
    return Manifest(seq_len=16, seed=3, sources={"web": web}, created_by="test", config={"seq_len": 16},
                    config_fingerprint="f" * 64, tokenizer={"path": "tok", "eos_token_id": 2, "pad_token_id": None})


def test_round_trip(tmp_path):
    m = manifest()
    obj = json.loads(json.dumps(m.to_json()))
    assert obj["format_version"] == 2
    assert obj["sources"]["web"]["train"][0]["store"] == {"path": "shards/web/part-00000.tokens",
                                                          "bytes": store_bytes(2, 30), "sha256": SHA}
    assert Manifest.from_json(obj, tmp_path) == m
    (tmp_path / MANIFEST).write_text(json.dumps(obj))
    assert read_manifest(tmp_path) == m
    assert [(n, s.path) for n, s in m.shards("val")] == [("web", "val/web/part-00000.parquet")]


@pytest.mark.parametrize("path", ["../outside.parquet", "/etc/passwd", "shards/../../x.parquet", "", "a\\..\\b"])
@pytest.mark.parametrize("key", ["path", "store"])
def test_paths_must_stay_inside_the_dataset(tmp_path, path, key):
    obj = manifest().to_json()
    shard = obj["sources"]["web"]["train"][1]
    if key == "path":
        shard["path"] = path
    else:
        shard["store"]["path"] = path
    where = "train[1].path" if key == "path" else "train[1].store.path"
    with pytest.raises(DataError, match=re.escape(f"manifest.json: sources.web.{where} must be a relative path "
                                                  "inside the dataset directory")):
        Manifest.from_json(obj, tmp_path)


def test_a_symlink_out_of_the_dataset_is_refused(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "shards").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match=r"sources\.web\.train\[0\]\.path 'shards/web/part-00000.parquet' leads "
                                        "outside the dataset directory"):
        Manifest.from_json(manifest().to_json(), root)


@pytest.mark.parametrize("edit,message", [
    (lambda o: o["sources"]["web"]["train"][0].update(rows=-1), r"train\[0\]\.rows must be a non-negative integer"),
    (lambda o: o["sources"]["web"]["train"][0].update(rows="2"), r"train\[0\]\.rows must be a non-negative integer"),
    (lambda o: o["sources"]["web"]["train"][0].update(tokens=True), r"train\[0\]\.tokens must be a non-negative"),
    (lambda o: o["sources"]["web"]["train"][0].update(sha256="xyz"), r"train\[0\]\.sha256 must be a sha256"),
    (lambda o: o["sources"]["web"]["train"][0].pop("store"), r"train\[0\]\.store is missing"),
    (lambda o: o["sources"]["web"]["tokens"].update(train=41), r"tokens\.train \(41\) is not the sum"),
    (lambda o: o["sources"]["web"]["counts"].update(train_docs=4), r"counts\.train_docs \(4\) is not the sum"),
    (lambda o: o["sources"]["web"]["counts"]["quarantined_by_reason"].update(empty=-1),
     r"quarantined_by_reason\.empty must be a non-negative"),
    (lambda o: o["sources"]["web"].update(kind="dpo"), r"sources\.web\.kind must be one of cpt, sft"),
    (lambda o: o["sources"]["web"].update(val={}), r"sources\.web\.val must be a list of shards"),
    (lambda o: o.update(seq_len=0), r"seq_len must be >= 1"),
    (lambda o: o["tokenizer"].update(eos_token_id=-2), r"tokenizer\.eos_token_id must be a non-negative"),
    (lambda o: o.update(sources=[]), r"sources must be a JSON object"),
])
def test_bad_values_name_their_key(tmp_path, edit, message):
    obj = copy.deepcopy(manifest().to_json())
    edit(obj)
    with pytest.raises(DataError, match=message + ".*re-run `ftscale prep`"):
        Manifest.from_json(obj, tmp_path)


def test_an_old_or_unreadable_manifest_says_rerun_prep(tmp_path):
    with pytest.raises(InputError, match="not a prepared dataset"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        read_manifest(tmp_path)
    obj = manifest().to_json()
    obj["format_version"] = 1
    (tmp_path / MANIFEST).write_text(json.dumps(obj))
    with pytest.raises(DataError, match="format_version 1, this ftscale reads 2; re-run `ftscale prep`"):
        read_manifest(tmp_path)


def test_verify_reports_a_missing_file(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps(manifest().to_json()))
    with pytest.raises(DataError, match=r"part-00000.parquet does not match the manifest \(sha256 unreadable"):
        verify_dataset(tmp_path)


def test_stage_counts_conservation():
    good = counts()
    assert good.violations() == []
    good.check("web")
    dedup_only = counts(truncated=0, train_docs=0, val_docs=0)  # a dedup report: no split
    dedup_only.check("web")
    counts(val_docs=2, extra_samples=1).check("web")  # an SFT turn expanded into its own sample
    cases = ((counts(read=11), "read 11 != kept"),
             (counts(quarantined_by_reason={"empty": 2, "bad_json": 1}), "quarantined 2 != sum of quarantined_by_reason"),
             (counts(val_docs=2), "kept 4 + extra_samples 0 != train_docs + val_docs = 5"))
    for broken, equation in cases:
        assert len(broken.violations()) == 1 and equation in broken.violations()[0]
        with pytest.raises(AssertionError, match="count conservation broken for source 'web': " + re.escape(equation)):
            broken.check("web")
    total = good + counts(read=1, quarantined=1, quarantined_by_reason={"oversize": 1}, exact_duplicate=0,
                          near_duplicate=0, kept=0, truncated=0, train_docs=0, val_docs=0)
    assert total.read == 11 and total.quarantined_by_reason == {"empty": 1, "bad_json": 1, "oversize": 1}
    assert total.violations() == [] and sum([good], StageCounts.zero()) == good


def test_stage_counts_json_keeps_the_manifest_keys():
    obj = counts().to_json()
    assert list(obj) == ["read", "quarantined", "quarantined_by_reason", "exact_duplicate", "near_duplicate",
                         "contaminated", "kept", "truncated", "train_docs", "val_docs", "extra_samples"]
    assert StageCounts.from_json(obj) == counts()
    minimal = {k: obj[k] for k in ("read", "quarantined", "exact_duplicate", "near_duplicate", "contaminated", "kept")}
    assert StageCounts.from_json(minimal).train_docs == 0  # what a dedup report holds
    with pytest.raises(DataError, match="counts.kept is missing"):
        StageCounts.from_json({k: v for k, v in minimal.items() if k != "kept"})


def test_unknown_source_names_are_config_errors(tmp_path: Path):
    from ftscale.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown source.*'chat'"):
        manifest().shards("train", ["chat"])
