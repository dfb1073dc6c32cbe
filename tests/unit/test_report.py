"""`ftscale report` of a training run: metrics.jsonl with a step-0 eval, a resume that replays
steps, a spike-skipped step and a rollback, as `ftscale.train.recipe.Recipe` writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftscale.cli import main
from ftscale.errors import InputError
from ftscale.report import load_run_metrics, render, render_run, summarize_run
from ftscale.train.runs import commit, write_rank_files

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SOURCES = ("bible", "web&<code>")  # the second needs HTML escaping


def train_record(step: int, loss: float, **extra: object) -> dict:
    return {"time": 1000.0 + step, "step": step, "loss": loss, "lr": 1e-3 * min(1.0, step / 2),
            "grad_norm": 1.5 / step, "tokens_per_s": 2000.0, "loss_tokens": 900.0, "padding_fraction": 0.1,
            "step_time_s": 0.5, "epoch": 0, **extra}


def eval_record(step: int, bible: float, web: float) -> dict:
    out = {"val_loss": (bible + web) / 2}
    for name, value in zip(SOURCES, (bible, web)):
        out[f"val_loss/{name}"] = value
        out[f"val_ppl/{name}"] = 2.718281828 ** value
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Steps 0 (eval only) .. 10. The first attempt crashes after step 5 and resumes from the
    step-3 checkpoint (steps 4, 5 logged twice); step 8 spikes and rolls back to the step-6
    checkpoint (steps 7, 8 logged twice); the last line is torn by a crash."""
    lines = [{"time": 999.0, "step": 0, **eval_record(0, 5.25, 4.75)}]
    lines += [train_record(s, 6.0 - 0.1 * s) for s in (1, 2)]
    lines.append(train_record(3, 5.7, **eval_record(3, 5.0, 4.5)))
    lines += [train_record(s, 9.0) for s in (4, 5)]  # the crashed attempt: superseded
    lines += [train_record(s, 6.0 - 0.1 * s) for s in (4, 5)]
    lines.append(train_record(6, 5.4, **eval_record(6, 4.8, 4.3)))
    lines += [train_record(7, 5.3), train_record(8, 40.0, skipped="loss z=9.0")]
    lines.append({"time": 1010.0, "step": 6, "rollback": {"at_step": 6, "epoch": 0, "from_row": 48,
                                                          "rows_skipped": 16}})
    lines += [train_record(7, 5.3), train_record(8, 5.25, skipped="grad_norm z=7.0")]
    lines += [train_record(9, 5.1), train_record(10, 5.0, mfu=0.25, **eval_record(10, 4.5, 4.0))]
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"time": 1020.0, "step": 11, "lo'
    (run / "metrics.jsonl").write_text(text)
    checkpoint = run / "checkpoint_0000010"
    checkpoint.mkdir()
    config = {"run_name": "tiny", "method": "lora", "zero_stage": 3, "seq_len": 128, "num_workers": 2,
              "max_steps": 10, "micro_batch_size": 2, "data": {"path": "/data/x", "mixture": {"bible": 1.0}},
              "optim": {"lr": 1e-3}}
    (checkpoint / "ftscale_run.json").write_text(json.dumps({"config": config, "step": 10}))
    write_rank_files(checkpoint, 0)  # a complete checkpoint: listed and committed, as the trainer does
    commit(checkpoint, 1, 10)
    return run


def test_load_run_metrics_keeps_the_final_timeline(run_dir: Path) -> None:
    m = load_run_metrics(run_dir)
    assert [r["step"] for r in m.records] == list(range(11))
    assert m.records[4]["loss"] == pytest.approx(5.6)  # the resumed attempt, not the crashed one
    assert m.records[8]["skipped"] == "grad_norm z=7.0"  # the replay after the rollback
    assert m.superseded == 2 + 2  # steps 4, 5 (resume) and 7, 8 (rollback)
    assert m.unreadable_lines == 1
    assert m.rollbacks == [{"at_step": 6, "epoch": 0, "from_row": 48, "rows_skipped": 16}]
    assert m.val_sources == list(SOURCES)

    s = summarize_run(m)
    assert s["last_step"] == 10 and s["train_steps"] == 10
    assert s["final_loss"] == pytest.approx(5.0) and s["best_loss"] == pytest.approx(5.0)
    assert s["skipped_steps"] == [(8, "grad_norm z=7.0")]
    assert s["rollbacks"] == 1
    assert s["val_by_source"]["bible"] == {"first_step": 0, "first": 5.25, "last_step": 10, "last": 4.5}
    assert s["best_val_loss_step"] == 10
    assert s["tokens_trained"] == pytest.approx(10 * 2000.0 * 0.5)
    assert s["mean_tokens_per_s"] == pytest.approx(2000.0)
    assert s["mean_mfu"] == pytest.approx(0.25)


def test_a_rollback_replayed_by_a_resume_counts_once(tmp_path: Path) -> None:
    rollback = {"step": 2, "rollback": {"at_step": 2, "epoch": 0, "from_row": 8, "rows_skipped": 4}}
    lines = [train_record(1, 3.0), train_record(2, 2.9), train_record(3, 30.0, skipped="loss z=9.0"), rollback,
             train_record(3, 30.0, skipped="loss z=9.0"), rollback, train_record(3, 2.8)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    m = load_run_metrics(tmp_path)
    assert [r["step"] for r in m.records] == [1, 2, 3] and m.records[-1]["loss"] == 2.8
    assert len(m.rollbacks) == 1 and m.superseded == 2


def test_render_run_writes_plots_and_a_self_contained_page(run_dir: Path, tmp_path: Path) -> None:
    index = render_run(run_dir)
    assert index == run_dir / "report" / "index.html"
    for name in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss_by_source"):
        data = (index.parent / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    page = index.read_text(encoding="utf-8")
    assert "<script" not in page and "http" not in page
    assert "bible" in page and "web&amp;&lt;code&gt;" in page and "web&<code>" not in page
    for before, after in ((5.25, 4.5), (4.75, 4.0)):  # per-source val loss, step 0 → step 10
        assert f"{before:.4f}" in page and f"{after:.4f}" in page
    assert "first (step 0)" in page and "last (step 10)" in page
    assert "10 of 10" in page  # steps of max_steps, from the checkpoint's config
    assert "step 8 (grad_norm z=7.0)" in page and "to step 6, 16 rows skipped" in page
    assert "2.00k tokens/s" in page and "25.0 %" in page  # mean throughput, mean MFU
    for key, value in (("method", "lora"), ("zero_stage", "3"), ("seq_len", "128"), ("num_workers", "2")):
        assert f"<td>{key}</td><td>{value}</td>" in page

    assert render_run(run_dir, tmp_path / "elsewhere") == tmp_path / "elsewhere" / "index.html"


def test_report_cli_detects_a_run_and_explains_a_wrong_directory(run_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "index.html")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="metrics.jsonl.*manifest.json"):
        render(empty)
    with pytest.raises(InputError, match="metrics.jsonl not found"):
        render_run(empty)
    assert main(["report", str(empty)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
