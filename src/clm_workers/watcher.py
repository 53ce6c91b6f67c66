"""One task that notices every registration and every early exit.

Instead of one polling loop per worker (the original proposal: each worker's
start polls SQLite every 0.5 s), one watcher asks the backend about *all*
waiting workers per tick: one SQLite query and one exit check however many
workers wait, every ``interval`` seconds (10 ms by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio
from trio_util import periodic

from .backend import StartupBackend
from .executors.base import WorkerHandle


@dataclass(frozen=True)
class Registered:
    db_worker_id: int
    at: float  # trio.current_time()


@dataclass(frozen=True)
class Exited:
    exit_code: int
    at: float


Outcome = Registered | Exited


class _Waiter:
    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.outcome: Outcome | None = None


class RegistrationWatcher:
    def __init__(
        self, backend: StartupBackend, interval: float, on_error: Callable[[BaseException], None]
    ) -> None:
        self._backend = backend
        self._interval = interval
        self._on_error = on_error
        self._waiting: dict[WorkerHandle, _Waiter] = {}
        self._work = trio.Event()

    async def wait(self, handle: WorkerHandle) -> Outcome:
        """Block until ``handle`` registers or exits.

        Cancellation: safe at any point; the handle is simply no longer watched.
        """
        waiter = _Waiter()
        self._waiting[handle] = waiter
        self._work.set()
        try:
            await waiter.event.wait()
        finally:
            del self._waiting[handle]
        assert waiter.outcome is not None
        return waiter.outcome

    @trio.lowlevel.enable_ki_protection  # a Ctrl-C comes at a checkpoint: see clm_workers.startup
    async def run(self) -> None:
        """Poll until cancelled.  Errors go to ``on_error`` (fatal) and end the loop.

        Cancellation: the normal way to stop it; a poll in flight completes
        in its thread and its result is dropped.  ``KeyboardInterrupt``:
        protected; Trio raises it in the main task.
        """
        try:
            async for _ in periodic(self._interval):
                if not self._waiting:
                    self._work = trio.Event()
                    await self._work.wait()
                await self._tick()
        except Exception as exc:
            self._on_error(exc)

    async def _tick(self) -> None:
        handles = list(self._waiting)
        result = await self._backend.poll(handles)
        now = trio.current_time()
        for handle, db_worker_id in result.registered.items():
            self._resolve(handle, Registered(db_worker_id, now))
        for handle, code in result.exited.items():
            self._resolve(handle, Exited(code, now))

    def _resolve(self, handle: WorkerHandle, outcome: Outcome) -> None:
        waiter = self._waiting.get(handle)
        if waiter is not None and waiter.outcome is None:
            waiter.outcome = outcome
            waiter.event.set()
