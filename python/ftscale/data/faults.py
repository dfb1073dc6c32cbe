"""Crash injection, for the tests that prove a killed job resumes to the same bytes.

``FTSCALE_CRASH_AT=<point>`` kills the process with SIGKILL (as a pre-empted machine or
``ray job stop`` would: no cleanup, no flushing) when the job reaches ``<point>``:

- ``unit:<n>``: the first pass has finished its n-th unit (counted in this process);
- ``reduce:<step>``: the global step ``<step>`` (e.g. ``near dedup``) starts its reduce;
- ``band:<k>``: near dedup has united the edges of its first k bands (mid-reduce);
- ``write`` (dedup) / ``write shards`` (prep): the outputs are about to be written.

Unset (always, outside tests) it costs one dictionary lookup per point.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "FTSCALE_CRASH_AT"
_lock = threading.Lock()
_units_done = 0


def crash_at(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def unit_finished() -> None:
    global _units_done
    if os.environ.get(ENV, "").startswith("unit:"):
        with _lock:
            _units_done += 1
            done = _units_done
        crash_at(f"unit:{done}")
