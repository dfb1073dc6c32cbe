"""Run a command and measure its wall time and the peak memory of its whole process tree.

Peak RSS of a multi-process tool (datatrove's worker pool, Ray, a tokenizer's threads) is not
the peak of one process: ``run_measured`` samples the sum of RSS over the process and all its
descendants every ``interval_s`` (psutil), which is what the machine must hold. Shared pages
(libraries, copy-on-write memory of forked workers) count once per process in that sum, so it
over-states a forking tool; the sum of PSS (each shared page split among its sharers), sampled
less often because reading smaps costs more, is reported beside it, and so is the largest single
process seen. The kernel's figure, ``ru_maxrss`` from ``wait4`` (the largest single process
among the child and its reaped descendants), is a cross-check with one caveat: Linux keeps a
process's high-water mark across ``exec``, and the child starts as a (v)fork of the caller, so
it is never below the caller's RSS at launch. The caller's own high-water mark is reset first
(``/proc/self/clear_refs``), so that floor is the caller's current RSS, reported beside it.
"""


from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

PSS_EVERY = 10  # PSS on every 10th sample (~0.5 s at the default interval)


def tree_sample(pid: int, *, pss: bool = False) -> dict:
    """One look at ``pid`` and its descendants: rss and pss (sums, bytes; pss 0 unless asked),
    largest (one process's RSS), processes, and cpu: {(pid, start time): user + system seconds}."""
    import psutil

    out = {"rss": 0, "pss": 0, "largest": 0, "processes": 0, "cpu": {}}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            info = p.memory_full_info() if pss else p.memory_info()
            times = p.cpu_times()
            out["cpu"][(p.pid, p.create_time())] = times.user + times.system
        except psutil.Error:  # exited between listing and reading, or not ours
            continue
        out["pss"] += info.pss if pss else 0
        out["rss"] += info.rss
        out["largest"] = max(out["largest"], info.rss)
        out["processes"] += 1
    return out


def _reset_own_peak() -> int:
    """Reset this process's RSS high-water mark to its current RSS (Linux); returns that RSS."""
    import psutil

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not permitted: the kernel figure keeps the older peak
        pass
    return psutil.Process().memory_info().rss


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: str | Path | None = None,
                 log_path: Path | None = None, stdout_path: Path | None = None,
                 timeout_s: float | None = None, interval_s: float = 0.05) -> dict:
    """Run ``cmd`` (stderr to ``log_path`` or discarded; stdout there too, or to ``stdout_path``)
    and return its figures:
    rc, wall_s, peak_tree_rss_bytes, peak_tree_pss_bytes, peak_process_rss_bytes (sampled),
    kernel_maxrss_bytes (ru_maxrss), max_processes, cpu_s (user + system seconds: the larger of
    the kernel's figure for the child and its reaped descendants, and the sum of the last sampled
    CPU time of every process seen: a process that is never reaped by its parent, such as a
    multiprocessing forkserver's workers, is missing from the first, and the last < interval_s
    of each process from the second), samples, timed_out. On timeout the whole process group
    is killed."""
    err = open(log_path, "wb") if log_path else subprocess.DEVNULL
    out = open(stdout_path, "wb") if stdout_path else err
    try:
        caller_rss = _reset_own_peak()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        peak = {"rss": 0, "pss": 0, "one": 0, "procs": 0, "samples": 0}
        cpu_seen: dict = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                with_pss = peak["samples"] % PSS_EVERY == 0
                now = tree_sample(proc.pid, pss=with_pss)
                peak["rss"] = max(peak["rss"], now["rss"])
                peak["pss"] = max(peak["pss"], now["pss"])
                peak["one"] = max(peak["one"], now["largest"])
                peak["procs"] = max(peak["procs"], now["processes"])
                cpu_seen.update(now["cpu"])
                peak["samples"] += 1
                stop.wait(interval_s)

        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timer = threading.Timer(timeout_s, kill) if timeout_s else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if timer:
            timer.cancel()
        stop.set()
        sampler.join()
    finally:
        for f in {id(err): err, id(out): out}.values():
            if hasattr(f, "close"):
                f.close()
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "peak_tree_rss_bytes": peak["rss"],
        "peak_tree_pss_bytes": peak["pss"],
        "peak_process_rss_bytes": peak["one"],
        "kernel_maxrss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "caller_rss_at_launch_bytes": caller_rss,
        "max_processes": peak["procs"],
        "cpu_s": max(usage.ru_utime + usage.ru_stime, sum(cpu_seen.values())),
        "cpu_s_kernel": usage.ru_utime + usage.ru_stime,
        "cpu_s_sampled": sum(cpu_seen.values()),
        "samples": peak["samples"],
        "timed_out": timed_out.is_set(),
    }
