"""CPU accounting from ``/proc`` (Linux): whose CPU a run's wall time went to.

A bench on a shared 2-core machine needs to tell "the strategy was slow" from
"something else ran": the machine's busy CPU over a run, minus the manager's
and its workers' own, is the foreign load.  Off Linux everything reads 0.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal ...
    values = [int(v) for v in fields[1:9]]
    busy = values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
    return busy / _TICK


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a live process, every thread's; ``None`` when it is gone.

    A running thread's ``schedstat`` counts its run time in nanoseconds; the
    user + system times of ``stat`` come in clock ticks (10 ms), too coarse
    for a forked worker's 10-20 ms.  They are used only for what ``schedstat``
    no longer shows: the threads that ended (the process's ticks less its
    running threads' ticks).
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        total_ticks = _ticks(f"/proc/{pid}/stat")
    except (OSError, ValueError, IndexError):
        return None
    running = []
    for task in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
            running.append((_schedstat_ns(f"/proc/{pid}/task/{task}/schedstat"),
                            _ticks(f"/proc/{pid}/task/{task}/stat")))
    ended_ticks = max(0, total_ticks - sum(ticks for _, ticks in running))
    return sum(ns for ns, _ in running) / 1e9 + ended_ticks / _TICK


def _schedstat_ns(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def _ticks(path: str) -> int:
    """User + system clock ticks of a ``stat`` file (a process's or one thread's)."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def workers_cpu_seconds(pids: Iterable[int | None]) -> list[float]:
    """The CPU seconds of each worker that is still running."""
    found = (process_cpu_seconds(pid) for pid in pids if pid is not None)
    return [seconds for seconds in found if seconds is not None]
