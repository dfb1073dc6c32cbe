"""Loading the model to fine-tune, wrapping it with LoRA, and counting its FLOPs.

``load_model`` accepts the ``model`` section of the train config: ``model.path`` (a local
Hugging Face directory, a ``.gguf`` file, ``pkg:MODULE/relative/file`` for a file shipped
in an installed package, or a Hub id found in the local Hugging Face cache) or ``model.config`` (an inline transformers config dict,
randomly initialised from ``seed``: for tests and demos). Nothing is downloaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from ftscale.paths import resolve_model_ref
from ftscale.errors import ConfigError
from ftscale.train.attention import resolve_attn_implementation

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16")


def load_model(path: str | None, inline_config: dict[str, Any] | None, *,
               dtype: Literal["float32", "bfloat16"] = "float32", attn_implementation: str = "auto",
               seed: int = 0, quantization: Any = None) -> torch.nn.Module:
    """A ``transformers`` causal LM with parameters in ``dtype``.

    Exactly one of ``path`` and ``inline_config``. A ``.gguf`` file is dequantised to
    ``dtype`` and its quantization state is dropped, so ``save_pretrained`` writes a plain
    model. ``attn_implementation``: see ``ftscale.train.attention.resolve_attn_implementation``;
    the chosen one is in ``model.config._attn_implementation``. ``seed`` seeds the random
    initialisation of an inline config (the global RNG is left untouched). ``quantization``: a
    transformers quantization config (qlora's 4-bit bitsandbytes one) for ``path``'s weights,
    loaded straight onto the current CUDA device.
    """
    import torch

    if (path is None) == (inline_config is None):
        raise ConfigError("model.path / model.config: give exactly one of them (a model directory or .gguf "
                          "file, or an inline transformers config)")
    if dtype not in DTYPES:
        raise ConfigError(f"model dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    attn = resolve_attn_implementation(attn_implementation, dtype)
    torch_dtype = getattr(torch, dtype)
    if inline_config is not None:
        return _from_inline_config(inline_config, torch_dtype, attn, seed)
    assert path is not None  # exactly one of the two, checked above
    return _load_pretrained(path, torch_dtype, attn, quantization)


def _load_pretrained(path: str, torch_dtype: torch.dtype, attn: str, quantization: Any = None) -> torch.nn.Module:
    import pickle

    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        p = resolve_model_ref(path)
    except ConfigError as e:
        raise ConfigError(f"model.path: {e}") from e
    if p.is_file() and p.suffix == ".gguf":
        directory, extra = str(p.parent), {"gguf_file": p.name}
    elif p.is_dir() and (p / "config.json").is_file():
        directory, extra = str(p), {}
    elif not p.exists():
        raise ConfigError(f"model.path: {path} not found; give a Hugging Face model directory or a .gguf file")
    else:
        raise ConfigError(f"model.path: {path} is neither a directory with config.json nor a .gguf file")
    if quantization is not None:
        if extra:
            raise ConfigError(f"model.path: {path} is a GGUF file; qlora quantizes a Hugging Face model directory")
        if not torch.cuda.is_available():
            raise ConfigError("method: qlora stores the base model in 4 bits with bitsandbytes, which needs a CUDA GPU")
        extra = {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch_dtype,
                                                     attn_implementation=attn, **extra)
    except ImportError as e:  # bitsandbytes (qlora) not installed
        raise ConfigError(f"model.path: loading {path} in 4 bits needs bitsandbytes (pip install bitsandbytes): "
                          f"{str(e).splitlines()[0][:300]}") from e
    except (OSError, ValueError, KeyError, EOFError, RuntimeError, SafetensorError, pickle.UnpicklingError) as e:
        # unknown model_type, broken or partial checkpoints, damaged weight files
        raise ConfigError(f"model.path: cannot load a causal LM from {path}: {str(e).splitlines()[0][:300]}") from e
    if quantization is None:
        _drop_quantization_state(model)
    return model


def _drop_quantization_state(model: torch.nn.Module) -> None:
    """Forget that a model came from a quantized file (GGUF): its weights are already
    dequantised, and a model still marked quantized would refuse or mangle save_pretrained."""
    from transformers import PreTrainedModel

    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # transformers 5.23 (quantizers/base.py): deletes model.hf_quantizer,
        # model.config.quantization_config and model.quantization_method; is_quantized = False
        quantizer.remove_quantization_config(model)
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and getattr(module.config, "_is_quantized", False):
            module.config._is_quantized = False


def _from_inline_config(inline_config: dict[str, Any], torch_dtype: torch.dtype, attn: str,
                        seed: int) -> torch.nn.Module:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(inline_config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise ConfigError("model.config.model_type: missing; name the architecture, e.g. model_type: llama")
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except ValueError as e:
        raise ConfigError(f"model.config.model_type: {model_type!r} is not a model type transformers knows "
                          "(e.g. llama, qwen2, mistral)") from e
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation=attn)
        except ValueError as e:  # a config class with no causal-LM head
            raise ConfigError(f"model.config.model_type: {model_type!r} has no causal language model: {e}") from e


def apply_lora(model: torch.nn.Module, r: int, alpha: float, dropout: float,
               target_modules: list[str] | Literal["all-linear"]) -> torch.nn.Module:
    """``model`` wrapped as a ``peft.PeftModel`` whose only trainable parameters are the
    LoRA adapters (``lora_A``/``lora_B``) of ``target_modules`` (module names such as
    ``q_proj``, or ``"all-linear"``: every linear layer but the output head)."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ConfigError(f"lora.r: must be >= 1, got {r}")
    # peft annotates lora_alpha as int but only divides it by r: a float alpha is fine
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha,  # type: ignore[arg-type]
                        lora_dropout=dropout, target_modules=target_modules)
    try:
        with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5 deprecates
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as e:  # no module matches target_modules
        raise ConfigError(f"lora.target_modules: {e}") from e


