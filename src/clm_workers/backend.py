"""The async seam between the Trio engine and the blocking world.

The engine only ever talks to a :class:`StartupBackend`.  The real one,
:class:`ThreadedBackend`, runs the blocking executors and the SQLite registry
in worker threads; the unit and property tests plug pure-Trio fakes in here,
so that ``MockClock(autojump_threshold=0)`` sees no threads and virtual time is
exact.

Cancellation: every method of :class:`ThreadedBackend` is a
``trio.to_thread.run_sync`` call with ``abandon_on_cancel=False``: a blocking
call that has begun always completes (a spawn that finishes after
cancellation still hands its worker to the owner), and ``Cancelled`` is raised
at the caller's next checkpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import trio

from .errors import FatalExecutorError
from .executors.base import Activity, Executor, WorkerHandle
from .plan import WorkerSpec
from .registry import Event, Registry

Own = Callable[[WorkerHandle], WorkerHandle]
#: At most this many stop or kill calls run at once (threads).
_MAX_FAN_OUT = 64
T = TypeVar("T")


@dataclass
class PollResult:
    """One watcher tick: which waiting workers ended, which registered (row id)."""

    exited: dict[WorkerHandle, int] = field(default_factory=dict)
    registered: dict[WorkerHandle, int] = field(default_factory=dict)


class StartupBackend(Protocol):
    async def prepare(self, specs: Sequence[WorkerSpec], events: Sequence[Event]) -> list[WorkerSpec]:
        """Open the database and pre-register ``pre`` specs in one transaction.

        Any exception is fatal: nothing has been spawned yet.
        """
        ...

    async def spawn(self, spec: WorkerSpec, limiter: trio.CapacityLimiter, own: Own) -> WorkerHandle:
        """Start one worker, holding a token of ``limiter`` while the start blocks.

        Must call ``own(handle)`` before returning to any checkpoint.
        """
        ...

    async def poll(self, handles: Sequence[WorkerHandle]) -> PollResult:
        """Which of ``handles`` exited, then which registered (in that order)."""
        ...

    async def exit_codes(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, int]: ...

    async def activity(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, Activity]:
        """CPU time and stopped state of each of ``handles`` that still runs (one call for many)."""
        ...

    async def request_stop(self, handles: Sequence[WorkerHandle]) -> list[tuple[WorkerHandle, Exception]]:
        """Ask each worker to stop; returns the per-worker failures."""
        ...

    async def kill(self, handles: Sequence[WorkerHandle]) -> list[tuple[WorkerHandle, Exception]]:
        """Kill, reap and release each worker; returns the per-worker failures."""
        ...

    async def output_tail(self, handle: WorkerHandle) -> str: ...

    async def run_queue_wait(self, handle: WorkerHandle) -> float:
        """Seconds ``handle``'s worker was ready to run but waited for a CPU (0.0: unknown)."""
        ...

    async def mark_dead(
        self,
        specs: Sequence[WorkerSpec],
        handles: Sequence[WorkerHandle] = (),
        *,
        reason: str = "worker stopped",
    ) -> int:
        """Record the rows of these workers ``dead`` (by row id and container id).

        Their in-flight jobs go back to ``pending`` (or ``failed`` with ``reason``
        after ``max_attempts``); returns how many were requeued.
        """
        ...

    async def record(self, events: Sequence[Event]) -> None: ...


