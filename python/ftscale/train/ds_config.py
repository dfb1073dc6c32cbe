"""The DeepSpeed config a run uses, derived from the train config (one place, so the memory
planner and the trainer agree on it)."""

from __future__ import annotations

from typing import Any


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """"auto" → bf16 on GPU, fp32 on CPU (CPU bf16 works but is slow without AMX)."""
    if precision == "auto":
        return "bf16" if on_gpu else "fp32"
    return precision


def build_ds_config(*, zero_stage: int, micro_batch_size: int, grad_accum_steps: int, world_size: int,
                    precision: str, offload_optimizer: bool, offload_params: bool) -> dict[str, Any]:
    """DeepSpeed config. Clipping is 0 here: ``GuardedAdamW`` clips (and can skip) itself."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 1:
        zero.update({"overlap_comm": False, "contiguous_gradients": True,
                     "reduce_bucket_size": 50_000_000, "allgather_bucket_size": 50_000_000})
    if zero_stage == 3:
        # One parameter sub-group, so the client optimizer's step() runs once per step and
        # sees the whole partition (GuardedAdamW computes the global grad norm there).
        zero.update({"sub_group_size": 10**12, "stage3_gather_16bit_weights_on_model_save": False})
    offload: dict[str, Any] = {}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        # The step runs on CPU in GuardedAdamW (torch's AdamW, plus the global norm, clipping and
        # the spike guard), not in DeepSpeedCPUAdam, which DeepSpeed otherwise insists on.
        offload["zero_force_ds_cpu_optimizer"] = False
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "gradient_clipping": 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        **offload,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
