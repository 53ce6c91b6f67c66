"""A pool's whole life in one ``async with``: start, readiness, monitoring, stop.

::

    async with open_worker_pool(db, workspace, configs) as pool:
        await pool.wait_ready("notebook", 1)   # submit jobs while the rest boot
        ...
    # every worker is stopped here, whatever happened inside

Startup runs as a task in the pool's nursery, so the body starts at once and
can wait for exactly the readiness it needs.  A fatal startup error cancels
the body and comes out of the ``async with`` as :class:`PoolStartupError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from trio_util import AsyncValue

from .config import WorkerConfig
from .errors import unwrap_lone_exception
from .manager import WorkerPoolManager
from .monitor import MonitorSettings, PoolMonitor
from .plan import WorkerSpec
from .report import ProgressEvent, StartupReport


class PoolNotReadyError(RuntimeError):
    """Startup finished without the readiness a caller waited for."""


@dataclass(frozen=True)
class Readiness:
    """Registered, running workers per type, and whether startup has finished."""

    running: Mapping[str, int] = field(default_factory=dict)
    startup_done: bool = False

    def count(self, worker_type: str | None) -> int:
        return self.running.get(worker_type, 0) if worker_type else sum(self.running.values())


class WorkerPool:
    """A running pool; made by :func:`open_worker_pool`."""

    def __init__(
        self,
        manager: WorkerPoolManager,
        monitor_settings: MonitorSettings,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> None:
        self.manager = manager
        self.monitor_settings = monitor_settings
        self.on_progress = on_progress
        self.monitor: PoolMonitor | None = None
        self.report: StartupReport | None = None
        self.readiness: AsyncValue[Readiness] = AsyncValue(Readiness())
        self._configured: dict[str, int] = {}
        for config in manager.worker_configs:
            self._configured[config.worker_type] = self._configured.get(config.worker_type, 0) + config.count

    async def wait_ready(self, worker_type: str | None = None, n: int | None = None) -> None:
        """Return as soon as ``n`` workers of ``worker_type`` are registered.

        ``worker_type=None`` counts all types; ``n=None`` means every
        configured worker (of that type).  Raises :class:`PoolNotReadyError`
        when startup has finished with fewer running.

        Cancellation: safe; waiting changes nothing.
        """
        if n is None:
            n = self._configured.get(worker_type, 0) if worker_type else sum(self._configured.values())
        wanted = n
        state = await self.readiness.wait_value(
            lambda r: r.count(worker_type) >= wanted or r.startup_done
        )
        if state.count(worker_type) < wanted:
            raise PoolNotReadyError(
                f"startup finished with {state.count(worker_type)} {worker_type or 'workers'} running, "
                f"{wanted} were waited for" + (f" ({self.report.summary()})" if self.report else "")
            )

    async def wait_started(self) -> StartupReport:
        """Wait until startup has finished (the monitor runs from then on); its report."""
        await self.readiness.wait_value(lambda r: r.startup_done)
        if self.report is None:
            raise PoolNotReadyError("the pool stopped before its startup finished")
        return self.report

    def _update(
        self, worker_type: str | None = None, delta: int = 0, startup_done: bool | None = None
    ) -> None:
        current = self.readiness.value
        running = dict(current.running)
        if worker_type is not None:
            running[worker_type] = running.get(worker_type, 0) + delta
        done = current.startup_done if startup_done is None else startup_done
        self.readiness.value = Readiness(running, done)

    def _on_progress(self, event: ProgressEvent) -> None:
        if event.kind == "registered":
            self._update(event.worker_type, +1)
        if self.on_progress is not None:
            self.on_progress(event)

    def _on_death(self, spec: WorkerSpec) -> None:
        self._update(spec.worker_type, -1)

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            self.report = await self.manager.start_pools(on_progress=self._on_progress)
            self.monitor = self.manager.make_monitor(
                self.monitor_settings, on_progress=self._on_progress, on_death=self._on_death
            )
            self._update(startup_done=True)
            await self.monitor.run()
        finally:
            # No "startup done" here: a failed startup cancels the body (and
            # its waiters) with the error, which is all they should see.
            with trio.CancelScope(shield=True):
                await self.manager.stop_pools()


@asynccontextmanager
async def open_worker_pool(
    db_path: Path | str,
    workspace_path: Path | str,
    worker_configs: Sequence[WorkerConfig],
    *,
    monitor: MonitorSettings | None = None,
    **manager_options: Any,
) -> AsyncIterator[WorkerPool]:
    """Start a pool, monitor it while the body runs, stop it on the way out.

    ``manager_options`` are :class:`WorkerPoolManager`'s keyword arguments
    (``max_startup_concurrency``, ``registration_timeout``, ...).  Bad
    settings raise :class:`ConfigError` before anything starts.

    Cancellation: on exit, error or cancellation every worker is stopped
    (shielded, bounded) before the ``async with`` is left.
    """
    manager = WorkerPoolManager(db_path, workspace_path, worker_configs, **manager_options)
    async with run_worker_pool(manager, monitor=monitor) as pool:
        yield pool


@asynccontextmanager
async def run_worker_pool(
    manager: WorkerPoolManager,
    *,
    monitor: MonitorSettings | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
) -> AsyncIterator[WorkerPool]:
    """:func:`open_worker_pool` for a manager made beforehand (and so checked: nothing runs yet).

    ``on_progress`` sees every startup step, replacements' included, as it happens.

    Cancellation: as :func:`open_worker_pool`.
    """
    pool = WorkerPool(manager, monitor or MonitorSettings(), on_progress)
    with unwrap_lone_exception():
        async with trio.open_nursery() as nursery:
            await nursery.start(pool._run)
            try:
                yield pool
            finally:
                nursery.cancel_scope.cancel()
