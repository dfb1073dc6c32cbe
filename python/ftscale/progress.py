"""Progress display for long CLI jobs: one line per stage (a rich spinner, or a bar over units
of work, on a terminal; plain lines otherwise) and the time each stage took; the pace and ETA
of training steps (``StepClock``) and the driver's training bar (``TrainProgress``)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator


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
    def stage(self, name: str, detail: str = "", total: int | None = None) -> Iterator[Callable[[int], None]]:
        """Run a stage; yields ``advance(n=1)``, which moves its bar by ``n`` of ``total``
        units of work (thread-safe; a no-op without ``total`` or off a terminal)."""
        start = time.perf_counter()
        label = f"{name} {detail}".strip()
        if self._console is not None and self._console.is_terminal and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            with Progress(TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("ETA"), TimeRemainingColumn(), console=self._console, transient=True) as bar:
                task = bar.add_task(name, total=total)
                yield lambda n=1: bar.advance(task, n)
        elif self._console is not None and self._console.is_terminal:
            with self._console.status(f"[bold]{label}[/bold] ..."):
                yield _ignore
        else:
            if self._console is not None:
                self._console.print(f"{label} ...", highlight=False)
            yield _ignore
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


def _ignore(n: int = 1) -> None:
    """``advance`` of a stage without a bar."""


def format_duration(seconds: float) -> str:
    """``1:02:03``, ``2:03`` or ``0:05``: hours only when there are any."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StepClock:
    """Pace and time left of a training loop that runs from ``start_step`` to ``last_step``,
    from the wall time of the steps done so far (evaluations and checkpoints included, as the
    remaining steps will have them too)."""

    def __init__(self, start_step: int, last_step: int) -> None:
        self.start_step = start_step
        self.last_step = last_step
        self.started = time.perf_counter()

    def seconds_per_step(self, step: int) -> float | None:
        done = step - self.start_step
        return (time.perf_counter() - self.started) / done if done > 0 else None

    def describe(self, step: int) -> str:
        """``"1.25 s/step, ETA 0:42"`` after ``step``; empty before the first step."""
        pace = self.seconds_per_step(step)
        if pace is None:
            return ""
        return f"{pace:.2f} s/step, ETA {format_duration(pace * max(0, self.last_step - step))}"


class TrainProgress:
    """``ftscale train``'s bar on the driver's terminal: steps of the schedule, loss, tokens/s,
    steps/s, elapsed time and ETA (rich). Rank 0 feeds it through a queue (a Ray actor queue
    in a run; anything with ``get(timeout=...)`` raising ``queue.Empty``) of
    ``{"step", "total", "loss", "tokens_per_s"}`` messages."""

    POLL_S = 0.2

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextmanager
    def follow(self, messages: Any) -> Iterator[None]:
        """Show the bar while the block runs, updated from ``messages`` by a thread."""
        import queue
        import threading

        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        progress = Progress(TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(),
                            TaskProgressColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False)
        task = progress.add_task("train", total=None, detail="starting workers")
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    m = messages.get(timeout=self.POLL_S)
                except queue.Empty:
                    continue
                except Exception:  # the queue's actor went away with the cluster: stop showing
                    return
                detail = f"loss {m['loss']:.4f}  {m['tokens_per_s']:,.0f} tok/s"
                progress.update(task, completed=m["step"], total=m["total"], detail=detail)

        with progress:
            thread = threading.Thread(target=drain, name="ftscale-train-progress", daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()
