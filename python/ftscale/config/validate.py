"""Checking a config file before launching it (`ftscale validate`, and `ftscale train` before Ray starts)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

from ftscale.config.base import apply_overrides, build, load_yaml
from ftscale.config.prep import PrepConfig
from ftscale.config.train import TrainConfig
from ftscale.errors import ConfigError

if typing.TYPE_CHECKING:
    from ftscale.data.format import Manifest

PREP_KEYS = ("sources", "tokenizer", "output")
TRAIN_KEYS = ("model",)


class Validated(typing.NamedTuple):
    kind: Literal["prep", "train"]
    config: Any  # PrepConfig or TrainConfig
    warnings: list[str]  # things that may be fine later, e.g. a dataset not prepared yet

    def summary(self) -> str:
        c = self.config
        if self.kind == "prep":
            sources = ", ".join(f"{s.name} ({s.kind})" for s in c.sources)
            return f"{len(c.sources)} source(s): {sources}; seq_len {c.seq_len}; output {c.output}"
        if c.num_workers == "auto":
            workers = "workers: one per GPU (else 2 on CPU)"
        else:
            workers = f"{c.num_workers} workers x micro-batch {c.micro_batch_size}, grad accum {c.grad_accum_steps()}"
        return f"{c.method}, ZeRO-{c.zero_stage}, seq_len {c.seq_len}, {workers}, {c.max_steps} steps"


def detect_kind(data: dict) -> Literal["prep", "train"]:
    """'train' when the top level has ``model``, 'prep' when it has sources/tokenizer/output."""
    prep = [k for k in PREP_KEYS if k in data]
    train = [k for k in TRAIN_KEYS if k in data]
    if bool(prep) == bool(train):
        found = f"both {', '.join(train + prep)}" if prep else "none of them"
        raise ConfigError(f"config: cannot tell whether this is a prep or a train config: a train config has "
                          f"{', '.join(TRAIN_KEYS)}, a prep config has {', '.join(PREP_KEYS)}; this one has {found}")
    return "prep" if prep else "train"


def validate_file(path: str | Path, overrides: list[str] | None = None) -> Validated:
    """Load, override and build a prep or train config (decided by ``detect_kind``), then check
    what it refers to: errors for what certainly fails at launch, warnings for missing paths."""
    data = apply_overrides(load_yaml(path), list(overrides or []))
    kind = detect_kind(data)
    if kind == "prep":
        prep = build(PrepConfig, data)
        return Validated(kind, prep, _prep_warnings(prep))
    train = build(TrainConfig, data)
    return Validated(kind, train, _train_warnings(train))


def _reference_warning(key: str, ref: str) -> str | None:
    """Why the model or tokenizer reference ``ref`` cannot be loaded yet, or None."""
    from ftscale.paths import resolve_model_ref

    try:
        if resolve_model_ref(ref).exists():
            return None
    except ConfigError as e:  # pkg: of a package not installed (yet), a Hub id not cached (yet)
        return f"{key}: {e}"
    return f"{key}: {ref} does not exist"


def _prep_warnings(cfg: PrepConfig) -> list[str]:
    from ftscale.paths import expand_paths
    from ftscale.errors import InputError

    warnings = []
    missing = _reference_warning("tokenizer.path", cfg.tokenizer.path)
    if missing:
        warnings.append(missing)
    inputs = [(f"sources.{i}.paths", s.paths) for i, s in enumerate(cfg.sources)]
    for key, paths in inputs + [("decontaminate.eval_paths", cfg.decontaminate.eval_paths)]:
        try:
            expand_paths(paths, key)
        except InputError as e:
            warnings.append(str(e))
    return warnings


def check_against_dataset(cfg: TrainConfig, manifest: Manifest) -> None:
    """ConfigError when the prepared dataset cannot serve ``cfg``: a mixture naming a source
    it lacks (or one without train documents), or a seq_len above the one its SFT sources
    were truncated to. Run by ``ftscale validate`` and before ``ftscale train`` starts Ray."""
    sources = manifest.sources
    for name in cfg.data.mixture or {}:
        if name not in sources:
            raise ConfigError(f"data.mixture.{name}: {cfg.data.path} has no source {name!r}; it has "
                              f"{', '.join(sources)}")
        if not sources[name].train:
            raise ConfigError(f"data.mixture.{name}: source {name!r} has no train documents in {cfg.data.path}")
    used = [n for n in sources if n in (cfg.data.mixture or sources)]
    pref = [n for n in used if sources[n].kind == "preference"]
    if pref and len(pref) != len(used):
        raise ConfigError(f"data.mixture: preference source(s) {', '.join(pref)} train with a preference objective "
                          f"and cannot be mixed with cpt/sft source(s) {', '.join(n for n in used if n not in pref)}; "
                          "name only one kind (e.g. SFT first, then DPO from its export)")
    sft = [n for n in used if sources[n].kind == "sft"]
    if sft and cfg.seq_len > manifest.seq_len:
        raise ConfigError(f"seq_len: {cfg.seq_len} exceeds the prepared seq_len {manifest.seq_len} (SFT "
                          f"source(s) {', '.join(sft)} were truncated to it); re-run prep or lower seq_len")
    _check_eval_metrics(cfg, manifest)


def _check_eval_metrics(cfg: TrainConfig, manifest: Manifest) -> None:
    """eval.select / eval.guard must name a metric the run logs at every evaluation."""
    if cfg.eval.select is None and cfg.eval.guard is None:
        return
    from ftscale.eval.tasks import load_tasks, metric_names

    from ftscale.train.preference import METRIC_KEYS

    val = [n for n, e in manifest.sources.items() if e.val]
    names = ({"val_loss"} if val else set()) | {f"val_{m}/{n}" for n in val for m in ("loss", "ppl", *METRIC_KEYS)}
    if cfg.eval.tasks is not None:
        names |= metric_names(load_tasks(cfg.eval.tasks))
    for key, part in (("eval.select", cfg.eval.select), ("eval.guard", cfg.eval.guard)):
        if part is not None and part.metric not in names:
            raise ConfigError(f"{key}.metric: {part.metric!r} is not a metric this run logs; choose one of "
                              f"{', '.join(sorted(names)) or 'none (no val split, no eval.tasks)'}")


def _train_warnings(cfg: TrainConfig) -> list[str]:
    """Warnings for paths that do not exist yet; errors for a mixture or seq_len the prepared
    dataset (when it exists) cannot serve."""
    from ftscale.data.format import MANIFEST, read_manifest

    warnings = []
    missing = _reference_warning("model.path", cfg.model.path) if cfg.model.path is not None else None
    if missing:
        warnings.append(missing)
    if not (Path(cfg.data.path) / MANIFEST).is_file():
        warnings.append(f"data.path: {cfg.data.path} is not a prepared dataset yet (no {MANIFEST}); "
                        "run `ftscale prep` before training")
        return warnings
    manifest = read_manifest(cfg.data.path)
    check_against_dataset(cfg, manifest)
    if cfg.eval_every and not any(e.val for e in manifest.sources.values()):
        warnings.append(f"eval_every: {cfg.data.path} has no val documents, so evaluations report nothing "
                        "(prep with val_fraction > 0)")
    return warnings
