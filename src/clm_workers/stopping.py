"""Stopping many workers at once, under one overall bound; cleanup that nothing can cut short."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from .backend import StartupBackend
from .executors.base import WorkerHandle
from .ledger import LiveWorkers

log = logging.getLogger(__name__)

T = TypeVar("T")

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


@trio.lowlevel.enable_ki_protection
async def run_to_completion(async_fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``async_fn()`` to its end, whatever arrives meanwhile; then raise what arrived.

    For cleanup: neither a cancellation nor a Ctrl-C can cut it short.  It
    runs shielded in a task of its own, with ``KeyboardInterrupt`` protection,
    so a ``KeyboardInterrupt`` (Trio delivers it to the main task, which
    waits here) is only recorded, however many arrive; when ``async_fn``
    is done, they come out as an exception group of ``KeyboardInterrupt``
    (callers unwrap it: :func:`clm_workers.errors.unwrap_lone_exception`).
    ``async_fn`` must bound itself (every caller sets a deadline inside).

    Cancellation: shielded; see above.
    """
    results: list[T] = []

    @trio.lowlevel.enable_ki_protection
    async def body() -> None:
        with trio.CancelScope(shield=True):
            results.append(await async_fn())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(body)
    return results[0]
