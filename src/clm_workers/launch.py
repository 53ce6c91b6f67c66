"""Run a worker module with the manager's lifeline: ``python -m clm_workers.launch MODULE [ARG...]``.

Every direct worker is started through this launcher, so that workers which
know nothing of clm-workers (CLM's own) cannot outlive their manager either,
nor can their children.  It starts one daemon thread that blocks reading
the lifeline pipe whose inherited read end is named by ``CLM_LIFELINE_FD``,
then runs ``MODULE`` as ``__main__`` in this very process (``runpy``, as
``python -m`` would): the worker keeps the pid, the process group, the
signals and the exit code the manager gave it, and no extra process exists.

A module that watches a lifeline itself (clm-workers' own runtime) gets one
too: ``CLM_LIFELINE_FD`` names, for it, an inner pipe whose write end only the
launcher holds.

When the manager's lifeline reaches EOF the manager is gone, however it died
(SIGKILL included).  The launcher then

1. kills every descendant of the worker at once: a Jupyter kernel or a JVM
   in a session of its own that nothing else would reach (the manager is
   dead, so there is nothing to be gentle for);
2. closes the inner lifeline, so that a worker that watches one stops as an
   orphan in its own way (clm-workers' runtime: exit code 70);
3. after :data:`ORPHAN_GRACE_SECONDS`, sends SIGTERM to the worker's process
   group, so a worker that knows no lifeline stops the way it stops for its
   manager (a CLM worker deletes its row and exits);
4. after as long again, SIGKILLs the group, itself included.

Steps 1-4 take at most about twice the grace; most workers are gone after
step 2 or 3.  Standard library only until the lifeline closes (every worker
pays for its boot); psutil, a dependency of clm-workers and of CLM, is
imported then to find the descendants.  Without ``CLM_LIFELINE_FD`` the
module simply runs.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

#: The variable naming the inherited read end of the manager's lifeline pipe.
LIFELINE_ENV = "CLM_LIFELINE_FD"
#: How long each step gives a worker to stop by itself once its manager is gone.
ORPHAN_GRACE_SECONDS = 0.5

USAGE = "usage: python -m clm_workers.launch MODULE [ARG...]"


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    module, *args = argv
    fd = os.environ.get(LIFELINE_ENV)
    if fd:
        try:
            lifeline = int(fd)
            os.set_inheritable(lifeline, False)  # the worker's own children need not hold it
        except (ValueError, OSError):
            print(f"clm_workers.launch: {LIFELINE_ENV}={fd!r} is not an open file descriptor", file=sys.stderr)
            raise SystemExit(2) from None
        inner_read, inner_write = os.pipe()
        os.environ[LIFELINE_ENV] = str(inner_read)
        threading.Thread(
            target=_watch, args=(lifeline, inner_write), name="clm-launch-lifeline", daemon=True
        ).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _watch(lifeline: int, inner_write: int) -> None:
    try:
        while os.read(lifeline, 1):
            pass
    except OSError:
        pass
    me, group = os.getpid(), os.getpgrp()
    _kill_descendants(me)
    os.close(inner_write)
    time.sleep(ORPHAN_GRACE_SECONDS)  # a worker that watches its inner lifeline is gone by now
    _kill_descendants(me)
    _signal_group(group, signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_SECONDS)
    _kill_descendants(me)
    _signal_group(group, signal.SIGKILL)
    os._exit(70)  # only reached when the group signal could not be sent


def _has_children() -> bool:
    """Whether this process has a child (``WNOWAIT``: nothing is reaped, the worker's own waits stay intact)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _kill_descendants(pid: int) -> None:
    if not _has_children():  # most workers: no psutil to import, no process table to read
        return
    try:
        import psutil
    except ImportError:  # without psutil the process group is what can be reached
        return
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except OSError:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
