"""DPO throughput and agreement: ftscale (pairs packed into rows, Ray Train + DeepSpeed ZeRO-0,
1 worker) vs TRL's ``DPOTrainer`` (every pair padded to the longest of its batch), on CPU, fp32.

    python benchmarks/bench_dpo.py [--method lora|full] [--steps 20] [--rounds 2] [--json benchmarks/results/dpo.json]

Both sides train the tiny LLaMA of ``bench_train.py`` from the same seeded init on the bundled
demo pairs (``demo_data/preference.jsonl.gz``): ftscale from ``ftscale prep`` (kind preference,
the tiny BPE tokenizer and its ChatML template), TRL from the same prompt/chosen/rejected
messages (its conversational format, rendered with the same template). Same sigmoid loss, beta,
AdamW (betas 0.9/0.95, no decay, clip 1.0), lr with a cosine decay to 0 and no warm-up, steps.

Same pairs in the same order: the pairs ftscale's loader will hand out (its seeded permutation
and packing) are read before the runs, and TRL reads them in that order (sequential sampler).
ftscale's pairs per step vary with packing (rows of ``SEQ_LEN`` tokens); TRL takes a fixed
batch, the rounded mean of ftscale's over the run.

Reference: ``--method lora`` (default): both the base with the adapters switched off (LoRA r 16,
alpha 32, no dropout, all linear layers). ``--method full``: TRL runs a frozen copy of the
initial model every step; ftscale scores every pair once before the first step (``reference:
precomputed``), which is outside its step times and inside its end-to-end wall time.

"Real tokens/s": non-padding tokens (prompt counted in both sides of a pair, as both models
see it twice) over the time of the steps after the first ``WARMUP_STEPS``. Each side runs in its
own process; its peak memory is the sampled peak PSS of its process tree (``proc_tree.py``;
ftscale's includes the Ray processes). TRL and ftscale run in alternating rounds; the best
round of each is compared.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import proc_tree
from bench_train import MODEL, THREADS
from train_common import REPO, SOURCE, ftscale_throughput, prepare, seeded_model, step_timer

PAIRS = REPO / "python" / "ftscale" / "demo_data" / "preference.jsonl.gz"
# A row; prep keeps each side <= SEQ_LEN // 2 = 512 tokens, so no demo pair is cut (the
# longest side is ~260 tokens with the 512-token BPE) and any pair fits one row.
SEQ_LEN = 1024
ROWS_PER_STEP = 4  # ftscale micro-batch (no accumulation): ~13 pairs of ~300 tokens per step
WARMUP_STEPS = 3  # steps of each side left out of the timing
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.0}  # ftscale's default r / alpha; dropout off as TRL does
LAST_STEPS = 5  # the loss "after N steps" is the mean of the last 5 step losses (one step's pairs are few)


def pair_records() -> list[dict]:
    with gzip.open(PAIRS, "rt") as f:
        return [json.loads(line) for line in f]


def check_doc_order(prepared: Path, records: list[dict], tok_dir: Path) -> None:
    """Prep keeps the source order (one shard, no dedup): documents ``2i`` / ``2i + 1`` are the
    chosen / rejected side of record ``i``. Checked on the supervised text of every side."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    shards = sorted((prepared / "shards" / SOURCE).glob("part-*.parquet"))
    ids, masks = [], []
    for shard in shards:
        table = pq.read_table(shard, columns=["input_ids", "loss_mask"])
        ids += table.column("input_ids").to_pylist()
        masks += table.column("loss_mask").to_pylist()
    if len(ids) != 2 * len(records):
        raise RuntimeError(f"prep kept {len(ids)} documents of {len(records)} pairs; expected every pair")
    for d, (doc, mask) in enumerate(zip(ids, masks)):
        side = records[d // 2]["chosen" if d % 2 == 0 else "rejected"][-1]["content"]
        text = tok.decode([t for t, m in zip(doc, mask) if m])
        if not text.startswith(side):
            raise RuntimeError(f"document {d} is not side {d % 2} of pair {d // 2}: {text[:60]!r} vs {side[:60]!r}")


def ftscale_schedule(prepared: Path, steps: int) -> tuple[list[int], list[int]]:
    """``(pair order, pairs per step)``: the pairs (record indices) ftscale's loader hands out
    in its first ``steps`` steps, built with the recipe's own arguments (rank 0 of 1, seed 0)."""
    from ftscale.data.loader import PackedLoader

    loader = PackedLoader(prepared, None, SEQ_LEN, ROWS_PER_STEP, 0, 1, 0)
    order, per_step = [], []
    for _, batch in zip(range(steps), loader):
        chosen = [int(d) for d in batch["sequence_doc"][0::2]]
        order += [d // 2 for d in chosen]
        per_step.append(int(batch["num_pairs"]))
    return order, per_step


def trl_order(ftscale_order: list[int], n_pairs: int, pairs_needed: int) -> list[int]:
    """TRL's pair sequence: ftscale's order, then (if TRL's fixed batches need more pairs than
    ftscale's ``steps`` hand out) the pairs ftscale has not used, in record order."""
    used = set(ftscale_order)
    rest = [i for i in range(n_pairs) if i not in used]
    order = (ftscale_order + rest)[:pairs_needed]
    if len(order) < pairs_needed:
        raise ValueError(f"TRL needs {pairs_needed} pairs; the data has {n_pairs}")
    return order


def loss_summary(losses: list[float]) -> dict:
    """Mean of the last ``LAST_STEPS`` step losses and its standard error."""
    tail = losses[-LAST_STEPS:]
    sem = statistics.stdev(tail) / math.sqrt(len(tail)) if len(tail) > 1 else float("nan")
    return {"loss_last_mean": statistics.mean(tail), "loss_last_sem": sem, "loss_final": losses[-1]}


# ------------------------------------------------------------------ the two sides (one process each)

def run_ftscale(spec: dict) -> dict:
    from ftscale.config import TrainConfig, build
    from ftscale.train.launch import launch

    work = Path(spec["work"])
    cfg = build(TrainConfig, {
        "run_name": "bench", "storage_path": str(work / "runs"), "data": {"path": spec["prepared"]},
        "model": {"config": MODEL, "attn_implementation": "auto"}, "method": spec["method"], "lora": LORA,
        "preference": {"loss": "sigmoid", "beta": spec["beta"], "reference": "auto"}, "seq_len": SEQ_LEN,
        "micro_batch_size": ROWS_PER_STEP, "max_steps": spec["steps"], "zero_stage": 0, "num_workers": 1,
        "cpus_per_worker": THREADS, "precision": "fp32", "checkpoint_every": spec["steps"], "eval_every": 0,
        "export_on_finish": False, "spike": {"enabled": False},
        "optim": {"lr": spec["lr"], "min_lr": 0.0, "warmup_steps": 0, "betas": [0.9, 0.95], "weight_decay": 0.0,
                  "grad_clip": 1.0}})
    launch(cfg)
    out = ftscale_throughput(work / "runs" / "bench", skip_steps=WARMUP_STEPS)
    rows = out.pop("rows")
    out.update(loss_summary([r["loss"] for r in rows]))
    out.update({"losses": [r["loss"] for r in rows], "pairs_per_step": [int(r["pairs"]) for r in rows],
                "accuracy_last_mean": statistics.mean(r["rewards/accuracy"] for r in rows[-LAST_STEPS:]),
                "reference": "adapters" if spec["method"] == "lora" else "precomputed"})
    return out


def run_trl(spec: dict) -> dict:
    import copy
    import time

    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    torch.set_num_threads(THREADS)
    steps, batch = spec["steps"], spec["trl_batch"]
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    model = seeded_model(MODEL, "cpu", "sdpa")
    ref_model, peft_config = None, None
    if spec["method"] == "lora":  # TRL's reference is then the base with the adapter disabled
        peft_config = LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"],
                                 lora_dropout=LORA["dropout"], target_modules="all-linear")
    else:  # a model built from a config has no hub id for TRL to load its reference from
        ref_model = copy.deepcopy(model)
    records = pair_records()
    dataset = datasets.Dataset.from_list([records[i] for i in spec["trl_order"]])

    real_tokens: list[int] = []
    collator = DataCollatorForPreference(pad_token_id=tok.pad_token_id)

    def collate(examples):  # noqa: ANN001
        out = collator(examples)
        real_tokens.append(int(out["attention_mask"].sum()))
        return out

    timer = step_timer(on_cuda=False)
    args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                     max_steps=steps, learning_rate=spec["lr"], lr_scheduler_type="cosine", warmup_steps=0,
                     adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
                     beta=spec["beta"], loss_type=["sigmoid"], max_length=None, gradient_checkpointing=False,
                     bf16=False, fp16=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to=[],
                     disable_tqdm=True, seed=0, dataloader_num_workers=0, train_sampling_strategy="sequential")
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tok,
                         data_collator=collate, peft_config=peft_config, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [float(h["loss"]) for h in logs]
    # Batches are collated in training order (a prefetch only collates earlier): batch i is step i + 1.
    steady_tokens = sum(real_tokens[WARMUP_STEPS:steps])
    seconds = timer.marks[steps - 1] - timer.marks[WARMUP_STEPS - 1]
    out = {"real_tokens_per_s": steady_tokens / seconds, "steps": steps - WARMUP_STEPS, "train_s": train_s,
           "losses": losses, "pairs_per_step": [batch] * steps,
           "accuracy_last_mean": statistics.mean(h["rewards/accuracies"] for h in logs[-LAST_STEPS:]),
           "reference": "adapters off" if spec["method"] == "lora" else "frozen copy"}
    out.update(loss_summary(losses))
    return out


