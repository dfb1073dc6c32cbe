"""Per-GPU memory plan of a fine-tuning run: model states, activations, what fits.

Everything is arithmetic on the model's shape; the model is instantiated on the meta
device only to count parameters, so planning an 8B model costs no memory and DeepSpeed
need not be installed. ``b`` = micro-batch, ``s`` = sequence length, ``G`` = GPUs in all,
``n`` = nodes, ``P`` = parameters, ``T`` = trainable parameters (``P`` for full
fine-tuning), ``w`` = bytes per element of the compute dtype (bf16: 2, fp32: 4).

Model states (per GPU)
----------------------
DeepSpeed's estimators (``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs``
and ``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs``, v0.19) count, for
bf16 mixed precision with Adam:

- ZeRO-2: 2·P bf16 weights on every GPU + ``int(18·P / G)``: the partition of 2 (bf16
  gradients) + 4 (fp32 gradients) + 4 (fp32 master weights) + 8 (Adam m, v) bytes per
  parameter. With ``offload_optimizer`` only the 2·P weights stay on the GPU.
- ZeRO-3: ``int(18·P / G)`` — 2 (bf16 weights) + 4 (fp32 gradient partition: stage 3
  accumulates gradients in fp32, no bf16 gradient partition) + 4 + 8 — plus
  4·``largest_layer_params`` bytes: the gathered bf16 weights and gradients of the largest
  module (parameters it owns directly, ``recurse=False``). Optimizer offload leaves
  ``int(2·P / G)`` + the gathered layer on the GPU, parameter offload only the gathered layer.

Rows: *weights* (bf16 weights), *gradients* (bf16 and fp32 gradients), *optimizer states*
(fp32 master weights and Adam m, v), *temporary buffers* (the gathered ZeRO-3 layer). The
partitioned rows share DeepSpeed's single ``int(· / G)``: the weights and gradient rows are
truncated on their own and the optimizer row takes the rest (which differs from truncating
it on its own by at most 2 bytes), so the rows sum to DeepSpeed's figure to the byte. Like DeepSpeed, the figures leave out
communication buckets (the trainer's reduce and all-gather buckets are 5·10⁷ elements
each), the CUDA context and allocator fragmentation.

The same table, extended to the cases DeepSpeed's estimators do not cover:

- ZeRO-0 (DeepSpeed's bf16 optimizer wrapper): everything replicated, 2 + 2 + 4 + 4 + 8 = 20
  bytes per parameter. ZeRO-1: bf16 weights and bf16 gradients replicated (gradients are
  reduced only at the accumulation boundary), fp32 gradients and optimizer states
  partitioned; optimizer offload moves those to the CPU.
- fp32 (``--precision fp32``): the bf16 copies become fp32 (w = 4). ZeRO-1/2/3 still keep a
  separate fp32 master partition and fp32 gradient partition (``stage_1_and_2`` clones its
  partition with ``.float()``); ZeRO-0 in fp32 is the plain optimizer: 4 + 4 + 8 = 16 bytes.
  The ZeRO-3 gathered layer is 2·w bytes per element.
- LoRA: the base weights are frozen, in the compute dtype (w bytes each), replicated below
  ZeRO-3 (ZeRO-1/2 partition only what the optimizer holds) and partitioned by ZeRO-3. The
  ``T`` adapter parameters (``r·(in + out)`` for every linear layer but the output head:
  the trainer's ``all-linear``) get the full-fine-tuning accounting above. The ZeRO-3
  gathered layer is the largest (frozen) module: w bytes per element, no gradient.
- QLoRA (the trainer's method: qlora, ZeRO 0-2): the frozen linear weights (the
  same layers LoRA adapts) in bitsandbytes NF4 with double quantization — 4 bits per
  weight + an 8-bit absmax per 64-weight block + an fp32 constant per 256 blocks: ``0.5 +
  1/64 + 4/16384`` ≈ 0.516 bytes per weight. Embeddings, norms and the output head stay in
  the compute dtype. The largest linear weight is dequantized to the compute dtype for its
  matmul: a temporary buffer.

CPU memory per node, as DeepSpeed's estimators count it, including their
``additional_buffer_factor`` of 1.5: ``int(P · max(load, offloaded / P · share) · 1.5)``,
where ``load`` is 4 bytes per parameter for each of the node's GPUs (every rank materialises
the model in fp32 before DeepSpeed shards it; the trainer does not use ``zero.Init``, so the
``zero_init=False`` figures apply; with optimizer offload the ZeRO-2 estimator counts 4
bytes for each of all ``G`` GPUs, and so does this planner for ZeRO-1/2), ``offloaded`` is the bytes moved to the CPU (ZeRO-2: 4 + 4 + 8 = 16
per trainable parameter — the bf16 gradients are reduced straight into the fp32 CPU
buffer; ZeRO-3 parameter offload adds the w-byte weights) and ``share`` is ``1/n`` for
ZeRO-3 and 1 for ZeRO-1/2 (whose estimator does not divide by nodes). The expression is
evaluated in the same floating-point order as DeepSpeed's.

Activations (per GPU)
---------------------
For decoder-only LLaMA-style models (RMSNorm, RoPE, grouped-query attention with a fused
kernel — flash_attention_2, sdpa without a materialised mask, sdpa_segments — and a SwiGLU
MLP), from what ``transformers`` 5.23's ``LlamaDecoderLayer`` saves for backward (inspected
with ``torch.autograd.graph.saved_tensors_hooks``; ``tests/unit/test_plan.py`` checks the
result against a measured peak). ``h`` hidden, ``i`` intermediate, ``H`` heads, ``K`` kv
heads, ``d`` head dim, ``V`` vocabulary, ``L`` layers; bytes per token of a layer:

- full fine-tuning: ``A = w·(2h + 2·H·d + 2·K·d + 4i) + 2·(h·(4 + w) + 4) + 4·H``

  Each RMSNorm saves its input in fp32 (bf16 input: an fp32 copy), the fp32 ``rsqrt`` and
  the normalised output in the compute dtype (for its weight's gradient):
  ``h·(4 + w) + 4``. Attention saves the q/k/v input (h), q and k after RoPE and v
  (``H·d + 2·K·d``), the attention output = o_proj input (``H·d``), all in the compute
  dtype, and the fp32 log-sum-exp (``4·H``). The MLP saves the gate/up input (h), the gate
  and up outputs, the SiLU output and the down_proj input (4i).
- LoRA (dropout > 0, the trainer's default 0.05): frozen linears save nothing, frozen norms
  no normalised output, but each of the 7 adapters saves its dropout mask (1 byte, bool on
  CUDA), its dropout output (w) and the rank-r intermediate:
  ``A = 2·(4h + 4) + w·(2·H·d + 2·K·d + 3i) + 4·H + (w + 1)·(5h + H·d + i) + 7·w·r``
  (the first layer saves a little less: its input needs no gradient).

With gradient checkpointing a layer keeps only its input (``w·h`` per token) and one layer
is recomputed, with all of ``A``, during the backward pass.

Outside the layers, per token: the input ids (8 bytes), the final norm (``h·(4 + w) + 4``;
LoRA: ``4h + 4``), the output head's input (``w·h``; LoRA: none), the fp32 log-softmax of the
loss (``4·V``: ``ftscale.train.loss`` upcasts the logits) and the targets (8). RoPE's cos and
sin tables (``2·s·d·w``) are shared by the whole batch. Not counted: the ``b·s²``-byte block
mask the trainer builds for plain ``sdpa`` (flash_attention_2 and sdpa_segments need none).

The peak is the larger of two moments of the backward pass:

- the loss backward: every saved tensor + the logits (``w·V``, kept by the trainer's step)
  + the gradients of the log-softmax output and input (``2·4·V``) — often the peak at small
  scale, where ``V`` dwarfs ``h``;
- the last layer's MLP backward: the layers' saved tensors (checkpointed: their inputs +
  one layer's ``A``) + the logits + the gradients of the SwiGLU product's two factors and
  of the residual stream (``2·w·i + w·h``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from ftscale.errors import ConfigError, InputError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Method = Literal["full", "lora", "qlora"]
Offload = Literal["optimizer", "params"]
METHODS = ("full", "lora", "qlora")
OFFLOADS = ("optimizer", "params")
PRECISIONS = ("bf16", "fp32")

GIB = 2**30
FP32_BYTES = 4
ADAM_BYTES = 8  # fp32 exp_avg + exp_avg_sq
DS_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor (CPU figures)
NF4_BLOCK = 64  # bitsandbytes 4-bit block size; double quantization groups 256 blocks
NF4_DOUBLE_QUANT_GROUP = 256
LORA_ADAPTERS_PER_LAYER = 7  # q, k, v, o, gate, up, down
MAX_MICRO_BATCH = 1 << 16
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
               "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a causal LM, as far as memory is concerned."""

    name: str
    total_params: int
    largest_layer_params: int  # max over modules of the parameters they own (DeepSpeed ZeRO-3)
    adapted_linear_params: int  # weights of the linears LoRA adapts and QLoRA quantizes
    adapted_linear_fan_sum: int  # Σ (in + out) over those linears: LoRA parameters per unit of r
    largest_linear_params: int
    nf4_linear_bytes: int  # those linears' weights in NF4 with double quantization
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    def lora_params(self, r: int) -> int:
        return r * self.adapted_linear_fan_sum


