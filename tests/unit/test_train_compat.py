"""The dataset's tokenizer is checked against the model before training starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftscale.config import TrainConfig, build
from ftscale.data.tokenize import load_tokenizer
from ftscale.errors import ConfigError
from ftscale.train.compat import check_model_tokenizer

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1}


def bpe_dir(directory: Path, text: str, vocab_size: int) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text] * 10, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("toks")
    return (bpe_dir(root / "a", "the quick brown fox jumps over the lazy dog", 300),
            bpe_dir(root / "b", "a completely different corpus of words entirely", 300))


def config(tmp_path: Path, **model) -> TrainConfig:
    return build(TrainConfig, {"data": {"path": str(tmp_path)}, "model": model})


def model_dir(tmp_path: Path, vocab_size: int, tokenizer: Path | None) -> Path:
    from ftscale.train.model import load_model

    out = tmp_path / f"model-{vocab_size}-{tokenizer.name if tokenizer else 'none'}"
    load_model(None, {**TINY, "vocab_size": vocab_size}).save_pretrained(str(out))
    if tokenizer is not None:
        load_tokenizer(str(tokenizer)).hf.save_pretrained(str(out))
    return out


def test_ids_beyond_the_embedding_are_refused(tmp_path, tokenizers):
    data_tok = load_tokenizer(str(tokenizers[0])).describe()
    with pytest.raises(ConfigError, match=f"embedding has 256 rows.*has {data_tok['vocab_size']} tokens"):
        check_model_tokenizer(config(tmp_path, config={**TINY, "vocab_size": 256}), data_tok)
    check_model_tokenizer(config(tmp_path, config={**TINY, "vocab_size": 512}), data_tok)
    with pytest.raises(ConfigError, match="embedding has 256 rows"):  # read from the model's config.json
        check_model_tokenizer(config(tmp_path, path=str(model_dir(tmp_path, 256, None))), data_tok)


def test_a_model_with_another_tokenizer_is_refused(tmp_path, tokenizers):
    data_tok = load_tokenizer(str(tokenizers[0])).describe()
    same = model_dir(tmp_path, 512, tokenizers[0])
    check_model_tokenizer(config(tmp_path, path=str(same)), data_tok)  # a copy of the same tokenizer
    other = model_dir(tmp_path, 512, tokenizers[1])
    with pytest.raises(ConfigError, match="another vocabulary than the one the dataset was prepared with"):
        check_model_tokenizer(config(tmp_path, path=str(other)), data_tok)
    # a model directory without a tokenizer has nothing to compare
    check_model_tokenizer(config(tmp_path, path=str(model_dir(tmp_path, 512, None))), data_tok)


def test_a_different_chat_template_alone_is_not_another_vocabulary(tmp_path, tokenizers):
    data_tok = load_tokenizer(str(tokenizers[0]), "{{ messages[0]['content'] }}").describe()
    check_model_tokenizer(config(tmp_path, path=str(model_dir(tmp_path, 512, tokenizers[0]))), data_tok)
