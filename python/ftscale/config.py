"""Typed configuration: YAML files + dotted ``key=value`` overrides → frozen dataclasses.

Every error names the offending key (``sources.1.kind``) and, for a choice, the allowed
values; an unknown key suggests the closest known one. Values given on the command line are
parsed as YAML scalars (``seq_len=4096`` is an int, ``dedup.near=false`` a bool).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from ftscale.errors import ConfigError

# ---------------------------------------------------------------------------------------
# Generic machinery


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, get_args(tp)[0], f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp)
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str):
                parsed = parse_count(value)
                if parsed is not None:
                    return parsed
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a schema bug, not user error


def parse_count(text: str) -> int | None:
    """'10M' → 10_000_000, '2k' → 2000, '1.5B' → 1_500_000_000; None when not a count."""
    text = text.strip().replace("_", "")
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
    try:
        if text and text[-1].lower() in scale:
            return int(float(text[:-1]) * scale[text[-1].lower()])
        return int(text)
    except ValueError:
        return None


def build(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating every field."""
    where = key or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}"
        raise ConfigError(f"{_join(key, k)}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(key, name)}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(key)
    return obj


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _require(obj: Any, key: str, name: str, ok: bool, rule: str) -> None:
    """The ConfigError for field ``name`` of ``obj`` (at ``key``) when ``ok`` is false."""
    if not ok:
        raise ConfigError(f"{_join(key, name)}: must be {rule}, got {getattr(obj, name)!r}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.0.c=value`` overrides (value parsed as YAML) to a nested dict/list."""
    import yaml

    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, for example seq_len=4096")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node: Any = data
        parts = path.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {path}: {part!r} is not an index of the {len(node)}-item list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
                    if not isinstance(node, (dict, list)):
                        raise ConfigError(f"override {path}: {part!r} is not a section")
    return data


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys")
    return data


def to_dict(obj: Any) -> Any:
    """Plain data (for manifests and fingerprints)."""
    return dataclasses.asdict(obj)


# ---------------------------------------------------------------------------------------
# The prep config


@dataclass(frozen=True)
class TokenizerConfig:
    """path: a Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json), a
    .gguf model file (its tokenizer and chat template are used), or a .tiktoken BPE file
    (CPT only: it has no chat template)."""

    path: str
    add_eos: bool = True  # CPT: append EOS to every document so documents stay separable
    chat_template: str | None = None  # override the tokenizer's own template (jinja text or file)


@dataclass(frozen=True)
class SourceConfig:
    name: str
    paths: list[str]
    kind: Literal["cpt", "sft"] = "cpt"
    text_field: str = "text"
    messages_field: str = "messages"
    family_field: str | None = None
    system_prompt: str | None = None  # SFT: inserted when a conversation has none
    overlong: Literal["split", "truncate", "drop"] = "split"
    max_record_bytes: int | None = None

    def check(self, key: str) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"{key}.name: {self.name!r} must be a plain non-empty name (used as a directory)")
        if not self.paths:
            raise ConfigError(f"{key}.paths: give at least one file or directory")
        if self.kind == "sft" and self.overlong == "split":
            raise ConfigError(f"{key}.overlong: 'split' would cut a conversation; choose truncate or drop for sft")
        _require(self, key, "max_record_bytes", self.max_record_bytes is None or self.max_record_bytes >= 1, ">= 1")


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    verify: Literal["auto", "estimate", "exact", "none"] = "auto"

    def check(self, key: str) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"{key}.threshold: must be in (0, 1], got {self.threshold}")
        if not 2 <= self.num_perm <= 4096:
            raise ConfigError(f"{key}.num_perm: must be in 2..4096, got {self.num_perm}")
        if self.ngram < 1:
            raise ConfigError(f"{key}.ngram: must be >= 1, got {self.ngram}")