@dataclass(frozen=True)
class PlanOptions:
    method: Method = "full"
    zero: int = 2
    offload: Offload | None = None
    gpus_per_node: int = 1
    nodes: int = 1
    seq_len: int = 2048
    micro_batch: int = 1
    grad_ckpt: bool = False
    gpu_mem_bytes: int = 80 * GIB
    precision: Literal["bf16", "fp32"] = "bf16"
    lora_r: int = 16

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.zero not in (0, 1, 2, 3):
            raise ConfigError(f"--zero: must be 0, 1, 2 or 3, got {self.zero}")
        if self.offload not in (None, *OFFLOADS):
            raise ConfigError(f"--offload: {self.offload!r} is not one of {', '.join(OFFLOADS)}")
        if self.offload == "params" and self.zero != 3:
            raise ConfigError(f"--offload params: parameter offload needs --zero 3, got --zero {self.zero}")
        if self.offload == "optimizer" and self.zero == 0:
            raise ConfigError("--offload optimizer: optimizer offload needs --zero 1, 2 or 3")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for flag, value in (("--gpus-per-node", self.gpus_per_node), ("--nodes", self.nodes),
                            ("--seq-len", self.seq_len), ("--micro-batch", self.micro_batch),
                            ("--lora-r", self.lora_r), ("--gpu-mem", self.gpu_mem_bytes)):
            if value < 1:
                raise ConfigError(f"{flag}: must be positive, got {value}")

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def compute_bytes(self) -> int:
        return 2 if self.precision == "bf16" else 4


