"""The engine's memory plan and the tokenizer's bounded calls."""

import pytest

from ftscale.data.pipeline import EngineOptions, plan_memory
from ftscale.data.tokenize import _char_bounded
from ftscale.errors import ConfigError


def test_plan_shares_what_the_runtime_leaves_and_refuses_a_budget_it_fills():
    opts = EngineOptions(memory_budget_bytes=1 << 30, workers=2)
    light = plan_memory(opts, input_bytes=1 << 30, key_rows_per_doc=1)
    heavy = plan_memory(opts, input_bytes=1 << 30, key_rows_per_doc=1, runtime_bytes=900 << 20)
    assert heavy.batch_bytes * heavy.workers < light.batch_bytes * light.workers
    with pytest.raises(ConfigError, match="give at least"):
        plan_memory(opts, input_bytes=1 << 30, key_rows_per_doc=1, runtime_bytes=1 << 30)


def test_char_bounded_runs_keep_order_and_bound_every_run_but_a_single_long_text():
    texts = ["a" * n for n in (3, 4, 2, 9, 1, 1)]
    runs = list(_char_bounded(texts, max_chars=6))
    assert [t for run in runs for t in run] == texts
    assert all(sum(map(len, run)) <= 6 or len(run) == 1 for run in runs)
    assert runs == [["aaa"], ["aaaa", "aa"], ["a" * 9], ["a", "a"]]
