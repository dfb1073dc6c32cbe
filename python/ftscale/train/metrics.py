"""Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak."""

from __future__ import annotations

from typing import Any

# Dense bf16 peak per device in TFLOP/s (vendor datasheets, without sparsity), most specific
# name first: the PCIe and NVL H100s have lower clocks than the SXM part.
KNOWN_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
                     "L40S": 362.0, "A10G": 125.0}


def device_peak_tflops(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in KNOWN_PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_s: float, world_size: int, peak_tflops: float | None,
        device: Any) -> float | None:
    """flops_per_token · tokens/s / (world_size · peak); None when the peak is unknown."""
    peak = peak_tflops if peak_tflops is not None else device_peak_tflops(device)
    if not peak:
        return None
    return flops_per_token * tokens_per_s / (world_size * peak * 1e12)
