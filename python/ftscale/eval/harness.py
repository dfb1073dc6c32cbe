"""Optional bridge to lm-evaluation-harness: run its tasks through its Python API on the model
``ftscale eval`` already loaded. Only local task files (``--harness-include DIR``, lm-eval
YAMLs whose data are local, e.g. ``dataset_path: json`` with ``data_files``); the built-in
task index is not loaded and the Hugging Face hub is switched off for the run.
"""

from __future__ import annotations

import os
from typing import Any

from ftscale.errors import ConfigError

HARNESS_PREFIX = "harness/"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def harness_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def run_harness(model: Any, tokenizer: Any, task_names: list[str], include_dir: str,
                batch_size: int) -> dict[str, float]:
    """``{"harness/<task>/<metric>": value}`` of lm-eval's ``simple_evaluate`` on ``model``
    (its HF backend, ``HFLM``, wrapping the loaded model); standard errors are left out."""
    if not harness_available():
        raise ConfigError("--harness needs lm-evaluation-harness: pip install 'ftscale[harness]'")
    if not os.path.isdir(include_dir):
        raise ConfigError(f"--harness-include: {include_dir} is not a directory of lm-eval task YAML files")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    saved = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    try:
        manager = TaskManager(include_path=include_dir, include_defaults=False)
        unknown = [t for t in task_names if t not in manager.all_tasks]
        if unknown:
            raise ConfigError(f"--harness: no task {unknown[0]!r} in {include_dir} (found: "
                              f"{', '.join(sorted(manager.all_tasks)) or 'none'})")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = simple_evaluate(model=lm, tasks=list(task_names), task_manager=manager, log_samples=False,
                              bootstrap_iters=0)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    metrics: dict[str, float] = {}
    for task, values in (out or {}).get("results", {}).items():
        for key, value in values.items():
            name, _, filt = key.partition(",")
            if "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            suffix = "" if filt in ("", "none") else f"/{filt}"
            metrics[f"{HARNESS_PREFIX}{task}/{name}{suffix}"] = float(value)
    return metrics


__all__ = ["HARNESS_PREFIX", "harness_available", "run_harness"]
