"""`ftscale prep` on SFT sources of mixed shapes under a template that drops earlier reasoning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from ftscale.cli import main

# ChatML that writes an assistant turn's reasoning only while it is the last message (as
# Qwen3-style templates drop it once a later query follows).
REASONING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and loop.last and m.reasoning_content is defined %}"
    "{{ '<|im_start|>assistant\\n<think>\\n' + m.reasoning_content + '\\n</think>\\n\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_records(path: Path) -> list[str]:
    """30 OpenAI conversations with two reasoning turns, 10 ShareGPT ones, 5 Alpaca records and
    one broken record; returns every assistant text that must be learned (with its reasoning)."""
    answers, lines = [], []
    for i in range(30):
        turns = []
        for t in range(2):
            turns += [{"role": "user", "content": f"question {i}.{t}?"},
                      {"role": "assistant", "content": f"answer {i}.{t}", "reasoning_content": f"think {i}.{t}"}]
            answers.append(f"<think>\nthink {i}.{t}\n</think>\n\nanswer {i}.{t}")
        lines.append({"messages": turns})
    for i in range(10):
        lines.append({"conversations": [{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": f"hello {i}"},
                                        {"from": "human", "value": f"bye {i}"}, {"from": "gpt", "value": f"ciao {i}"}]})
        answers += [f"hello {i}", f"ciao {i}"]
    for i in range(5):
        lines.append({"instruction": f"Name colour {i}.", "output": f"Blue {i}."})
        answers.append(f"Blue {i}.")
    lines.append({"messages": [{"speaker": "user", "text": "no role field"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return answers


def test_minimal_sft_source_expands_rewritten_turns_and_learns_every_answer(tmp_path, smol_tokenizer_dir):
    answers = write_records(tmp_path / "chats.jsonl")
    out = tmp_path / "out"
    # A minimal SFT source: name, kind, paths (no overlong: its default follows the kind).
    cfg = {"output": str(out), "seq_len": 512, "val_fraction": 0.1, "shard_rows": 50,
           "tokenizer": {"path": str(smol_tokenizer_dir), "chat_template": REASONING_TEMPLATE},
           "sources": [{"name": "chat", "kind": "sft", "paths": [str(tmp_path / "chats.jsonl")]}]}
    (tmp_path / "prep.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["prep", str(tmp_path / "prep.yaml")]) == 0

    entry = json.loads((out / "manifest.json").read_text())["sources"]["chat"]
    counts, chat = entry["counts"], entry["chat"]
    assert counts["read"] == 46 and counts["quarantined_by_reason"] == {"wrong_type": 1}
    assert counts["extra_samples"] == 30 and counts["train_docs"] + counts["val_docs"] == 45 + 30
    assert chat["engine"] == "rust" and chat["python_rendered"] == 0
    assert chat["expanded_turns"] == 30 and chat["located_turns"] == 0

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smol_tokenizer_dir))
    supervised = []
    for shard in entry["train"] + entry["val"]:
        for row in pq.read_table(out / shard["path"]).to_pylist():
            ids, mask = np.array(row["input_ids"]), np.array(row["loss_mask"], dtype=bool)
            text = tok.decode(ids[mask])
            assert "question" not in text and "hi " not in text and "Name colour" not in text
            supervised.append(text)
    everything = "\n".join(supervised)
    for answer in answers:  # every assistant turn, its reasoning included, is learned somewhere
        assert answer + "<|im_end|>" in everything
