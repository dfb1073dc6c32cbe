"""Training throughput: ftscale (packed rows, Ray Train + DeepSpeed) vs the Hugging Face
Trainer with dynamic padding, on the same tiny LLaMA and the same SFT conversations, CPU.

    python benchmarks/bench_train.py [--steps 30] [--rounds 2] [--json benchmarks/results/train.json]

Both see the same conversations tokenized with the same chat template and assistant-only
labels; both use one process with the same number of CPU threads. "Real tokens/s" counts
non-padding tokens per second of optimizer steps (start-up and the first 3 steps excluded).
HF and ftscale run in alternating rounds; the best round of each is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from conftest import build_tokenizer, sample_texts  # noqa: E402  (tiny BPE + KJV sample)

MODEL = {"model_type": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 512, "tie_word_embeddings": False}
THREADS = 2
SEQ_LEN = 512
HF_BATCH = 8  # conversations per HF step
ROWS_PER_STEP = 4  # packed rows per ftscale step (similar real tokens per step)


def conversations(n: int, seed: int = 0) -> list[dict]:
    """Chats with a long-tailed answer length, as real SFT data has."""
    rng = random.Random(seed)
    verses = " ".join(sample_texts(300)).split()
    chats = []
    for _ in range(n):
        q_len, a_len = rng.randrange(5, 30), int(min(380, rng.lognormvariate(3.6, 0.9)))
        start = rng.randrange(len(verses) - 500)
        chats.append({"messages": [
            {"role": "user", "content": " ".join(verses[start:start + q_len])},
            {"role": "assistant", "content": " ".join(verses[start + q_len:start + q_len + a_len])}]})
    return chats


def prepare(work: Path, chats: list[dict]) -> tuple[Path, Path]:
    from ftscale.cli import main

    tok_dir = build_tokenizer(work / "tokenizer", sample_texts(400))
    (work / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    cfg = {"output": str(work / "prepared"), "seq_len": SEQ_LEN, "val_fraction": 0.0,
           "tokenizer": {"path": str(tok_dir)}, "dedup": {"exact": False, "near": False},
           "sources": [{"name": "chat", "kind": "sft", "overlong": "truncate", "paths": [str(work / "chat.jsonl")]}]}
    (work / "prep.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["prep", str(work / "prep.yaml")]) == 0
    return work / "prepared", tok_dir


def run_ftscale(prepared: Path, work: Path, steps: int) -> dict:
    from ftscale.config import TrainConfig, build
    from ftscale.train.launch import launch

    cfg = build(TrainConfig, {
        "run_name": "bench", "storage_path": str(work / "runs"), "data": {"path": str(prepared)},
        "model": {"config": MODEL, "attn_implementation": "auto"}, "seq_len": SEQ_LEN,
        "micro_batch_size": ROWS_PER_STEP, "max_steps": steps, "zero_stage": 0, "num_workers": 1,
        "cpus_per_worker": THREADS, "precision": "fp32", "checkpoint_every": steps, "eval_every": 0,
        "export_on_finish": False, "spike": {"enabled": False}, "optim": {"lr": 1e-3, "warmup_steps": 1}})
    launch(cfg)
    rows = [json.loads(x) for x in (work / "runs" / "bench" / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if "tokens_per_s" in r][3:]
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in steady)
    seconds = sum(r["step_time_s"] for r in steady)
    return {"real_tokens_per_s": tokens / seconds, "steps": len(steady),
            "padding_fraction": statistics.mean(r["padding_fraction"] for r in steady)}


def run_hf(prepared: Path, tok_dir: Path, steps: int) -> dict:
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import (AutoConfig, AutoModelForCausalLM, DataCollatorForSeq2Seq, PreTrainedTokenizerFast,
                              Trainer, TrainerCallback, TrainingArguments)

    torch.set_num_threads(THREADS)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    # The same token ids and assistant-only labels that ftscale trains on.
    table = pq.read_table(prepared / "shards" / "chat" / "part-00000.parquet")
    records = [{"input_ids": ids, "attention_mask": [1] * len(ids),
                "labels": [t if m else -100 for t, m in zip(ids, mask)]}
               for ids, mask in zip(table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist())]
    dataset = Dataset.from_list(records)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**MODEL), attn_implementation="sdpa")

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.marks.append(time.perf_counter())

    timer = Timer()
    real_tokens: list[int] = []
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    def collate(features):  # noqa: ANN001
        batch = collator(features)
        real_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=HF_BATCH, max_steps=steps,
                             learning_rate=1e-3, logging_steps=10**6, save_strategy="no", report_to=[],
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[timer]).train()
    steady_tokens = sum(real_tokens[4:steps])
    seconds = timer.marks[-1] - timer.marks[3]
    padded = sum(1 for _ in real_tokens)
    return {"real_tokens_per_s": steady_tokens / seconds, "steps": steps - 4, "batches": padded}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating HF / ftscale rounds; the best round of each is compared (default 2)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "train.json"))
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    hf_rounds, our_rounds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared, tok_dir = prepare(work, conversations(3000))
        # Alternating rounds, best of each: this shared machine's speed drifts by tens of
        # percent within minutes, and a single HF-then-ftscale pair measured the drift.
        for r in range(args.rounds):
            hf_rounds.append(run_hf(prepared, tok_dir, args.steps * 2))
            our_rounds.append(run_ftscale(prepared, work / f"round{r}", args.steps))
    hf = max(hf_rounds, key=lambda x: x["real_tokens_per_s"])
    ours = max(our_rounds, key=lambda x: x["real_tokens_per_s"])
    ratio = ours["real_tokens_per_s"] / hf["real_tokens_per_s"]
    print("rounds | ftscale: " + ", ".join(f"{x['real_tokens_per_s']:,.0f}" for x in our_rounds)
          + " | HF: " + ", ".join(f"{x['real_tokens_per_s']:,.0f}" for x in hf_rounds))
    print(f"train real tokens/s (best round) | ftscale packed (Ray Train + DeepSpeed ZeRO-0, 1 worker × {THREADS} "
          f"threads): {ours['real_tokens_per_s']:,.0f} | HF Trainer dynamic padding: {hf['real_tokens_per_s']:,.0f} | "
          f"ratio {ratio:.2f} (target >= 2)")
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": THREADS},
              "model": MODEL, "seq_len": SEQ_LEN, "ftscale": ours, "hf_trainer": hf, "ratio": ratio,
              "rounds": {"ftscale": our_rounds, "hf_trainer": hf_rounds}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
