"""The evaluation schemas: tasks (a tasks file for `ftscale eval`, or ``eval.tasks`` in a train
config), and the train config's ``eval`` section (tasks, checkpoint selection, forgetting guard).

The items themselves and how they are read live in ``ftscale.eval.tasks``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ftscale.config.base import require
from ftscale.errors import ConfigError
from ftscale.eval.scoring import GEN_METRICS, compile_pattern

GenMetric = Literal["exact_match", "contains", "rouge_l"]


@dataclass(frozen=True)
class TaskConfig:
    """One task. ``template``: how the prompt reaches the model — ``chat`` renders it as a user
    turn through the tokenizer's chat template (with the generation prompt), ``plain`` uses it
    as is; default chat for ``generate``, plain for ``multiple_choice``. ``delimiter`` goes
    between the prompt and each option (default " " for plain, "" for chat)."""

    name: str
    kind: Literal["multiple_choice", "generate", "perplexity"]
    path: str | None = None
    dataset: str | None = None  # perplexity only: a prepared dataset, scored per source of its val split
    prompt_field: str = "prompt"
    choices_field: str = "choices"
    answer_field: str = "answer"
    text_field: str = "text"  # perplexity over a JSONL text file
    template: Literal["plain", "chat"] | None = None
    system_prompt: str | None = None  # chat template only: a system turn before the prompt
    delimiter: str | None = None
    metrics: list[GenMetric] = field(default_factory=lambda: ["exact_match"])
    extract: str | None = None  # regex: its first group (or match) of the generation is what is scored
    ignore_case: bool = False
    ignore_punctuation: bool = False
    stop: list[str] = field(default_factory=list)  # generation ends at the first of these (and at EOS)
    max_new_tokens: int = 64
    distinct_n: list[int] = field(default_factory=lambda: [1, 2])
    max_items: int | None = None  # the first N items of the file
    window_tokens: int = 1024  # perplexity: documents are scored in windows of this many tokens

    def check(self, key: str) -> None:
        require(self, key, "name", bool(self.name) and "/" not in self.name and self.name == self.name.strip(),
                "a plain non-empty name without '/' (it becomes part of metric names)")
        if self.kind == "perplexity":
            if (self.path is None) == (self.dataset is None):
                raise ConfigError(f"{key}: a perplexity task needs exactly one of path (a JSONL text file) and "
                                  "dataset (a prepared dataset)")
        else:
            require(self, key, "path", bool(self.path), f"a JSONL file of items for a {self.kind} task")
            require(self, key, "dataset", self.dataset is None, "unset (only perplexity tasks read a dataset)")
        require(self, key, "metrics", bool(self.metrics), f"a non-empty list of {', '.join(GEN_METRICS)}")
        require(self, key, "max_new_tokens", self.max_new_tokens >= 1, ">= 1")
        require(self, key, "distinct_n", all(n >= 1 for n in self.distinct_n), "a list of n >= 1")
        require(self, key, "max_items", self.max_items is None or self.max_items >= 1, ">= 1")
        require(self, key, "window_tokens", self.window_tokens >= 2, ">= 2")
        require(self, key, "stop", all(self.stop), "a list of non-empty strings")
        compile_pattern(self.extract, f"{key}.extract")

    @property
    def chat(self) -> bool:
        return (self.template or ("chat" if self.kind == "generate" else "plain")) == "chat"

    @property
    def option_delimiter(self) -> str:
        if self.delimiter is not None:
            return self.delimiter
        return "" if self.chat else " "

    def metric_names(self) -> list[str]:
        """The metrics this task reports (without the ``task/<name>/`` prefix). Per-source
        names of a dataset perplexity task are only known from its manifest: not listed."""
        if self.kind == "multiple_choice":
            return ["acc", "acc_norm"]
        if self.kind == "generate":
            return [*dict.fromkeys(self.metrics), *(f"distinct_{n}" for n in dict.fromkeys(self.distinct_n))]
        return ["loss", "ppl"]


@dataclass(frozen=True)
class TasksFile:
    tasks: list[TaskConfig]

    def check(self, key: str) -> None:
        require(self, key, "tasks", bool(self.tasks), "a non-empty list of tasks")
        names = [t.name for t in self.tasks]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ConfigError(f"{key + '.' if key else ''}tasks: the name {dup!r} is used twice; names must be unique")


@dataclass(frozen=True)
class SelectConfig:
    """Which evaluation is best: ``metric`` as logged (``task/acc``, ``task/books/acc``,
    ``val_loss/domain``, ...), higher is better when ``maximize``."""

    metric: str
    maximize: bool = True

    def check(self, key: str) -> None:
        require(self, key, "metric", bool(self.metric), "a logged metric name, e.g. task/acc or val_loss")


@dataclass(frozen=True)
class GuardConfig:
    """The forgetting budget: ``metric`` (a loss unless ``maximize``) may get at most
    ``max_regression`` worse than at the evaluation before training — a fraction of that
    baseline when ``relative`` (0.05: 5 %), else in the metric's own units. An evaluation over
    budget is never selected as best; ``patience`` of them in a row stop the run (0: never)."""

    metric: str
    max_regression: float = 0.05
    relative: bool = True
    maximize: bool = False
    patience: int = 2

    def check(self, key: str) -> None:
        require(self, key, "metric", bool(self.metric), "a logged metric name, e.g. val_loss/general")
        require(self, key, "max_regression", 0 <= self.max_regression < math.inf, "a finite number >= 0")
        require(self, key, "patience", self.patience >= 0, ">= 0 (0: never stop, only exclude from selection)")


@dataclass(frozen=True)
class EvalConfig:
    """The train config's ``eval`` section. ``tasks``: a tasks file or an inline list, run
    every ``eval_every`` steps (and at step 0 with ``eval_on_start``) with the items sharded
    over the ranks; ``batch_size``: items per forward pass."""

    tasks: str | list[TaskConfig] | None = None
    batch_size: int = 16
    select: SelectConfig | None = None
    guard: GuardConfig | None = None

    def check(self, key: str) -> None:
        require(self, key, "batch_size", self.batch_size >= 1, ">= 1")
        if isinstance(self.tasks, list):
            TasksFile(self.tasks).check(key)
        for name in ("select", "guard"):
            part = getattr(self, name)
            if part is not None and part.metric.startswith("task/") and self.tasks is None:
                raise ConfigError(f"{key}.{name}.metric: {part.metric!r} is a task metric, but {key}.tasks is "
                                  "not set")


__all__ = ["EvalConfig", "GenMetric", "GuardConfig", "SelectConfig", "TaskConfig", "TasksFile"]