@dataclass(frozen=True)
class ModelStates:
    weights_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    temporary_buffers_bytes: int
    cpu_per_node_bytes: int

    @property
    def gpu_bytes(self) -> int:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_states_bytes + self.temporary_buffers_bytes


@dataclass(frozen=True)
class Activations:
    layers_bytes: int  # saved by the layers (checkpointed: their inputs + one recomputed layer)
    other_bytes: int  # head, logits, loss and transient gradients at the peak moment
    peak_at: Literal["loss backward", "last layer backward"]

    @property
    def total_bytes(self) -> int:
        return self.layers_bytes + self.other_bytes


def parse_size(text: str, flag: str = "--gpu-mem") -> int:
    """Bytes from ``80GiB``, ``24GB``, ``40G``, ``512MiB``, ``1.5T``: ``GB`` is 10⁹, ``GiB``
    and a bare ``G`` are 2³⁰ (likewise K, M, T); no unit means bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
    if m is None or unit is None:
        raise ConfigError(f"{flag}: {text!r} is not a size like 80GiB, 24GB or 40G")
    size = int(float(m.group(1)) * unit)
    if size < 1:
        raise ConfigError(f"{flag}: {text!r} must be positive")
    return size


def load_model_config(path: str) -> PretrainedConfig:
    """The transformers config of ``--model``: a Hugging Face model directory, a config.json
    file, a .gguf file, ``pkg:MODULE/file`` or a cached Hub id (see ``ftscale.paths.resolve_model_ref``)."""
    from transformers import AutoConfig

    from ftscale.paths import resolve_model_ref

    try:
        p = resolve_model_ref(path)
    except ConfigError as e:
        raise InputError(f"--model: {e}") from e
    if not p.exists():
        raise InputError(f"--model: {path} not found; give a model directory, a config.json or a .gguf file")
    if p.is_file() and p.suffix == ".gguf":
        source, extra = str(p.parent), {"gguf_file": p.name}
    elif p.is_file() or (p / "config.json").is_file():
        source, extra = str(p), {}
    else:
        raise InputError(f"--model: {path} is neither a directory with config.json, a config file nor a .gguf file")
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, **extra)
    except (OSError, ValueError, KeyError) as e:  # unreadable JSON, unknown model_type, broken GGUF
        raise InputError(f"--model: cannot read a transformers config from {path}: {e}") from e


def model_spec(config: PretrainedConfig, name: str = "") -> ModelSpec:
    """Count ``config``'s parameters on a meta-device instance (no memory) and read the
    shape the activation formula needs."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from ftscale.train.model import trainable_parameters

    text = config.get_text_config()
    needed = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
    missing = [k for k in needed if not isinstance(getattr(text, k, None), int)]
    if missing:
        raise ConfigError(f"--model: the config has no {', '.join(missing)}; the planner covers LLaMA-style "
                          "decoder-only models")
    config = copy.deepcopy(config)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    except ValueError as e:  # a config class with no causal-LM head
        raise ConfigError(f"--model: {config.model_type!r} has no causal language model: {e}") from e
    _, total = trainable_parameters(model)
    largest_layer = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    heads = text.num_attention_heads
    return ModelSpec(
        name=name or config.model_type,
        total_params=total,
        largest_layer_params=largest_layer,
        adapted_linear_params=sum(m.weight.numel() for m in linears),
        adapted_linear_fan_sum=sum(m.in_features + m.out_features for m in linears),
        largest_linear_params=max((m.weight.numel() for m in linears), default=0),
        nf4_linear_bytes=sum(_nf4_bytes(m.weight.numel()) for m in linears),
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_heads=heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab_size=text.vocab_size,
    )


