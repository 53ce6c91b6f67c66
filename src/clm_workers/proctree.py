"""A worker's process tree, through psutil: its members, their CPU time, signals.

A CLM notebook worker runs its Jupyter kernel in a session of its own, and a
PlantUML worker its JVM: signalling the worker's process group misses them.
The tree is found by parent pid, which only works while the worker lives:
once it dies its children are reparented and nothing links them to it any
more.  So a :class:`ProcessTree` remembers every descendant it has seen
(each :meth:`refresh` adds the current ones), and signals whatever of them
still runs.

psutil identifies a process by pid *and* start time, and refuses to signal a
pid that now belongs to another process: a remembered member that exited is
never confused with a stranger that got its pid.

Blocking and thread-safe (one lock per tree); nothing here is async.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterable

import psutil

__all__ = ["ProcessTree", "refresh_trees"]

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


class ProcessTree:
    """The processes of one worker: the worker itself and every descendant seen."""

    def __init__(self, pid: int) -> None:
        """Raises :class:`psutil.NoSuchProcess` when ``pid`` is already gone."""
        self.root = psutil.Process(pid)
        self._members: dict[tuple[int, float], psutil.Process] = {}
        self._lock = threading.Lock()
        self._add(self.root)

    def refresh(self) -> None:
        """Remember the current descendants (a no-op once the worker is gone).

        Reads the whole process table: to refresh many trees, use
        :func:`refresh_trees`, which reads it once for all of them.
        """
        refresh_trees([self])

    def members(self) -> list[psutil.Process]:
        """Every remembered process that still runs (zombies count as gone).

        What was remembered at the last :meth:`refresh`: callers refresh
        first where descendants may have appeared since.
        """
        with self._lock:
            candidates = list(self._members.values())
        return [p for p in candidates if _running(p)]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the running members, and of children the worker reaped.

        Grows while any process of the tree computes; flat while all of them
        sleep, wait or are stopped.
        """
        total = 0.0
        for process in self.members():
            with contextlib.suppress(*_GONE):
                times = process.cpu_times()
                total += times.user + times.system
                if process == self.root:
                    total += times.children_user + times.children_system
        return total

    def stopped(self) -> bool:
        """Whether the worker itself is stopped (SIGSTOP, a debugger, a frozen container)."""
        try:
            return self.root.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
        except _GONE:
            return False

    def run_queue_wait(self) -> float:
        """Seconds the tree's busiest waiter was ready to run but waited for a CPU.

        Linux's scheduler statistics (``/proc/PID/schedstat`` of each member's
        main thread, which psutil does not expose): on a machine with more
        booting workers than cores, this is the part of a boot's wall time
        that is the machine's, not the worker's.  The largest member's wait,
        not their sum: the members wait side by side (a container's worker
        and its init).  0.0 where the kernel does not say.
        """
        self.refresh()
        return max((_run_queue_wait(p.pid) for p in self.members()), default=0.0)

    def signal(self, sig: signal.Signals, *, include_root: bool = True) -> int:
        """Send ``sig`` to every member that still runs; returns how many were signalled."""
        sent = 0
        for process in self.members():
            if process == self.root and not include_root:
                continue
            with contextlib.suppress(*_GONE):
                process.send_signal(sig)
                sent += 1
        return sent

    def wait_gone(self, timeout: float) -> list[psutil.Process]:
        """Wait up to ``timeout`` seconds for every member to end; returns the survivors."""
        _, alive = psutil.wait_procs(self.members(), timeout=timeout)
        return [p for p in alive if _running(p)]

    def _add(self, process: psutil.Process) -> None:
        with contextlib.suppress(*_GONE):
            self._members.setdefault((process.pid, process.create_time()), process)


def refresh_trees(trees: Iterable[ProcessTree]) -> None:
    """:meth:`ProcessTree.refresh` for many trees, reading the process table once."""
    live = [t for t in trees if _running(t.root)]
    if not live:
        return
    children: dict[int, list[psutil.Process]] = {}
    for process in psutil.process_iter(["ppid"]):
        ppid = process.info["ppid"]
        if ppid:
            children.setdefault(ppid, []).append(process)
    for tree in live:
        found: list[psutil.Process] = []
        stack = [tree.root.pid]
        while stack:
            for child in children.get(stack.pop(), ()):
                found.append(child)
                stack.append(child.pid)
        with tree._lock:
            for child in found:
                tree._add(child)


def _run_queue_wait(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False
