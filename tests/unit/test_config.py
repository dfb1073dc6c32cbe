"""Config validation: every shipped config builds, and every invalid value is an error that
names its dotted key (`ftscale validate`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ftscale.cli import main
from ftscale.config import PrepConfig, TrainConfig, apply_overrides, build, detect_kind, validate_file
from ftscale.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

PREP = {"output": "out/x", "tokenizer": {"path": "tok"},
        "sources": [{"name": "web", "paths": ["a.jsonl"]}, {"name": "chat", "kind": "sft", "overlong": "truncate",
                                                           "paths": ["b.jsonl"]}]}
TRAIN = {"data": {"path": "data/x", "mixture": {"web": 1.0}}, "model": {"path": "models/m"}}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    checked = validate_file(path)
    assert checked.kind == ("prep" if path.name.startswith("prep") else "train")
    assert isinstance(checked.config, PrepConfig if checked.kind == "prep" else TrainConfig)


def test_kind_comes_from_the_top_level_keys() -> None:
    assert detect_kind(PREP) == "prep"
    assert detect_kind(TRAIN) == "train"
    with pytest.raises(ConfigError, match="train config has model, a prep config has sources, tokenizer, output"):
        detect_kind({"seq_len": 128})
    with pytest.raises(ConfigError, match="both model, sources"):
        detect_kind({**TRAIN, "sources": []})


@pytest.mark.parametrize("kind,override,key", [
    # wrong types
    ("train", "seq_len=long", "seq_len"),
    ("train", "optim.lr=fast", "optim.lr"),
    ("train", "spike.enabled=3", "spike.enabled"),
    ("prep", "sources.1.paths=b.jsonl", "sources.1.paths"),
    # out of range, one key per check
    ("train", "seq_len=4", "seq_len"),
    ("train", "micro_batch_size=0", "micro_batch_size"),
    ("train", "max_steps=0", "max_steps"),
    ("train", "num_workers=0", "num_workers"),
    ("train", "cpus_per_worker=0", "cpus_per_worker"),
    ("train", "checkpoint_every=0", "checkpoint_every"),
    ("train", "keep_checkpoints=0", "keep_checkpoints"),
    ("train", "eval_every=-1", "eval_every"),
    ("train", "eval_batches=0", "eval_batches"),
    ("train", "log_every=0", "log_every"),
    ("train", "early_stop_patience=-1", "early_stop_patience"),
    ("train", "tokens_per_step=0", "tokens_per_step"),
    ("train", "stop_at_step=0", "stop_at_step"),
    ("train", "peak_tflops=0", "peak_tflops"),
    ("train", "seed=-1", "seed"),
    ("train", "max_failures=-2", "max_failures"),
    ("train", "early_stop_patience=2", "early_stop_patience"),  # eval_every: 0
    ("train", "optim.lr=0", "optim.lr"),
    ("train", "optim.min_lr=1", "optim.min_lr"),
    ("train", "optim.warmup_steps=-1", "optim.warmup_steps"),
    ("train", "optim.weight_decay=-0.1", "optim.weight_decay"),
    ("train", "optim.betas=[0.9]", "optim.betas"),
    ("train", "optim.betas=[0.9,1.5]", "optim.betas"),
    ("train", "optim.eps=0", "optim.eps"),
    ("train", "optim.grad_clip=-1", "optim.grad_clip"),
    ("train", "spike.window=0", "spike.window"),
    ("train", "spike.z_threshold=0", "spike.z_threshold"),
    ("train", "spike.min_history=1", "spike.min_history"),
    ("train", "spike.min_history=60", "spike.min_history"),  # > window
    ("train", "spike.max_spikes=0", "spike.max_spikes"),
    ("train", "data.temperature=0", "data.temperature"),
    ("train", "data.max_repeat=0.5", "data.max_repeat"),
    ("train", "data.tokens_per_epoch=0", "data.tokens_per_epoch"),
    ("train", "data.mixture.web=0", "data.mixture.web"),
    ("train", "data.mixture={}", "data.mixture"),
    ("train", "lora.r=0", "lora.r"),
    ("train", "lora.alpha=0", "lora.alpha"),
    ("train", "lora.dropout=1", "lora.dropout"),
    ("train", "lora.target_modules=[]", "lora.target_modules"),
    ("prep", "seq_len=4", "seq_len"),
    ("prep", "val_fraction=1", "val_fraction"),
    ("prep", "seed=-1", "seed"),
    ("prep", "num_threads=0", "num_threads"),
    ("prep", "dedup.threshold=0", "dedup.threshold"),
    ("prep", "decontaminate.min_fraction=2", "decontaminate.min_fraction"),
    ("prep", "sources.0.max_record_bytes=0", "sources.0.max_record_bytes"),
    ("prep", "tokenizer.path=gpt2.tiktoken", "sources.1.kind"),  # sft needs a chat template
    # bad choices
    ("train", "zero_stage=4", "zero_stage"),
    ("train", "method=adalora", "method"),
    ("prep", "sources.0.kind=foo", "sources.0.kind"),
    ("prep", "sources.1.overlong=split", "sources.1.overlong"),
    # unknown keys (with a suggestion where one is close)
    ("train", "seq_lenn=128", "seq_lenn"),
    ("train", "optim.warmup=3", "optim.warmup"),
    ("prep", "sources.0.text_feld=body", "sources.0.text_feld"),
])
def test_an_invalid_value_names_its_key(tmp_path: Path, kind: str, override: str, key: str) -> None:
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(PREP if kind == "prep" else {**TRAIN, "eval_every": 0}))
    with pytest.raises(ConfigError) as raised:
        validate_file(path, [override])
    assert str(raised.value).startswith(f"{key}:"), str(raised.value)


@pytest.mark.parametrize("cls,override,suggestion", [
    (TrainConfig, "seq_lenn=128", "seq_len"),
    (TrainConfig, "optim.warmup=3", "warmup_steps"),
    (PrepConfig, "sources.0.text_feld=x", "text_field"),
])
def test_an_unknown_key_suggests_the_closest(cls: type, override: str, suggestion: str) -> None:
    data = copy.deepcopy(PREP if cls is PrepConfig else TRAIN)
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        build(cls, apply_overrides(data, [override]))


def test_numbers_in_exponent_notation_are_numbers() -> None:
    # YAML 1.1 reads 1e-4 (no dot) as a string; a float key accepts it all the same.
    assert build(TrainConfig, {**TRAIN, "optim": {"lr": "1e-4", "min_lr": "1e-5"}}).optim.lr == 1e-4
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        build(TrainConfig, {**TRAIN, "optim": {"lr": ".nan"}})


def prepared(root: Path, sources: dict[str, str], seq_len: int = 128) -> Path:
    """A manifest (all validate reads of a prepared dataset; the shard files are not needed)."""
    from ftscale.data.format import Manifest, Shard, SourceEntry, StageCounts
    from ftscale.data.store import store_bytes

    shard = Shard(path="x.parquet", rows=1, tokens=10, sha256="0" * 64, store="x.tokens",
                  store_bytes=store_bytes(1, 10), store_sha256="0" * 64)
    counts = StageCounts(read=1, quarantined=0, exact_duplicate=0, near_duplicate=0, contaminated=0, kept=1,
                         train_docs=1)
    entries = {n: SourceEntry(kind=k, counts=counts, train=(shard,), val=(), train_tokens=10, val_tokens=0,
                              supervised_train_tokens=10, supervised_share=1.0) for n, k in sources.items()}
    root.mkdir(parents=True)
    manifest = Manifest(seq_len=seq_len, seed=0, sources=entries, tokenizer={})
    (root / "manifest.json").write_text(json.dumps(manifest.to_json()))
    return root


def test_train_config_is_checked_against_its_prepared_dataset(tmp_path: Path) -> None:
    data = prepared(tmp_path / "data", {"web": "cpt", "chat": "sft"})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**TRAIN, "data": {"path": str(data), "mixture": {"web": 1.0}}, "seq_len": 128}))
    checked = validate_file(path)
    assert [w.split(":")[0] for w in checked.warnings] == ["model.path", "eval_every"]
    with pytest.raises(ConfigError, match=r"data.mixture.wiki: .* has no source 'wiki'; it has web, chat"):
        validate_file(path, ["data.mixture.wiki=1"])
    with pytest.raises(ConfigError, match="seq_len: 256 exceeds the prepared seq_len 128"):
        validate_file(path, ["seq_len=256", "data.mixture.chat=1"])
    assert validate_file(path, ["seq_len=256"]).kind == "train"  # the CPT source alone is packed to any length


def test_missing_inputs_are_warnings(tmp_path: Path) -> None:
    path = tmp_path / "prep.yaml"
    path.write_text(yaml.safe_dump({**PREP, "decontaminate": {"eval_paths": ["evals/*.jsonl"]}}))
    checked = validate_file(path)
    assert [w.split(":")[0] for w in checked.warnings] == [
        "tokenizer.path", "sources.0.paths", "sources.1.paths", "decontaminate.eval_paths"]


def test_validate_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = REPO / "configs" / "train_1b_lora_zero2.yaml"
    assert main(["validate", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{config}: valid train config (lora, ZeRO-2, seq_len 4096")
    assert "warning: model.path" in captured.err
    assert main(["validate", str(config), "optim.eps=0"]) == 2
    assert "optim.eps: must be > 0, got 0.0" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_elastic_num_workers_keeps_the_global_batch() -> None:
    base = {**TRAIN, "seq_len": 128, "micro_batch_size": 2, "tokens_per_step": 1024}

    def elastic(data: dict, workers: str) -> TrainConfig:
        return build(TrainConfig, apply_overrides(copy.deepcopy(data), [f"num_workers={workers}"]))

    cfg = elastic(base, "[1,2]")
    assert cfg.worker_counts() == [1, 2]
    # 256 tokens per micro-batch: 4 micro-batches on 1 worker, 2 on each of 2: the same 1024 tokens
    assert [w * cfg.grad_accum_steps(w) * 256 for w in cfg.worker_counts()] == [1024, 1024]
    with pytest.raises(ConfigError, match="with 3 workers, tokens_per_step 1024 is not a whole number"):
        elastic(base, "[1,4]")
    for workers in ("[2,1]", "[0,2]", "[1,2,3]"):
        with pytest.raises(ConfigError, match="^num_workers:"):
            elastic(base, workers)
    with pytest.raises(ConfigError, match="an elastic run .* needs tokens_per_step"):
        elastic(TRAIN, "[1,2]")


def test_num_workers_auto_count_and_range_reach_ray_in_its_form() -> None:
    """"auto" becomes a count before Ray sees it (no elastic checks apply to it); a count and
    an elastic [min, max] are kept, and Ray gets a count or a (min, max) tuple."""
    from ftscale.train.launch import _scaling, _workers

    base = {**TRAIN, "seq_len": 128, "micro_batch_size": 2, "tokens_per_step": 1024}
    auto = build(TrainConfig, base)
    assert auto.num_workers == "auto"
    with pytest.raises(ValueError, match="resolve it"):
        auto.grad_accum_steps()
    resolved, on_gpu = _scaling(auto, 0.0)
    assert (resolved.num_workers, on_gpu, _workers(resolved.num_workers)) == (2, False, 2)
    assert resolved.grad_accum_steps() == resolved.grad_accum_steps(2) == 2
    elastic = build(TrainConfig, {**base, "num_workers": [1, 2]})
    resolved, _ = _scaling(elastic, 0.0)
    assert resolved.num_workers == [1, 2] and _workers(resolved.num_workers) == (1, 2)
    assert [resolved.grad_accum_steps(w) for w in (1, 2)] == [4, 2]
    with pytest.raises(ConfigError, match="^num_workers: must be 'auto' or >= 1, got 0$"):
        build(TrainConfig, {**base, "num_workers": 0})
    with pytest.raises(ConfigError, match="^num_workers:"):
        build(TrainConfig, {**base, "num_workers": "all"})
