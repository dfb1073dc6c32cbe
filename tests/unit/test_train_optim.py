"""Spike guard, learning-rate schedule and the guarded optimizer (no Ray, no DeepSpeed)."""

from __future__ import annotations

import math

import pytest
import torch

from ftscale.train.optim import lr_lambda, make_optimizer
from ftscale.train.spike import SpikeGuard


def test_spike_guard_flags_outliers_and_asks_for_rollback():
    guard = SpikeGuard(window=20, z_threshold=6.0, min_history=5, max_spikes=2)
    for step in range(20):
        assert not guard.check(step, 2.0 + 0.01 * (step % 3), 1.0 + 0.01 * (step % 2)).spike
    loss_spike = guard.check(20, 9.0, 1.0)
    assert loss_spike.spike and loss_spike.reason.startswith("loss") and not loss_spike.rollback
    assert guard.check(21, 2.01, 1.0).spike is False  # the spike did not widen the band
    norm_spike = guard.check(22, 2.0, 50.0)
    assert norm_spike.spike and norm_spike.reason.startswith("grad_norm") and norm_spike.rollback
    assert guard.check(23, float("nan"), 1.0).spike


def test_spike_guard_needs_history_and_state_round_trips():
    guard = SpikeGuard(window=10, z_threshold=3.0, min_history=4, max_spikes=3)
    assert not guard.check(0, 100.0, 1.0).spike  # too little history to judge
    for step in range(1, 6):
        guard.check(step, 1.0, 1.0)
    copy = SpikeGuard(window=10, z_threshold=3.0, min_history=4, max_spikes=3)
    copy.load_state_dict(guard.state_dict())
    assert copy.check(6, 500.0, 1.0).spike == guard.check(6, 500.0, 1.0).spike is True


def test_warmup_then_cosine_to_min_lr():
    f = lr_lambda(warmup_steps=10, total_steps=110, lr=1e-3, min_lr=1e-4)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) - 1e-12 for s in range(10, 120))


def test_guarded_adamw_clips_and_skips():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.ones(4))
    verdicts = []
    skip = {"now": False}
    opt = make_optimizer([p], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, clip_norm=1.0,
                         partitioned=False, judge=lambda norm: verdicts.append(norm) or skip["now"])
    p.grad = torch.full((4,), 3.0)
    opt.step()
    assert verdicts[-1] == pytest.approx(6.0) and opt.last_grad_norm == pytest.approx(6.0)
    assert torch.allclose(p.grad.norm(), torch.tensor(1.0), atol=1e-5)  # clipped before the update
    moved = p.detach().clone()
    assert not torch.equal(moved, torch.ones(4))
    state = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    skip["now"] = True
    p.grad = torch.full((4,), 100.0)
    opt.step()
    assert torch.equal(p.detach(), moved) and opt.last_skipped
    assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())  # moments untouched
    assert math.isclose(verdicts[-1], 200.0)


def test_a_skipped_step_does_not_advance_the_schedule():
    from ftscale.train.optim import make_scheduler

    p = torch.nn.Parameter(torch.ones(2))
    skip = {"now": False}
    opt = make_optimizer([p], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, clip_norm=0.0,
                         partitioned=False, judge=lambda norm: skip["now"])
    sched = make_scheduler(opt, warmup_steps=4, total_steps=20, lr=1e-2, min_lr=1e-3)
    lrs = []
    for step in range(6):
        skip["now"] = step in (1, 2)
        p.grad = torch.ones(2)
        opt.step()
        sched.step()  # what DeepSpeed does after every step that did not overflow
        lrs.append(sched.get_last_lr()[0])
    # warmup counts applied steps: 2 skips leave it two steps behind
    assert lrs == pytest.approx([5e-3, 5e-3, 5e-3, 7.5e-3, 1e-2, lr_lambda(4, 20, 1e-2, 1e-3)(4) * 1e-2])
    assert sched.state_dict()["last_epoch"] == 4
