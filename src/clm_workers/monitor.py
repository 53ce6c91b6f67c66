"""Keeping a running pool healthy: deaths, hung workers, replacements.

One Trio task per pool, ticking with ``trio_util.periodic``.  Each tick asks
the executors which workers exited (one call for all) and the database which
stopped heartbeating (one query).  A dead worker's row becomes ``dead`` and
its in-flight jobs go back to ``pending`` (or ``failed`` after
``max_attempts``) in one transaction; the restart policy then decides when,
or whether, it is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from trio_util import periodic

from .backend import ThreadedBackend
from .executors.base import WorkerHandle
from .ledger import LiveWorkers
from .plan import WorkerSpec
from .registry import Event
from .restart import RestartPolicy, RestartTracker
from .stopping import stop_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorSettings:
    """Defaults: tick every second; no heartbeat for 10 s makes a worker
    ``hung``; hung for 30 s gets it killed and replaced."""

    interval: float = 1.0
    heartbeat_timeout: float = 10.0
    hung_timeout: float = 30.0
    restart: RestartPolicy = field(default_factory=RestartPolicy)


#: Starts a replacement for a dead worker; returns whether it registered.
Replace = Callable[[WorkerSpec], Awaitable[bool]]


class PoolMonitor:
    def __init__(
        self,
        backend: ThreadedBackend,
        owner: LiveWorkers,
        settings: MonitorSettings,
        replace: Replace,
        on_death: Callable[[WorkerSpec], None] = lambda spec: None,
    ) -> None:
        self.backend = backend
        self.owner = owner
        self.settings = settings
        self.replace = replace
        self.on_death = on_death
        self.tracker = RestartTracker(settings.restart)
        self.deaths = 0
        self.replacements = 0
        self._replacements: trio.Nursery | None = None

    @property
    def flapping(self) -> dict[str, str]:
        """Worker types whose restarts were stopped, with the reason."""
        return self.tracker.flapping

    async def run(self) -> None:
        """Watch the pool until cancelled.

        Cancellation: the way to stop it; pending replacements are cancelled
        with it (a replacement in the middle of starting is cleaned up by the
        startup engine), workers already running are left to the caller's stop.
        """
        async with trio.open_nursery() as self._replacements:
            async for _ in periodic(self.settings.interval):
                await self.check()

    async def check(self) -> None:
        """One tick: retire the dead and the long-hung, flag the newly hung."""
        exited = await self.backend.exit_codes(self.owner.snapshot())
        for handle, code in exited.items():
            await self._retire(handle, f"exited with code {code}")

        stale = await trio.to_thread.run_sync(
            self.backend.registry.stale_workers, self.settings.heartbeat_timeout
        )
        by_row = {h.db_worker_id: h for h in self.owner.snapshot() if h.db_worker_id is not None}
        for row_id, status, silent_for in stale:
            silent = by_row.get(row_id)
            if silent is None:  # not ours, or retired this tick
                continue
            if silent_for > self.settings.hung_timeout:
                await self._retire(silent, f"hung: no heartbeat for {silent_for:.0f} s")
            elif status != "hung":
                await trio.to_thread.run_sync(self.backend.registry.set_status, [row_id], "hung")
                await self._event(silent.spec, row_id, f"{silent.spec.label} is hung: no heartbeat "
                                  f"for {silent_for:.0f} s", status="hung")

    async def _retire(self, handle: WorkerHandle, why: str) -> None:
        spec = handle.spec
        # No grace: the worker is dead or frozen; kill also reaps it.
        await stop_workers(self.backend, [handle], grace=0.0, owner=self.owner)
        requeued = await self.backend.mark_dead([spec], [handle], reason=f"worker {spec.label} {why}")
        self.deaths += 1
        self.on_death(spec)
        log.warning("%s %s; %d job(s) requeued", spec.label, why, requeued)
        await self._event(spec, handle.db_worker_id, f"{spec.label} {why}", status="dead",
                          requeued_jobs=requeued)
        self._schedule_replacement(spec)

    def _schedule_replacement(self, spec: WorkerSpec) -> None:
        assert self._replacements is not None, "PoolMonitor.run() is not running"
        delay = self.tracker.on_death(spec.worker_type, trio.current_time())
        if delay is not None:
            self._replacements.start_soon(self._replace_after, spec, delay)
        elif spec.worker_type in self.tracker.flapping:
            reason = self.tracker.flapping[spec.worker_type]
            log.error("%s", reason)
            self._replacements.start_soon(self._event, spec, None, reason, "flapping")

    async def _replace_after(self, spec: WorkerSpec, delay: float) -> None:
        await trio.sleep(delay)
        if await self.replace(spec):
            self.replacements += 1
        else:
            # A replacement that does not come up counts as another death.
            self._schedule_replacement(spec)

    async def _event(self, spec: WorkerSpec, row_id: int | None, message: str, status: str,
                     **metadata: object) -> None:
        try:
            await self.backend.record([Event(
                "worker_failed", spec.worker_type, row_id, spec.execution_mode, message,
                {"status": status, **metadata},
            )])
        except Exception as exc:  # an audit row must never stop the monitor
            log.warning("could not record event: %s", exc)
