"""Progress display: the driver's training bar (rate, ETA), the workers' step pace, and prep's
bars over units of work (advanced once per unit by the local executor)."""

from __future__ import annotations

import io
import json
import queue
import re
import time
from contextlib import contextmanager

from rich.console import Console

from ftscale.progress import Stages, StepClock, TrainProgress, format_duration


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=160, color_system=None), out


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 5.4, 65, 3725)] == ["0:00", "0:05", "1:05", "1:02:05"]


def test_step_clock_pace_and_eta() -> None:
    clock = StepClock(start_step=10, last_step=20)
    assert clock.describe(10) == ""
    clock.started -= 4.0  # four seconds for the first two steps of this session
    pace = clock.seconds_per_step(12)
    assert 2.0 <= pace < 2.5
    m = re.fullmatch(r"(\d+\.\d\d) s/step, ETA 0:(\d\d)", clock.describe(12))
    assert m and 16 <= int(m.group(2)) <= 20  # 8 steps left at ~2 s each


def test_train_progress_follows_the_queue_to_the_last_step() -> None:
    console, out = terminal()
    messages: queue.Queue = queue.Queue()
    with TrainProgress(console).follow(messages):
        for step in range(1, 11):
            messages.put({"step": step, "total": 10, "loss": 5.0 - step / 10, "tokens_per_s": 1234.0})
        deadline = time.time() + 10
        while not messages.empty() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(3 * TrainProgress.POLL_S)
    text = out.getvalue()
    assert "10/10" in text and "loss 4.0000" in text and "1,234 tok/s" in text and "ETA" in text


def test_prep_read_and_tokenize_bars_advance_once_per_unit(tmp_path) -> None:
    from ftscale.config import PrepConfig, build
    from ftscale.data.prep import run_prep
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<eos>": 0, "<unk>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>").save_pretrained(tmp_path / "tok")
    for i in range(3):  # three JSONL files: three units of work
        (tmp_path / f"part{i}.jsonl").write_text("".join(json.dumps({"text": f"a b {i} {j}"}) + "\n" for j in range(5)))
    cfg = build(PrepConfig, {"output": str(tmp_path / "out"), "seq_len": 16, "tokenizer": {"path": str(tmp_path / "tok")},
                             "sources": [{"name": "s", "paths": [str(tmp_path / "part*.jsonl")]}]})

    class Counting(Stages):
        advanced: dict[str, int] = {}
        totals: dict[str, int | None] = {}

        @contextmanager
        def stage(self, name, detail="", total=None):
            self.totals[name] = total
            with super().stage(name, detail, total) as advance:
                def counted(n: int = 1) -> None:
                    self.advanced[name] = self.advanced.get(name, 0) + n
                    advance(n)
                yield counted

    stages = Counting(enabled=True)
    console, out = terminal()
    stages._console = console
    run_prep(cfg, stages)
    assert stages.totals["read"] == stages.totals["tokenize"] == 3
    assert stages.advanced == {"read": 3, "tokenize": 3}
    assert "3/3" in out.getvalue()
