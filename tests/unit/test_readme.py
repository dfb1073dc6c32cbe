"""What the README promises a new user, checked without running anything heavy: the demo time
figure is the one `ftscale --help` gives, and the quickstart's commands name real subcommands
and shipped configs (tests/integration/test_quickstart.py runs them)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ftscale.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def subcommands() -> dict[str, str]:
    """``{name: help}`` of every ``ftscale`` subcommand."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return {choice.dest: choice.help for choice in sub._choices_actions}


def test_the_demo_time_is_the_same_in_readme_and_help() -> None:
    (help_minutes,) = re.findall(r"~(\d+) min", subcommands()["demo"])
    (readme_line,) = [line for line in README.splitlines() if line.startswith("make demo ")]
    assert re.findall(r"~(\d+) min", readme_line) == [help_minutes]


def test_the_quickstart_names_real_subcommands_and_shipped_configs() -> None:
    block = README.split("<!-- quickstart:start -->", 1)[1].split("<!-- quickstart:end -->", 1)[0]
    commands = [shlex.split(line.split("  #", 1)[0]) for line in block.splitlines()
                if line.startswith("ftscale ")]
    assert len(commands) >= 4
    known = subcommands()
    for argv in commands:
        assert argv[1] in known, argv
        configs = [a for a in argv[2:] if a.startswith("configs/")]
        assert all((REPO / c).is_file() for c in configs), configs


def test_every_config_the_readme_names_is_shipped() -> None:
    named = set(re.findall(r"configs/([\w.\-]+\.yaml)", README))
    assert named and {n for n in named if not (REPO / "configs" / n).is_file()} == set()
