"""Run a worker module with the manager's lifeline: ``python -m clm_workers.launch MODULE [ARG...]``.

Every direct worker is started through this launcher, so that workers which
know nothing of clm-workers (CLM's own) cannot outlive their manager either.
It starts one daemon thread that blocks reading the lifeline pipe whose
inherited read end is named by ``CLM_LIFELINE_FD``, then runs ``MODULE`` as
``__main__`` in this very process (``runpy``, as ``python -m`` would): the
worker keeps the pid, the process group, the signals and the exit code the
manager started, and no extra process exists.

When the lifeline reaches EOF the manager is gone, however it died (SIGKILL
included).  The thread then

1. kills every descendant at once (a Jupyter kernel or JVM in a session of
   its own that nothing else would reach; the manager is dead, so there is
   nothing left to be gentle for),
2. sends SIGTERM to the worker's process group, so the worker stops the way
   it stops for its manager (a CLM worker deletes its row; clm-workers' own
   runtime reads the same EOF and stops as an orphan, exit code 70),
3. SIGKILLs the group, itself included, if the worker is still there after
   :data:`ORPHAN_GRACE_SECONDS`.

Standard library only until the lifeline closes (boot time is paid by every
worker); psutil, a dependency of clm-workers and of CLM, is imported then to
find the descendants.  Without ``CLM_LIFELINE_FD`` the module simply runs.
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
#: How long a worker may take to stop by itself once its manager is gone.
ORPHAN_GRACE_SECONDS = 1.0

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
        threading.Thread(target=_watch, args=(lifeline,), name="clm-launch-lifeline", daemon=True).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _watch(fd: int) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    _stop_orphaned_tree()


def _stop_orphaned_tree() -> None:
    me = os.getpid()
    _kill_descendants(me)
    group = os.getpgrp()
    _signal_group(group, signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_SECONDS)  # the worker's own stop usually ends the process first
    _kill_descendants(me)
    _signal_group(group, signal.SIGKILL)
    os._exit(70)  # only reached when the group signal could not be sent


def _kill_descendants(pid: int) -> None:
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