class ThreadedBackend:
    """The real backend: a registry and one executor per name (:attr:`WorkerSpec.executor_name`)."""

    def __init__(self, registry: Registry, executors: Mapping[str, Executor], *, fan_out: int = 10) -> None:
        self.registry = registry
        self.executors = executors
        self._fan_out = fan_out

    def _executor(self, mode: str) -> Executor:
        try:
            return self.executors[mode]
        except KeyError:
            raise FatalExecutorError(f"no executor for {mode!r} workers") from None

    async def prepare(self, specs: Sequence[WorkerSpec], events: Sequence[Event]) -> list[WorkerSpec]:
        """Preflight every executor the specs use, then open the database and pre-register.

        A failed preflight (Docker engine unreachable, image missing) raises
        :class:`FatalExecutorError` before the database is touched and before
        any worker exists.
        """

        def check_open_and_register() -> list[WorkerSpec]:
            self._preflight(specs)
            self.registry.open()
            return self.registry.pre_register(specs, events)

        return await trio.to_thread.run_sync(check_open_and_register)

    def _preflight(self, specs: Sequence[WorkerSpec]) -> None:
        for mode, group in _by_mode(specs, lambda spec: spec.executor_name).items():
            try:
                self._executor(mode).check(group)
            except FatalExecutorError:
                raise
            except Exception as exc:
                raise FatalExecutorError(
                    f"checking the {mode} executor failed: {type(exc).__name__}: {exc}"
                ) from exc

    async def spawn(self, spec: WorkerSpec, limiter: trio.CapacityLimiter, own: Own) -> WorkerHandle:
        executor = self._executor(spec.executor_name)
        return await trio.to_thread.run_sync(lambda: own(executor.start(spec)), limiter=limiter)

    async def poll(self, handles: Sequence[WorkerHandle]) -> PollResult:
        return await trio.to_thread.run_sync(self._poll_blocking, handles)

    def _poll_blocking(self, handles: Sequence[WorkerHandle]) -> PollResult:
        # Exits first: a worker that registers between the two looks registered,
        # never "exited before registering".
        result = PollResult(exited=self._exit_codes_blocking(handles))
        by_db_id = {
            h.spec.db_worker_id: h
            for h in handles
            if h.spec.registration == "pre" and h.spec.db_worker_id is not None
        }
        by_container = {
            cid: h for h in handles if h.spec.registration == "self" for cid in _match_ids(h)
        }
        for row_id, container_id in self.registry.registered_rows(by_db_id.keys(), by_container.keys()):
            handle = by_db_id.get(row_id) or by_container.get(container_id)
            if handle is not None:
                result.registered[handle] = row_id
        return result

    def _exit_codes_blocking(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, int]:
        codes: dict[WorkerHandle, int] = {}
        for mode, group in _by_mode(handles, lambda handle: handle.spec.executor_name).items():
            codes.update(self._executor(mode).exit_codes(group))
        return codes

    async def exit_codes(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, int]:
        return await trio.to_thread.run_sync(self._exit_codes_blocking, handles)

    async def activity(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, Activity]:
        def blocking() -> dict[WorkerHandle, Activity]:
            found: dict[WorkerHandle, Activity] = {}
            for mode, group in _by_mode(handles, lambda handle: handle.spec.executor_name).items():
                found.update(self._executor(mode).activity(group))
            return found

        return await trio.to_thread.run_sync(blocking)

    async def request_stop(self, handles: Sequence[WorkerHandle]) -> list[tuple[WorkerHandle, Exception]]:
        return await self._each(handles, lambda h: self._executor(h.spec.executor_name).request_stop(h))

    async def kill(self, handles: Sequence[WorkerHandle]) -> list[tuple[WorkerHandle, Exception]]:
        return await self._each(handles, lambda h: self._executor(h.spec.executor_name).kill(h))

    async def output_tail(self, handle: WorkerHandle) -> str:
        executor = self._executor(handle.spec.executor_name)
        return await trio.to_thread.run_sync(executor.output_tail, handle)

    async def run_queue_wait(self, handle: WorkerHandle) -> float:
        executor = self._executor(handle.spec.executor_name)
        return await trio.to_thread.run_sync(executor.run_queue_wait, handle)

    async def mark_dead(
        self,
        specs: Sequence[WorkerSpec],
        handles: Sequence[WorkerHandle] = (),
        *,
        reason: str = "worker stopped",
    ) -> int:
        db_ids = [s.db_worker_id for s in specs if s.db_worker_id is not None]
        container_ids = [s.executor_id for s in specs] + [cid for h in handles for cid in _match_ids(h)]
        return await trio.to_thread.run_sync(
            functools.partial(self.registry.mark_dead, db_ids, container_ids, reason=reason)
        )

    async def record(self, events: Sequence[Event]) -> None:
        await trio.to_thread.run_sync(self.registry.record_events, events)

    async def _each(
        self, handles: Sequence[WorkerHandle], action: Callable[[WorkerHandle], None]
    ) -> list[tuple[WorkerHandle, Exception]]:
        """Run ``action`` for every handle in parallel threads (at most ``fan_out`` at once)."""
        failures: list[tuple[WorkerHandle, Exception]] = []
        # Signals and kills mostly wait (for a reap, an engine): more of them at
        # once than spawns, so that stopping a large pool fits in its bound.
        limiter = trio.CapacityLimiter(max(self._fan_out, min(len(handles), _MAX_FAN_OUT)))

        async def one(handle: WorkerHandle) -> None:
            try:
                await trio.to_thread.run_sync(functools.partial(action, handle), limiter=limiter)
            except Exception as exc:
                failures.append((handle, exc))

        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(one, handle)
        return failures


def _match_ids(handle: WorkerHandle) -> tuple[str, ...]:
    """The ``container_id`` values a self-registering worker may use.

    A CLM 0.3 container registers with ``HOSTNAME``: the first 12 characters
    of its container id.
    """
    ids = {handle.executor_id, handle.spec.executor_id}
    if handle.spec.execution_mode == "docker":
        ids.add(handle.executor_id[:12])
    return tuple(sorted(ids))


def _by_mode(items: Sequence[T], mode_of: Callable[[T], str]) -> dict[str, list[T]]:
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(mode_of(item), []).append(item)
    return groups
