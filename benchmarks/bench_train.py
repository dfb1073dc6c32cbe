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
import tempfile
from pathlib import Path

from train_common import REPO, ftscale_throughput, hf_records, prepare, run_hf_trainer, sample_texts

MODEL = {"model_type": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 512, "tie_word_embeddings": False}
THREADS = 2
SEQ_LEN = 512
HF_BATCH = 8  # conversations per HF step
ROWS_PER_STEP = 4  # packed rows per ftscale step (similar real tokens per step)
WARMUP_STEPS = 4  # HF steps left out of the timing (ftscale: the first 3)


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
    out = ftscale_throughput(work / "runs" / "bench")
    del out["rows"]
    return out


def run_hf(prepared: Path, tok_dir: Path, steps: int) -> dict:
    return run_hf_trainer(hf_records(prepared), tok_dir, MODEL, steps=steps, warmup_steps=WARMUP_STEPS,
                          batch_size=HF_BATCH, device="cpu", bf16=False, attn_implementation="sdpa", threads=THREADS)


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
        prepared, tok_dir = prepare(work, conversations(3000), "sft", SEQ_LEN)
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
