"""The Ray Data executor: the same step list on a Ray cluster (``RAY_ADDRESS``'s, else a local
one), for corpora one machine cannot hold or process fast enough.

- Units run as ``map_batches`` tasks over a dataset of unit indices, on a pool of actors that
  fetch the step list once (the decontamination index travels inside it, as bytes). Each unit
  spills like the local executor does, into the work directory, which every node must see
  at the same path (shared storage, as for training data and checkpoints).
- A reduce reads the key rows of the units with Ray Data and groups them by partition with
  ``groupby(...).map_groups`` — Ray Data's hash shuffle, spilling through its object store —
  one group per partition, the same partitions the local executor uses.
- Other parallel work (verification chunks, output parts) runs as ``map_batches`` over a
  dataset of task indices. The driver state a reduce reads is put in the object store once.

Results come back to the driver in no particular order; the steps sort what they need, so the
output is byte-identical to the local executor's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from ftscale.data.executors.local import SpillingSink, key_files
from ftscale.data.executors.unit import finished, run_unit
from ftscale.data.job import UnitTask
from ftscale.data.steps.base import KEY_SCHEMA, KIND_LEAK, Step
from ftscale.data.workdir import unit_dir
from ftscale.errors import DataError, FtscaleError

ITEM = "__item"
CACHED_OBJECTS = 4  # objects a worker process keeps from the object store (a reduce uses two)
_CACHE: dict[str, Any] = {}


def _fetch(ref_box: list[Any]) -> Any:
    """The object behind a boxed ObjectRef (boxed so Ray passes the ref, not the object),
    fetched once per worker process."""
    import ray

    key = ref_box[0].hex()
    if key not in _CACHE:
        while len(_CACHE) >= CACHED_OBJECTS:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = ray.get(ref_box[0])
    return _CACHE[key]


class _UnitMapper:
    """A Ray Data actor running units of one pass (the tasks and steps fetched once)."""

    def __init__(self, tasks_box: list[Any], steps_box: list[Any], flush_bytes: int) -> None:
        import ray

        self.tasks: list[UnitTask] = ray.get(tasks_box[0])
        self.steps: list[Step] = ray.get(steps_box[0])
        self.flush_bytes = flush_bytes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for i in batch["i"].tolist():
            task = self.tasks[i]
            run_unit(task, self.steps, SpillingSink(unit_dir(task.work, task.index), task.partitions, self.flush_bytes))
        return {"i": batch["i"]}


def _read_keys(batch: dict[str, np.ndarray]) -> pa.Table:
    """All key rows of the key files named in the batch."""
    tables = []
    for path in batch["path"].tolist():
        try:
            tables.append(pa.ipc.open_file(pa.memory_map(path)).read_all())
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"work file {path} cannot be read ({e}); delete the work directory and re-run") from e
    return pa.concat_tables(tables) if tables else KEY_SCHEMA.empty_table()


def _group(rows: pa.Table, fn: Callable[[pa.Table, Any], pa.Table], shared_box: list[Any]) -> pa.Table:
    return fn(rows.select(KEY_SCHEMA.names).cast(KEY_SCHEMA), _fetch(shared_box))


def _item(batch: dict[str, np.ndarray], fn: Callable[[Any, Any], pa.Table], items_box: list[Any],
          shared_box: list[Any]) -> pa.Table:
    items, shared = _fetch(items_box), _fetch(shared_box)
    out = []
    for k in batch[ITEM].tolist():
        table = fn(items[k], shared)
        out.append(table.append_column(ITEM, pa.array(np.full(table.num_rows, k, np.int64))))
    return pa.concat_tables(out)


class RayExecutor:
    name = "ray"

    def __init__(self, workers: int | None, memory_budget_bytes: int, key_flush_bytes: int) -> None:
        # One INFO line per executed dataset (there are several per band) would bury the job's
        # own progress; Ray Data's warnings and errors still show. Read when ray.data is imported.
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
        import ray

        from ftscale.ray_cluster import init_ray

        init_ray({"TOKENIZERS_PARALLELISM": "false"})
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.workers = int(workers or self.cpus)
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.key_flush_bytes = int(key_flush_bytes)
        self._tasks: list[UnitTask] = []
        self._metas: list[dict[str, Any]] = []
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = False

    def _remote_args(self) -> dict[str, Any]:
        # One Rust thread per task: Ray runs `workers` tasks at once on the cluster's cores.
        return {"num_cpus": 1, "memory": self.memory_budget_bytes,
                "runtime_env": {"env_vars": {"FTSCALE_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}}}

    def map_units(self, tasks: list[UnitTask], steps: list[Step],
                  on_unit: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Run the unfinished units as Ray Data actor tasks; ``on_unit(n)`` as each block of
        ``n`` finished units streams back (finished ones count at once)."""
        import ray

        todo = [i for i, t in enumerate(tasks) if finished(t) is None]
        if on_unit is not None and len(todo) < len(tasks):
            on_unit(len(tasks) - len(todo))
        if todo:
            ds = ray.data.from_items([{"i": i} for i in todo], override_num_blocks=len(todo))
            ds = ds.map_batches(_UnitMapper, batch_size=1, concurrency=min(self.workers, len(todo)),
                                fn_constructor_kwargs={"tasks_box": [ray.put(tasks)], "steps_box": [ray.put(steps)],
                                                       "flush_bytes": self.key_flush_bytes},
                                **self._remote_args())
            self._run(ds, on_rows=on_unit)
        metas = []
        for t in tasks:
            meta = finished(t)
            if meta is None:
                raise DataError(f"unit {t.index} of {t.unit.path} did not finish; re-run to resume")
            metas.append(meta)
        if tasks and tasks[0].pass_name == "read":
            self._tasks, self._metas = tasks, metas
        return metas

    def _run(self, ds: Any, on_rows: Callable[[int], None] | None = None) -> pa.Table:
        """Execute a dataset and return its rows on the driver; a user error raised inside a
        task comes back as itself (one line), not as Ray's wrapped traceback. With ``on_rows``
        the rows are only counted, block by block as they stream back (an empty table)."""
        import ray

        try:
            if on_rows is not None:
                for bundle in ds.iter_internal_ref_bundles():
                    on_rows(bundle.num_rows() or 0)
                return pa.table({})
            refs = ds.to_arrow_refs()
            tables = ray.get(refs)
        except Exception as e:  # Ray wraps task errors in its own exception types
            cause = e
            while cause is not None and not isinstance(cause, FtscaleError):
                cause = cause.__cause__ or getattr(cause, "cause", None)
            if isinstance(cause, FtscaleError):
                raise cause from None
            raise
        tables = [t for t in tables if t.num_rows]
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    def reduce_partitions(self, kind: int, fn: Callable[[pa.Table, Any], pa.Table], shared: Any) -> pa.Table:
        """``fn(rows of one partition, shared)`` per partition of key rows of ``kind``, grouped
        by Ray Data's shuffle; results in no particular order."""
        import ray

        files = [str(p) for p in key_files(self._tasks, self._metas, kind)]
        if not files:
            return pa.table({})
        parts = 1 if kind == KIND_LEAK else self._tasks[0].partitions
        ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
        ds = ds.map_batches(_read_keys, batch_size=1, batch_format="numpy", **self._remote_args())
        ds = ds.groupby("p", num_partitions=min(parts, max(self.workers, 1))).map_groups(
            _group, batch_format="pyarrow", fn_kwargs={"fn": fn, "shared_box": [ray.put(shared)]},
            **self._remote_args())
        return self._run(ds)

    def parallel(self, fn: Callable[[Any, Any], pa.Table], items: list[Any], shared: Any,
                 on_item: Callable[[int], None] | None = None) -> pa.Table:
        """``fn(item, shared)`` for every item as Ray Data tasks; results in item order;
        ``on_item(len(items))`` once they are all back."""
        import ray

        if not items:
            return pa.table({})
        box = [ray.put(items)]
        ds = ray.data.from_items([{ITEM: k} for k in range(len(items))], override_num_blocks=len(items))
        ds = ds.map_batches(_item, batch_size=1, batch_format="numpy",
                            fn_kwargs={"fn": fn, "items_box": box, "shared_box": [ray.put(shared)]},
                            **self._remote_args())
        out = self._run(ds)
        if on_item is not None:
            on_item(len(items))
        if out.num_rows == 0:
            return out
        order = np.argsort(out.column(ITEM).to_numpy(), kind="stable")
        return out.take(pa.array(order)).drop_columns([ITEM])

    def close(self) -> None:
        pass
