"""`ftscale export`: a checkpoint (or a run's last K, averaged) → a plain Hugging Face model
directory (``save_pretrained``, safetensors, tokenizer) or a peft adapter.

Weights come from DeepSpeed's own consolidation (``zero_to_fp32``), which gathers ZeRO-2/3
shards from the optimizer's fp32 partitions — never from ``save_pretrained`` on a sharded
live model, which writes empty tensors under ZeRO-3.

Only complete checkpoints are read (commit marker, sizes and checksums: ``runs``), with
``torch.load`` restricted to tensors (``torch_load``); a run's incomplete ones are skipped
with the reason. The output appears at once or not at all: tokenizer, weights and
``ftscale_export.json`` are written into a temporary directory beside ``out``, which is then
renamed to it. An existing non-empty ``out`` is refused unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

from ftscale.errors import ConfigError, InputError, OutputError
from ftscale.train.runs import DS_TAG
from ftscale.train.storage import EXPORT_MARKER


def _checkpoints(source: str, average_last: int, best: bool = False) -> list[Path]:
    from ftscale.train.runs import RUN_FILE, best_checkpoint, checksum_problem, scan, verified

    if average_last < 1:
        raise ConfigError(f"--average-last must be >= 1, got {average_last}")
    p = Path(source).expanduser().resolve()
    if best:
        if average_last != 1:
            raise ConfigError("--best exports one checkpoint; leave out --average-last")
        run = p.parent if (p / RUN_FILE).is_file() else p
        found_best = best_checkpoint(run)
        if found_best is None:
            raise InputError(f"{source}: no best checkpoint recorded (train with eval.select; with eval.guard, "
                             "an evaluation of a trained step must respect it)")
        return [verified(found_best)]
    if (p / RUN_FILE).is_file():
        if average_last == 1:
            return [verified(p)]
        complete, _ = scan(p.parent)
        candidates = complete[: complete.index(p) + 1] if p in complete else [p]
    else:
        candidates, skipped = scan(p)
        for path, why in skipped:
            print(f"ftscale export: skipping {path.name}: {why}", file=sys.stderr)
        if not candidates:
            raise InputError(f"{source} is neither a checkpoint nor a run directory with complete checkpoints")
    chosen: list[Path] = []
    for path in reversed(candidates):  # newest first, until enough verify
        why = checksum_problem(path)
        if why is None:
            chosen.insert(0, path)
        else:
            print(f"ftscale export: skipping {path.name}: {why}", file=sys.stderr)
        if len(chosen) == average_last:
            return chosen
    if not chosen:
        raise InputError(f"{source}: no checkpoint passed verification (reasons above)")
    raise ConfigError(f"--average-last {average_last}: only {len(chosen)} complete checkpoints available")


def fp32_state_dict(checkpoint: Path) -> dict[str, Any]:
    """Full fp32 weights of a DeepSpeed checkpoint (any ZeRO stage), keyed as the module."""
    import torch

    from ftscale.train.torch_load import refusal_message, refused, weights_only_loads

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    weights_only_loads()
    tag_dir = checkpoint / DS_TAG
    try:
        if any(tag_dir.glob("*optim_states.pt")) and any(tag_dir.glob("zero_pp_rank_*")):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DS_TAG))
        states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if refused(e):
            raise InputError(refusal_message(checkpoint, e)) from e
        raise
    return {k: v.float() for k, v in states["module"].items()}


def export(source: str, out: str, merge_lora: bool = False, average_last: int = 1, best: bool = False,
           overwrite: bool = False) -> Path | str:
    """``source`` (a checkpoint, or a run directory: its latest complete checkpoint, or its best
    one with ``best``; the last ``average_last`` averaged) as a model directory ``out``, created
    atomically; an existing non-empty ``out`` is replaced only with ``overwrite``. Either may be
    a storage URI (``ftscale.train.storage``); a URI ``out`` is returned as it is."""
    from ftscale.train.storage import export_remote, is_uri

    if is_uri(source) or is_uri(out):
        return export_remote(source, out, merge_lora=merge_lora, average_last=average_last, best=best,
                             overwrite=overwrite)

    from ftscale.config import TrainConfig, build
    from ftscale.config.train import PROMPT_METHODS
    from ftscale.data.tokenize import load_tokenizer
    from ftscale.train.runs import RUN_FILE

    out_dir = Path(out).expanduser().absolute()
    _check_target(out_dir, overwrite)
    chosen = _checkpoints(source, average_last, best)
    try:
        run = json.loads((chosen[-1] / RUN_FILE).read_text(encoding="utf-8"))
        config, tok, step = run["config"], run["tokenizer"], int(run["step"])
        tokenizer_path, template = tok["path"], tok.get("chat_template")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{chosen[-1] / RUN_FILE} lacks the run's config, tokenizer or step ({e!r})") from e
    cfg = build(TrainConfig, config)
    if merge_lora and cfg.method in PROMPT_METHODS:
        raise ConfigError(f"--merge-lora: {cfg.method} learns virtual tokens, not weight deltas: there is nothing to "
                          "merge into the base model; export without --merge-lora and load the adapter with peft's "
                          "PeftModel.from_pretrained")
    tokenizer = load_tokenizer(tokenizer_path, template)
    model = _trained_model(cfg, [fp32_state_dict(c) for c in chosen], merge_lora)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        if tokenizer.hf is not None:
            tokenizer.hf.save_pretrained(str(tmp))
        import torch

        with torch.no_grad():
            model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / EXPORT_MARKER).write_text(json.dumps(
            {"checkpoints": [str(c) for c in chosen], "step": step, "method": cfg.method,
             "merged_lora": bool(cfg.method != "full" and merge_lora)}, indent=2))
        _move_into_place(tmp, out_dir)
    except OSError as e:
        raise OutputError(f"cannot write the export to {out_dir}: {e.strerror or e}; free space or choose "
                          "another --out") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file; give a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError(f"--out {out_dir} is not empty; choose a new directory or pass --overwrite")


def _trained_model(cfg: Any, states: list[dict[str, Any]], merge_lora: bool) -> Any:
    """The config's model with the (averaged) checkpoint weights, ready to save; a peft
    method's adapters merged into it with ``merge_lora``, else kept as a peft model."""
    from ftscale.train.adapters import apply_method, is_adapter_key
    from ftscale.train.model import load_model

    method = cfg.method

    state = {k: sum(s[k] for s in states) / len(states) for k in states[0]} if len(states) > 1 else states[0]
    model = load_model(cfg.model.path, cfg.model.config, dtype="float32", attn_implementation="sdpa", seed=cfg.seed)
    if cfg.method == "qlora":
        # The adapters apply to the full-precision base (what QLoRA's 4-bit weights approximate),
        # so only they come from the checkpoint.
        cfg = dataclasses.replace(cfg, method="lora")
        state = {k: v for k, v in state.items() if is_adapter_key(k)}
    model = apply_method(model, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (lm_head = embeddings) are stored once; anything else missing is a damaged checkpoint.
    tied = {k for k in missing if "lm_head" in k and getattr(model.config, "tie_word_embeddings", False)}
    if method == "qlora":
        tied |= {k for k in missing if not is_adapter_key(k)}
    if set(missing) - tied or unexpected:
        raise InputError(f"checkpoint does not match the model of its config: missing "
                         f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if method != "full" and merge_lora:
        model = model.merge_and_unload()
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp`` to ``out_dir``; an old ``out_dir`` is removed only after."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)  # also over an empty directory
