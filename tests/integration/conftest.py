"""Shared fixtures for training tests: a tiny BPE tokenizer, a tiny prepared dataset (CPT +
SFT) made with the real `ftscale prep`, and tiny train configs."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def sample_texts(n: int) -> list[str]:
    with gzip.open(REPO / "python" / "ftscale" / "demo_data" / "general.jsonl.gz", "rt") as f:
        out = []
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("text"), str) and rec["text"].strip():
                out.append(rec["text"])
            if len(out) == n:
                break
    return out


def build_tokenizer(directory: Path, texts: list[str], vocab_size: int = 512) -> Path:
    """A real byte-level BPE tokenizer trained on the sample (no hub), with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(str(directory))
    return directory


def tiny_chats(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "light water bread king city river stone field house door".split()
    chats = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randrange(3, 10)))
        a = " ".join(rng.choice(words) for _ in range(rng.randrange(5, 25)))
        chats.append({"messages": [{"role": "user", "content": f"Tell me about {q}?"},
                                   {"role": "assistant", "content": f"The {a}."}]})
    return chats


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A prepared dataset (CPT source `bible`, SFT source `chat`) with a 512-token BPE vocab."""
    from ftscale.cli import main

    root = tmp_path_factory.mktemp("tiny")
    texts = sample_texts(400)
    tok_dir = build_tokenizer(root / "tokenizer", texts)
    (root / "cpt.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (root / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in tiny_chats(300)))
    cfg = {"output": str(root / "prepared"), "seq_len": 128, "val_fraction": 0.1, "seed": 0,
           "tokenizer": {"path": str(tok_dir)},
           "sources": [{"name": "bible", "kind": "cpt", "paths": [str(root / "cpt.jsonl")]},
                       {"name": "chat", "kind": "sft", "overlong": "truncate",
                        "paths": [str(root / "chat.jsonl")]}]}
    (root / "prep.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["prep", str(root / "prep.yaml")]) == 0
    return root / "prepared"


def tiny_train_config(dataset: Path, storage: Path, **overrides: Any) -> dict:
    """A 2-layer, hidden-64 LLaMA on 2 CPU workers; a few seconds per step at most."""
    cfg: dict[str, Any] = {
        "run_name": "tiny", "storage_path": str(storage),
        "data": {"path": str(dataset), "mixture": {"bible": 1.0, "chat": 1.0}},
        "model": {"config": {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "max_position_embeddings": 128, "tie_word_embeddings": False},
                  "attn_implementation": "auto"},
        "seq_len": 128, "micro_batch_size": 2, "tokens_per_step": 1024, "max_steps": 6,
        "zero_stage": 2, "num_workers": 2, "cpus_per_worker": 1, "precision": "fp32",
        "optim": {"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1},
        "checkpoint_every": 3, "eval_every": 0, "export_on_finish": False, "max_failures": 2,
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg
