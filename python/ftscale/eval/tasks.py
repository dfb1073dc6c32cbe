"""Evaluation tasks: their config (a tasks YAML file, or ``eval.tasks`` in a train config) and
their items, read from local JSONL files.

A tasks file::

    tasks:
      - name: books                 # metrics are logged as task/books/acc, task/books/acc_norm
        kind: multiple_choice
        path: books.jsonl           # {"prompt": ..., "choices": [...], "answer": 2 or "John"}
        template: chat
      - name: continue
        kind: generate
        path: continue.jsonl        # {"prompt": ..., "answer": "..." or ["...", ...]}
        metrics: [rouge_l]
        stop: ["\\n"]
      - name: general
        kind: perplexity
        dataset: out/prepared       # per source of its val split; or path: texts.jsonl

Relative paths are relative to the tasks file (to the launch directory for inline tasks).
Every item is validated when it is read; a bad line is a DataError naming file, line and field.
Items are held in memory (on every training rank), so a file is read with bounded lines
(the readers' record cap) and at most ``MAX_ITEMS`` items unless ``max_items`` says how many.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftscale.config.base import build, load_yaml
from ftscale.config.eval import TaskConfig, TasksFile
from ftscale.errors import ConfigError, DataError, InputError

def load_tasks(source: str | Path | list[TaskConfig], key: str = "eval") -> list[TaskConfig]:
    """Tasks from a YAML file (paths made absolute against its directory) or an inline list
    (paths absolute against the current directory)."""
    import dataclasses

    if isinstance(source, list):
        tasks, base = TasksFile(source), Path.cwd()
        tasks.check(key)
    else:
        path = Path(source)
        tasks, base = build(TasksFile, load_yaml(path)), path.resolve().parent
    out = []
    for t in tasks.tasks:
        changes = {k: str((base / v).resolve()) for k in ("path", "dataset")
                   if (v := getattr(t, k)) is not None and not v.startswith("pkg:")}
        out.append(dataclasses.replace(t, **changes))
    return out


# ---------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class ChoiceItem:
    prompt: str
    choices: list[str]
    answer: int  # index into choices


@dataclass(frozen=True)
class GenItem:
    prompt: str
    references: list[str]


@dataclass(frozen=True)
class TextItem:
    text: str


Item = ChoiceItem | GenItem | TextItem
MAX_ITEMS = 100_000  # without max_items; benchmark test sets hold a few thousand (MMLU: 14,042)


def _records(path: str, limit: int | None) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line; at most ``limit`` records."""
    import zlib

    import zstandard

    from ftscale.data.io.jsonl import LongLine, iter_lines, open_binary
    from ftscale.data.io.validate import DEFAULT_MAX_RECORD_BYTES as item_max_bytes
    from ftscale.paths import resolve_path

    p = resolve_path(path)
    if not p.is_file():
        raise InputError(f"task items: {path} not found (a JSONL file, one item per line)")
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        with open_binary(p) as stream:
            for lineno, (line, _) in enumerate(iter_lines(stream, item_max_bytes), 1):
                if line is None:
                    continue
                if isinstance(line, LongLine):
                    raise DataError(f"{path}:{lineno}: an item of {line.size_bytes} bytes; items are held in "
                                    f"memory, at most {item_max_bytes} bytes each")
                try:
                    record = json.loads(line.decode("utf-8"))
                except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
                    raise DataError(f"{path}:{lineno}: not a JSON object in UTF-8 ({e})") from e
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                if limit is None and len(out) == MAX_ITEMS:
                    raise DataError(f"{path}: more than {MAX_ITEMS:,} items; set the task's max_items to read the "
                                    "first N (items are held in memory on every rank)")
                out.append((lineno, record))
                if limit is not None and len(out) == limit:
                    break
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
        raise InputError(f"task items: cannot read {path}: {e}") from e
    if not out:
        raise DataError(f"{path}: no items (the file has no JSON lines)")
    return out


def _text(record: dict[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def _choice_item(task: TaskConfig, record: dict[str, Any], where: str) -> ChoiceItem:
    choices = record.get(task.choices_field)
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)):
        raise DataError(f"{where}: field {task.choices_field!r} must be a list of at least two non-empty strings")
    answer = record.get(task.answer_field)
    if isinstance(answer, str) and answer in choices:
        index = choices.index(answer)
    elif isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        index = answer
    else:
        raise DataError(f"{where}: field {task.answer_field!r} must be an option's index (0..{len(choices) - 1}) "
                        f"or one of the options' text, got {answer!r}")
    return ChoiceItem(_text(record, task.prompt_field, where), choices, index)


def _gen_item(task: TaskConfig, record: dict[str, Any], where: str) -> GenItem:
    answer = record.get(task.answer_field)
    refs = [answer] if isinstance(answer, str) else answer
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise DataError(f"{where}: field {task.answer_field!r} must be a string or a non-empty list of strings "
                        f"(the reference answers), got {answer!r}")
    return GenItem(_text(record, task.prompt_field, where), refs)


def load_items(task: TaskConfig) -> list[Item]:
    """The items of a JSONL task (all kinds but dataset perplexity), validated, in file order."""
    if task.path is None:
        raise ConfigError(f"task {task.name}: reads a prepared dataset, not items")
    make = {"multiple_choice": _choice_item, "generate": _gen_item,
            "perplexity": lambda t, r, w: TextItem(_text(r, t.text_field, w))}[task.kind]
    return [make(task, record, f"{task.path}:{lineno}") for lineno, record in _records(task.path, task.max_items)]


def metric_names(tasks: list[TaskConfig]) -> set[str]:
    """Every metric name an evaluation of ``tasks`` logs (``task/<task>/<metric>`` and the
    ``task/<metric>`` means over tasks), per-source perplexities of datasets included."""
    from ftscale.data.format import read_manifest

    names: set[str] = set()
    for t in tasks:
        metrics = t.metric_names()
        if t.dataset is not None:
            sources = [n for n, e in read_manifest(t.dataset).sources.items() if e.val]
            metrics = metrics + [f"{s}/{m}" for s in sources for m in ("loss", "ppl")]
        names.update(f"task/{t.name}/{m}" for m in metrics)
        names.update(f"task/{m}" for m in metrics if "/" not in m)
    return names


def shard(items: list[Any], rank: int, world_size: int) -> list[tuple[int, Any]]:
    """``(index, item)`` of the items rank ``rank`` of ``world_size`` evaluates: every
    ``world_size``-th from ``rank`` on, so shards differ in size by at most one item."""
    return [(i, items[i]) for i in range(rank, len(items), world_size)]


__all__ = ["ChoiceItem", "GenItem", "Item", "TaskConfig", "TasksFile", "TextItem", "load_items", "load_tasks",
           "metric_names", "shard"]
