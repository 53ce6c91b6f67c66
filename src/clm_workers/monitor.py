"""Keeping a running pool healthy: deaths, hung, frozen and stalled workers, replacements.

One Trio task per pool, ticking with ``trio_util.periodic``.  Each tick asks
the executors which workers exited (one call for all), the database how each
registered worker looks (one query: its heartbeat, the job it holds, its
``worker_heartbeats`` row), and the executors what the busy ones are doing
(one call: CPU time of the whole process tree, stopped or not).  Then
:func:`assess` judges each worker:

* an **idle** worker by ``workers.last_heartbeat``, which idle workers write
  every few seconds;
* a **busy** worker never by ``last_heartbeat`` alone (CLM's workers write it
  only while idle), but by being stopped (SIGSTOP, a paused container), by
  making no progress at all (no CPU time in its tree, no heartbeat of any
  kind) for ``progress_timeout``, and by its job's age against ``max_job_time``.

A worker that fails is killed, its row becomes ``dead`` and its in-flight jobs
go back to ``pending`` (or ``failed`` after ``max_attempts``) in one
transaction; the restart policy then decides when, or whether, it is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import trio
from trio_util import periodic

from .backend import ThreadedBackend
from .executors.base import Activity, WorkerHandle
from .ledger import LiveWorkers
from .plan import WorkerSpec
from .registry import Event, RowHealth
from .restart import RestartPolicy, RestartTracker
from .stopping import stop_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorSettings:
    """How the monitor judges workers (docs/pool-health.md has the rules).

    Defaults: tick every second.  Idle: no heartbeat for 10 s makes a worker
    ``hung``, 30 s gets it killed and replaced.  Stopped (SIGSTOP, paused):
    the same 10 s and 30 s, counted from when the monitor first saw it
    stopped.  Busy: killed after 300 s without any progress (no CPU time in
    its process tree and no heartbeat), or when its job has run for longer
    than 600 s (CLM's ``max_job_time``).
    """

    interval: float = 1.0
    heartbeat_timeout: float = 10.0
    hung_timeout: float = 30.0
    #: A busy worker whose process tree used no CPU and that wrote no heartbeat
    #: (``workers`` or ``worker_heartbeats``) for this long is deadlocked.
    progress_timeout: float = 300.0
    #: A job running for longer than this (from ``jobs.started_at``) is hung: CLM's default.
    max_job_time: float = 600.0
    restart: RestartPolicy = field(default_factory=RestartPolicy)


@dataclass
class Watch:
    """What the monitor remembers of one busy worker between ticks (monitor clock, seconds)."""

    cpu_seconds: float | None
    #: When its CPU time was last seen to change (or when the watch began).
    cpu_changed_at: float
    #: Since when it is seen stopped, or ``None``.
    stopped_since: float | None = None

    def update(self, activity: Activity, now: float) -> None:
        if activity.cpu_seconds is not None and activity.cpu_seconds != self.cpu_seconds:
            # Any change counts: a member that exits unreaped can also lower the sum.
            self.cpu_seconds = activity.cpu_seconds
            self.cpu_changed_at = now
        if not activity.stopped:
            self.stopped_since = None
        elif self.stopped_since is None:
            self.stopped_since = now


@dataclass(frozen=True)
class Verdict:
    """What to do with one worker this tick, and why (the why ends up in events and job errors)."""

    action: Literal["ok", "hung", "retire"]
    why: str = ""


OK = Verdict("ok")


def assess(
    row: RowHealth, watch: Watch | None, now: float, settings: MonitorSettings,
    busy_seen_at: float | None = None,
) -> Verdict:
    """Judge one worker: ``watch`` is ``None`` for an idle one, updated this tick for a busy one.

    ``busy_seen_at``: when the monitor last saw an idle worker busy.  A worker
    that writes no heartbeat during a job comes back with an old one, and
    writes the next only a moment after it became idle: its silence counts
    from the end of the job at the earliest.
    """
    if watch is None:
        silent = row.heartbeat_age
        if silent is not None and busy_seen_at is not None:
            silent = min(silent, now - busy_seen_at)
        if silent is None or silent <= settings.heartbeat_timeout:
            return OK
        if silent > settings.hung_timeout:
            return Verdict("retire", f"hung: no heartbeat for {silent:.0f} s")
        return Verdict("hung", f"no heartbeat for {silent:.0f} s")
    job = "a job" if row.job_id is None else f"job {row.job_id}"
    if row.job_age is not None and row.job_age > settings.max_job_time:
        return Verdict("retire", f"ran {job} for {row.job_age:.0f} s, longer than max_job_time "
                                 f"({settings.max_job_time:g} s)")
    if watch.stopped_since is not None:
        stopped = now - watch.stopped_since
        if stopped > settings.hung_timeout:
            return Verdict("retire", f"frozen: stopped for {stopped:.0f} s while running {job}")
        if stopped > settings.heartbeat_timeout:
            return Verdict("hung", f"stopped for {stopped:.0f} s while running {job}")
        return OK
    # The newest sign of life of any kind; the job's start counts as one.
    signs = [row.heartbeat_age, row.progress_age, row.job_age, now - watch.cpu_changed_at]
    quiet = min(s for s in signs if s is not None)
    if quiet > settings.progress_timeout:
        return Verdict("retire", f"stalled: no CPU time and no heartbeat for {quiet:.0f} s "
                                 f"while running {job}")
    return OK


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
        self._watches: dict[WorkerHandle, Watch] = {}
        #: When each worker was last seen busy.
        self._busy_seen: dict[WorkerHandle, float] = {}

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
        """One tick: retire the exited, long-hung, frozen, stalled and overdue; flag the hung."""
        exited = await self.backend.exit_codes(self.owner.snapshot())
        for gone, code in exited.items():
            await self._retire(gone, f"exited with code {code}")

        by_row = {h.db_worker_id: h for h in self.owner.snapshot() if h.db_worker_id is not None}
        registry = self.backend.registry
        rows = await trio.to_thread.run_sync(registry.health, list(by_row))
        busy = [by_row[r.row_id] for r in rows if r.busy and r.row_id in by_row]
        activity = await self.backend.activity(busy) if busy else {}
        now = trio.current_time()
        self._watch(busy, activity, now)

        recovered: list[int] = []
        for row in rows:
            handle = by_row.get(row.row_id)
            if handle is None or (row.busy and handle not in activity):
                continue  # retired this tick, or exited since: the next tick reports it
            verdict = assess(row, self._watches.get(handle), now, self.settings,
                             self._busy_seen.get(handle))
            if verdict.action == "retire":
                await self._retire(handle, verdict.why)
            elif verdict.action == "hung":
                if row.status != "hung":
                    await self._flag_hung(handle, verdict.why)
            elif row.status == "hung":
                recovered.append(row.row_id)
        if recovered:
            for row_id in await trio.to_thread.run_sync(registry.clear_hung, recovered):
                log.info("%s recovered", by_row[row_id].spec.label)

    def _watch(self, busy: list[WorkerHandle], activity: Mapping[WorkerHandle, Activity], now: float) -> None:
        """Keep a :class:`Watch` for each busy worker; forget the others (a new job starts afresh)."""
        watches: dict[WorkerHandle, Watch] = {}
        self._busy_seen = {h: t for h, t in self._busy_seen.items() if h in self.owner}
        for handle in busy:
            self._busy_seen[handle] = now
            seen = activity.get(handle)
            if seen is None:
                continue
            watch = self._watches.get(handle) or Watch(seen.cpu_seconds, cpu_changed_at=now)
            watch.update(seen, now)
            watches[handle] = watch
        self._watches = watches

    async def _flag_hung(self, handle: WorkerHandle, why: str) -> None:
        assert handle.db_worker_id is not None
        flagged = await trio.to_thread.run_sync(self.backend.registry.flag_hung, [handle.db_worker_id])
        if flagged:
            spec = handle.spec
            log.warning("%s is hung: %s", spec.label, why)
            await self._event(spec, handle.db_worker_id, f"{spec.label} is hung: {why}", status="hung")

    async def _retire(self, handle: WorkerHandle, why: str) -> None:
        spec = handle.spec
        self._watches.pop(handle, None)
        self._busy_seen.pop(handle, None)
        # No grace: the worker is dead, frozen or stuck; kill also reaps it.
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
