"""The forgetting gate: which evaluation is the best checkpoint, and when a run has forgotten
too much to go on.

At every evaluation the guard metric (``eval.guard``, e.g. the general sources' val loss) is
compared with its value at the first evaluation — the model before training, as the guard
requires ``eval_on_start``. An evaluation over the regression budget is a violation: it is
never selected, and ``patience`` violations in a row stop the run. Among the evaluations of
trained steps (step >= 1) that respect the guard, the one with the best ``eval.select``
metric is the best checkpoint; the trainer saves a checkpoint at that step and records it.

The state is four numbers, saved in every checkpoint, so a resumed run judges as an
uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ftscale.config import GuardConfig, SelectConfig
from ftscale.errors import ConfigError


@dataclass(frozen=True)
class Verdict:
    guard_ok: bool  # True when there is no guard
    regression: float | None  # how much worse than the baseline (fraction when relative); None: no guard
    best: bool  # this evaluation is the new best checkpoint
    stop: bool  # the guard was broken for `patience` evaluations in a row


class Gate:
    def __init__(self, select: SelectConfig | None, guard: GuardConfig | None) -> None:
        self.select = select
        self.guard = guard
        self.baseline: float | None = None
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.violations = 0

    def observe(self, step: int, metrics: dict[str, Any]) -> Verdict:
        """Judge the evaluation of ``step`` (its ``metrics`` as logged)."""
        guard_ok, regression, stop = True, None, False
        if self.guard is not None:
            value = _metric(metrics, self.guard.metric, "eval.guard.metric")
            if self.baseline is None:
                self.baseline = value
            regression = self._regression(value)
            guard_ok = regression <= self.guard.max_regression  # NaN compares False: a violation
            self.violations = 0 if guard_ok else self.violations + 1
            stop = self.guard.patience > 0 and self.violations >= self.guard.patience
        best = False
        if self.select is not None and step >= 1 and guard_ok:
            value = _metric(metrics, self.select.metric, "eval.select.metric")
            if math.isfinite(value) and (self.best_value is None or (
                    value > self.best_value if self.select.maximize else value < self.best_value)):
                self.best_value, self.best_step, best = value, step, True
        return Verdict(guard_ok, regression, best, stop)

    def _regression(self, value: float) -> float:
        assert self.guard is not None and self.baseline is not None
        worse = self.baseline - value if self.guard.maximize else value - self.baseline
        if not self.guard.relative:
            return worse
        if self.baseline == 0:
            return 0.0 if worse <= 0 else math.inf
        return worse / abs(self.baseline)

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "best_value": self.best_value, "best_step": self.best_step,
                "violations": self.violations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline, self.best_value = state["baseline"], state["best_value"]
        self.best_step, self.violations = state["best_step"], int(state["violations"])

    def describe(self) -> dict[str, Any]:
        """What a run records (``ftscale_run.json``): the state plus the metrics it judges."""
        return {**self.state_dict(), "select": self.select.metric if self.select else None,
                "guard": self.guard.metric if self.guard else None}


def _metric(metrics: dict[str, Any], name: str, key: str) -> float:
    if name not in metrics:
        known = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"))
        raise ConfigError(f"{key}: {name!r} is not among the metrics of an evaluation ({known})")
    return float(metrics[name])


__all__ = ["Gate", "Verdict"]