def _nf4_bytes(numel: int) -> int:
    """A weight in NF4 with double quantization: 4 bits each, an 8-bit absmax per 64-block,
    an fp32 constant per 256 blocks."""
    blocks = math.ceil(numel / NF4_BLOCK)
    return math.ceil(numel / 2) + blocks + FP32_BYTES * math.ceil(blocks / NF4_DOUBLE_QUANT_GROUP)


def model_states(spec: ModelSpec, opts: PlanOptions) -> ModelStates:
    """Weights, gradients, optimizer states and temporary buffers per GPU, and CPU memory
    per node (see the module docstring; for full bf16 fine-tuning with ZeRO-2/3 they sum to
    DeepSpeed's estimates exactly)."""
    P, G, w, stage = spec.total_params, opts.total_gpus, opts.compute_bytes, opts.zero
    T = P if opts.method == "full" else spec.lora_params(opts.lora_r)
    frozen_weight_bytes = {"full": 0, "lora": P * w,
                           "qlora": (P - spec.adapted_linear_params) * w + spec.nf4_linear_bytes}[opts.method]
    plain_fp32 = stage == 0 and opts.precision == "fp32"  # no master copy: the optimizer updates the weights
    weight_bytes = frozen_weight_bytes + T * w
    grad_model_bytes = T * w  # gradients in the weights' dtype
    grad_fp32_bytes = 0 if plain_fp32 else T * FP32_BYTES
    optimizer_bytes = T * ((0 if plain_fp32 else FP32_BYTES) + ADAM_BYTES)
    offload_optimizer = opts.offload is not None

    # Where each part lives: replicated on every GPU, partitioned over the G GPUs, or on the CPU.
    replicated = {"weights": 0, "gradients": 0, "optimizer": 0}
    partitioned = {"weights": 0, "gradients": 0, "optimizer": 0}
    cpu_bytes = 0
    if stage == 3:
        if opts.offload == "params":
            cpu_bytes += weight_bytes
        else:
            partitioned["weights"] += weight_bytes
    else:
        replicated["weights"] += weight_bytes
    if stage in (0, 1):
        replicated["gradients"] += grad_model_bytes
    elif stage == 2 and not offload_optimizer:
        partitioned["gradients"] += grad_model_bytes
    # stage 3 accumulates into the fp32 partition; with optimizer offload (stage 2/3) the
    # bf16 gradients are reduced straight into the CPU's fp32 buffer
    if stage == 0:
        replicated["gradients"] += grad_fp32_bytes
        replicated["optimizer"] += optimizer_bytes
    elif offload_optimizer:
        cpu_bytes += grad_fp32_bytes + optimizer_bytes
    else:
        partitioned["gradients"] += grad_fp32_bytes
        partitioned["optimizer"] += optimizer_bytes

    partition_bytes = int(sum(partitioned.values()) / G)  # one truncation, as DeepSpeed does
    weights_bytes = replicated["weights"] + int(partitioned["weights"] / G)
    gradients_bytes = replicated["gradients"] + int(partitioned["gradients"] / G)
    optimizer_states_bytes = (replicated["optimizer"] + partition_bytes - int(partitioned["weights"] / G)
                              - int(partitioned["gradients"] / G))
    temporary_bytes = 0
    if stage == 3:  # the gathered largest layer: weights, and gradients when it trains
        temporary_bytes += spec.largest_layer_params * (2 * w if opts.method == "full" else w)
    if opts.method == "qlora":  # the largest linear dequantized for its matmul
        temporary_bytes += spec.largest_linear_params * w

    load_bytes_per_param = FP32_BYTES * (G if offload_optimizer and stage in (1, 2) else opts.gpus_per_node)
    node_share = 1 / opts.nodes if stage == 3 else 1
    cpu_per_node_bytes = int(P * max(load_bytes_per_param, cpu_bytes / P * node_share) * DS_BUFFER_FACTOR)
    return ModelStates(weights_bytes, gradients_bytes, optimizer_states_bytes, temporary_bytes, cpu_per_node_bytes)


