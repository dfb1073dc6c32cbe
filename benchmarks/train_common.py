"""What the training benchmarks share (``bench_train.py`` and ``bench_dpo.py`` on CPU,
``gpu_check.py`` on a GPU): a prepared dataset made with the real ``ftscale prep`` and a tiny
BPE tokenizer, the same documents as Hugging Face Trainer records, the seeded model init both
sides start from, the step timer of a Trainer-based peer, ftscale's throughput read from its
metrics, and one timed run of the named SFT peer, the HF Trainer with dynamic padding.

"Real tokens/s" is measured the same way for both sides: non-padding tokens of the steps
after ``warmup_steps``, over the wall time between the end of the last warm-up step and
the end of the last step. On a GPU every step end is synchronised, so the time is the
device's, not the launch queue's.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from conftest import build_tokenizer, sample_texts  # noqa: E402  (tiny BPE + KJV sample)

SOURCE = "data"  # the one source of a benchmark dataset


def documents(n: int, median_words: float, sigma: float, max_words: int, seed: int = 0) -> list[dict]:
    """``n`` CPT records ``{"text"}`` of consecutive KJV words, lengths log-normal around
    ``median_words`` (``sigma``: spread of the log) and capped at ``max_words``: the
    long tail that makes padded batches wasteful."""
    import math

    rng = random.Random(seed)
    words = " ".join(sample_texts(400)).split()  # ~70k words; the file has invalid lines past ~400 (demo)
    out = []
    for _ in range(n):
        size = max(8, min(max_words, int(rng.lognormvariate(math.log(median_words), sigma))))
        start = rng.randrange(len(words) - size)
        out.append({"text": " ".join(words[start:start + size])})
    return out


def prepare(work: Path, records: list[dict], kind: str, seq_len: int) -> tuple[Path, Path]:
    """``(prepared dataset, tokenizer dir)`` for ``records`` of one source named ``SOURCE``
    (``kind``: cpt or sft), no validation split, no dedup; overlong records are truncated."""
    from ftscale.cli import main

    work.mkdir(parents=True, exist_ok=True)
    tok_dir = build_tokenizer(work / "tokenizer", sample_texts(400))
    (work / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {"output": str(work / "prepared"), "seq_len": seq_len, "val_fraction": 0.0,
           "tokenizer": {"path": str(tok_dir)}, "dedup": {"exact": False, "near": False},
           "sources": [{"name": SOURCE, "kind": kind, "overlong": "truncate",
                        "paths": [str(work / "records.jsonl")]}]}
    (work / "prep.yaml").write_text(yaml.safe_dump(cfg))
    if main(["prep", str(work / "prep.yaml")]) != 0:
        raise RuntimeError(f"ftscale prep failed; see {work / 'prep.yaml'}")
    return work / "prepared", tok_dir


def hf_records(prepared: Path) -> list[dict]:
    """The prepared documents as HF Trainer features: the same token ids, and labels that
    carry loss exactly where ftscale's loss mask does (-100 elsewhere)."""
    import pyarrow.parquet as pq

    records = []
    for shard in sorted((prepared / "shards" / SOURCE).glob("part-*.parquet")):
        table = pq.read_table(shard, columns=["input_ids", "loss_mask"])
        for ids, mask in zip(table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist()):
            records.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                            "labels": [t if m else -100 for t, m in zip(ids, mask)]})
    return records


def seeded_model(model_config: dict, device: str, attn_implementation: str) -> Any:
    """A random init of ``model_config`` after ``torch.manual_seed(0)``: the weights ftscale's
    ``model.config`` starts from with ``seed: 0`` (``train.model._from_inline_config``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it trains: a 1B model's CPU init takes seconds
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**model_config),
                                                attn_implementation=attn_implementation)


def step_timer(on_cuda: bool) -> Any:
    """A Trainer callback whose ``marks`` are the ``perf_counter`` times of every step end
    (synchronised on CUDA)."""
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if on_cuda:
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

    return Timer()


def ftscale_throughput(run_dir: Path, skip_steps: int = 3) -> dict[str, Any]:
    """Real tokens/s of an ftscale run from its ``metrics.jsonl``: the non-padding tokens of the
    steps after the first ``skip_steps`` over those steps' time, their mean padding fraction,
    and every step row (``rows``)."""
    import statistics

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "tokens_per_s" in r]
    steady = steps[skip_steps:]
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in steady)
    seconds = sum(r["step_time_s"] for r in steady)
    return {"real_tokens_per_s": tokens / seconds, "steps": len(steady),
            "padding_fraction": statistics.mean(r["padding_fraction"] for r in steady), "rows": steps}


def run_hf_trainer(records: list[dict], tok_dir: Path, model_config: dict, *, steps: int, warmup_steps: int,
                   batch_size: int, device: str, bf16: bool, attn_implementation: str,
                   threads: int | None = None, lr: float = 1e-3) -> dict[str, Any]:
    """One HF Trainer run from a random init of ``model_config`` (seed 0): ``steps`` optimizer
    steps of ``batch_size`` records padded to the longest in the batch
    (``DataCollatorForSeq2Seq``). ``bf16``: autocast with fp32 master weights (the Trainer's
    ``bf16=True``). Returns real tokens/s over the steps after ``warmup_steps``, the padded
    fraction of those batches and, on CUDA, the peak allocated bytes."""
    import torch
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast, Trainer, TrainingArguments

    if not 0 < warmup_steps < steps:
        raise ValueError(f"need 0 < warmup_steps < steps, got {warmup_steps}, {steps}")
    on_cuda = device == "cuda"
    if threads is not None:
        torch.set_num_threads(threads)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    model = seeded_model(model_config, device, attn_implementation)
    timer = step_timer(on_cuda)
    real_tokens: list[int] = []
    slots: list[int] = []
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    def collate(features):  # noqa: ANN001
        batch = collator(features)
        real_tokens.append(int(batch["attention_mask"].sum()))
        slots.append(int(batch["attention_mask"].numel()))
        return batch

    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size, max_steps=steps,
                             learning_rate=lr, logging_steps=10**6, save_strategy="no", report_to=[],
                             use_cpu=not on_cuda, bf16=bf16, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    # A plain list is a map-style dataset to the Trainer (no `datasets` dependency).
    Trainer(model=model, args=args, train_dataset=records, data_collator=collate, callbacks=[timer]).train()
    # Batches are collated in training order (a prefetch only collates earlier): batch i is step i + 1.
    steady_tokens = sum(real_tokens[warmup_steps:steps])
    seconds = timer.marks[steps - 1] - timer.marks[warmup_steps - 1]
    return {"real_tokens_per_s": steady_tokens / seconds, "steps": steps - warmup_steps, "batches": len(real_tokens),
            "padding_fraction": 1.0 - steady_tokens / sum(slots[warmup_steps:steps]), "optim": getattr(args.optim, "value", str(args.optim)),
            "attn_implementation": attn_implementation, "batch_size": batch_size,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated() if on_cuda else None}
