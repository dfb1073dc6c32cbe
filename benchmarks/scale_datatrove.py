#!/usr/bin/env python
"""datatrove's four-stage MinHash dedup on the scale benchmark's shards (run by bench_scale.py).

    python benchmarks/scale_datatrove.py run SHARDS_DIR WORK_DIR --buckets 14 --rows 9 ...
    python benchmarks/scale_datatrove.py check SHARDS_DIR [--docs 1000]

Standalone: imports datatrove, pyarrow and the standard library only, so it can run from a
separate virtual environment. ``run`` executes, with ``LocalPipelineExecutor``:

1. signatures: reader -> ``MinhashDedupSignature`` (``tasks`` = number of shards, so each task
   reads one shard, as datatrove's examples do; ``workers`` at a time; ids read as strings);
2. buckets: ``MinhashDedupBuckets`` (one task per bucket);
3. cluster: ``MinhashDedupCluster`` (one task: its union-find holds every duplicate);
4. filter: reader -> ``MinhashDedupFilter`` (removed documents to ``WORK/removed`` through its
   exclusion writer) -> the kept documents to ``WORK/kept``; both ``ParquetWriter`` with
   datatrove's default settings; same tasks as stage 1.

``MinhashConfig(n_grams, num_buckets=B, hashes_per_bucket=R)``: datatrove computes exactly B x R
hashes (no spare permutations), 64-bit xxhash shingle hashes (its default ``HashConfig``), text
normalised by its default ``TextNormConfig`` (lowercase, whitespace, punctuation, digits,
diacritics; a no-op on the benchmark's lowercase letter words beyond lowercasing) and split into
words by its English word tokenizer (spaCy ``blank("en")``) or, with ``--tokenizer whitespace``,
by ``str.split``. It has no verification step: every pair that shares a band is a duplicate.

``run`` prints one JSON line last: seconds per stage, documents read and removed.
``check`` prints how many of the first documents datatrove's shingling splits differently from
``text.lower().split()`` (ftscale's words on this ASCII text); it should be 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from datatrove.utils.word_tokenizers import WordTokenizer


class WhitespaceTokenizer(WordTokenizer):
    """``str.split`` words: ftscale's word splitting, and datatrove's fastest option."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, at = [], 0
        for w in text.split():
            at = text.index(w, at)
            spans.append((at, at + len(w)))
            at += len(w)
        return spans


def string_id(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """Reader adapter: datatrove's default, with the id as a string (``Document.id`` is a str;
    its writers drop falsy fields, so an integer id 0 would vanish from the output)."""
    doc = self._default_adapter(data, path, id_in_file)
    doc["id"] = str(doc["id"])
    return doc


def reader(shards: Path, fmt: str):
    from datatrove.pipeline.readers import JsonlReader, ParquetReader

    if fmt == "parquet":
        return ParquetReader(str(shards), glob_pattern="*.parquet", text_key="text", id_key="id",
                             adapter=string_id)
    return JsonlReader(str(shards), glob_pattern="*.jsonl.zst", compression="zstd", text_key="text", id_key="id",
                       adapter=string_id)


def word_tokenizer(name: str):
    return WhitespaceTokenizer("en") if name == "whitespace" else "en"


def run(args: argparse.Namespace) -> dict:
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.writers import ParquetWriter

    work = Path(args.work)
    suffix = "*.parquet" if args.format == "parquet" else "*.jsonl.zst"
    tasks = len(list(Path(args.shards).glob(suffix)))
    if tasks == 0:
        raise SystemExit(f"no {suffix} files in {args.shards}")
    config = MinhashConfig(n_grams=args.ngram, num_buckets=args.buckets, hashes_per_bucket=args.rows,
                           seed=args.seed)
    stages = [
        ("signatures", [reader(args.shards, args.format),
                        MinhashDedupSignature(output_folder=str(work / "signatures"), config=config,
                                              language=word_tokenizer(args.tokenizer))], tasks),
        ("buckets", [MinhashDedupBuckets(input_folder=str(work / "signatures"), output_folder=str(work / "buckets"),
                                         config=config)], config.num_buckets),
        ("cluster", [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"),
                                         config=config)], 1),
        ("filter", [reader(args.shards, args.format),
                    MinhashDedupFilter(input_folder=str(work / "remove_ids"),
                                       exclusion_writer=ParquetWriter(str(work / "removed"))),
                    ParquetWriter(str(work / "kept"))], tasks),
    ]
    seconds = {}
    for name, pipeline, n_tasks in stages:
        t0 = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=min(args.workers, n_tasks),
                              logging_dir=str(work / "logs" / name), skip_completed=False).run()
        seconds[name] = time.perf_counter() - t0
    return {"seconds": seconds, "tasks": tasks, "workers": args.workers,
            "config": {"n_grams": config.n_grams, "num_buckets": config.num_buckets,
                       "hashes_per_bucket": config.hashes_per_bucket, "seed": config.seed,
                       "hash_config": str(config.hash_config), "norm_config": repr(config.norm_config),
                       "tokenizer": args.tokenizer}}


def check(args: argparse.Namespace) -> dict:
    """Documents (of the first ``args.docs``) whose datatrove words differ from lower().split()."""
    from datatrove.utils.text import TextNormConfig, simplify_text
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    docs = []
    for doc in reader(args.shards, args.format).run(rank=0, world_size=1):
        docs.append(doc.text)
        if len(docs) >= args.docs:
            break
    out = {}
    for name in ("spacy", "whitespace"):
        tok = load_word_tokenizer(word_tokenizer(name))
        differ = sum(tok.word_tokenize(simplify_text(t, TextNormConfig())) != t.lower().split() for t in docs)
        out[name] = {"docs": len(docs), "differ": differ}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("shards")
    r.add_argument("work")
    r.add_argument("--format", choices=("parquet", "jsonl.zst"), default="parquet")
    r.add_argument("--buckets", type=int, required=True)
    r.add_argument("--rows", type=int, required=True)
    r.add_argument("--ngram", type=int, default=5)
    r.add_argument("--workers", type=int, required=True)
    r.add_argument("--seed", type=int, default=1, help="datatrove's default MinhashConfig seed")
    r.add_argument("--tokenizer", choices=("spacy", "whitespace"), default="spacy")
    c = sub.add_parser("check")
    c.add_argument("shards")
    c.add_argument("--format", choices=("parquet", "jsonl.zst"), default="parquet")
    c.add_argument("--docs", type=int, default=1000)
    args = ap.parse_args()
    print(json.dumps(run(args) if args.cmd == "run" else check(args)))


if __name__ == "__main__":
    main()