def activation_bytes(spec: ModelSpec, opts: PlanOptions, micro_batch: int | None = None) -> Activations:
    """Peak activation memory per GPU of one forward + loss + backward (see the module
    docstring for the formula). ``*_bytes_per_token`` are per token of the micro-batch."""
    tokens = (opts.micro_batch if micro_batch is None else micro_batch) * opts.seq_len
    w = opts.compute_bytes
    h, i, V = spec.hidden_size, spec.intermediate_size, spec.vocab_size
    heads, kv, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    ids_bytes_per_token = 8 + 8  # int64 input ids and loss targets
    # q, k after RoPE, v, attention output; fp32 log-sum-exp
    attention_bytes_per_token = w * (2 * heads * d + 2 * kv * d) + FP32_BYTES * heads
    norm_bytes_per_token = FP32_BYTES * h + FP32_BYTES  # fp32 input (or upcast copy) and rsqrt
    if opts.method == "full":  # + each norm's normalised output, the q/k/v and gate/up inputs, 4 MLP tensors
        layer_bytes_per_token = (2 * (norm_bytes_per_token + w * h) + attention_bytes_per_token
                                 + w * (2 * h + 4 * i))
        head_bytes_per_token = ids_bytes_per_token + norm_bytes_per_token + w * h + w * h + FP32_BYTES * V
    else:  # frozen linears and norms save no inputs; each adapter: dropout mask (1 byte) and output, rank-r
        adapter_input_elems = 5 * h + heads * d + i
        layer_bytes_per_token = (2 * norm_bytes_per_token + attention_bytes_per_token + w * 3 * i
                                 + (w + 1) * adapter_input_elems + LORA_ADAPTERS_PER_LAYER * w * opts.lora_r)
        head_bytes_per_token = ids_bytes_per_token + norm_bytes_per_token + FP32_BYTES * V
    logits_bytes_per_token = w * V  # kept alive by the training step until backward ends
    rope_bytes = 2 * opts.seq_len * d * w
    if opts.grad_ckpt:
        layers_saved_bytes = spec.num_layers * w * h * tokens
        recomputed_bytes = layer_bytes_per_token * tokens
    else:
        layers_saved_bytes = spec.num_layers * layer_bytes_per_token * tokens
        recomputed_bytes = 0
    loss_phase_bytes = (head_bytes_per_token + logits_bytes_per_token + 2 * FP32_BYTES * V) * tokens
    layer_phase_bytes = (logits_bytes_per_token + 2 * w * i + w * h) * tokens
    if loss_phase_bytes >= recomputed_bytes + layer_phase_bytes:
        return Activations(layers_saved_bytes, loss_phase_bytes + rope_bytes, "loss backward")
    return Activations(layers_saved_bytes + recomputed_bytes, layer_phase_bytes + rope_bytes, "last layer backward")


