"""The checks of ``gpu_check.py``, their sizes per mode and their time estimates.

Each check is ``fn(ctx) -> dict`` with at least ``status`` (ok / fail / not_built; the
orchestrator adds skipped / error / timeout) and a one-line ``summary``; it runs in a child process of ``gpu_check.py`` (heavy imports
live inside the functions, so the orchestrator imports this module for free).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

TINY = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "tie_word_embeddings": False}
# Llama-3.2-1B's shape (1.24B parameters, tied 128k vocabulary), randomly initialised.
LLAMA_1B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "max_position_embeddings": 4096, "tie_word_embeddings": True}
# ~0.2B: long enough rows and enough layers for kernel non-determinism to show in a few steps.
SMALL = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
         "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4,
         "max_position_embeddings": 4096, "tie_word_embeddings": False}
MFU_TARGET = 0.50  # issue 16: llm-foundry reports 46% for MPT-7B on 8xH100
PLAN_TARGET = 0.15  # issue 16: planner within 15% of the measured peak


@dataclass(frozen=True)
class Sizes:
    """What one mode runs. ``estimate_s``: H200 seconds per check, imports and model
    initialisation included (``gpu_check.py`` skips a check when less than half of it is
    left)."""

    device: str
    parity: tuple[tuple[str, dict, int, str], ...]  # (check name, model, seq_len, dtype)
    model: dict  # the "~1B" model of the throughput and planner checks
    seq_len: int
    micro_batch: int  # packed rows; lowered on GPUs where `ftscale plan` says fewer fit
    warmup_steps: int
    measure_steps: int
    documents: tuple[int, float, float, int]  # count, median words, sigma of log, max words
    plan_configs: tuple[tuple[str, bool], ...]  # (method, gradient checkpointing)
    plan_micro_batch: int
    det_model: dict
    det_micro_batch: int
    det_steps: int
    qlora_steps: int  # QLoRA smoke steps (det_model, det_micro_batch rows)
    matmul_n: int
    budget_s: float
    estimate_s: dict[str, float] = field(default_factory=dict)


_GPU_ESTIMATES = {"env": 20, "qlora": 25, "parity_tiny": 20, "parity_1b": 45, "data": 30,
                  "throughput_ftscale": 90, "throughput_hf": 75, "plan": 110, "determinism": 60}
_FULL = Sizes(
    device="cuda", parity=(("parity_tiny", TINY, 256, "bfloat16"), ("parity_1b", LLAMA_1B, 4096, "bfloat16")),
    model=LLAMA_1B, seq_len=4096, micro_batch=4, warmup_steps=3, measure_steps=10,
    documents=(600, 400.0, 0.9, 2600),  # ~2.4 tokens per word with the 512-token BPE: median ~1k tokens
    plan_configs=(("full", False), ("full", True), ("lora", False)), plan_micro_batch=1,
    det_model=SMALL, det_micro_batch=2, det_steps=6, qlora_steps=8, matmul_n=8192, budget_s=450.0, estimate_s=_GPU_ESTIMATES)
MODES = {
    "full": _FULL,
    "quick": replace(_FULL, warmup_steps=2, measure_steps=4, documents=(300, 400.0, 0.9, 2600),
                     plan_configs=(("full", True),), det_steps=3, budget_s=270.0,
                     estimate_s={**_GPU_ESTIMATES, "throughput_ftscale": 60, "throughput_hf": 50, "plan": 45,
                                 "determinism": 40}),
    "cpu-smoke": Sizes(
        device="cpu", parity=(("parity_tiny", TINY, 64, "bfloat16"),
                              ("parity_1b", {**TINY, "tie_word_embeddings": True}, 128, "float32")),
        model=TINY, seq_len=128, micro_batch=2, warmup_steps=1, measure_steps=2, documents=(80, 40.0, 0.8, 150),
        plan_configs=_FULL.plan_configs, plan_micro_batch=1, det_model=TINY, det_micro_batch=2, det_steps=3,
        qlora_steps=2, matmul_n=256, budget_s=600.0),
}
CHECK_ORDER = ("env", "parity_tiny", "parity_1b", "data", "qlora", "throughput_ftscale", "throughput_hf", "plan",
               "determinism")
# One process runs every check (--cpu-smoke): the HF peer goes before the first check that
# sets up the recipe, whose torch.distributed group would make the Trainer wrap its model in DDP.
SHARED_PROCESS_ORDER = ("env", "parity_tiny", "parity_1b", "data", "throughput_hf", "qlora", "throughput_ftscale",
                        "plan", "determinism")
IN_PARENT: tuple[str, ...] = ()  # checks cheap enough for the orchestrator itself (no torch): none now
REQUIRES = {"qlora": ("data",), "throughput_ftscale": ("data",), "throughput_hf": ("data",), "plan": ("data",),
            "determinism": ("data",)}


@dataclass
class Context:
    mode: str
    sizes: Sizes
    work: Path
    deadline: float  # time.time() after which nothing new starts
    results: dict[str, dict] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.sizes.device

    @property
    def on_cuda(self) -> bool:
        return self.sizes.device == "cuda"

    @property
    def dataset(self) -> Path:
        return self.work / "data" / "prepared"

    @property
    def tokenizer(self) -> Path:
        return self.work / "data" / "tokenizer"


def flash_attn_status(device: str) -> tuple[bool, str]:
    """``(usable, why)``: can ``flash_attention_2`` run here, and if not, why not."""
    if device != "cuda":
        return False, "needs CUDA"
    try:
        import flash_attn
    except ModuleNotFoundError as e:
        if e.name != "flash_attn":
            return False, f"flash-attn is installed but does not import: {e}"
        return False, ("flash-attn is not installed: PyPI has no flash-attn wheel (sdist only; its setup fetches "
                       "a prebuilt wheel from GitHub or compiles CUDA for tens of minutes), so packed rows ran "
                       "with sdpa_segments")
    except ImportError as e:  # e.g. built against another torch: undefined symbols
        return False, f"flash-attn is installed but does not import: {e}"
    return True, f"flash-attn {getattr(flash_attn, '__version__', '?')}"


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def sdpa_gqa_backends(device: str, dtype: Any) -> dict[str, str]:
    """Which torch SDPA kernels run what ``sdpa_segments`` asks of them (causal, grouped-query
    heads through ``enable_gqa``, forward + backward): "ok" or the first line of the refusal.
    Without flash-attn the packed rows' speed depends on it: the math kernel materialises
    ``heads × len²`` scores per segment."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        q = torch.randn(1, 8, 256, 64, device=device, dtype=dtype, requires_grad=True)
        kv = torch.randn(1, 2, 256, 64, device=device, dtype=dtype, requires_grad=True)
        try:
            with warnings.catch_warnings(), sdpa_kernel(backend):
                warnings.simplefilter("ignore")  # the refusal's reasons come as warnings, one per filter
                F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True).sum().backward()
            out[backend.name] = "ok"
        except RuntimeError as e:
            out[backend.name] = str(e).strip().splitlines()[0][:160]
    return out