@contextmanager
def keep_logits(model: torch.nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """Within the block, the model's output head sees only ``hidden[keep]`` (``keep``: ``[B, L]``
    bool), so ``model(...).logits`` is ``[n, V]`` for the ``n`` kept positions instead of
    ``[B, L, V]``. A forward pre-hook on ``get_output_embeddings()``: independent of the
    architecture and of transformers' own ``logits_to_keep`` (whose boolean form only some
    models accept); element-wise logit post-processing (soft-capping, scaling) still applies."""
    head = model.get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no output embeddings; cannot compute its language-model loss")
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][keep], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, each shared tensor counted once."""
    seen: dict[int, Any] = {}
    for p in model.parameters():
        seen[id(p)] = p
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values())


def matmul_parameters(config: Any) -> int:
    """``N``: the parameters that take part in a matmul per token — every parameter except
    embedding lookup tables. The output head is a matmul, so it counts; a head tied to the
    input embedding therefore counts that matrix once (as the head), an untied model drops
    its input embedding. Counted exactly on a meta-device instance (no memory, any
    architecture)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    lookups = {id(m.weight): m.weight for m in model.modules()
               if isinstance(m, torch.nn.Embedding) and m.weight is not head_weight}
    _, total = trainable_parameters(model)
    return total - sum(w.numel() for w in lookups.values())


def flops_per_token(config: Any, seq_len: int, trainable_fraction: float = 1.0) -> float:
    """Training FLOPs per token (forward + backward), for MFU.

    ``(4 + 2·f)·N + 12·n_layers·n_heads·head_dim·seq_len``

    - ``N`` = ``matmul_parameters(config)``: non-embedding parameters, with the output head
      counted (for a tied head that is the embedding matrix, counted once).
    - A matmul costs 2 FLOPs per weight per token forward, and 4 backward: 2 for the input
      gradient, 2 for the weight gradient. The weight gradient is computed only for the
      trainable fraction ``f`` of the weights: ``f = 1`` (full fine-tuning) gives the usual
      ``6·N``; with LoRA pass ``trainable / total`` (≈ ``4·N``; the adapters' own FLOPs are
      negligible).
    - Attention scores and the weighted sum (no weights): ``4·n_heads·head_dim·seq_len`` per
      layer forward, tripled for forward + backward, counting the full (non-causal)
      ``seq_len × seq_len`` square — the PaLM paper's convention (Chowdhery et al. 2022,
      appendix B), so numbers compare with published MFU. ``n_heads·head_dim`` is
      ``hidden_size`` for most models. With block-diagonal masks over packed rows the
      kernels do less work than this counts.
    """
    if seq_len < 1 or not 0.0 <= trainable_fraction <= 1.0:
        raise ValueError(f"need seq_len >= 1 and 0 <= trainable_fraction <= 1 (got {seq_len}, {trainable_fraction})")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    attention = 12 * text.num_hidden_layers * n_heads * head_dim * seq_len
    return (4 + 2 * trainable_fraction) * matmul_parameters(config) + attention


__all__ = ["DTYPES", "apply_lora", "flops_per_token", "load_model", "matmul_parameters", "trainable_parameters"]