def _total_bytes(spec: ModelSpec, opts: PlanOptions, micro_batch: int) -> int:
    return model_states(spec, opts).gpu_bytes + activation_bytes(spec, opts, micro_batch).total_bytes


def max_micro_batch(spec: ModelSpec, opts: PlanOptions) -> int:
    """The largest micro-batch that fits in ``opts.gpu_mem_bytes`` (0: not even 1)."""
    def fits(b: int) -> bool:
        return _total_bytes(spec, opts, b) <= opts.gpu_mem_bytes

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= MAX_MICRO_BATCH and fits(high):
        low, high = high, 2 * high
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _flags(opts: PlanOptions, base: PlanOptions) -> str:
    """The command-line flags that turn ``base`` into ``opts``."""
    out = []
    if opts.zero != base.zero:
        out.append(f"--zero {opts.zero}")
    if opts.offload != base.offload:
        out.append(f"--offload {opts.offload}")
    if opts.grad_ckpt != base.grad_ckpt:
        out.append("--grad-ckpt")
    if opts.method != base.method:
        out.append(f"--method {opts.method}")
    if opts.gpus_per_node != base.gpus_per_node:
        out.append(f"{opts.gpus_per_node - base.gpus_per_node} more GPUs (--gpus-per-node {opts.gpus_per_node})")
    if opts.nodes != base.nodes:
        out.append(f"{opts.nodes - base.nodes} more nodes (--nodes {opts.nodes})")
    return " ".join(out)