def check_env(ctx: Context) -> dict[str, Any]:
    """Versions, the device and its bf16 peak (``ftscale.train.metrics``), flash-attn, and
    the bf16 matmul rate measured here (the ceiling MFU is read against)."""
    import torch

    from ftscale.train.metrics import device_peak_tflops

    out: dict[str, Any] = {"versions": {n: _version(n) for n in ("torch", "transformers", "peft", "deepspeed",
                                                                    "accelerate", "flash-attn", "ray")},
                           "cuda": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if ctx.on_cuda and not out["cuda"]:
        return {**out, "status": "fail", "summary": "no CUDA device visible to torch; use --cpu-smoke without a GPU"}
    device = torch.device(ctx.device)
    dtype = torch.bfloat16 if ctx.on_cuda else torch.float32
    n = ctx.sizes.matmul_n
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats = 10
    if ctx.on_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if ctx.on_cuda:
        torch.cuda.synchronize()
    out["matmul_tflops"] = 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12
    flash, why = flash_attn_status(ctx.device)
    out.update(flash_attn=flash, flash_attn_note=why, sdpa_gqa_backends=sdpa_gqa_backends(ctx.device, dtype))
    if ctx.on_cuda:
        props = torch.cuda.get_device_properties(0)
        out.update(device=props.name, capability=f"{props.major}.{props.minor}", memory_bytes=props.total_memory,
                   peak_tflops=device_peak_tflops(device))
    else:
        out.update(device="cpu", peak_tflops=None)
    peak = f", datasheet bf16 peak {out['peak_tflops']:.0f}" if out["peak_tflops"] else ""
    out["summary"] = (f"{out['device']}: {'bf16' if ctx.on_cuda else 'fp32'} {n}^3 matmul "
                      f"{out['matmul_tflops']:.1f} TFLOP/s{peak}; torch {out['versions']['torch']}, "
                      f"transformers {out['versions']['transformers']}, deepspeed {out['versions']['deepspeed']}; "
                      f"flash-attn: {why if not flash else 'yes (' + why + ')'}; SDPA kernels taking causal GQA: "
                      f"{', '.join(k for k, v in out['sdpa_gqa_backends'].items() if v == 'ok') or 'none'}")
    out["status"] = "ok"
    return out


def check_qlora(ctx: Context) -> dict[str, Any]:
    """QLoRA through the trainer's recipe: a saved random model loaded as a 4-bit NF4 base
    (bitsandbytes), LoRA on every linear layer, a few steps on the check's dataset, the
    adapter saved and loaded by plain ``peft`` on the full-precision base. On CPU: the trainer
    must refuse ``method: qlora`` with its one-line error (bitsandbytes 4-bit needs CUDA)."""
    import importlib.util
    import json
    import math

    from ftscale.errors import ConfigError
    from ftscale.train.model import load_model
    from recipe_harness import recipe, run_steps, train_config

    s = ctx.sizes
    base = ctx.work / "qlora_base"
    load_model(None, s.det_model, seed=0).save_pretrained(base)
    run_dir = ctx.work / "runs" / "qlora"
    config = train_config(ctx.dataset, run_dir, s.det_model, device=ctx.device, seq_len=s.seq_len,
                          micro_batch=s.det_micro_batch, steps=s.qlora_steps, method="qlora", zero_stage=0)
    config["model"] = {"path": str(base), "gradient_checkpointing": True}
    config["optim"] = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 1}
    if not ctx.on_cuda:
        from ftscale.config import TrainConfig, build
        from ftscale.train.recipe import Recipe

        try:  # no process group: setup refuses before it would need one
            Recipe(build(TrainConfig, config), 0, 1, run_dir).setup()
        except ConfigError as e:
            refused = "needs a CUDA GPU" in str(e) and "\n" not in str(e)
            return {"status": "ok" if refused else "fail", "cuda": False, "error": str(e),
                    "summary": f"needs CUDA; on CPU the trainer refuses it: {e}"}
        return {"status": "fail", "cuda": False, "summary": "the trainer set up method qlora on CPU"}
    if importlib.util.find_spec("bitsandbytes") is None:
        return {"status": "skipped", "summary": "bitsandbytes is not installed (pip install 'ftscale[qlora]')"}
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with recipe(config, run_dir) as r:
        model = r.engine.module
        four_bit = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
        trainable = sorted({n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad})
        stats = run_steps(r, s.qlora_steps)
        adapter = ctx.work / "qlora_adapter"
        model.save_pretrained(str(adapter))
    losses = [x["loss"] for x in stats]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))
    lora_tensors = sum("lora_" in n for n, _ in loaded.named_parameters())
    fell = sum(losses[-2:]) / 2 < losses[0]
    problems = [text for bad, text in (
        (four_bit == 0, "no Linear4bit layer in the base"),
        (not all(math.isfinite(x) for x in losses), "a loss is not finite"),
        (trainable != ["default"], f"trainable tensors outside the adapter: {trainable}"),
        (lora_tensors == 0, "the saved adapter has no LoRA tensors in plain peft"),
        (not fell, "loss did not fall")) if bad]
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    summary = (f"{four_bit} Linear4bit layers ({adapter_config['peft_type']} r={adapter_config['r']}), "
               f"{len(losses)} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}; adapter loads in peft on the "
               f"full-precision base ({lora_tensors} LoRA tensors)" + ("; FAILED: " + "; ".join(problems)
                                                                      if problems else ""))
    return {"status": "fail" if problems else "ok", "cuda": True, "linear4bit_layers": four_bit, "losses": losses,
            "loss_fell": fell, "lora_tensors": lora_tensors, "problems": problems, "summary": summary}


