"""Every random generator a rank uses, saved as plain JSON (no pickle) and restored exactly.

Python's ``random`` (625 32-bit words), NumPy's legacy global MT19937 (624 words and its
Gaussian cache), torch's CPU generator and, on GPU, each CUDA generator (bytes, base64).
A state read back from a checkpoint is checked before use: a malformed one is an InputError.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np

from ftscale.errors import InputError


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators from ``seed``."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _bytes(tensor: Any) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def rng_state(on_gpu: bool) -> dict[str, Any]:
    """The generators' states as JSON-compatible data."""
    import torch

    version, words, gauss = random.getstate()
    algorithm, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "words": list(words), "gauss_next": gauss},
        "numpy": {"algorithm": algorithm, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": _bytes(torch.get_rng_state()),
        "cuda": [_bytes(s) for s in torch.cuda.get_rng_state_all()] if on_gpu else None,
    }


def _tensor(text: Any) -> Any:
    import torch

    raw = base64.b64decode(text.encode("ascii"), validate=True)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def set_rng_state(state: Any, on_gpu: bool, where: str) -> None:
    """Restore ``rng_state``'s output; InputError naming ``where`` when it is malformed."""
    import torch

    try:
        py, npy = state["python"], state["numpy"]
        words = tuple(int(w) for w in py["words"])
        gauss = None if py["gauss_next"] is None else float(py["gauss_next"])
        keys = np.asarray(npy["keys"], dtype=np.int64)
        if len(words) != 625 or keys.shape != (624,) or keys.min() < 0 or keys.max() >= 2**32:
            raise ValueError("wrong number of generator words")
        numpy_state = (str(npy["algorithm"]), keys.astype(np.uint32), int(npy["pos"]), int(npy["has_gauss"]),
                       float(npy["cached_gaussian"]))
        cpu = _tensor(state["torch"])
        cuda = [_tensor(s) for s in state["cuda"]] if on_gpu and state.get("cuda") is not None else None
        random.setstate((int(py["version"]), words, gauss))
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise InputError(f"{where}: the random generator state is malformed ({e}); the checkpoint is damaged") from e
