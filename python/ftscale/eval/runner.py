"""Running tasks on a model: a shard of each task's items in batches → per-item records →
task metrics.

``TaskSuite`` holds the tasks and all their items (every rank reads the same small files, so
shards and batch counts are known without communication). ``run_shard`` evaluates the items
of one shard (every ``world_size``-th item from ``rank``) and returns picklable records;
``aggregate`` turns the records of all shards into metrics. Metrics are means over items
(sums over tokens for perplexity), so they do not depend on how items were sharded or batched.

Per item a rank holds its record: the option log-likelihoods, the generated text and its
scores, or a window's summed NLL and token count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ftscale.errors import ConfigError
from ftscale.eval.group import Group, Solo
from ftscale.eval.scoring import choice_accuracy, compile_pattern, distinct_n, score_generation
from ftscale.eval.tasks import ChoiceItem, GenItem, Item, TaskConfig, TextItem, load_items, shard

TASK_PREFIX = "task/"


@dataclass
class TaskSuite:
    """Tasks with their items. ``batch_size``: items per forward pass (multiple choice: the
    contexts of ``batch_size`` items, then all their options; generation: prompts; perplexity:
    windows, or packed rows of a prepared dataset)."""

    tasks: list[TaskConfig]
    batch_size: int = 16
    items: dict[str, list[Item]] = field(default_factory=dict)
    patterns: dict[str, re.Pattern[str] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size: must be >= 1, got {self.batch_size}")
        for t in self.tasks:
            if t.dataset is None:
                self.items[t.name] = load_items(t)
            self.patterns[t.name] = compile_pattern(t.extract, f"task {t.name}.extract")

    def run_shard(self, model: Any, tokenizer: Any, *, device: Any, rank: int = 0, world_size: int = 1,
                  group: Group | None = None) -> dict[str, list[dict[str, Any]]]:
        """Records of this shard's items, per task. ``group``: the ranks sharing ``model``'s
        parameters (their passes are kept in lockstep); the model is left in eval mode."""
        import torch

        group = group or Solo()
        model.eval()
        out: dict[str, list[dict[str, Any]]] = {}
        with torch.no_grad():
            for task in self.tasks:
                if task.dataset is not None:
                    from ftscale.eval.perplexity import dataset_records

                    out[task.name] = dataset_records(model, task, device=device, rank=rank, world_size=world_size,
                                                     batch_size=self.batch_size)
                else:
                    out[task.name] = self._item_records(model, tokenizer, task, device, rank, world_size, group)
        return out

    def _item_records(self, model: Any, tokenizer: Any, task: TaskConfig, device: Any, rank: int, world_size: int,
                      group: Group) -> list[dict[str, Any]]:
        from ftscale.eval import lm

        mine = shard(self.items[task.name], rank, world_size)
        work = _prepare(task, mine, tokenizer, model)
        if task.kind == "multiple_choice":  # similar lengths together: less padding
            work.sort(key=lambda w: -(len(w[1].context) + max(len(o) for o in w[1].options)))
        elif task.kind == "perplexity":
            work.sort(key=lambda w: -len(w[1]))
        batches = [work[i:i + self.batch_size] for i in range(0, len(work), self.batch_size)]
        total_items = len(self.items[task.name])
        # every rank's shard size is known: the same number of batches everywhere without asking
        most = _ceil_div(_ceil_div(total_items, world_size), self.batch_size)
        if task.kind == "perplexity":  # windows per document vary: agree on the count
            most = group.max_int(len(batches))
        pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        records: list[dict[str, Any]] = []
        for b in range(most):
            if b >= len(batches):
                lm.dummy_passes(model, tokenizer, task.kind, device=device, synced=group.synced)
                continue
            batch = batches[b]
            if task.kind == "multiple_choice":
                logliks = lm.choice_logliks(model, [w[1] for w in batch], pad_id=pad_id, device=device)
                records += [{"index": i, "logliks": ll} for (i, _), ll in zip(batch, logliks)]
            elif task.kind == "generate":
                texts = lm.generate(model, tokenizer, [w[1] for w in batch], max_new_tokens=task.max_new_tokens,
                                    stop=task.stop, device=device, synced=group.synced)
                for (i, _), text in zip(batch, texts):
                    item = self.items[task.name][i]
                    assert isinstance(item, GenItem)
                    scores = score_generation(text, item.references, task.metrics, pattern=self.patterns[task.name],
                                              ignore_case=task.ignore_case, ignore_punctuation=task.ignore_punctuation)
                    records.append({"index": i, "output": text, "scores": scores})
            else:
                nll = lm.window_nll(model, [w[1] for w in batch], pad_id=pad_id, device=device)
                records += [{"index": i, "nll": v, "tokens": len(w) - 1} for (i, w), v in zip(batch, nll)]
        return records

    def aggregate(self, records: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` from the records of every shard (``"items"`` counts the
        items scored; ``"tokens"`` the tokens of a perplexity task)."""
        out: dict[str, dict[str, float]] = {}
        for task in self.tasks:
            recs = sorted(records.get(task.name, []), key=lambda r: (r.get("source", ""), r["index"]))
            if task.kind == "multiple_choice":
                items = [self.items[task.name][r["index"]] for r in recs]
                choices = [it.choices for it in items if isinstance(it, ChoiceItem)]
                answers = [it.answer for it in items if isinstance(it, ChoiceItem)]
                metrics = choice_accuracy([r["logliks"] for r in recs], choices, answers)
                out[task.name] = {**metrics, "items": float(len(recs))}
            elif task.kind == "generate":
                metrics = {m: _mean([r["scores"][m] for r in recs]) for m in dict.fromkeys(task.metrics)}
                for n in dict.fromkeys(task.distinct_n):
                    metrics[f"distinct_{n}"] = distinct_n([r["output"] for r in recs], n)
                out[task.name] = {**metrics, "items": float(len(recs))}
            else:
                out[task.name] = _perplexity(recs)
        return out