def check_parity(ctx: Context, name: str) -> dict[str, Any]:
    from gpu_parity import TOLERANCE, compare, verdict

    _, model, seq_len, dtype = next(p for p in ctx.sizes.parity if p[0] == name)
    flash, why = flash_attn_status(ctx.device)
    flash = flash and dtype == "bfloat16"
    result = compare(model, seq_len, ctx.device, dtype, flash)
    passed, problems = verdict(result, dtype)
    v = result["variants"]
    shown = "flash_attention_2" if flash else "sdpa_segments"
    summary = (f"{result['params'] / 1e6:.1f}M params, {result['rows']}x{seq_len} packed, {result['documents']} docs, "
               f"{dtype}: {shown} vs per-document loss {v[shown]['loss_rel']:.1e}, hidden "
               f"{v[shown]['hidden_rel']:.1e}, grads {v[shown]['grad_rel']:.1e} (tolerance "
               f"{TOLERANCE[dtype]['loss_rel']:.0e}/{TOLERANCE[dtype]['hidden_rel']:.0e}/"
               f"{TOLERANCE[dtype]['grad_rel']:.0e}); cross-document control grads {v['cross_document_control']['grad_rel']:.2f}")
    if not flash:
        summary += f"; flash_attention_2 not run: {why}"
    if problems:
        summary += "; FAILED: " + "; ".join(problems)
    return {**result, "status": "ok" if passed else "fail", "dtype": dtype, "seq_len": seq_len,
            "flash_attention_2": "ran" if flash else why, "tolerance": TOLERANCE[dtype], "problems": problems,
            "summary": summary}


