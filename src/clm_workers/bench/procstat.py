"""CPU accounting from ``/proc`` (Linux): whose CPU a run's wall time went to.

A bench on a shared 2-core machine needs to tell "the strategy was slow" from
"something else ran": the machine's busy CPU over a run, minus the manager's
and its workers' own, is the foreign load.  Off Linux everything reads 0.
"""

from __future__ import annotations

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
    """User + system CPU seconds of a live process; ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


def workers_cpu_seconds(pids: Iterable[int | None]) -> list[float]:
    """The CPU seconds of each worker that is still running."""
    found = (process_cpu_seconds(pid) for pid in pids if pid is not None)
    return [seconds for seconds in found if seconds is not None]
