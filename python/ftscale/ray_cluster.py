"""Starting or joining the Ray cluster, for training and for the Ray Data executor.

Local by default (``ray.init(address="local")``); with ``RAY_ADDRESS`` set — as inside
``ray job submit`` — it joins that cluster, so the same command works in both places.
"""

from __future__ import annotations

import os


def init_ray(env_vars: dict[str, str] | None = None) -> None:
    """Connect this process to Ray once (a second call is a no-op)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address or "local", ignore_reinit_error=True, log_to_driver=True,
             runtime_env={"env_vars": dict(env_vars or {})})
    if not address:
        # Ray Train's helper processes look up "the" local cluster; with several clusters on
        # one machine (tests, a second job) they must be told which one is ours.
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