def check_data(ctx: Context) -> dict[str, Any]:
    """The throughput, planner and determinism checks' dataset: CPT documents with
    log-normal lengths, prepared with ``ftscale prep`` (no downloads)."""
    import statistics

    from train_common import documents, hf_records, prepare

    count, median_words, sigma, max_words = ctx.sizes.documents
    prepare(ctx.work / "data", documents(count, median_words, sigma, max_words), "cpt", ctx.sizes.seq_len)
    lengths = sorted(len(r["input_ids"]) for r in hf_records(ctx.dataset))
    out = {"documents": len(lengths), "tokens": sum(lengths), "mean_tokens": statistics.mean(lengths),
           "median_tokens": statistics.median(lengths), "p95_tokens": lengths[int(0.95 * (len(lengths) - 1))],
           "max_tokens": lengths[-1]}
    out["summary"] = (f"{out['documents']} documents, {out['tokens']:,} tokens (mean {out['mean_tokens']:.0f}, "
                      f"median {out['median_tokens']:.0f}, p95 {out['p95_tokens']}, max {out['max_tokens']})")
    out["status"] = "ok"
    return out


def _plan_total(model_config: Any, method: str, grad_ckpt: bool, seq_len: int, micro_batch: int,
                precision: str) -> int:
    from ftscale.plan import PlanOptions, model_spec, plan

    opts = PlanOptions(method=method, zero=2, gpus_per_node=1, nodes=1, seq_len=seq_len, micro_batch=micro_batch,
                       grad_ckpt=grad_ckpt, precision=precision, lora_r=16, gpu_mem_bytes=2**50)
    return plan(model_spec(model_config), opts)["per_gpu"]["total_bytes"]