@dataclass(frozen=True)
class DecontamConfig:
    eval_paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    messages_field: str | None = None
    ngram: int = 13
    min_fraction: float = 0.0
    roles: list[Literal["system", "user", "assistant"]] | None = None

    def check(self, key: str) -> None:
        if self.ngram < 1:
            raise ConfigError(f"{key}.ngram: must be >= 1, got {self.ngram}")
        if not 0.0 <= self.min_fraction <= 1.0:
            raise ConfigError(f"{key}.min_fraction: must be in [0, 1], got {self.min_fraction}")


@dataclass(frozen=True)
class PrepConfig:
    output: str
    tokenizer: TokenizerConfig
    sources: list[SourceConfig]
    seq_len: int = 2048
    val_fraction: float = 0.01
    seed: int = 0
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
    shard_rows: int = 20_000
    num_threads: int | None = None

    def check(self, key: str) -> None:
        if self.seq_len < 8:
            raise ConfigError(f"seq_len: must be >= 8, got {self.seq_len}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.shard_rows < 1:
            raise ConfigError(f"shard_rows: must be >= 1, got {self.shard_rows}")
        _require(self, key, "seed", self.seed >= 0, ">= 0")
        _require(self, key, "num_threads", self.num_threads is None or self.num_threads >= 1, ">= 1")
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"sources: names must be unique; repeated: {', '.join(dup)}")
        if not self.sources:
            raise ConfigError("sources: give at least one source")
        if self.tokenizer.path.endswith(".tiktoken"):
            for i, s in enumerate(self.sources):
                if s.kind == "sft":
                    raise ConfigError(f"sources.{i}.kind: sft needs a chat template, and tokenizer.path "
                                      f"{self.tokenizer.path} is a .tiktoken file (cpt only)")


def load_config(cls: type, path: str | Path, overrides: list[str] | None = None) -> Any:
    """Load ``path`` (YAML), apply overrides, validate into ``cls``. Relative paths inside the
    file stay relative to the current directory (the launch directory), as in the README."""
    data = apply_overrides(load_yaml(path), list(overrides or []))
    return build(cls, data)


# ---------------------------------------------------------------------------------------
# The train config


@dataclass(frozen=True)
class ModelConfig:
    """Exactly one of ``path`` (HF directory, .gguf file, or pkg:MODULE/file) and ``config``
    (an inline transformers config dict, randomly initialised: for tests and demos)."""

    path: str | None = None
    config: dict[str, Any] | None = None
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    gradient_checkpointing: bool = False

    def check(self, key: str) -> None:
        if (self.path is None) == (self.config is None):
            raise ConfigError(f"{key}: give exactly one of model.path and model.config")


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] | Literal["all-linear"] = "all-linear"

    def check(self, key: str) -> None:
        if self.r < 1:
            raise ConfigError(f"{key}.r: must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{key}.dropout: must be in [0, 1), got {self.dropout}")
        _require(self, key, "alpha", self.alpha > 0, "> 0")
        _require(self, key, "target_modules", self.target_modules != [], "'all-linear' or a non-empty list")


