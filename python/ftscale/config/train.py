"""The train config (`ftscale train`): data, model, method, optimisation, checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ftscale.config.base import PLAIN_NAME_RULE, plain_name, require
from ftscale.config.eval import EvalConfig
from ftscale.errors import ConfigError

CPU_WORKERS = 2  # num_workers "auto" without GPUs: data parallelism still exercised, 2 cores busy

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
        require(self, key, "alpha", self.alpha > 0, "> 0")
        require(self, key, "target_modules", self.target_modules != [], "'all-linear' or a non-empty list")


@dataclass(frozen=True)
class PeftConfig:
    """Options of the peft methods besides LoRA's own (``lora``, which ``dora`` and ``qlora``
    use too). ``options``: any further keyword of the method's peft config class (e.g.
    ``{init_lora_weights: pissa}`` for lora, ``{init_ia3_weights: false}`` for ia3,
    ``{prompt_tuning_init: TEXT, prompt_tuning_init_text: ..., tokenizer_name_or_path: ...}``
    for prompt_tuning, ``{prefix_projection: true, encoder_hidden_size: ...}`` for prefix_tuning)."""

    # ia3: the scaled modules and those of them scaled at their input (None: peft's defaults
    # for the architecture, e.g. k_proj, v_proj, down_proj / down_proj for LLaMA)
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None
    # qlora: the frozen base stored in 4 bits (bitsandbytes); NF4 with double quantization is QLoRA's recipe
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    # prompt_tuning / prefix_tuning: learned tokens each document sees before its own (20: the
    # count of peft's prompt-tuning examples; the prompt-tuning paper's gains level off from 20)
    num_virtual_tokens: int = 20
    options: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        require(self, key, "target_modules", self.target_modules != [], "a non-empty list (or left out)")
        require(self, key, "num_virtual_tokens", self.num_virtual_tokens >= 1, ">= 1")
        if self.feedforward_modules is not None and self.target_modules is not None:
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            require(self, key, "feedforward_modules", not extra, f"a subset of target_modules (not {extra})")


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
        require(self, key, "path", bool(self.path), "a prepared dataset directory")
        if self.mixture is not None:
            require(self, key, "mixture", bool(self.mixture), "a non-empty mapping of source name to weight")
            for name, weight in self.mixture.items():
                if not 0 < weight < math.inf:
                    raise ConfigError(f"{key}.mixture.{name}: weight must be a number > 0 (leave a source out "
                                      f"to skip it), got {weight!r}")
        require(self, key, "tokens_per_epoch", self.tokens_per_epoch is None or self.tokens_per_epoch >= 1, ">= 1")
        require(self, key, "temperature", 0 < self.temperature < math.inf, "a finite number > 0")
        require(self, key, "max_repeat", self.max_repeat >= 1, ">= 1 (passes over a source; .inf for no cap)")


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
        require(self, key, "lr", self.lr > 0, "> 0")
        require(self, key, "min_lr", 0 <= self.min_lr <= self.lr, f"in [0, lr={self.lr}]")
        require(self, key, "warmup_steps", self.warmup_steps >= 0, ">= 0")
        require(self, key, "weight_decay", self.weight_decay >= 0, ">= 0")
        require(self, key, "betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 "two numbers in [0, 1), e.g. [0.9, 0.95]")
        require(self, key, "eps", self.eps > 0, "> 0")
        require(self, key, "grad_clip", self.grad_clip >= 0, ">= 0 (0 disables clipping)")


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
        require(self, key, "window", self.window >= 1, ">= 1")
        require(self, key, "z_threshold", self.z_threshold > 0, "> 0")
        require(self, key, "min_history", 2 <= self.min_history <= self.window,
                 f"in 2..window={self.window} (a spread needs two steps; the history keeps window steps)")
        require(self, key, "max_spikes", self.max_spikes >= 1, ">= 1")


@dataclass(frozen=True)
class WandbConfig:
    """A Weights & Biases run per ftscale run (``wandb.init`` keywords). ``mode: offline``
    writes under ``dir`` for a later ``wandb sync``; the API key comes from ``wandb login`` or
    ``WANDB_API_KEY`` on the workers."""

    project: str = "ftscale"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] = "online"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    dir: str | None = None  # None: wandb's default (./wandb of the rank-0 worker)


@dataclass(frozen=True)
class MlflowConfig:
    """An MLflow run per launch in ``experiment`` (created when missing). ``tracking_uri``:
    a server (``http://...``), ``sqlite:///...`` or ``databricks``; None: ``MLFLOW_TRACKING_URI``."""

    tracking_uri: str | None = None
    experiment: str = "ftscale"
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggingConfig:
    """Experiment trackers fed with every logged metric, next to metrics.jsonl and TensorBoard."""

    wandb: WandbConfig | None = None
    mlflow: MlflowConfig | None = None


ADAPTER_METHODS = ("lora", "dora", "qlora", "ia3")
# learned virtual tokens (ftscale.train.prompt_methods); run with sdpa or eager attention
PROMPT_METHODS = ("prompt_tuning", "prefix_tuning")


@dataclass(frozen=True)
class PreferenceConfig:
    """Preference tuning, the objective of a run whose sources are ``kind: preference``
    (``ftscale.train.preference``). ``loss``: sigmoid (DPO), ipo, hinge; ``label_smoothing``:
    conservative DPO's ε (sigmoid only). ``reference``: the model the policy is measured
    against — ``adapters``: the base with the adapters switched off (no second copy; adapter
    methods only); ``precomputed``: every side scored once with the starting weights before the
    first step and kept in the run's checkpoints; ``auto``: adapters for an adapter method,
    else precomputed."""

    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    reference: Literal["auto", "adapters", "precomputed"] = "auto"

    def check(self, key: str) -> None:
        require(self, key, "beta", 0 < self.beta < math.inf, "a finite number > 0")
        require(self, key, "label_smoothing", 0 <= self.label_smoothing < 0.5, "in [0, 0.5)")
        if self.label_smoothing and self.loss != "sigmoid":
            raise ConfigError(f"{key}.label_smoothing: conservative DPO smooths the sigmoid loss; set loss: sigmoid "
                              f"or label_smoothing: 0 (loss is {self.loss})")

    def reference_for(self, method: str) -> str:
        """The reference actually used with ``method``."""
        if self.reference != "auto":
            return self.reference
        return "adapters" if method in ADAPTER_METHODS else "precomputed"


@dataclass(frozen=True)
class TrainConfig:
    """A training run. ``tokens_per_step`` sets gradient accumulation:
    accum = ceil(tokens_per_step / (micro_batch_size · seq_len · workers)).

    ``num_workers: [min, max]`` makes the run elastic (Ray Train's elastic scaling): it
    starts with as many workers as fit and carries on with fewer when a node is lost. Every
    worker count in the range must then divide tokens_per_step into whole micro-batches, so
    the global batch (and the data sequence) is the same whichever count runs."""

    data: DataConfig
    model: ModelConfig
    run_name: str = "ftscale-run"
    storage_path: str = "runs"
    # full: every weight; lora / dora / qlora (LoRA on a 4-bit base, CUDA) / ia3 /
    # prompt_tuning / prefix_tuning through peft (the last two with sdpa or eager attention)
    method: Literal["full", "lora", "dora", "qlora", "ia3", "prompt_tuning", "prefix_tuning"] = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)  # DPO & co (preference sources)
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
    # "auto": one worker per GPU of the cluster, else CPU_WORKERS (a one-GPU machine gets one
    # worker, not two that wait forever for a second GPU); [min, max]: elastic
    num_workers: int | list[int] | Literal["auto"] = "auto"
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
    eval: EvalConfig = field(default_factory=EvalConfig)  # task scores, best-checkpoint choice, forgetting guard
    log_every: int = 1
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # W&B, MLflow
    peak_tflops: float | None = None  # per device, for MFU; None: known GPUs, else MFU is not reported
    max_failures: int = 2  # worker/node failures Ray Train recovers from automatically
    export_on_finish: bool = True

    def check(self, key: str) -> None:
        self._check_workers(key)
        for name, minimum in (("seq_len", 8), ("micro_batch_size", 1), ("max_steps", 1),
                              ("cpus_per_worker", 1), ("checkpoint_every", 1), ("keep_checkpoints", 1),
                              ("eval_every", 0), ("eval_batches", 1), ("early_stop_patience", 0),
                              ("log_every", 1), ("seed", 0), ("max_failures", -1)):
            require(self, key, name, getattr(self, name) >= minimum, f">= {minimum}")
        for name in ("tokens_per_step", "stop_at_step"):
            require(self, key, name, getattr(self, name) is None or getattr(self, name) >= 1, ">= 1")
        require(self, key, "peak_tflops", self.peak_tflops is None or self.peak_tflops > 0, "> 0")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("offload_params: parameter offload needs zero_stage: 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("offload_optimizer: optimizer offload needs zero_stage 1, 2 or 3")
        if self.method == "qlora":
            if self.model.path is None:
                raise ConfigError("method: qlora loads model.path's weights in 4 bits; an inline model.config has none")
            if self.zero_stage == 3:
                raise ConfigError("zero_stage: qlora keeps the 4-bit base whole on every GPU; use zero_stage 0-2")
            if self.precision == "fp32":
                raise ConfigError("precision: qlora computes in bf16 on the GPU; use precision: auto or bf16")
        if self.preference.reference == "adapters" and self.method not in ADAPTER_METHODS:
            raise ConfigError(f"preference.reference: 'adapters' switches the adapters off, but method {self.method!r} "
                              f"has none; use reference: precomputed (or auto), or a method of {', '.join(ADAPTER_METHODS)}")
        if self.method == "prefix_tuning" and self.model.gradient_checkpointing:
            # transformers 5.24's GradientCheckpointingLayer drops the key/value cache in training
            # (its replay would write the cache twice), and with it the prefix
            raise ConfigError("model.gradient_checkpointing: prefix_tuning feeds its prefix through the key/value "
                              "cache, which checkpointed layers drop; turn gradient_checkpointing off (or use "
                              "prompt_tuning)")
        if self.method in PROMPT_METHODS and self.eval.tasks is not None:
            raise ConfigError(f"eval.tasks: task scoring runs the model on unpacked prompts with a key/value cache, "
                              f"which method {self.method} does not support; leave eval.tasks out (per-source "
                              "validation loss still runs)")
        if self.early_stop_patience and not self.eval_every:
            raise ConfigError("early_stop_patience: early stopping counts evaluations; set eval_every > 0")
        for name in ("tasks", "select", "guard"):
            if getattr(self.eval, name) is not None and not self.eval_every:
                raise ConfigError(f"eval.{name}: evaluations run every eval_every steps; set eval_every > 0")
        if self.eval.guard is not None and not self.eval_on_start:
            raise ConfigError("eval.guard: the guard compares each evaluation with the one before training; "
                              "set eval_on_start: true")
        if not plain_name(self.run_name):
            raise ConfigError(f"run_name: {self.run_name!r} must be {PLAIN_NAME_RULE} (it names the run's "
                              "directory inside storage_path)")

    def _check_workers(self, key: str) -> None:
        if self.num_workers == "auto":
            return  # resolved to a count at launch (``workers``), which needs no elastic checks
        if isinstance(self.num_workers, int):
            require(self, key, "num_workers", self.num_workers >= 1, "'auto' or >= 1")
            return
        require(self, key, "num_workers", len(self.num_workers) == 2 and 1 <= self.num_workers[0] <= self.num_workers[1],
                "'auto', a count >= 1, or [min, max] with 1 <= min <= max")
        if self.tokens_per_step is None:
            raise ConfigError("num_workers: an elastic run ([min, max]) needs tokens_per_step, so that the global "
                              "batch does not change with the number of workers")
        row_tokens = self.micro_batch_size * self.seq_len
        uneven = [w for w in self.worker_counts() if self.tokens_per_step % (row_tokens * w)]
        if uneven:
            raise ConfigError(f"num_workers: with {uneven[0]} workers, tokens_per_step {self.tokens_per_step} is not "
                              f"a whole number of micro-batches of {row_tokens} tokens per worker; choose "
                              f"tokens_per_step a multiple of {row_tokens} x every worker count in the range")

    def workers(self, cluster_gpus: float, use_gpu: bool) -> int | list[int]:
        """Ray Train workers: ``num_workers`` (a count or elastic [min, max]), or for "auto"
        one per GPU of the cluster when training on GPUs, else ``CPU_WORKERS``."""
        if self.num_workers != "auto":
            return self.num_workers
        return max(1, int(cluster_gpus)) if use_gpu else CPU_WORKERS

    def worker_counts(self) -> list[int]:
        """Every number of workers the run may have (``num_workers`` resolved: not "auto")."""
        if self.num_workers == "auto":
            raise ValueError("num_workers is 'auto': resolve it with workers() first")
        if isinstance(self.num_workers, int):
            return [self.num_workers]
        return list(range(self.num_workers[0], self.num_workers[1] + 1))

    def grad_accum_steps(self, world_size: int | None = None) -> int:
        """Micro-batches per rank per step with ``world_size`` workers (default: the largest
        count of a resolved ``num_workers``)."""
        workers = world_size if world_size is not None else self.worker_counts()[-1]
        per_step = self.micro_batch_size * self.seq_len * workers
        if self.tokens_per_step is None:
            return 1
        return max(1, -(-self.tokens_per_step // per_step))