def throughput_micro_batch(ctx: Context) -> int:
    """Packed rows per micro-batch for both throughput checks: the mode's size, lowered to
    what ``ftscale plan`` fits in 85% of this GPU's memory (its accuracy target is 15%), so
    an 80 GB H100 takes fewer rows than a 141 GB H200."""
    if not ctx.on_cuda:
        return ctx.sizes.micro_batch
    import torch
    from transformers import AutoConfig

    from ftscale.plan import PlanOptions, max_micro_batch, model_spec

    s = ctx.sizes
    memory = int(0.85 * torch.cuda.get_device_properties(0).total_memory)
    opts = PlanOptions(method="full", zero=2, seq_len=s.seq_len, precision="bf16", gpu_mem_bytes=memory)
    return max(1, min(s.micro_batch, max_micro_batch(model_spec(AutoConfig.for_model(**s.model)), opts)))


def check_throughput_ftscale(ctx: Context) -> dict[str, Any]:
    """Real tokens/s and MFU of the trainer's step (packed rows, ZeRO-2, one device), with
    the planner's total for the same configuration beside the measured peak."""
    import torch

    from ftscale.train.metrics import mfu
    from recipe_harness import recipe, run_steps, timed_steps, train_config

    s = ctx.sizes
    rows = throughput_micro_batch(ctx)
    config = train_config(ctx.dataset, ctx.work / "runs" / "throughput", s.model, device=ctx.device,
                          seq_len=s.seq_len, micro_batch=rows, steps=s.warmup_steps + s.measure_steps)
    with recipe(config, ctx.work / "runs" / "throughput") as r:
        run_steps(r, s.warmup_steps)
        if ctx.on_cuda:
            torch.cuda.reset_peak_memory_stats()
        stats, seconds = timed_steps(r, s.measure_steps, ctx.device)
        peak = torch.cuda.max_memory_allocated() if ctx.on_cuda else None
        tokens_per_s = sum(x["global_tokens"] for x in stats) / seconds
        value = mfu(r.flops_per_token, tokens_per_s, 1, None, r.device)
        out = {"tokens_per_s": tokens_per_s, "mfu": value, "flops_per_token": r.flops_per_token,
               "attn_implementation": r.attn_implementation, "precision": r.precision, "zero_stage": 2,
               "seq_len": s.seq_len, "micro_batch": rows, "steps": len(stats), "seconds": seconds,
               "achieved_tflops": r.flops_per_token * tokens_per_s / 1e12,
               "padding_fraction": sum(x["padding_fraction"] for x in stats) / len(stats),
               "losses": [x["loss"] for x in stats], "params": r.total_params, "peak_allocated_bytes": peak,
               "recipe_mfu_per_step": [x.get("mfu") for x in stats],
               "planned_total_bytes": _plan_total(r.model_config, "full", False, s.seq_len, rows, r.precision)}
    matmul = ctx.results.get("env", {}).get("matmul_tflops")
    if ctx.on_cuda and matmul:
        out["fraction_of_measured_matmul"] = out["achieved_tflops"] / matmul
    mfu_text = "MFU n/a (no known peak for this device)" if value is None else (
        f"MFU {value:.1%} (target >= {MFU_TARGET:.0%}: {'met' if value >= MFU_TARGET else 'not met'})")
    out["target_met"] = None if value is None else value >= MFU_TARGET
    out["summary"] = (f"{out['params'] / 1e9:.2f}B params, {r.precision}, {out['attn_implementation']}, "
                      f"{rows}x{s.seq_len} packed, ZeRO-2, 1 {ctx.device}: {tokens_per_s:,.0f} real "
                      f"tokens/s, {mfu_text}")
    out["status"] = "ok"
    return out


