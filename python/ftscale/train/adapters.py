"""The ``method`` of a run as a ``peft`` model: LoRA, DoRA, QLoRA (LoRA on a 4-bit base), IA3,
prompt tuning and prefix tuning.

Each wraps the loaded model as a ``peft.PeftModel`` whose only trainable parameters are the
adapter's; ``save_pretrained`` of the wrapped model writes a plain peft adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) that ``PeftModel.from_pretrained``
loads on the original base. ``peft.options`` passes further keywords to peft's config class.
Prompt and prefix tuning are further wrapped for packed rows
(``ftscale.train.prompt_methods.PackedPromptModel``) and load with sdpa or eager attention
(``attn_implementation_for``).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ftscale.config.train import PROMPT_METHODS
from ftscale.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ftscale.config import TrainConfig

PEFT_METHODS = ("lora", "dora", "qlora", "ia3", *PROMPT_METHODS)
LORA_FAMILY = ("lora", "dora", "qlora")  # configured by the `lora` block
ADAPTER_MARKERS = ("lora_", "ia3_l", "prompt_encoder.")  # parameter-name parts of the adapters' tensors


def peft_config(cfg: TrainConfig) -> Any:
    """The ``peft`` config of ``cfg.method`` (a peft method), built from ``lora`` / ``peft``."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    options = dict(cfg.peft.options)
    try:
        if cfg.method in LORA_FAMILY:
            lora = cfg.lora
            # peft annotates lora_alpha as int but only divides it by r: a float alpha is fine
            return LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,  # type: ignore[arg-type]
                              lora_dropout=lora.dropout, target_modules=lora.target_modules,
                              use_dora=cfg.method == "dora", **options)
        if cfg.method == "ia3":
            return IA3Config(task_type="CAUSAL_LM", target_modules=cfg.peft.target_modules,
                             feedforward_modules=cfg.peft.feedforward_modules, **options)
        if cfg.method in PROMPT_METHODS:
            config_class = PromptTuningConfig if cfg.method == "prompt_tuning" else PrefixTuningConfig
            return config_class(task_type="CAUSAL_LM", num_virtual_tokens=cfg.peft.num_virtual_tokens, **options)
    except (TypeError, ValueError) as e:  # an unknown or invalid peft.options keyword
        raise ConfigError(f"peft.options: {e}") from e
    raise ConfigError(f"method: {cfg.method!r} is not a peft method ({', '.join(PEFT_METHODS)})")


def apply_method(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """``model`` wrapped for ``cfg.method`` (unchanged for ``full``). A 4-bit base (qlora) is
    first prepared the way peft recommends (norms and head in fp32); the recipe has already
    turned on non-reentrant gradient checkpointing when asked, which needs no input gradients."""
    if cfg.method == "full":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    config = peft_config(cfg)
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5 deprecates
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            wrapped = get_peft_model(model, config)
    except ValueError as e:  # no module matches the target modules; peft names the problem
        key = ("lora.target_modules" if cfg.method in LORA_FAMILY else
               "peft.options" if cfg.method in PROMPT_METHODS else "peft.target_modules")
        raise ConfigError(f"{key}: {' '.join(str(e).split())}") from e
    if cfg.method in PROMPT_METHODS:
        from ftscale.train.prompt_methods import PackedPromptModel

        return PackedPromptModel(wrapped)
    return wrapped


def attn_implementation_for(cfg: TrainConfig) -> str:
    """The attention implementation to load ``cfg``'s model with: ``model.attn_implementation``,
    except that prompt and prefix tuning run with sdpa (or eager, when asked): their virtual
    tokens are shared by every document of a packed row through a dense 4D mask, which
    flash-attention varlen and sdpa_segments cannot express (``ftscale.train.prompt_methods``)."""
    requested = cfg.model.attn_implementation
    if cfg.method in PROMPT_METHODS and requested != "eager":
        return "sdpa"
    return requested


def quantization_config(cfg: TrainConfig) -> Any:
    """The bitsandbytes 4-bit config of a qlora run (None for any other method). The compute
    dtype is bf16: qlora runs on GPUs only (``require_cuda_for``)."""
    if cfg.method != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.peft.quant_type,
                              bnb_4bit_use_double_quant=cfg.peft.double_quant, bnb_4bit_compute_dtype=torch.bfloat16)


def require_cuda_for(method: str, on_gpu: bool) -> None:
    """A one-line ConfigError when ``method`` needs a GPU this run does not have."""
    if method == "qlora" and not on_gpu:
        raise ConfigError("method: qlora stores the base model in 4 bits with bitsandbytes, which needs a CUDA GPU; "
                          "this run has none (train with method: lora on CPU)")


def is_adapter_key(name: str) -> bool:
    """Whether parameter ``name`` belongs to an adapter (what a peft method trains)."""
    return any(marker in name for marker in ADAPTER_MARKERS)


__all__ = ["LORA_FAMILY", "PEFT_METHODS", "apply_method", "attn_implementation_for", "is_adapter_key", "peft_config", "quantization_config",
           "require_cuda_for"]
