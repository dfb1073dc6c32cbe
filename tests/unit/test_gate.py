"""The forgetting gate (ftscale.train.gate) and the train config's eval section."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ftscale.config import GuardConfig, SelectConfig, TrainConfig, build
from ftscale.errors import ConfigError
from ftscale.train.gate import Gate

REPO = Path(__file__).resolve().parents[2]


def evals(gate: Gate, rows: list[tuple[int, float, float]]) -> list:
    return [gate.observe(step, {"step": step, "task/acc": acc, "val_loss/general": loss}) for step, acc, loss in rows]


def test_best_is_the_top_score_among_evaluations_within_the_budget():
    gate = Gate(SelectConfig("task/acc"), GuardConfig("val_loss/general", max_regression=0.05, patience=0))
    verdicts = evals(gate, [(0, 0.9, 2.00),   # baseline: step 0 is never selected
                            (10, 0.5, 2.05),  # +2.5 %: within budget, best so far
                            (20, 0.7, 2.20),  # +10 %: the best score, but over budget
                            (30, 0.6, 2.09)])  # +4.5 %: within budget, beats 0.5
    assert [v.best for v in verdicts] == [False, True, False, True]
    assert [v.guard_ok for v in verdicts] == [True, True, False, True]
    assert verdicts[2].regression == pytest.approx(0.10)
    assert gate.best_step == 30 and gate.best_value == 0.6
    assert not any(v.stop for v in verdicts)  # patience 0: never stops


def test_patience_counts_violations_in_a_row():
    gate = Gate(None, GuardConfig("val_loss/general", max_regression=0.05, patience=2))
    verdicts = evals(gate, [(0, 0, 2.0), (1, 0, 2.2), (2, 0, 2.0), (3, 0, 2.2), (4, 0, 2.3)])
    assert [v.stop for v in verdicts] == [False, False, False, False, True]


def test_absolute_and_maximized_guards():
    gate = Gate(None, GuardConfig("task/acc", max_regression=0.1, relative=False, maximize=True))
    verdicts = evals(gate, [(0, 0.8, 0), (1, 0.75, 0), (2, 0.65, 0)])
    assert [v.guard_ok for v in verdicts] == [True, True, False]
    assert verdicts[2].regression == pytest.approx(0.15)


def test_minimized_selection_and_state_round_trip():
    gate = Gate(SelectConfig("val_loss/general", maximize=False), None)
    evals(gate, [(0, 0, 3.0), (5, 0, 2.5), (10, 0, 2.7)])
    resumed = Gate(SelectConfig("val_loss/general", maximize=False), None)
    resumed.load_state_dict(copy.deepcopy(gate.state_dict()))
    assert resumed.best_step == 5
    assert evals(resumed, [(15, 0, 2.4)])[0].best and resumed.best_step == 15


def test_nan_never_wins_and_breaks_the_guard():
    gate = Gate(SelectConfig("task/acc"), GuardConfig("val_loss/general", patience=1))
    verdicts = evals(gate, [(0, 0.1, 2.0), (1, float("nan"), 2.0), (2, 0.2, float("nan"))])
    assert [v.best for v in verdicts] == [False, False, False]
    assert verdicts[2].stop


def test_unknown_metric_is_a_config_error():
    gate = Gate(SelectConfig("task/acc"), None)
    with pytest.raises(ConfigError, match="eval.select.metric: 'task/acc' is not among"):
        gate.observe(1, {"step": 1, "val_loss": 2.0})


def tiny_config(**eval_section) -> dict:
    data = yaml.safe_load((REPO / "configs" / "train_tiny_cpu.yaml").read_text())
    data["eval"] = eval_section
    return data


def test_eval_section_errors_name_the_key():
    with pytest.raises(ConfigError, match="eval.guard: .*set eval_on_start: true"):
        build(TrainConfig, tiny_config(guard={"metric": "val_loss"}))
    with pytest.raises(ConfigError, match="eval.select.metric: 'task/acc' is a task metric, but eval.tasks"):
        build(TrainConfig, tiny_config(select={"metric": "task/acc"}))
    with pytest.raises(ConfigError, match="eval.guard.max_regresion: unknown key; did you mean 'max_regression'"):
        build(TrainConfig, {**tiny_config(guard={"metric": "val_loss", "max_regresion": 0.1}), "eval_on_start": True})
    with pytest.raises(ConfigError, match=r"eval.tasks.0.kind: 'mc' is not allowed"):
        build(TrainConfig, tiny_config(tasks=[{"name": "x", "kind": "mc", "path": "x.jsonl"}]))
    cfg = build(TrainConfig, {**tiny_config(guard={"metric": "val_loss/general", "max_regression": 0.1}),
                              "eval_on_start": True})
    assert cfg.eval.guard.max_regression == 0.1 and cfg.eval.guard.patience == 2
