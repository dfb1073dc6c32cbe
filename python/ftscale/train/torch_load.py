"""``torch.load`` that cannot run code: every load of the process is ``weights_only``.

Checkpoints live on shared storage, so a checkpoint file may come from anyone who can write
there. A plain ``torch.load`` unpickles arbitrary objects, and unpickling can call any
function. DeepSpeed (``engine.load_checkpoint``, ``zero_to_fp32``) passes
``weights_only=False`` explicitly; torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` overrides that
for every call of the process, so its restricted unpickler (tensors, containers, a few torch
types) reads all of them. The only other objects DeepSpeed 0.19's ZeRO checkpoints hold are
the plain classes in ``DEEPSPEED_CLASSES``, allowed by name: rebuilding them sets attributes
and calls nothing else. A file holding anything more is refused (``refused``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

WEIGHTS_ONLY_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
DEEPSPEED_CLASSES = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


def weights_only_loads() -> None:
    """From now on, every ``torch.load`` of this process is ``weights_only=True``, with the
    DeepSpeed classes its checkpoints need allowed."""
    import importlib

    import torch

    os.environ[WEIGHTS_ONLY_ENV] = "1"
    torch.serialization.add_safe_globals(
        [getattr(importlib.import_module(module), name) for module, name in DEEPSPEED_CLASSES])


def refused(error: BaseException) -> bool:
    """Whether ``error`` is the weights-only unpickler refusing a file's contents."""
    return isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower()


def refusal_message(checkpoint: Path, error: BaseException) -> str:
    """One line for a refused checkpoint file: what was refused and why."""
    detail = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "an object not allowed")
    detail = detail.split(". Please", 1)[0].removeprefix("WeightsUnpickler error: ")  # torch's advice: allowlist it
    return (f"checkpoint {checkpoint} holds pickled objects other than tensors ({detail}); ftscale does not "
            "unpickle them, as loading them could run code. Use checkpoints written by ftscale")
