"""Packing and mixture planners through the Python API (property tests across the boundary)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ftscale
from ftscale.pack import MixtureSource, apply_overlong


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 64), min_size=0, max_size=300), seq_len=st.integers(64, 256),
       strategy=st.sampled_from(["bfd", "ffd", "greedy"]))
def test_every_document_placed_once_and_rows_fit(lengths, seq_len, strategy):
    plan = ftscale.pack(lengths, seq_len, strategy)
    rows = plan.rows()
    placed = np.concatenate(rows) if rows else np.zeros(0, int)
    assert sorted(placed.tolist()) == list(range(len(lengths)))
    for r, docs in enumerate(rows):
        assert sum(lengths[d] for d in docs) == plan.bin_tokens[r] <= seq_len
        assert all(plan.bin_of[d] == r for d in docs)
    if lengths:
        assert plan.efficiency == pytest.approx(sum(lengths) / (plan.num_bins * seq_len))
        # No plan can use fewer rows than the token lower bound.
        assert plan.num_bins >= -(-sum(lengths) // seq_len)


def test_bfd_fill_on_lognormal_lengths():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.5, 0.8, 200_000), 1, 4096).astype(np.uint32)
    assert 320 < lengths.mean() < 350
    bfd = ftscale.pack(lengths, 4096, "bfd")
    greedy = ftscale.pack(lengths, 4096, "greedy")
    assert bfd.efficiency >= 0.999
    assert greedy.efficiency < bfd.efficiency
    again = ftscale.pack(lengths, 4096, "bfd")
    np.testing.assert_array_equal(bfd.bin_of, again.bin_of)


def test_overlong_policies_count_tokens():
    pieces = apply_overlong([10, 25, 5], 10, "split")
    assert pieces.length.tolist() == [10, 10, 10, 5, 5]
    assert pieces.doc.tolist() == [0, 1, 1, 1, 2] and pieces.start.tolist() == [0, 0, 10, 20, 0]
    trunc = apply_overlong([10, 25, 5], 10, "truncate")
    assert trunc.length.tolist() == [10, 10, 5] and trunc.stats["tokens_dropped"] == 15
    drop = apply_overlong([10, 25, 5], 10, "drop")
    assert drop.doc.tolist() == [0, 2] and drop.stats["docs_dropped"] == 1


def test_mixture_proportions_within_one_percent():
    rng = np.random.default_rng(1)
    domain = MixtureSource("domain", rng.integers(50, 800, 20_000), weight=1.0)
    general = MixtureSource("general", rng.integers(10, 3000, 20_000), weight=5.0)
    plan = ftscale.plan_mixture([domain, general], 10_000_000, seed=3)
    lengths = [domain.lengths, general.lengths]
    tokens = np.zeros(2)
    for s, d in zip(plan.pick_source, plan.pick_doc):
        tokens[s] += lengths[s][d]
    share = tokens / tokens.sum()
    assert abs(share[0] - 1 / 6) < 0.01 and abs(share[1] - 5 / 6) < 0.01
    assert plan.total_tokens == tokens.sum()
    same = ftscale.plan_mixture([domain, general], 10_000_000, seed=3)
    np.testing.assert_array_equal(plan.pick_doc, same.pick_doc)
    other_epoch = ftscale.plan_mixture([domain, general], 10_000_000, seed=3, epoch=1)
    assert not np.array_equal(plan.pick_doc[:100], other_epoch.pick_doc[:100])


def test_bad_arguments():
    with pytest.raises(ftscale.ConfigError, match="strategy"):
        ftscale.pack([1, 2], 8, "best")
    with pytest.raises(ftscale.ConfigError):
        ftscale.pack([9], 8)  # longer than a row: apply an overlong policy first
    with pytest.raises(ftscale.ConfigError):
        ftscale.plan_mixture([MixtureSource("a", np.array([5]), 1.0)], 1000, max_repeat=2.0)
