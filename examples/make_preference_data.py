"""Regenerate the bundled preference pairs (python/ftscale/demo_data/preference.jsonl.gz) from
the bundled KJV text; deterministic, and needs nothing beyond the standard library:

    python examples/make_preference_data.py

The pairs come from demo_data/domain.jsonl.gz (Proverbs and Ecclesiastes as passages of
consecutive verses). A passage is cut into verses at sentence ends (in these two books a
sentence is nearly always one verse). Each pair, in TRL's conversational format
(``{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}``):

* prompt — a user message holding one verse and asking for the next;
* chosen — the verse that truly follows it in the passage;
* rejected — the prompt's own verse, restated: the failure the main demo shows in the base
  model (asked to continue a verse, it repeats it). Language models find copying easy, so
  before tuning a model tends to rank this above the true continuation; DPO has something
  to teach that carries over to held-out pairs.

Verses that appear in the demo's eval sets (eval.jsonl, tasks/heldout_verses.jsonl) or in its
before/after question (Proverbs 1:7) are left out, so decontaminating against them removes
nothing. There is no held-out file: `ftscale prep`'s val_fraction holds pairs out by uid hash.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

DEMO_DATA = Path(__file__).resolve().parents[1] / "python" / "ftscale" / "demo_data"
OUT = DEMO_DATA / "preference.jsonl.gz"
N_PAIRS = 600
SEED = 2028
MIN_WORDS = 6  # shorter sentences are verse fragments more often than verses
HELD_OUT_QUESTION = "The fear of the LORD is the beginning of knowledge"  # Proverbs 1:7, the demo question
QUESTION = "Here is a verse from the King James Bible:\n\n{verse}\n\nWhat is the verse that follows it?"
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z\[])")


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def verse_runs() -> list[list[str]]:
    """The domain passages as runs of consecutive verses (the upper-cased copies planted for
    exact dedup are skipped)."""
    runs = []
    for record in _jsonl(DEMO_DATA / "domain.jsonl.gz"):
        text = record["text"]
        if text == text.upper():
            continue
        runs.append([" ".join(s.split()) for s in _SENTENCE_END.split(text) if s.strip()])
    return runs


def held_out_texts() -> list[str]:
    """Every eval text of the demo (passages and verses) and its before/after question."""
    texts = [r["text"] for r in _jsonl(DEMO_DATA / "eval.jsonl")]
    texts += [r["text"] for r in _jsonl(DEMO_DATA / "tasks" / "heldout_verses.jsonl")]
    return [*texts, HELD_OUT_QUESTION]


def preference_pairs(n_pairs: int = N_PAIRS, seed: int = SEED) -> list[dict]:
    """``n_pairs`` pairs (see the module docstring), the same for a given seed."""
    held_out = held_out_texts()

    def usable(verse: str) -> bool:  # a sentence may span verses: it must neither hold nor be in eval text
        return len(verse.split()) >= MIN_WORDS and not any(verse in h or h in verse for h in held_out)

    runs = verse_runs()
    consecutive = sorted({(a, b) for run in runs for a, b in zip(run, run[1:]) if usable(a) and usable(b)})
    rng = random.Random(seed)
    picked = rng.sample(consecutive, min(n_pairs, len(consecutive)))
    pairs = []
    for verse, following in picked:
        if verse == following:
            continue
        pairs.append({"prompt": [{"role": "user", "content": QUESTION.format(verse=verse)}],
                      "chosen": [{"role": "assistant", "content": following}],
                      "rejected": [{"role": "assistant", "content": verse}]})
    return pairs


def main() -> None:
    pairs = preference_pairs()
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:
        f.write("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs).encode("utf-8"))
    print(f"{OUT}: {len(pairs)} pairs")


if __name__ == "__main__":
    main()
