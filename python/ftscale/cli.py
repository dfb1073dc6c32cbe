"""The `ftscale` command line. Heavy modules are imported inside each command so that
`ftscale --help` and the data commands start fast."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from ftscale.errors import ConfigError, FtscaleError


def _add_dedup(sub: Any) -> None:
    p = sub.add_parser(
        "dedup",
        help="exact + near-duplicate removal and decontamination of text or chat records",
        description="Remove exact and near duplicates (MinHash LSH) and eval-set leaks. INPUT is a "
        "file or directory (JSONL[.gz|.zst], Parquet, Arrow IPC, HF save_to_disk); NAME=INPUT names "
        "the source.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--text-field", default="text", help="text column (default: text)")
    p.add_argument("--messages-field", default=None,
                   help="chat column of {role, content} lists; records are chat records (Alpaca accepted)")
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold (default: 0.8)")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default: 128)")
    p.add_argument("--ngram", type=int, default=5, help="shingle size in words (default: 5)")
    p.add_argument("--char-ngrams", action="store_true", help="shingle by characters instead of words")
    p.add_argument("--bands", type=int, default=None, help="LSH bands (default: derived from threshold)")
    p.add_argument("--rows", type=int, default=None, help="LSH rows per band (with --bands)")
    p.add_argument("--verify", choices=["auto", "estimate", "exact", "none"], default="auto",
                   help="candidate verification (default auto: signature estimate, exact Jaccard near "
                   "the threshold)")
    p.add_argument("--seed", type=int, default=0, help="MinHash seed (default: 0)")
    p.add_argument("--keep", default="lowest-uid", help="keep rule: lowest-uid (default) or max:COLUMN")
    p.add_argument("--case-sensitive", action="store_true", help="exact dedup without lowercasing")
    p.add_argument("--strip-punctuation", action="store_true", help="punctuation counts as whitespace")
    p.add_argument("--no-exact", action="store_true", help="skip exact dedup")
    p.add_argument("--no-near", action="store_true", help="skip near-duplicate removal")
    p.add_argument("--decontaminate", nargs="+", default=[], metavar="EVAL_FILE",
                   help="eval sets whose items must not leak into the training data")
    p.add_argument("--eval-text-field", default=None, help="text column of eval sets (default: --text-field)")
    p.add_argument("--eval-messages-field", default=None, help="chat column of eval sets")
    p.add_argument("--decontam-ngram", type=int, default=13, help="n-gram size in words (default: 13)")
    p.add_argument("--decontam-min-fraction", type=float, default=0.0,
                   help="flag when this share of a record's n-grams hit (default 0: any hit)")
    p.add_argument("--decontam-roles", default=None,
                   help="chat roles checked, comma-separated (default: all)")
    p.add_argument("--audit", type=int, default=0, metavar="N",
                   help="sample N flagged and N near-threshold pairs; report precision/recall")
    p.add_argument("--max-record-bytes", type=int, default=None, help="quarantine larger records")
    p.add_argument("--threads", type=int, default=None, help="threads (default: FTSCALE_NUM_THREADS or all cores)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=_cmd_dedup)


def _cmd_dedup(args: argparse.Namespace) -> int:
    from ftscale.dedup_job import DedupOptions, run_dedup
    from ftscale.progress import Stages
    from ftscale.summary import print_dedup_summary

    opts = DedupOptions(
        inputs=args.inputs, out=args.out, text_field=args.text_field, messages_field=args.messages_field,
        exact=not args.no_exact, near=not args.no_near, threshold=args.threshold, num_perm=args.num_perm,
        ngram=args.ngram, char_ngrams=args.char_ngrams, verify=args.verify, bands=args.bands,
        rows=args.rows, seed=args.seed, keep=args.keep, lowercase=not args.case_sensitive,
        strip_punctuation=args.strip_punctuation, decontaminate=args.decontaminate,
        eval_text_field=args.eval_text_field, eval_messages_field=args.eval_messages_field,
        decontam_ngram=args.decontam_ngram, decontam_min_fraction=args.decontam_min_fraction,
        decontam_roles=args.decontam_roles.split(",") if args.decontam_roles else None,
        audit=args.audit, max_record_bytes=args.max_record_bytes, num_threads=args.threads,
    )
    stages = Stages(enabled=True)
    report = run_dedup(opts, stages)
    if args.json:
        print(json.dumps({**report, "timings_s": stages.seconds}, indent=2))
    else:
        print_dedup_summary(report, stages.seconds)
    return 0


def _add_prep(sub: Any) -> None:
    p = sub.add_parser("prep", help="tokenize, chat-format, dedup and shard sources into a prepared dataset",
                       description="Prepare a dataset from a YAML config (see configs/). KEY=VALUE overrides "
                       "any config key, e.g. seq_len=4096 sources.0.kind=sft dedup.threshold=0.85.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    p.set_defaults(func=_cmd_prep)


def _cmd_prep(args: argparse.Namespace) -> int:
    from ftscale.config import PrepConfig, load_config
    from ftscale.data.prep import run_prep, summarize
    from ftscale.progress import Stages
    from ftscale.summary import print_rows

    cfg = load_config(PrepConfig, args.config, args.overrides)
    stages = Stages(enabled=True)
    manifest = run_prep(cfg, stages)
    if args.json:
        print(json.dumps({**manifest, "timings_s": stages.seconds}, indent=2))
        return 0
    print_rows(f"ftscale prep → {cfg.output}", summarize(manifest), stages.seconds)
    for name, entry in manifest["sources"].items():
        for w in entry.get("warnings", []):
            stages.print(f"[yellow]warning[/yellow] {name}: {w}")
    return 0


def _add_mix(sub: Any) -> None:
    p = sub.add_parser("mix", help="plan a token-weighted mixture of a prepared dataset's sources",
                       description="Show what a mixture draws from each source: tokens, documents, repetition.")
    p.add_argument("dataset", help="prepared dataset directory (ftscale prep output)")
    p.add_argument("--weights", required=True, help="NAME=WEIGHT,... e.g. domain=1,general=5")
    p.add_argument("--tokens", required=True, help="tokens to draw, e.g. 10M")
    p.add_argument("--temperature", type=float, default=1.0, help="weights become w^(1/T) (default 1)")
    p.add_argument("--max-repeat", type=float, default=4.0, help="max passes over any source (default 4)")
    p.add_argument("--family-cap", type=float, default=None, help="max share of a source per task family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="only print the plan (the default; nothing is written)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_mix)


def _cmd_mix(args: argparse.Namespace) -> int:
    from ftscale.config import parse_count
    from ftscale.data.mixing import describe_mixture, parse_weights
    from ftscale.summary import print_rows

    tokens = parse_count(args.tokens)
    if tokens is None or tokens <= 0:
        raise ConfigError(f"--tokens: expected a positive count like 10M, got {args.tokens!r}")
    rows = describe_mixture(args.dataset, parse_weights(args.weights), tokens, seed=args.seed, epoch=args.epoch,
                            temperature=args.temperature, max_repeat=args.max_repeat, family_cap=args.family_cap)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_rows(f"mixture of {args.dataset} ({tokens:,} tokens)", rows, {})
    return 0


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="print prepared samples with the loss-bearing tokens highlighted")
    p.add_argument("dataset")
    p.add_argument("--source", required=True)
    p.add_argument("--n", type=int, default=3, help="samples to show (default 3)")
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ftscale.data.inspect import print_samples

    print_samples(args.dataset, args.source, args.n, args.split)
    return 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train on a prepared dataset with Ray Train + DeepSpeed",
                       description="Start a local Ray cluster (or join RAY_ADDRESS) and train. KEY=VALUE "
                       "overrides any config key, e.g. max_steps=200 zero_stage=3 method=lora.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from ftscale.config import TrainConfig, load_config
    from ftscale.train.launch import launch

    cfg = load_config(TrainConfig, args.config, args.overrides)
    summary = launch(cfg)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        m = summary["metrics"]
        print(f"run: {summary['run_dir']}\ncheckpoint: {summary['checkpoint']}\n"
              f"final loss: {m.get('loss', float('nan')):.4f}" +
              (f"  val loss: {m['val_loss']:.4f}" if "val_loss" in m else "") +
              (f"\nexported: {summary['export']}" if summary.get("export") else ""))
    return 0


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="checkpoint → Hugging Face model directory (or peft adapter)")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--out", required=True)
    p.add_argument("--merge-lora", action="store_true", help="merge LoRA weights into the base model")
    p.add_argument("--average-last", type=int, default=1, metavar="K", help="average the last K checkpoints")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from ftscale.train.export import export

    print(export(args.source, args.out, merge_lora=args.merge_lora, average_last=args.average_last))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftscale", description="Fine-tuning data engine and trainer.")
    from ftscale import __version__

    parser.add_argument("--version", action="version", version=f"ftscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_dedup(sub)
    _add_prep(sub)
    _add_mix(sub)
    _add_inspect(sub)
    _add_train(sub)
    _add_export(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FtscaleError as e:
        print(f"ftscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