def alternatives(spec: ModelSpec, opts: PlanOptions, micro_batch: int = 1) -> list[dict[str, Any]]:
    """Single changes to ``opts`` (each with ``--grad-ckpt`` added where it needs it) under
    which ``micro_batch`` fits, each re-planned: ``{"flags", "total_gib" (at that
    micro-batch), "max_micro_batch"}``, fewest changed flags first."""
    candidates = []
    if opts.zero < 3:
        candidates.append(replace(opts, zero=3))
    if not opts.grad_ckpt:
        candidates.append(replace(opts, grad_ckpt=True))
    if opts.offload is None:
        candidates.append(replace(opts, offload="optimizer", zero=opts.zero or 2))
    if opts.offload != "params":
        candidates.append(replace(opts, offload="params", zero=3))
    if opts.method == "full":
        candidates.append(replace(opts, method="lora"))
    if opts.method != "qlora":
        candidates.append(replace(opts, method="qlora"))
    if opts.zero >= 1:  # partitioned states shrink with more GPUs: the fewest that fit
        if opts.nodes == 1:
            more = (replace(opts, gpus_per_node=n) for n in range(opts.gpus_per_node + 1, 64 * opts.gpus_per_node + 1))
        else:
            more = (replace(opts, nodes=n) for n in range(opts.nodes + 1, 64 * opts.nodes + 1))
        fewest = next((alt for alt in more if max_micro_batch(spec, alt) >= micro_batch), None)
        if fewest is not None:
            candidates.append(fewest)
    out = []
    for alt in candidates:
        b = max_micro_batch(spec, alt)
        if b < micro_batch and not alt.grad_ckpt:  # a change that only fits with checkpointing too
            alt = replace(alt, grad_ckpt=True)
            b = max_micro_batch(spec, alt)
        if b >= micro_batch:
            out.append({"flags": _flags(alt, opts), "total_gib": round(_total_bytes(spec, alt, micro_batch) / GIB, 1),
                        "max_micro_batch": b})
    return sorted(out, key=lambda a: a["flags"].count("--"))  # fewest flag changes first (stable)


def plan(spec: ModelSpec, opts: PlanOptions) -> dict[str, Any]:
    """The plan as a JSON-able dict (bytes), with ``alternatives`` and a ``message`` when
    the micro-batch does not fit."""
    opts.check()
    states = model_states(spec, opts)
    act = activation_bytes(spec, opts)
    total = states.gpu_bytes + act.total_bytes
    largest_b = max_micro_batch(spec, opts)
    result: dict[str, Any] = {
        "model": asdict(spec) | {"trainable_params": spec.total_params if opts.method == "full"
                                 else spec.lora_params(opts.lora_r)},
        "options": asdict(opts),
        "per_gpu": {
            "weights_bytes": states.weights_bytes,
            "gradients_bytes": states.gradients_bytes,
            "optimizer_states_bytes": states.optimizer_states_bytes,
            "temporary_buffers_bytes": states.temporary_buffers_bytes,
            "model_states_bytes": states.gpu_bytes,
            "activations_bytes": act.total_bytes,
            "activations_layers_bytes": act.layers_bytes,
            "activations_other_bytes": act.other_bytes,
            "activations_peak_at": act.peak_at,
            "total_bytes": total,
        },
        "cpu_per_node_bytes": states.cpu_per_node_bytes,
        "gpu_mem_bytes": opts.gpu_mem_bytes,
        "fits": total <= opts.gpu_mem_bytes,
        "max_micro_batch": largest_b,
        "alternatives": [],
        "message": None,
    }
    if result["fits"]:
        return result
    mem_gib = opts.gpu_mem_bytes / GIB
    if largest_b == 0:
        alts = alternatives(spec, opts)
        if states.gpu_bytes > opts.gpu_mem_bytes:
            need = f"model states alone need {states.gpu_bytes / GIB:.1f} GiB per GPU of {mem_gib:.1f} GiB"
        else:
            need = f"micro-batch 1 needs {_total_bytes(spec, opts, 1) / GIB:.1f} GiB per GPU of {mem_gib:.1f} GiB"
        fix = ("no single change of ZeRO stage, offload, method or GPU count fits; shorten --seq-len or combine "
               "several" if not alts else "try " + _describe(alts, 1))
    else:
        alts = alternatives(spec, opts, opts.micro_batch)
        need = f"micro-batch {opts.micro_batch} needs {total / GIB:.1f} GiB per GPU of {mem_gib:.1f} GiB"
        fix = (f"--micro-batch {largest_b} fits (raise gradient accumulation to keep the tokens per step)"
               + (f"; micro-batch {opts.micro_batch} fits with " + _describe(alts, opts.micro_batch) if alts else ""))
    result["alternatives"] = alts
    result["message"] = f"does not fit: {need}; {fix}"
    return result


