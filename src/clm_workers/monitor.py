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

A tick that fails (the database is full, locked beyond its busy timeout,
unreadable) is logged with SQLite's own words and the next tick tries again:
the monitor outlives a broken database.  A retired worker whose row the
database refused stays on a list that every tick tries to release first, and
a replacement the database refused is tried again after the policy's
``backoff_max`` without counting as another death.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import trio
from trio_util import periodic

from .backend import ThreadedBackend
from .errors import DatabaseUnusableError, PoolStoppedError
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
    #: How often the rows and jobs of *other* managers that died (their lease expired, this
    #: long ago at least) are released, so that their jobs need not wait for the next start.
    dead_session_sweep: float = 10.0
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

#: What an exit code of the worker runtime and launcher means, for the death's reason.
_EXIT_MEANINGS = {70: " (it found its manager gone: lifeline closed or session lease expired)"}


def assess(
    row: RowHealth, watch: Watch | None, now: float, settings: MonitorSettings,
    busy_seen_at: float | None = None, locked_at: float | None = None,
) -> Verdict:
    """Judge one worker: ``watch`` is ``None`` for an idle one, updated this tick for a busy one.

    ``busy_seen_at``: when the monitor last saw an idle worker busy.  A worker
    that writes no heartbeat during a job comes back with an old one, and
    writes the next only a moment after it became idle: its silence counts
    from the end of the job at the earliest.

    ``locked_at``: when the monitor last found the database's write lock held
    by someone for longer than it waited.  No heartbeat can be written while
    that lasts, so silence counts from then at the earliest, as for CPU waits
    at startup: a busy database is not a hung pool.
    """
    if watch is None:
        silent = row.heartbeat_age
        for since in (busy_seen_at, locked_at):
            if silent is not None and since is not None:
                silent = min(silent, now - since)
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
    signs = [row.heartbeat_age, row.progress_age, row.job_age, now - watch.cpu_changed_at,
             None if locked_at is None else now - locked_at]
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
        #: Retired workers whose row and jobs the database has not accepted as released yet.
        self._unreleased: dict[WorkerHandle, str] = {}
        #: Ticks that failed in a row, and the last one's error (``None`` while ticks work).
        self.failed_ticks = 0
        self.last_error: str | None = None
        #: When a tick last found the database's write lock taken for longer than it waited.
        self._locked_at: float | None = None
        self._swept_at: float | None = None

    @property
    def flapping(self) -> dict[str, str]:
        """Worker types whose restarts were stopped, with the reason."""
        return self.tracker.flapping

    @trio.lowlevel.enable_ki_protection  # a Ctrl-C comes at a checkpoint: see clm_workers.startup
    async def run(self) -> None:
        """Watch the pool until cancelled.

        Cancellation: the way to stop it; pending replacements are cancelled
        with it (a replacement in the middle of starting is cleaned up by the
        startup engine), workers already running are left to the caller's stop.
        ``KeyboardInterrupt``: protected; Trio raises it in the main task.
        """
        async with trio.open_nursery() as self._replacements:
            async for _ in periodic(self.settings.interval):
                await self.tick()

    async def tick(self) -> bool:
        """One :meth:`check`, surviving its failure; whether it worked.

        A failed tick is logged (the first of a run of failures with the
        error as SQLite or the engine gave it, later ones only when the error
        changes) and kept in :attr:`last_error`; the next tick tries again.
        Raises :class:`PoolStoppedError` when the database file is gone: no
        tick can cure that.
        """
        try:
            await self._release_retired()
            await self.check()
        except PoolStoppedError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self.last_error:
                log.warning("the pool monitor's check failed: %s; trying again every %g s",
                            error, self.settings.interval)
            self.failed_ticks += 1
            self.last_error = error
            return False
        if self.failed_ticks:
            log.warning("the pool monitor works again after %d failed checks", self.failed_ticks)
        self.failed_ticks = 0
        self.last_error = None
        return True

    async def _release_retired(self) -> None:
        """Mark dead the retired workers whose release the database refused (raises if it still does)."""
        for handle, reason in list(self._unreleased.items()):
            requeued = await self.backend.mark_dead([handle.spec], [handle], reason=reason)
            del self._unreleased[handle]
            log.warning("%s: its row is dead now and %d job(s) requeued", handle.spec.label, requeued)

    async def check(self) -> None:
        """One tick: retire the exited, long-hung, frozen, stalled and overdue; flag the hung.

        Raises :class:`PoolStoppedError` when the pool's database file was
        deleted or replaced, or its path leads to another file now.
        """
        registry = self.backend.registry
        lost = await trio.to_thread.run_sync(registry.lost)
        if lost is not None:
            raise PoolStoppedError(f"{lost}; the pool stopped every worker, since a pool and its "
                                   "workers must share one database file")
        exited = await self.backend.exit_codes(self.owner.snapshot())
        await self._retire([(gone, f"exited with code {code}{_EXIT_MEANINGS.get(code, '')}")
                            for gone, code in exited.items()])

        if not await trio.to_thread.run_sync(registry.writable):
            self._locked_at = trio.current_time()
        by_row = {h.db_worker_id: h for h in self.owner.snapshot() if h.db_worker_id is not None}
        rows = await trio.to_thread.run_sync(registry.health, list(by_row))
        busy = [by_row[r.row_id] for r in rows if r.busy and r.row_id in by_row]
        activity = await self.backend.activity(busy) if busy else {}
        now = trio.current_time()
        self._watch(busy, activity, now)

        recovered: list[int] = []
        retiring: list[tuple[WorkerHandle, str]] = []
        for row in rows:
            handle = by_row.get(row.row_id)
            if handle is None or (row.busy and handle not in activity):
                continue  # retired this tick, or exited since: the next tick reports it
            verdict = assess(row, self._watches.get(handle), now, self.settings,
                             self._busy_seen.get(handle), self._locked_at)
            if verdict.action == "retire":
                retiring.append((handle, verdict.why))
            elif verdict.action == "hung":
                if row.status != "hung":
                    await self._flag_hung(handle, verdict.why)
            elif row.status == "hung":
                recovered.append(row.row_id)
        await self._retire(retiring)
        if recovered:
            for row_id in await trio.to_thread.run_sync(registry.clear_hung, recovered):
                log.info("%s recovered", by_row[row_id].spec.label)
        await self._sweep_dead_sessions(now)

    async def _sweep_dead_sessions(self, now: float) -> None:
        """Every ``dead_session_sweep`` s: release what managers that died left (rows, jobs, containers).

        Not while the database was lately too busy to write: a lease that ran
        out then may belong to a manager whose renewals were merely held up.
        """
        interval = self.settings.dead_session_sweep
        if self._swept_at is not None and now - self._swept_at < interval:
            return
        if self._locked_at is not None and now - self._locked_at < interval:
            return
        self._swept_at = now
        registry = self.backend.registry
        cleaned = await trio.to_thread.run_sync(
            functools.partial(registry.clean_dead_sessions, expired_for=interval))
        for session, count in cleaned.items():
            log.warning("released %d worker rows (and their jobs) left by session %s, whose manager died",
                        count, session)
        remove = getattr(self.backend.executors.get("docker"), "remove_containers_of", None)
        if cleaned and remove is not None:
            await trio.to_thread.run_sync(remove, set(cleaned))

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

    async def _retire(self, retiring: list[tuple[WorkerHandle, str]]) -> None:
        """Kill these workers at once, then release their rows and jobs, then schedule replacements.

        All together, and each row ``hung`` first: a worker that is not
        ``idle`` takes no job, so a job given back by one of them cannot be
        taken by another that is about to be killed (a paused container runs
        for a moment when Docker unpauses it to deliver the kill), which
        would burn the job's attempts one doomed worker after another.
        """
        if not retiring:
            return
        handles = [handle for handle, _ in retiring]
        rows = [h.db_worker_id for h in handles if h.db_worker_id is not None]
        if rows:
            try:
                await trio.to_thread.run_sync(self.backend.registry.flag_hung, rows)
            except Exception as exc:  # the kill below matters more; the tick reports the database
                log.warning("could not flag %d workers hung before retiring them: %s", len(rows), exc)
        for handle in handles:
            self._watches.pop(handle, None)
            self._busy_seen.pop(handle, None)
        # No grace: the workers are dead, frozen or stuck; kill also reaps them.
        await stop_workers(self.backend, handles, grace=0.0, owner=self.owner)
        for handle, why in retiring:
            spec = handle.spec
            self.deaths += 1
            self.on_death(spec)
            reason = f"worker {spec.label} {why}"
            try:
                requeued = await self.backend.mark_dead([spec], [handle], reason=reason)
            except Exception as exc:  # the database refuses: every tick tries again first
                self._unreleased[handle] = reason
                log.warning("%s %s; its row and jobs cannot be released yet: %s: %s",
                            spec.label, why, type(exc).__name__, exc)
            else:
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
        refused = 0
        while True:
            try:
                registered = await self.replace(spec)
            except DatabaseUnusableError as exc:
                # Not the worker's fault: no death counted, tried again later.
                retry = self.settings.restart.backoff_max
                (log.debug if refused else log.warning)(
                    "cannot start a replacement for %s yet (%s); trying again every %g s",
                    spec.label, exc, retry)
                refused += 1
                await trio.sleep(retry)
                continue
            break
        if registered:
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
