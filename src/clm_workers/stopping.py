"""Stopping many workers at once, under one overall bound."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from .backend import StartupBackend
from .executors.base import WorkerHandle
from .ledger import LiveWorkers

log = logging.getLogger(__name__)

#: How often to look whether stopped workers have exited during the grace period.
_EXIT_POLL_INTERVAL = 0.02


async def stop_workers(
    backend: StartupBackend,
    handles: Sequence[WorkerHandle],
    *,
    grace: float,
    owner: LiveWorkers | None = None,
) -> list[tuple[WorkerHandle, Exception]]:
    """SIGTERM every worker at once, wait up to ``grace`` for them, then kill the rest.

    All workers are handled in parallel, so stopping N workers takes one
    grace period, not N.  Each worker that was killed and reaped is removed
    from ``owner``; one whose kill failed stays owned and is returned with its
    error (the caller reports it).

    Cancellation: cancel-safe but not meant to be cancelled; callers that run
    it as cleanup do so in a shielded scope with their own deadline.
    """
    if not handles:
        return []
    failures = await backend.request_stop(handles)
    remaining = set(handles)
    with trio.move_on_after(grace):
        while remaining:
            remaining -= (await backend.exit_codes(list(remaining))).keys()
            if remaining:
                await trio.sleep(_EXIT_POLL_INTERVAL)
    # Kill every worker, exited or not: that reaps it and releases what it held.
    kill_failures = await backend.kill(handles)
    failed = {handle for handle, _ in kill_failures}
    if owner is not None:
        for handle in handles:
            if handle not in failed:
                owner.disown(handle)
    for handle, exc in failures + kill_failures:
        log.warning("stopping %s: %s", handle.spec.label, exc)
    return kill_failures