def _describe(alts: list[dict[str, Any]], micro_batch: int) -> str:
    return ", or ".join(f"{a['flags']} ({a['total_gib']} GiB at micro-batch {micro_batch}, "
                        f"up to {a['max_micro_batch']})" for a in alts)


def print_plan(result: dict[str, Any]) -> None:
    """The plan as a rich table, with the verdict below it."""
    from rich.table import Table

    from ftscale.summary import console as summary_console

    o, g, m = result["options"], result["per_gpu"], result["model"]
    over = f"over {o['gpus_per_node'] * o['nodes']} GPUs"
    prec = o["precision"]
    if o["method"] == "full":
        trained = f"{m['total_params'] / 1e9:.2f}B params"
    else:
        trained = f"{m['trainable_params'] / 1e6:.1f}M adapter params"
    weights_where = over if o["zero"] == 3 else "replicated"
    if o["offload"] == "params":
        weights_where = "on CPU"
    if o["method"] != "full":
        weights_where = f"frozen base{' in NF4' if o['method'] == 'qlora' else ''}, {weights_where}"
    states_where = "on CPU" if o["offload"] else ("replicated" if o["zero"] == 0 else over)
    gradients_where = {0: "fp32, replicated" if prec == "fp32" else f"{prec} + fp32, replicated",
                       1: f"{prec} replicated, fp32 {states_where}", 2: f"{prec} + fp32, {states_where}",
                       3: f"fp32, {states_where}"}[o["zero"]]
    if o["offload"] and o["zero"] >= 2:
        gradients_where = f"fp32, {states_where}"
    ckpt = ", checkpointed" if o["grad_ckpt"] else ""
    rows = [
        ("weights", g["weights_bytes"], f"{prec}, {weights_where}"),
        ("gradients", g["gradients_bytes"], f"{trained}: {gradients_where}"),
        ("optimizer states", g["optimizer_states_bytes"], f"fp32 master + Adam m, v, {states_where}"),
        ("temporary buffers", g["temporary_buffers_bytes"],
         "gathered largest layer / dequantized weight" if g["temporary_buffers_bytes"] else ""),
        ("[bold]model states[/bold]", g["model_states_bytes"], "the rows above"),
        ("activations", g["activations_bytes"],
         f"b={o['micro_batch']}, s={o['seq_len']}{ckpt}: layers {g['activations_layers_bytes'] / GIB:.2f} + "
         f"head/logits/loss {g['activations_other_bytes'] / GIB:.2f} (peak: {g['activations_peak_at']})"),
        ("[bold]total[/bold]", g["total_bytes"], f"of {result['gpu_mem_bytes'] / GIB:.1f} GiB"),
        ("CPU per node", result["cpu_per_node_bytes"], "loading + offloaded states, ×1.5 (as DeepSpeed)"),
    ]
    title = (f"ftscale plan: {m['name']} ({m['total_params'] / 1e9:.2f}B), {o['method']}, ZeRO-{o['zero']}"
             f"{', offload ' + o['offload'] if o['offload'] else ''}, {o['nodes']}×{o['gpus_per_node']} GPUs")
    table = Table(title=title, caption="CUDA context, communication buckets and fragmentation not included")
    table.add_column("per GPU")
    table.add_column("GiB", justify="right")
    table.add_column("what")
    for name, size, what in rows:
        table.add_row(name, f"{size / GIB:.2f}", what)
    console = summary_console()
    console.print(table)
    if result["fits"]:
        console.print(f"[green]fits[/green]: {g['total_bytes'] / GIB:.1f} of {result['gpu_mem_bytes'] / GIB:.1f} GiB "
                      f"per GPU; largest micro-batch that fits: {result['max_micro_batch']}")
    else:
        console.print(result["message"], style="red", highlight=False)


__all__ = ["ModelSpec", "PlanOptions", "activation_bytes", "alternatives", "load_model_config", "max_micro_batch",
           "model_spec", "model_states", "parse_size", "plan", "print_plan"]
