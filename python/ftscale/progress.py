"""Progress display for long CLI jobs: one line per stage (rich spinner on a terminal,
plain lines otherwise) and the time each stage took."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Stages:
    """Shows each stage while it runs and records its wall time in ``seconds``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = {}
        # Time inside each data step, summed over units of work (so over parallel workers too).
        self.step_seconds: dict[str, float] = {}
        self._console = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        start = time.perf_counter()
        label = f"{name} {detail}".strip()
        if self._console is not None and self._console.is_terminal:
            with self._console.status(f"[bold]{label}[/bold] ..."):
                yield
        else:
            if self._console is not None:
                self._console.print(f"{label} ...", highlight=False)
            yield
        elapsed = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        if self._console is not None:
            self._console.print(f"[green]✓[/green] {label} ({elapsed:.2f} s)", highlight=False)

    def add_step_seconds(self, metas: list[dict]) -> None:
        """Add the per-step seconds the units of a pass recorded in their metas."""
        for meta in metas:
            for name, seconds in meta.get("seconds", {}).items():
                self.step_seconds[name] = self.step_seconds.get(name, 0.0) + float(seconds)

    def print(self, *objects: object) -> None:
        if self._console is not None:
            self._console.print(*objects)
