"""`ftscale export`: a checkpoint (or a run's last K, averaged) → a plain Hugging Face model
directory (``save_pretrained``, safetensors, tokenizer) or a peft adapter.

Weights come from DeepSpeed's own consolidation (``zero_to_fp32``), which gathers ZeRO-2/3
shards from the optimizer's fp32 partitions — never from ``save_pretrained`` on a sharded
live model, which writes empty tensors under ZeRO-3.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ftscale.errors import ConfigError, InputError
from ftscale.train.runs import DS_TAG



def _checkpoints(source: str, average_last: int, best: bool = False) -> list[Path]:
    from ftscale.train.runs import RUN_FILE, best_checkpoint, checkpoints

    p = Path(source).expanduser().resolve()
    if best:
        if average_last != 1:
            raise ConfigError("--best exports one checkpoint; leave out --average-last")
        run = p.parent if (p / RUN_FILE).is_file() else p
        found_best = best_checkpoint(run)
        if found_best is None:
            raise InputError(f"{source}: no best checkpoint recorded (train with eval.select; with eval.guard, "
                             "an evaluation of a trained step must respect it)")
        return [found_best]
    if (p / RUN_FILE).is_file():
        found = [p]
        if average_last > 1:
            found = checkpoints(p.parent)
            found = found[: found.index(p) + 1] if p in found else [p]
    else:
        found = checkpoints(p)
        if not found:
            raise InputError(f"{source} is neither a checkpoint nor a run directory with checkpoints")
    if average_last < 1:
        raise ConfigError(f"--average-last must be >= 1, got {average_last}")
    if len(found) < average_last:
        raise ConfigError(f"--average-last {average_last}: only {len(found)} checkpoints available")
    return found[-average_last:]


def fp32_state_dict(checkpoint: Path) -> dict[str, Any]:
    """Full fp32 weights of a DeepSpeed checkpoint (any ZeRO stage), keyed as the module."""
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    tag_dir = checkpoint / DS_TAG
    if any(tag_dir.glob("*optim_states.pt")) and any(tag_dir.glob("zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DS_TAG))
    states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}


def export(source: str, out: str, merge_lora: bool = False, average_last: int = 1,
           best: bool = False) -> Path | str:
    """``source`` (a checkpoint, or a run directory: its latest checkpoint, or its best one with
    ``best``; the last ``average_last`` averaged) as a model directory in ``out``. Either may be
    a storage URI (``ftscale.train.storage``); a URI ``out`` is returned as it is."""
    import torch

    from ftscale.train.storage import export_remote, is_uri

    if is_uri(source) or is_uri(out):
        return export_remote(source, out, merge_lora=merge_lora, average_last=average_last, best=best)

    from ftscale.config import TrainConfig, build
    from ftscale.data.tokenize import load_tokenizer
    from ftscale.train.adapters import apply_method, is_adapter_key
    from ftscale.train.model import load_model
    from ftscale.train.runs import RUN_FILE

    chosen = _checkpoints(source, average_last, best)
    run = json.loads((chosen[-1] / RUN_FILE).read_text())
    cfg = build(TrainConfig, run["config"])
    states = [fp32_state_dict(c) for c in chosen]
    state = {k: sum(s[k] for s in states) / len(states) for k in states[0]} if len(states) > 1 else states[0]
    model = load_model(cfg.model.path, cfg.model.config, dtype="float32", attn_implementation="sdpa", seed=cfg.seed)
    if cfg.method == "qlora":
        # The adapters apply to the full-precision base (what QLoRA's 4-bit weights approximate),
        # so only they come from the checkpoint.
        cfg = dataclasses.replace(cfg, method="lora")
        state = {k: v for k, v in state.items() if is_adapter_key(k)}
    model = apply_method(model, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (lm_head = embeddings) are stored once; anything else missing is a bug.
    tied = {k for k in missing if "lm_head" in k and getattr(model.config, "tie_word_embeddings", False)}
    if run["config"]["method"] == "qlora":
        tied |= {k for k in missing if not is_adapter_key(k)}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = cfg.method != "full" and merge_lora
    if merged:
        model = model.merge_and_unload()
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    with torch.no_grad():
        model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer = load_tokenizer(run["tokenizer"]["path"], run["tokenizer"].get("chat_template"))
    if tokenizer.hf is not None:
        tokenizer.hf.save_pretrained(str(out_dir))
    (out_dir / "ftscale_export.json").write_text(json.dumps(
        {"checkpoints": [str(c) for c in chosen], "step": run["step"], "method": run["config"]["method"],
         "merged_lora": merged}, indent=2))
    return out_dir
