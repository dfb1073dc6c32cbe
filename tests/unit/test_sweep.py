"""Sweep axes and trial draws (ftscale.sweep), without Ray."""

from __future__ import annotations

import math

import pytest

from ftscale.errors import ConfigError
from ftscale.sweep import draw_trials, parse_axes


def test_axes_ranges_and_fixed_overrides():
    fixed, axes, ranges = parse_axes(["optim.lr=1e-5,2e-5,5e-5", "seed=0,1", "max_steps=10",
                                      "data.mixture={a: 1, b: 2}", "optim.warmup_steps=loguniform:1:100"])
    assert fixed == ["max_steps=10", "data.mixture={a: 1, b: 2}"]
    assert axes == {"optim.lr": [1e-5, 2e-5, 5e-5], "seed": [0, 1]}  # 1e-5 is a number, not YAML 1.1's string
    assert ranges == {"optim.warmup_steps": ("loguniform", 1.0, 100.0)}
    for bad, match in (("optim.lr", "expected KEY=VALUE"), ("x=uniform:2:1", "LOW < HIGH"),
                       ("x=loguniform:0:1", "LOW > 0"), ("x=uniform:a:b", "two numbers")):
        with pytest.raises(ConfigError, match=match):
            parse_axes([bad])


def test_grid_and_seeded_samples():
    grid = draw_trials({"optim.lr": [1e-5, 2e-5], "seed": [0, 1, 2]}, {}, None, 0)
    assert len(grid) == 6 and grid[0] == {"optim.lr": 1e-5, "seed": 0} and grid[-1] == {"optim.lr": 2e-5, "seed": 2}
    assert draw_trials({}, {}, None, 0) == [{}]
    ranges = {"optim.lr": ("loguniform", 1e-5, 1e-3)}
    drawn = draw_trials({"seed": [0, 1]}, ranges, 5, seed=7)
    assert drawn == draw_trials({"seed": [0, 1]}, ranges, 5, seed=7) != draw_trials({"seed": [0, 1]}, ranges, 5, 8)
    assert len(drawn) == 5 and all(1e-5 <= t["optim.lr"] <= 1e-3 and t["seed"] in (0, 1) for t in drawn)
    assert len({round(math.log10(t["optim.lr"]), 6) for t in drawn}) == 5
    with pytest.raises(ConfigError, match="give --samples N"):
        draw_trials({}, ranges, None, 0)