@dataclass(frozen=True)
class DataConfig:
    """The prepared dataset and how to mix it. ``mixture``: source → token weight (default:
    every source, in proportion to its tokens)."""

    path: str
    mixture: dict[str, float] | None = None
    tokens_per_epoch: int | None = None
    temperature: float = 1.0
    max_repeat: float = 4.0
    strategy: Literal["bfd", "ffd", "greedy"] = "bfd"

    def check(self, key: str) -> None:
        _require(self, key, "path", bool(self.path), "a prepared dataset directory")
        if self.mixture is not None:
            _require(self, key, "mixture", bool(self.mixture), "a non-empty mapping of source name to weight")
            for name, weight in self.mixture.items():
                if not 0 < weight < math.inf:
                    raise ConfigError(f"{key}.mixture.{name}: weight must be a number > 0 (leave a source out "
                                      f"to skip it), got {weight!r}")
        _require(self, key, "tokens_per_epoch", self.tokens_per_epoch is None or self.tokens_per_epoch >= 1, ">= 1")
        _require(self, key, "temperature", 0 < self.temperature < math.inf, "a finite number > 0")
        _require(self, key, "max_repeat", self.max_repeat >= 1, ">= 1 (passes over a source; .inf for no cap)")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-4
    min_lr: float = 2e-5  # cosine decays to this (a tenth of the peak, the common choice)
    warmup_steps: int = 10
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def check(self, key: str) -> None:
        _require(self, key, "lr", self.lr > 0, "> 0")
        _require(self, key, "min_lr", 0 <= self.min_lr <= self.lr, f"in [0, lr={self.lr}]")
        _require(self, key, "warmup_steps", self.warmup_steps >= 0, ">= 0")
        _require(self, key, "weight_decay", self.weight_decay >= 0, ">= 0")
        _require(self, key, "betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 "two numbers in [0, 1), e.g. [0.9, 0.95]")
        _require(self, key, "eps", self.eps > 0, "> 0")
        _require(self, key, "grad_clip", self.grad_clip >= 0, ">= 0 (0 disables clipping)")


@dataclass(frozen=True)
class SpikeConfig:
    """Loss-spike guard: a step whose loss or grad norm is ``z_threshold`` standard deviations
    above the mean of the last ``window`` steps is skipped; ``max_spikes`` skips within one
    window roll back to the last checkpoint and skip the data seen since."""

    enabled: bool = True
    window: int = 50
    z_threshold: float = 6.0
    min_history: int = 10
    max_spikes: int = 3

    def check(self, key: str) -> None:
        _require(self, key, "window", self.window >= 1, ">= 1")
        _require(self, key, "z_threshold", self.z_threshold > 0, "> 0")
        _require(self, key, "min_history", 2 <= self.min_history <= self.window,
                 f"in 2..window={self.window} (a spread needs two steps; the history keeps window steps)")
        _require(self, key, "max_spikes", self.max_spikes >= 1, ">= 1")


@dataclass(frozen=True)
class TrainConfig:
    """A training run. ``tokens_per_step`` sets gradient accumulation:
    accum = ceil(tokens_per_step / (micro_batch_size · seq_len · workers))."""

    data: DataConfig
    model: ModelConfig
    run_name: str = "ftscale-run"
    storage_path: str = "runs"
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    seq_len: int = 2048
    micro_batch_size: int = 1
    tokens_per_step: int | None = None
    max_steps: int = 100  # the schedule's length (warmup + cosine span it)
    stop_at_step: int | None = None  # stop early (checkpointed) as if interrupted; relaunch resumes
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    num_workers: int = 2
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    cpus_per_worker: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    eval_every: int = 50
    eval_batches: int = 8
    eval_on_start: bool = False  # evaluate before the first step (the baseline for per-source val loss)
    early_stop_patience: int = 0  # evaluations without improvement before stopping; 0: never
    log_every: int = 1
    peak_tflops: float | None = None  # per device, for MFU; None: known GPUs, else MFU is not reported
    max_failures: int = 2  # worker/node failures Ray Train recovers from automatically
    export_on_finish: bool = True

    def check(self, key: str) -> None:
        for name, minimum in (("seq_len", 8), ("micro_batch_size", 1), ("max_steps", 1), ("num_workers", 1),
                              ("cpus_per_worker", 1), ("checkpoint_every", 1), ("keep_checkpoints", 1),
                              ("eval_every", 0), ("eval_batches", 1), ("early_stop_patience", 0),
                              ("log_every", 1), ("seed", 0), ("max_failures", -1)):
            _require(self, key, name, getattr(self, name) >= minimum, f">= {minimum}")
        for name in ("tokens_per_step", "stop_at_step"):
            _require(self, key, name, getattr(self, name) is None or getattr(self, name) >= 1, ">= 1")
        _require(self, key, "peak_tflops", self.peak_tflops is None or self.peak_tflops > 0, "> 0")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("offload_params: parameter offload needs zero_stage: 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("offload_optimizer: optimizer offload needs zero_stage 1, 2 or 3")
        if self.early_stop_patience and not self.eval_every:
            raise ConfigError("early_stop_patience: early stopping counts evaluations; set eval_every > 0")
        if not self.run_name or "/" in self.run_name:
            raise ConfigError(f"run_name: {self.run_name!r} must be a plain non-empty name")

    def grad_accum_steps(self) -> int:
        per_step = self.micro_batch_size * self.seq_len * self.num_workers
        if self.tokens_per_step is None:
            return 1
        return max(1, -(-self.tokens_per_step // per_step))


# ---------------------------------------------------------------------------------------
# Checking a config file before launching it (`ftscale validate`)

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
        return (f"{c.method}, ZeRO-{c.zero_stage}, seq_len {c.seq_len}, {c.num_workers} workers x micro-batch "
                f"{c.micro_batch_size}, grad accum {c.grad_accum_steps()}, {c.max_steps} steps")


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


def _missing(path: str) -> bool:
    from ftscale.data.tokenize import resolve_path

    try:
        return not resolve_path(path).exists()
    except ConfigError:  # pkg:MODULE/... of a package not installed (yet)
        return True


def _prep_warnings(cfg: PrepConfig) -> list[str]:
    from ftscale.data.prep import expand_paths
    from ftscale.errors import InputError

    warnings = []
    if _missing(cfg.tokenizer.path):
        warnings.append(f"tokenizer.path: {cfg.tokenizer.path} does not exist")
    inputs = [(f"sources.{i}.paths", s.paths) for i, s in enumerate(cfg.sources)]
    for key, paths in inputs + [("decontaminate.eval_paths", cfg.decontaminate.eval_paths)]:
        try:
            expand_paths(paths, key)
        except InputError as e:
            warnings.append(str(e))
    return warnings


def check_against_dataset(cfg: TrainConfig, manifest: dict[str, Any]) -> None:
    """ConfigError when the prepared dataset cannot serve ``cfg``: a mixture naming a source
    it lacks (or one without train documents), or a seq_len above the one its SFT sources
    were truncated to. Run by ``ftscale validate`` and before ``ftscale train`` starts Ray."""
    sources = manifest["sources"]
    for name in cfg.data.mixture or {}:
        if name not in sources:
            raise ConfigError(f"data.mixture.{name}: {cfg.data.path} has no source {name!r}; it has "
                              f"{', '.join(sources)}")
        if not sources[name]["train"]:
            raise ConfigError(f"data.mixture.{name}: source {name!r} has no train documents in {cfg.data.path}")
    sft = [n for n, e in sources.items() if e["kind"] == "sft" and n in (cfg.data.mixture or sources)]
    if sft and cfg.seq_len > manifest["seq_len"]:
        raise ConfigError(f"seq_len: {cfg.seq_len} exceeds the prepared seq_len {manifest['seq_len']} (SFT "
                          f"source(s) {', '.join(sft)} were truncated to it); re-run prep or lower seq_len")


def _train_warnings(cfg: TrainConfig) -> list[str]:
    """Warnings for paths that do not exist yet; errors for a mixture or seq_len the prepared
    dataset (when it exists) cannot serve."""
    from ftscale.data.format import MANIFEST, read_manifest

    warnings = []
    if cfg.model.path is not None and _missing(cfg.model.path):
        warnings.append(f"model.path: {cfg.model.path} does not exist")
    if not (Path(cfg.data.path) / MANIFEST).is_file():
        warnings.append(f"data.path: {cfg.data.path} is not a prepared dataset yet (no {MANIFEST}); "
                        "run `ftscale prep` before training")
        return warnings
    manifest = read_manifest(cfg.data.path)
    check_against_dataset(cfg, manifest)
    if cfg.eval_every and not any(e["val"] for e in manifest["sources"].values()):
        warnings.append(f"eval_every: {cfg.data.path} has no val documents, so evaluations report nothing "
                        "(prep with val_fraction > 0)")
    return warnings
