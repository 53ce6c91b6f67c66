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
(SIGKILL included).  A worker forked by a fork server (see
:mod:`clm_workers.forktemplate`) holds its template's lifeline too, and
treats the template's death the same way.  The launcher then

1. kills every descendant of the worker at once: a Jupyter kernel or a JVM
   in a session of its own that nothing else would reach (the manager is
   dead, so there is nothing to be gentle for);
2. closes the inner lifeline, so that a worker that watches one stops as an
   orphan in its own way (clm-workers' runtime: exit code 70, its job given
   back, not failed, although its processes died first: it sees its parent,
   the manager, gone);
3. after :data:`ORPHAN_GRACE_SECONDS`, sends SIGTERM to the worker's process
   group, so a worker that knows no lifeline stops the way it stops for its
   manager (a CLM worker deletes its row and exits);
4. :data:`ORPHAN_KILL_SECONDS` after the lifeline closed, SIGKILLs the group,
   itself included.

Most workers are gone after step 2 or 3 (CLM's within a second).  Step 4
bounds how long an orphan may live (2 s) rather than how long clm-workers'
runtime may wait for the database to take its job back (1 s for the job,
then up to 5 s, ``clm_workers.worker``): a worker killed while it waits
leaves its job ``processing``, and a running manager's sweep of dead
sessions (or the next start) gives it back.

Standard library only (every worker pays for its boot; the descendants are
found in ``/proc`` by :mod:`clm_workers.orphans`, not psutil, whose import
would cost each worker of the dead pool CPU at the same moment).  Without
``CLM_LIFELINE_FD`` the module simply runs.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import select
import signal
import sys
import threading
import time

#: The variable naming the inherited read end of the manager's lifeline pipe.
LIFELINE_ENV = "CLM_LIFELINE_FD"
#: How long each step gives a worker to stop by itself once its manager is gone.
ORPHAN_GRACE_SECONDS = 0.5
#: When, after the lifeline closed, whatever is left of the worker's group is killed: an
#: orphan must be gone within 2 s.  A job the runtime could not give back by then is given
#: back by the next manager's (or a running one's) sweep of dead sessions.
ORPHAN_KILL_SECONDS = 1.5
#: The exit code of a worker stopped because its lifeline ended (EX_SOFTWARE, as the runtime's).
ORPHANED_EXIT_CODE = 70

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
            os.fstat(lifeline)
        except (ValueError, OSError):
            print(f"clm_workers.launch: {LIFELINE_ENV}={fd!r} is not an open file descriptor",
                  file=sys.stderr)
            raise SystemExit(2) from None
        keep_lifelines([lifeline])
    run_module(module, args)


def keep_lifelines(lifelines: list[int]) -> None:
    """Watch ``lifelines`` from a daemon thread; the first to reach EOF stops this worker's tree.

    A direct worker has one, its manager's; a forked worker also has its
    template's.  The module run afterwards gets an inner lifeline of its own
    in ``CLM_LIFELINE_FD`` (see the module's docstring).  Neither the
    lifelines nor the inner write end are inherited by the worker's children.
    """
    for lifeline in lifelines:
        os.set_inheritable(lifeline, False)  # the worker's own children need not hold it
    inner_read, inner_write = os.pipe()
    os.environ[LIFELINE_ENV] = str(inner_read)
    threading.Thread(
        target=_watch, args=(lifelines, inner_write), name="clm-launch-lifeline", daemon=True
    ).start()


def run_module(module: str, args: list[str]) -> None:
    """Run ``module`` as ``__main__`` in this process, as ``python -m module args...`` would."""
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _wait_for_eof(lifelines: list[int]) -> None:
    """Block until one of ``lifelines`` reaches EOF or fails (nobody ever writes to them)."""
    while True:
        try:
            ready, _, _ = select.select(lifelines, [], [])
            for lifeline in ready:
                if not os.read(lifeline, 1):
                    return
        except OSError:
            return


#: Set once a lifeline reached EOF, before the launcher kills anything: clm-workers'
#: runtime (in this process) tells by it that its job's processes died of the
#: manager's death, not of the job, even before the inner lifeline closes.
MANAGER_GONE = threading.Event()


def _watch(lifelines: list[int], inner_write: int) -> None:
    _wait_for_eof(lifelines)
    MANAGER_GONE.set()
    me, group = os.getpid(), os.getpgrp()
    _kill_descendants(me)  # first: a module that exits on the inner lifeline's EOF would leave them
    os.close(inner_write)
    time.sleep(ORPHAN_GRACE_SECONDS)  # a worker that watches its inner lifeline is gone by now
    _kill_descendants(me)
    _signal_group(group, signal.SIGTERM)
    time.sleep(ORPHAN_KILL_SECONDS - ORPHAN_GRACE_SECONDS)
    _kill_descendants(me)
    _signal_group(group, signal.SIGKILL)
    os._exit(ORPHANED_EXIT_CODE)  # only reached when the group signal could not be sent


def _kill_descendants(pid: int) -> None:
    from .orphans import kill_tree  # deferred: only an orphan needs it

    kill_tree(pid, group=False)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(OSError):
        os.killpg(group, sig)


if __name__ == "__main__":
    # As clm_workers.launch, not __main__: the worker's module replaces __main__,
    # and clm-workers' runtime finds MANAGER_GONE under the module's own name.
    from clm_workers.launch import main as launch

    launch(sys.argv[1:])
