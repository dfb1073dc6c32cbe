"""`ftscale prep` on a preference source with SmolLM2's tokenizer and ChatML template: pairs become
adjacent chosen/rejected documents in the same shard, sharing their prompt's tokens, with loss on
the reply only; bad pairs are quarantined with their reason and every count is conserved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from ftscale.cli import main

FRUITS = ["apples", "pears", "plums", "figs", "dates", "limes", "grapes", "melons", "cherries", "peaches",
          "lemons", "mangoes", "olives", "quinces", "apricots", "berries", "guavas", "kiwis", "papayas", "oranges"]
LONG = " ".join(f"word{k}" for k in range(300))


def write_pairs(path: Path) -> dict[str, tuple[str, str]]:
    """37 good pairs in five layouts (one with a multi-turn prompt), an exact duplicate, a pair whose
    reply is truncated and 6 bad records; returns, per prompt
    text, the (chosen, rejected) replies of the pairs that must be kept."""
    lines, kept = [], {}
    for i, fruit in enumerate(FRUITS):
        for variant in range(2):
            prompt = f"Tell me about {fruit}, take {variant}."
            chosen, rejected = f"{fruit.title()} are good ({variant}).", f"I will not talk about {fruit}."
            layout = (2 * i + variant) % 5
            if layout == 0:
                record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            elif layout == 1:
                record = {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}]}
            elif layout == 2:
                record = {"messages": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected}
            elif layout == 3:  # TRL's implicit prompt
                turn = {"role": "user", "content": prompt}
                record = {"chosen": [turn, {"role": "assistant", "content": chosen}],
                          "rejected": [turn, {"role": "assistant", "content": rejected}]}
            else:  # ShareGPT
                record = {"conversations": [{"from": "human", "value": prompt}],
                          "chosen": {"from": "gpt", "value": chosen}, "rejected": {"from": "gpt", "value": rejected}}
            lines.append(json.dumps(record))
            kept[prompt] = (chosen, rejected)
    lines = lines[:36]
    kept = dict(list(kept.items())[:36])
    lines.append(lines[0])  # an exact duplicate
    lines += [
        json.dumps({"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."}),                # identical_sides
        json.dumps({"prompt": "Empty?", "chosen": "Fine.", "rejected": "  "}),                # empty_side
        json.dumps({"prompt": "No reply?", "chosen": "Fine."}),                               # missing_field
        json.dumps({"prompt": f"Read this: {LONG}", "chosen": "Done.", "rejected": "No."}),  # prompt_overlong
        json.dumps({"prompt": "Tell me a long story.", "chosen": f"Once {LONG}", "rejected": "No."}),  # truncated
        json.dumps({"prompt": "Who?", "chosen": "Me.", "rejected": [{"role": "user", "content": "You."}]}),  # wrong_role
        "{not json",
    ]
    kept["Tell me a long story."] = (f"Once {LONG}", "No.")
    history = [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "Earlier reply."},
               {"role": "user", "content": "And now?"}]  # earlier assistant turns are context, mask 0
    lines.insert(5, json.dumps({"chosen": [*history, {"role": "assistant", "content": "Now this."}],
                                "rejected": [*history, {"role": "assistant", "content": "Not that."}]}))
    kept["And now?"] = ("Now this.", "Not that.")
    path.write_text("\n".join(lines) + "\n")
    return kept


@pytest.mark.parametrize("engine", ["rust", "python"])
def test_preference_prep_writes_adjacent_pairs_with_shared_prompts(tmp_path, smol_tokenizer_dir, capsys, engine):
    from transformers import AutoTokenizer

    expected = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    cfg = {"output": str(out), "seq_len": 256, "val_fraction": 0.25, "shard_rows": 7,
           "dedup": {"near": False}, "tokenizer": {"path": str(smol_tokenizer_dir), "chat_engine": engine},
           "sources": [{"name": "pref", "kind": "preference", "paths": [str(tmp_path / "pairs.jsonl")]}]}
    (tmp_path / "prep.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["prep", str(tmp_path / "prep.yaml")]) == 0

    entry = json.loads((out / "manifest.json").read_text())["sources"]["pref"]
    counts = entry["counts"]
    assert entry["kind"] == "preference" and entry["chat"]["engine"] == engine
    assert counts["read"] == 45 and counts["exact_duplicate"] == 1
    assert counts["quarantined_by_reason"] == {"empty_side": 1, "identical_sides": 1, "malformed_json": 1,
                                               "missing_field": 1, "prompt_overlong": 1, "wrong_role": 1}
    assert counts["kept"] == len(expected) == 38 and counts["truncated"] == 1
    assert counts["read"] == counts["kept"] + counts["quarantined"] + counts["exact_duplicate"]
    assert counts["extra_samples"] == counts["kept"] and counts["train_docs"] + counts["val_docs"] == 2 * 38
    assert counts["val_docs"] > 0 and entry["tokens"]["train"] == sum(s["tokens"] for s in entry["train"])
    quarantine = pq.read_table(out / "quarantine" / "pref.parquet").to_pylist()
    assert sorted(q["reason"] for q in quarantine) == sorted(counts["quarantined_by_reason"])

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    seen = set()
    for split in ("train", "val"):
        assert entry[split]
        for shard in entry[split]:
            assert shard["rows"] % 2 == 0 and shard["rows"] <= 8
            table = pq.read_table(out / shard["path"]).to_pylist()
            for chosen_doc, rejected_doc in zip(table[0::2], table[1::2]):
                assert chosen_doc["uid"] == rejected_doc["uid"]
                sides = []
                for doc in (chosen_doc, rejected_doc):
                    ids, mask = np.array(doc["input_ids"]), np.array(doc["loss_mask"])
                    assert len(ids) <= 128
                    start = int(np.flatnonzero(mask)[0])
                    assert mask[start:].sum() == len(mask[start:]) - (len(mask) - 1 - int(np.flatnonzero(mask)[-1]))
                    sides.append((ids, start, tok.decode(ids[mask == 1].tolist())))
                (c_ids, c_start, c_text), (r_ids, r_start, r_text) = sides
                assert c_start == r_start and np.array_equal(c_ids[:c_start], r_ids[:r_start])
                prompt_text = tok.decode(c_ids[:c_start].tolist())
                prompt = next(p for p in expected if f"<|im_start|>user\n{p}<|im_end|>" in prompt_text)
                assert prompt_text.endswith("<|im_start|>assistant\n")
                want_chosen, want_rejected = expected[prompt]
                if len(c_ids) == 128:  # the truncated reply: its beginning is kept
                    assert want_chosen.startswith(c_text) and len(c_text) > 100
                else:
                    assert c_text == want_chosen + "<|im_end|>"
                assert r_text == want_rejected + "<|im_end|>"
                seen.add(prompt)
    assert seen == set(expected)

    capsys.readouterr()
    assert main(["inspect", str(out), "--source", "pref", "--n", "2"]) == 0
    shown = capsys.readouterr().out
    assert "pair 1 · rejected" in shown and "pair 0 · chosen" in shown