def check_throughput_hf(ctx: Context) -> dict[str, Any]:
    """The named peer on the same documents and model: HF Trainer, dynamic padding, as many
    documents per batch as ftscale packs rows (at most the same ``batch × seq_len`` token
    slots), bf16 autocast on CUDA, flash-attention-2 when installed, else sdpa."""
    import torch
    from transformers import AutoConfig

    from ftscale.train.metrics import mfu
    from ftscale.train.model import flops_per_token
    from train_common import hf_records, run_hf_trainer

    if torch.distributed.is_initialized():
        raise RuntimeError("the HF peer must run in a process without a torch.distributed group (the Trainer "
                           "would wrap the model in DDP); run it before the recipe checks")
    s = ctx.sizes
    flash, _ = flash_attn_status(ctx.device)
    attn = "flash_attention_2" if flash else "sdpa"
    records = [{k: v[:s.seq_len] for k, v in r.items()} for r in hf_records(ctx.dataset)]
    batch = throughput_micro_batch(ctx)
    out = run_hf_trainer(records, ctx.tokenizer, s.model, steps=s.warmup_steps + s.measure_steps,
                         warmup_steps=s.warmup_steps, batch_size=batch, device=ctx.device, bf16=ctx.on_cuda,
                         attn_implementation=attn, threads=None if ctx.on_cuda else 1)
    fpt = flops_per_token(AutoConfig.for_model(**s.model), s.seq_len)
    out["mfu"] = mfu(fpt, out["real_tokens_per_s"], 1, None, torch.device(ctx.device))
    mfu_text = "" if out["mfu"] is None else f", MFU {out['mfu']:.1%} (same FLOPs per token as ftscale)"
    out["summary"] = (f"HF Trainer, dynamic padding, batch {batch}, {attn}, optim {out['optim']}: "
                      f"{out['real_tokens_per_s']:,.0f} real tokens/s, padding {out['padding_fraction']:.0%}"
                      f"{mfu_text}")
    out["status"] = "ok"
    return out


def check_plan(ctx: Context) -> dict[str, Any]:
    """``ftscale plan``'s per-GPU total against ``torch.cuda.max_memory_allocated`` over the
    second trainer step (the first creates the optimizer states), above what was allocated
    before the recipe was set up, for each configuration in ``plan_configs`` (ZeRO-2, one
    device). On CPU the steps run and the plan is made; the peak needs CUDA."""
    import torch

    from recipe_harness import release_memory, recipe, run_steps, synchronize, train_config

    s = ctx.sizes
    rows = []
    for i, (method, ckpt) in enumerate(s.plan_configs):
        label = method + (" + grad ckpt" if ckpt else "")
        if time.time() > ctx.deadline:
            rows.append({"config": label, "skipped": "global deadline reached"})
            continue
        release_memory()
        base = torch.cuda.memory_allocated() if ctx.on_cuda else 0
        run_dir = ctx.work / "runs" / f"plan{i}"
        config = train_config(ctx.dataset, run_dir, s.model, device=ctx.device, seq_len=s.seq_len,
                              micro_batch=s.plan_micro_batch, steps=2, method=method, grad_ckpt=ckpt)
        with recipe(config, run_dir) as r:
            run_steps(r, 1)
            synchronize(ctx.device)
            if ctx.on_cuda:
                torch.cuda.reset_peak_memory_stats()
            run_steps(r, 1)
            synchronize(ctx.device)
            measured = torch.cuda.max_memory_allocated() - base if ctx.on_cuda else None
            planned = _plan_total(r.model_config, method, ckpt, s.seq_len, s.plan_micro_batch, r.precision)
            attn = r.attn_implementation
        error = None if measured is None else (planned - measured) / measured
        rows.append({"config": label, "planned_bytes": planned, "measured_bytes": measured, "error": error,
                     "baseline_bytes": base, "attn_implementation": attn})
    measured_rows = [x for x in rows if x.get("error") is not None]
    parts = [f"{x['config']}: " + (f"planned {x['planned_bytes'] / 2**30:.1f} GiB vs measured "
                                   f"{x['measured_bytes'] / 2**30:.1f} GiB ({x['error']:+.0%})"
                                   if x.get("error") is not None else
                                   f"planned {x['planned_bytes'] / 2**30:.2f} GiB, measured: needs CUDA"
                                   if "planned_bytes" in x else f"skipped ({x['skipped']})") for x in rows]
    met = all(abs(x["error"]) <= PLAN_TARGET for x in measured_rows) if measured_rows else None
    target = "" if met is None else f" (target within {PLAN_TARGET:.0%}: {'met' if met else 'not met'})"
    return {"status": "ok", "configs": rows, "target_met": met, "seq_len": s.seq_len,
            "micro_batch": s.plan_micro_batch, "summary": "; ".join(parts) + target}


