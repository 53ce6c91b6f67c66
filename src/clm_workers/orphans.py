"""The processes a worker started, read from Linux's ``/proc``, and how to end them all at once.

Standard library only, and cheap: the launcher (:mod:`clm_workers.launch`)
and the worker runtime (:mod:`clm_workers.worker`) call it when their
manager is gone, in every worker of the pool at the same moment, on cores
that are busy already; importing psutil there cost each of them tens of
milliseconds of CPU.  (The manager side uses :mod:`clm_workers.proctree`.)
"""

from __future__ import annotations

import os

# The C half of ``signal`` (ints instead of enums): ``import signal`` imports ``enum``.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal


def _table() -> tuple[dict[int, list[int]], dict[int, int]]:
    """``{parent pid: [child pids]}`` and ``{pid: process group}`` of every process we can see."""
    children: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return children, groups
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            pid, ppid, pgrp = int(name), int(fields[1]), int(fields[2])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(pid)
        groups[pid] = pgrp
    return children, groups


def kill_tree(pid: int, *, group: bool = True) -> int:
    """SIGKILL every descendant of ``pid`` and, with ``group``, the rest of the process group
    ``pid`` leads (if it leads one: never a group it merely belongs to, such as a shell's).

    ``pid`` itself is spared, so that its exit code can still say why it ended.
    Returns how many processes were signalled.
    """
    children, groups = _table()
    doomed: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in doomed:
                doomed.add(child)
                stack.append(child)
    if group and groups.get(pid) == pid:
        doomed.update(p for p, g in groups.items() if g == pid)
    doomed.discard(pid)
    signalled = 0
    for victim in doomed:
        try:
            os.kill(victim, _signal.SIGKILL)
        except OSError:
            continue
        signalled += 1
    return signalled