def _prepare(task: TaskConfig, mine: list[tuple[int, Item]], tokenizer: Any, model: Any) -> list[tuple[int, Any]]:
    """``(index, model input)`` of each item: a ChoiceRequest, a templated prompt, or windows
    (one entry per window, so a long document spreads over batches)."""
    from ftscale.eval import lm

    max_len = _context_tokens(model)
    if task.kind == "multiple_choice":
        return [(i, lm.choice_request(tokenizer, render_prompt(tokenizer, task, it.prompt) + task.option_delimiter,
                                      it.choices, max_len)) for i, it in mine if isinstance(it, ChoiceItem)]
    if task.kind == "generate":
        return [(i, render_prompt(tokenizer, task, it.prompt)) for i, it in mine if isinstance(it, GenItem)]
    prefix = int(tokenizer.eos_token_id)
    window = min(task.window_tokens, max_len - 1)
    return [(i, w) for i, it in mine if isinstance(it, TextItem)
            for w in lm.text_windows(tokenizer, it.text, window, prefix)]


def render_prompt(tokenizer: Any, task: TaskConfig, prompt: str) -> str:
    """The prompt as the model sees it: a user turn through the chat template (and the
    assistant's generation prompt), or the text itself."""
    if not task.chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"task {task.name}: template chat, but the tokenizer has no chat template; "
                          "set template: plain")
    messages = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def _context_tokens(model: Any) -> int:
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None) if config is not None else None
    return int(value) if value else 2048


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _perplexity(records: list[dict[str, Any]]) -> dict[str, float]:
    """Token-weighted loss (nats/token) and perplexity, overall and per source."""
    def pair(nll: float, tokens: float) -> tuple[float, float]:
        loss = nll / tokens if tokens else float("nan")
        return loss, math.exp(min(loss, 50.0)) if tokens else float("nan")

    out: dict[str, float] = {}
    sources = sorted({r["source"] for r in records if "source" in r})
    for s in sources:
        mine = [r for r in records if r.get("source") == s]
        out[f"{s}/loss"], out[f"{s}/ppl"] = pair(sum(r["nll"] for r in mine), sum(r["tokens"] for r in mine))
    total_nll, total_tokens = sum(r["nll"] for r in records), sum(r["tokens"] for r in records)
    out["loss"], out["ppl"] = pair(total_nll, total_tokens)
    out["tokens"] = float(total_tokens)
    if not sources:  # a text file: its documents (a document spans several window records)
        out["items"] = float(len({r["index"] for r in records}))
    return out


def flatten(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Metric names as logged: ``task/<task>/<metric>`` for every metric but the counts, and
    ``task/<metric>`` for the unweighted mean of a metric over the tasks that report it."""
    out: dict[str, float] = {}
    by_metric: dict[str, list[float]] = {}
    for name, metrics in results.items():
        for metric, value in metrics.items():
            if metric in ("items", "tokens"):
                continue
            out[f"{TASK_PREFIX}{name}/{metric}"] = value
            if "/" not in metric:
                by_metric.setdefault(metric, []).append(value)
    for metric, values in by_metric.items():
        out[f"{TASK_PREFIX}{metric}"] = sum(values) / len(values)
    return out


def merge_records(shards: list[dict[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """The records of several shards, per task."""
    out: dict[str, list[dict[str, Any]]] = {}
    for part in shards:
        for name, recs in part.items():
            out.setdefault(name, []).extend(recs)
    return out


__all__ = ["TASK_PREFIX", "TaskSuite", "flatten", "merge_records", "render_prompt"]
