"""The peft family (``method``), QLoRA's CPU refusal, optimizer offload's DeepSpeed config and
``num_workers: auto``: configs that validate, and what each builds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ftscale.config import TrainConfig, build
from ftscale.errors import ConfigError
from ftscale.train.adapters import apply_method, is_adapter_key, peft_config, quantization_config, require_cuda_for
from ftscale.train.model import load_model, trainable_parameters

TINY = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


def train_config(**fields) -> TrainConfig:
    data = {"data": {"path": "data"}, "model": {"config": TINY}, **fields}
    return build(TrainConfig, data)


@pytest.mark.parametrize(("method", "peft_type", "trainable"), [
    ("lora", "LORA", {"lora_A", "lora_B"}),
    ("dora", "LORA", {"lora_A", "lora_B", "lora_magnitude_vector"}),
    ("ia3", "IA3", {"ia3_l"}),
])
def test_each_method_trains_only_its_adapters(method, peft_type, trainable) -> None:
    cfg = train_config(method=method, lora={"r": 4, "alpha": 8.0, "dropout": 0.0})
    assert peft_config(cfg).peft_type.value == peft_type
    assert getattr(peft_config(cfg), "use_dora", False) == (method == "dora")
    model = apply_method(load_model(None, TINY, seed=0), cfg)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(is_adapter_key(n) for n in names)
    assert {part for n in names for part in n.split(".") if part in trainable} == trainable
    n_trainable, total = trainable_parameters(model)
    assert 0 < n_trainable < total / 5


def test_ia3_modules_and_peft_options_pass_through() -> None:
    cfg = train_config(method="ia3", peft={"target_modules": ["v_proj", "down_proj"],
                                           "feedforward_modules": ["down_proj"], "options": {"init_ia3_weights": False}})
    config = peft_config(cfg)
    assert set(config.target_modules) == {"v_proj", "down_proj"} and set(config.feedforward_modules) == {"down_proj"}
    assert config.init_ia3_weights is False
    with pytest.raises(ConfigError, match=r"peft.feedforward_modules: must be a subset of target_modules \(not \['up_proj'\]\)"):
        train_config(method="ia3", peft={"target_modules": ["v_proj"], "feedforward_modules": ["up_proj"]})
    with pytest.raises(ConfigError, match="peft.options: .*no_such_option"):
        peft_config(train_config(method="lora", peft={"options": {"no_such_option": 1}}))
    with pytest.raises(ConfigError, match="peft.target_modules: "):
        apply_method(load_model(None, TINY), train_config(method="ia3", peft={"target_modules": ["nope_proj"]}))


def test_full_is_the_model_itself() -> None:
    model = load_model(None, TINY)
    assert apply_method(model, train_config(method="full")) is model


def test_qlora_validates_on_cpu_and_says_it_needs_a_gpu(tmp_path) -> None:
    cfg = train_config(method="qlora", model={"path": "some/model"}, zero_stage=2)
    q = quantization_config(cfg)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    with pytest.raises(ConfigError) as err:
        require_cuda_for("qlora", on_gpu=False)
    assert "\n" not in str(err.value) and "needs a CUDA GPU" in str(err.value)
    require_cuda_for("qlora", on_gpu=True)
    require_cuda_for("lora", on_gpu=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="qlora .*needs a CUDA GPU"):
            load_model(None, TINY).save_pretrained(tmp_path)
            load_model(str(tmp_path), None, quantization=q)


@pytest.mark.parametrize(("fields", "message"), [
    ({"model": {"config": TINY}}, "method: qlora loads model.path's weights"),
    ({"zero_stage": 3}, "zero_stage: qlora keeps the 4-bit base whole"),
    ({"precision": "fp32"}, "precision: qlora computes in bf16"),
])
def test_qlora_config_errors(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        train_config(**{"method": "qlora", "model": {"path": "m"}, **fields})


def test_optimizer_offload_keeps_the_guarded_client_optimizer() -> None:
    from ftscale.train.ds_config import build_ds_config

    common = dict(micro_batch_size=1, grad_accum_steps=1, world_size=2, precision="fp32", offload_params=False)
    off = build_ds_config(zero_stage=2, offload_optimizer=True, **common)
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert off["zero_force_ds_cpu_optimizer"] is False
    assert "zero_force_ds_cpu_optimizer" not in build_ds_config(zero_stage=2, offload_optimizer=False, **common)


@pytest.mark.parametrize(("num_workers", "use_gpu", "gpus", "workers", "on_gpu"), [
    ("auto", None, 0, 2, False),   # CPU only: two CPU workers
    ("auto", None, 1, 1, True),    # one GPU: one worker, not two waiting for a second GPU
    ("auto", None, 8, 8, True),
    ("auto", False, 8, 2, False),  # GPUs there, but told not to use them
    (3, None, 1, 3, True),         # explicit counts are kept (Ray waits, e.g. for an autoscaler)
])
def test_num_workers_auto_follows_the_gpus(num_workers, use_gpu, gpus, workers, on_gpu) -> None:
    from ftscale.train.launch import _scaling

    cfg = train_config(num_workers=num_workers, use_gpu=use_gpu)
    resolved, gpu = _scaling(cfg, float(gpus))
    assert (resolved.num_workers, gpu) == (workers, on_gpu)
    assert dataclasses.replace(cfg, num_workers=workers).grad_accum_steps() == resolved.grad_accum_steps()
    assert train_config().num_workers == "auto"