# ------------------------------------------------------------------ orchestration

def run_side(side: str, spec_path: Path, out_path: Path, log_path: Path) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--spec", str(spec_path), "--out", str(out_path)]
    measured = proc_tree.run_measured(cmd, env={**os.environ, "DS_ACCELERATOR": "cpu"}, log_path=log_path,
                                      timeout_s=1800)
    if measured["rc"] != 0:
        raise RuntimeError(f"{side} run failed (rc {measured['rc']}); see {log_path}")
    result = json.loads(out_path.read_text())
    result.update({"wall_s": measured["wall_s"], "peak_tree_pss_bytes": measured["peak_tree_pss_bytes"],
                   "peak_tree_rss_bytes": measured["peak_tree_rss_bytes"],
                   "peak_process_rss_bytes": measured["peak_process_rss_bytes"]})
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=None, help="peak lr (default 2e-3 for lora, 1e-4 for full)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating TRL / ftscale rounds; the best round of each is compared (default 2)")
    parser.add_argument("--json", default=None, help="default benchmarks/results/dpo[-full].json")
    parser.add_argument("--side", choices=["ftscale", "trl"], help=argparse.SUPPRESS)  # one side, in a child
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        spec = json.loads(Path(args.spec).read_text())
        result = (run_ftscale if args.side == "ftscale" else run_trl)(spec)
        Path(args.out).write_text(json.dumps(result))
        return
    if args.steps <= WARMUP_STEPS + 1:
        raise SystemExit(f"--steps must be > {WARMUP_STEPS + 1}")
    lr = args.lr if args.lr is not None else (2e-3 if args.method == "lora" else 1e-4)
    default_json = REPO / "benchmarks" / "results" / ("dpo.json" if args.method == "lora" else "dpo-full.json")
    json_path = Path(args.json or default_json)
    records = pair_records()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared, tok_dir = prepare(work, records, "preference", SEQ_LEN)
        check_doc_order(prepared, records, tok_dir)
        order, per_step = ftscale_schedule(prepared, args.steps)
        trl_batch = round(statistics.mean(per_step))
        spec = {"method": args.method, "steps": args.steps, "lr": lr, "beta": args.beta, "prepared": str(prepared),
                "tokenizer": str(tok_dir), "trl_batch": trl_batch,
                "trl_order": trl_order(order, len(records), trl_batch * args.steps)}
        trl_rounds, our_rounds = [], []
        for r in range(args.rounds):
            for side, rounds in (("trl", trl_rounds), ("ftscale", our_rounds)):
                side_spec = {**spec, "work": str(work / f"{side}{r}")}
                Path(side_spec["work"]).mkdir()
                spec_path = work / f"{side}{r}.spec.json"
                spec_path.write_text(json.dumps(side_spec))
                rounds.append(run_side(side, spec_path, work / f"{side}{r}.out.json", work / f"{side}{r}.log"))
                if side == "ftscale" and rounds[-1]["pairs_per_step"] != per_step:
                    raise RuntimeError("ftscale's steps took other pairs than its loader previewed: "
                                       f"{rounds[-1]['pairs_per_step']} vs {per_step}")
        load = os.getloadavg()
    trl = max(trl_rounds, key=lambda x: x["real_tokens_per_s"])
    ours = max(our_rounds, key=lambda x: x["real_tokens_per_s"])
    ratio = ours["real_tokens_per_s"] / trl["real_tokens_per_s"]
    gap = abs(ours["loss_last_mean"] - trl["loss_last_mean"])
    noise = 2 * math.hypot(ours["loss_last_sem"], trl["loss_last_sem"])
    # Step k of both sides reads nearly the same pairs (ftscale's order; the batches drift apart
    # by the packing's spread), so their per-step losses should move together.
    step_corr = statistics.correlation(ours["losses"], trl["losses"])
    step_gap = statistics.mean(abs(a - b) for a, b in zip(ours["losses"], trl["losses"]))
    gb = 1e9
    print("rounds | ftscale: " + ", ".join(f"{x['real_tokens_per_s']:,.0f}" for x in our_rounds)
          + " | trl: " + ", ".join(f"{x['real_tokens_per_s']:,.0f}" for x in trl_rounds))
    print(f"dpo {args.method}, {args.steps} steps, beta {args.beta}, lr {lr:g}, pairs/step ftscale "
          f"{statistics.mean(per_step):.1f} (packed, {min(per_step)}-{max(per_step)}) vs trl {trl_batch}, "
          f"load average {load[0]:.1f}")
    print(f"ftscale dpo (Ray Train + DeepSpeed ZeRO-0, 1 worker x {THREADS} threads, reference {ours['reference']}): "
          f"{ours['real_tokens_per_s']:,.0f} real tokens/s, {ours['peak_tree_pss_bytes'] / gb:.1f} GB peak | "
          f"trl DPOTrainer (reference {trl['reference']}): {trl['real_tokens_per_s']:,.0f} real tokens/s, "
          f"{trl['peak_tree_pss_bytes'] / gb:.1f} GB | ratio {ratio:.2f}x (target >= 1.5) | "
          f"loss after {args.steps} steps (mean of last {LAST_STEPS}): ftscale {ours['loss_last_mean']:.3f} vs trl "
          f"{trl['loss_last_mean']:.3f} (gap {gap:.3f}, 2-sigma noise {noise:.3f}; step 1 {ours['losses'][0]:.4f} vs "
          f"{trl['losses'][0]:.4f}; per-step losses: correlation {step_corr:.2f}, mean gap {step_gap:.3f}) | "
          f"reward accuracy {ours['accuracy_last_mean']:.2f} vs {trl['accuracy_last_mean']:.2f} | "
          f"wall {ours['wall_s']:.0f} s vs {trl['wall_s']:.0f} s")
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": THREADS,
                          "load_average_1_5_15": load},
              "model": MODEL, "seq_len": SEQ_LEN, "method": args.method, "steps": args.steps, "lr": lr,
              "beta": args.beta, "ftscale_pairs_per_step": per_step, "trl_pairs_per_step": trl_batch,
              "ftscale": ours, "trl_dpo_trainer": trl, "ratio": ratio, "loss_gap": gap, "loss_noise_2sigma": noise,
              "step_loss_correlation": step_corr, "step_loss_mean_gap": step_gap,
              "rounds": {"ftscale": our_rounds, "trl_dpo_trainer": trl_rounds}}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
