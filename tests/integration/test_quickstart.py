"""The README's SFT quickstart, executed verbatim: every command of its block, in order, from a
fresh directory holding the repository's configs and bundled data, with the installed
`ftscale` (subprocesses, a fresh local Ray cluster). The paths must line up: prep writes what
train reads, and report and export read what train wrote."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- quickstart:start -->", 1)[1].split("<!-- quickstart:end -->", 1)[0]
    lines = block.strip().removeprefix("```bash").removesuffix("```").strip().splitlines()
    return [line.split("  #", 1)[0].strip() for line in lines if line.strip()]


def test_readme_quickstart_runs_verbatim(tmp_path):
    commands = quickstart_commands()
    assert [c.split()[1] for c in commands] == ["prep", "validate", "train", "report", "export"]
    for name in ("configs", "python"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "ftscale"
        proc = subprocess.run([sys.executable, "-m", "ftscale.cli", *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        assert "warning" not in proc.stderr or argv[1] != "validate", proc.stderr

    manifest = json.loads((tmp_path / "out" / "sft" / "manifest.json").read_text())
    assert list(manifest["sources"]) == ["chat"] and manifest["sources"]["chat"]["kind"] == "sft"
    run = tmp_path / "runs" / "sft-tiny"
    assert (run / "checkpoint_0000010" / "ftscale_run.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 2 and val[1] < val[0], val  # before the first step and after the last
    assert (run / "report" / "index.html").is_file()
    model = tmp_path / "out" / "sft-tiny-model"
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
    assert not (model / "adapter_config.json").exists()  # LoRA merged
