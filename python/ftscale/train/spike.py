"""Loss-spike guard: flags a step whose loss or gradient norm is far above its recent history.

A value is a spike when it exceeds mean + z·std of the last ``window`` accepted steps (at
least ``min_history`` of them). Spiking steps are not added to the history, so one spike
does not widen the band for the next. ``spikes_in_window`` counts recent spikes; the trainer
rolls back to its last checkpoint when it reaches ``max_spikes``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass
class Verdict:
    spike: bool
    reason: str  # "" or "loss z=8.1" / "grad_norm z=12.0"
    rollback: bool


class SpikeGuard:
    def __init__(self, window: int, z_threshold: float, min_history: int, max_spikes: int, enabled: bool = True):
        self.window = window
        self.z_threshold = z_threshold
        self.min_history = min_history
        self.max_spikes = max_spikes
        self.enabled = enabled
        self.losses: deque[float] = deque(maxlen=window)
        self.norms: deque[float] = deque(maxlen=window)
        self.recent_spikes: deque[int] = deque()

    def _z(self, history: deque[float], value: float) -> float:
        if len(history) < self.min_history:
            return 0.0
        mean = sum(history) / len(history)
        var = sum((h - mean) ** 2 for h in history) / len(history)
        # A floor on the spread: a perfectly flat history must not flag noise as a spike.
        std = max(math.sqrt(var), 1e-3 * abs(mean), 1e-8)
        return (value - mean) / std

    def check(self, step: int, loss: float, grad_norm: float) -> Verdict:
        """Judge one step (loss and pre-clip global grad norm); updates the history."""
        if not self.enabled:
            return Verdict(False, "", False)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            reason = "non-finite loss or grad norm"
        else:
            zl, zg = self._z(self.losses, loss), self._z(self.norms, grad_norm)
            reason = ""
            if zl > self.z_threshold:
                reason = f"loss z={zl:.1f}"
            elif zg > self.z_threshold:
                reason = f"grad_norm z={zg:.1f}"
        if not reason:
            self.losses.append(loss)
            self.norms.append(grad_norm)
            return Verdict(False, "", False)
        self.recent_spikes.append(step)
        while self.recent_spikes and self.recent_spikes[0] <= step - self.window:
            self.recent_spikes.popleft()
        rollback = len(self.recent_spikes) >= self.max_spikes
        if rollback:
            self.recent_spikes.clear()
        return Verdict(True, reason, rollback)

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "norms": list(self.norms), "recent_spikes": list(self.recent_spikes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque(state["losses"], maxlen=self.window)
        self.norms = deque(state["norms"], maxlen=self.window)
        self.recent_spikes = deque(state["recent_spikes"])