def check_determinism(ctx: Context) -> dict[str, Any]:
    """Two identical short trainer runs (same seed, data, config) in this process; their
    per-step losses and grad norms compared. The recipe turns on
    ``torch.use_deterministic_algorithms(True, warn_only=True)``: every op without a
    deterministic implementation then warns, and those warnings name the kernels."""
    from recipe_harness import recipe, run_steps, train_config

    s = ctx.sizes
    losses, norms, attn = [], [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for run in range(2):
            run_dir = ctx.work / "runs" / f"determinism{run}"
            config = train_config(ctx.dataset, run_dir, s.det_model, device=ctx.device, seq_len=s.seq_len,
                                  micro_batch=s.det_micro_batch, steps=s.det_steps)
            with recipe(config, run_dir) as r:
                stats = run_steps(r, s.det_steps)
                attn = r.attn_implementation
            losses.append([x["loss"] for x in stats])
            norms.append([x["grad_norm"] for x in stats])
    # e.g. "... does not have a deterministic implementation ..." or cuBLAS's "Deterministic
    # behavior was enabled ... set CUBLAS_WORKSPACE_CONFIG"
    kernels = sorted({str(w.message).splitlines()[0][:200] for w in caught
                      if "deterministic" in str(w.message).lower()})
    loss_diff = max(abs(a - b) for a, b in zip(*losses))
    norm_diff = max(abs(a - b) for a, b in zip(*norms))
    identical = losses[0] == losses[1] and norms[0] == norms[1]
    env = {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "FLASH_ATTENTION_DETERMINISTIC")}
    notes = []
    if attn == "flash_attention_2" and env["FLASH_ATTENTION_DETERMINISTIC"] != "1":
        notes.append("flash-attn varlen backward accumulates dq with atomic adds (deterministic only with "
                     "FLASH_ATTENTION_DETERMINISTIC=1)")
    summary = (f"{s.det_steps} steps x 2 runs, {attn}: " + ("bitwise identical losses and grad norms" if identical
               else f"max loss difference {loss_diff:.2e}, max grad-norm difference {norm_diff:.2e}")
               + (f"; non-deterministic ops reported by torch: {len(kernels)}" if kernels else
                  "; torch reported no non-deterministic op") + ("; " + "; ".join(notes) if notes else ""))
    return {"status": "ok", "identical": identical, "max_loss_diff": loss_diff, "max_grad_norm_diff": norm_diff,
            "losses": losses, "grad_norms": norms, "nondeterministic_ops": kernels, "notes": notes, "env": env,
            "attn_implementation": attn, "summary": summary}


CHECKS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "env": check_env,
    "qlora": check_qlora,
    "parity_tiny": lambda ctx: check_parity(ctx, "parity_tiny"),
    "parity_1b": lambda ctx: check_parity(ctx, "parity_1b"),
    "data": check_data,
    "throughput_ftscale": check_throughput_ftscale,
    "throughput_hf": check_throughput_hf,
    "plan": check_plan,
    "determinism": check_determinism,
}


def skip_reason(name: str, ctx: Context, now: float) -> str | None:
    """Why ``name`` must not start now (a failed prerequisite, no GPU, too little time
    left), or None."""
    env = ctx.results.get("env")
    if ctx.on_cuda and name != "env" and env is not None and not env.get("cuda"):
        return "no CUDA device"
    for need in REQUIRES.get(name, ()):
        status = ctx.results.get(need, {}).get("status")
        if status != "ok":
            return f"needs {need} (status: {status or 'not run'})"
    estimate = ctx.sizes.estimate_s.get(name, 0.0)
    left = ctx.deadline - now
    if left <= 0 or left < estimate / 2:
        return f"global deadline: {max(0.0, left):.0f} s left, the check takes about {estimate:.0f} s on an H200"
    return None


__all__ = ["CHECKS", "CHECK_ORDER", "IN_PARENT", "SHARED_PROCESS_ORDER", "Context", "MODES", "Sizes", "flash_attn_status", "skip_reason"]
