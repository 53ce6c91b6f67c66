"""The Trio startup engine: start every worker at once, safely.

One nursery; one child task per worker; a :class:`trio.CapacityLimiter`
bounding the blocking spawns (or, in ``registration`` slot mode, the workers
between spawn and registration); one :class:`RegistrationWatcher` for all
registrations; a deadline per worker.  This is the only module that knows
about nurseries, limiters, deadlines and cleanup order.

The promise: when :func:`start_workers` returns, every worker is either in
``report.started`` (registered, running, owned by ``owner``) or in
``report.failed`` (stopped, its row ``dead``).  When it raises, whatever the
reason (a fatal error, ``fail_fast``, Ctrl-C, an outside cancellation), every
worker it started has been stopped and no row of this start claims a live
worker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import trio

from .backend import StartupBackend
from .config import StartupSettings
from .errors import FatalExecutorError, PoolStartupError, database_unusable
from .executors.base import WorkerHandle
from .ledger import LiveWorkers
from .plan import WorkerSpec
from .registry import Event
from .report import FailedWorker, FailurePhase, ProgressEvent, StartedWorker, StartupReport
from .stopping import run_to_completion, stop_workers
from .watcher import Exited, Outcome, Registered, RegistrationWatcher

log = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressEvent], None]

#: However busy the CPUs, a worker not registered this many registration
#: timeouts after its spawn has failed.
_MAX_WAIT_FACTOR = 10.0
#: The smallest step by which a deadline moves on (it converges on its limit).
_MIN_DEADLINE_STEP = 0.1


@trio.lowlevel.enable_ki_protection
async def start_workers(
    specs: Sequence[WorkerSpec],
    backend: StartupBackend,
    settings: StartupSettings,
    owner: LiveWorkers,
    on_progress: ProgressCallback | None = None,
    *,
    announce: bool = True,
) -> StartupReport:
    """Start ``specs`` and wait for each to register, exit or time out.

    ``announce=False`` leaves out the ``pool_starting``/``pool_started``
    events (for a replacement worker started by the monitor).

    Raises :class:`PoolStartupError` for errors that would fail every worker
    (the database cannot be written, the executor is unusable) and, with
    ``settings.fail_fast``, for the first per-worker failure.

    Cancellation: an outside cancellation or ``KeyboardInterrupt`` cancels all
    pending starts, stops every worker already started (shielded, bounded by
    ``settings.stop_bound``) and then propagates.

    ``KeyboardInterrupt`` is taken at a checkpoint: this function and every
    task it starts are protected (``trio.lowlevel.enable_ki_protection``),
    so Trio raises a Ctrl-C in the main task where it waits, never in the
    middle of the engine's code or of a callback that runs in it.  Raised
    anywhere, it could land in a weakref callback or a finaliser of the
    collector, where Python prints it and drops it: the start would go on
    as if no Ctrl-C had come.
    """
    run = _StartupRun(backend, settings, owner, on_progress, announce)
    return await run.start(specs)


class _StartupRun:
    """State of one call of :func:`start_workers`."""

    def __init__(
        self,
        backend: StartupBackend,
        settings: StartupSettings,
        owner: LiveWorkers,
        on_progress: ProgressCallback | None,
        announce: bool,
    ) -> None:
        self.announce = announce
        self.backend = backend
        self.settings = settings
        self.owner = owner
        self.on_progress = on_progress
        self.report = StartupReport()
        self.specs: list[WorkerSpec] = []
        self.fatal: str | None = None
        self._t0 = trio.current_time()
        self._limiter = trio.CapacityLimiter(settings.concurrency)
        # In "registration" slot mode the task itself holds a token of
        # ``_limiter``; a task may not borrow the same limiter twice, so its
        # spawn runs under a limiter that never blocks.
        self._spawn_limiter = (
            self._limiter if settings.slot_mode == "spawn" else trio.CapacityLimiter(math.inf)
        )
        self._cancel_scope = trio.CancelScope()
        #: The workers this run started.  Cleanup stops only these: the owner
        #: may also hold a running pool's workers (a replacement's start).
        self._mine = LiveWorkers()
        self._finished = False
        self.watcher = RegistrationWatcher(
            backend, settings.poll_interval,
            on_error=lambda exc: self.fail_fatal(f"watching registrations failed: {exc}"),
        )

    def elapsed(self, at: float | None = None) -> float:
        return (trio.current_time() if at is None else at) - self._t0

    async def start(self, specs: Sequence[WorkerSpec]) -> StartupReport:
        try:
            self.specs = await self.backend.prepare(
                specs, [_pool_event("pool_starting", specs)] if self.announce else []
            )
        except FatalExecutorError as exc:
            raise PoolStartupError(str(exc)) from exc
        except Exception as exc:
            raise database_unusable(exc) from exc
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.watcher.run)
                    nursery.start_soon(self._stop_early_if_cancelled)
                    async with trio.open_nursery() as starters:
                        for spec in self.specs:
                            starters.start_soon(self._start_one, spec)
                    self._finished = True
                    nursery.cancel_scope.cancel()  # every worker is accounted for: stop watching
        except BaseException:
            await self._clean_up()
            raise
        self.report.duration = self.elapsed()
        if self.fatal is not None:
            await self._clean_up()
            raise PoolStartupError(self.fatal, self.report)
        mode_of = {spec.key: spec.execution_mode for spec in self.specs}
        events = [
            Event("worker_ready", w.worker_type, w.db_worker_id, mode_of[(w.worker_type, w.index)],
                  metadata={"spawned_at": round(w.spawned_at, 3), "registered_at": round(w.registered_at, 3),
                            "start_method": w.start_method, **({"note": w.note} if w.note else {})})
            for w in self.report.started
        ]
        if self.announce:
            events.append(_pool_event(
                "pool_started", self.specs, started=len(self.report.started),
                failed=len(self.report.failed), duration=round(self.report.duration, 3),
            ))
        await self._audit(events)
        return self.report

    async def _audit(self, events: list[Event]) -> None:
        """Write audit events; a failure to do so is logged, never fatal."""
        try:
            await self.backend.record(events)
        except Exception as exc:
            log.warning("could not record %s: %s", events[-1].event_type if events else "events", exc)

    @trio.lowlevel.enable_ki_protection
    async def _stop_early_if_cancelled(self) -> None:
        """On a fatal error or an outside cancellation, SIGTERM this run's workers at once.

        The nursery cannot close before every spawn blocking in a thread has
        returned (a slow ``docker create`` may take long); the workers already
        running must not wait for that.  The cleanup after the nursery then
        kills and reaps them all.
        """
        try:
            await trio.sleep_forever()
        finally:
            if not self._finished:
                with trio.CancelScope(shield=True):
                    await self.backend.request_stop(self._mine.snapshot())

    def _own(self, handle: WorkerHandle) -> WorkerHandle:
        """Take ownership of a new worker; called in the spawning thread."""
        self._mine.own(handle)
        return self.owner.own(handle)

    def fail_fatal(self, reason: str) -> None:
        """Record the first fatal reason and cancel every pending start."""
        if self.fatal is None:
            self.fatal = reason
            log.error("pool startup failed: %s", reason)
        self._cancel_scope.cancel()

    # -- one worker ----------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    async def _start_one(self, spec: WorkerSpec) -> None:
        if self.settings.slot_mode == "registration":
            async with self._limiter:
                await self._spawn_and_wait(spec)
        else:
            await self._spawn_and_wait(spec)

    async def _spawn_and_wait(self, spec: WorkerSpec) -> None:
        try:
            handle = await self.backend.spawn(spec, self._spawn_limiter, self._own)
        except FatalExecutorError as exc:
            self.fail_fatal(str(exc))
            return
        except Exception as exc:
            await self._fail(spec, None, "spawn", f"could not be started: {type(exc).__name__}: {exc}")
            return
        try:
            await self._await_outcome(spec, handle)
        except trio.Cancelled:
            # A spawn that returned after the run was cancelled: stop its
            # worker now, not when the slowest spawn in flight returns.
            with trio.CancelScope(shield=True):
                await self.backend.request_stop([handle])
            raise

    async def _await_outcome(self, spec: WorkerSpec, handle: WorkerHandle) -> None:
        """Wait for the worker to register, exit or time out, and record which."""
        spawned_at = self.elapsed()
        self._progress("spawned", spec)
        outcome = await self._wait_for_outcome(handle)
        # Failures are handled outside the deadline's scope: stopping a worker
        # must not be cut short because its registration deadline passed.
        if isinstance(outcome, str):
            await self._fail(spec, handle, "timeout", outcome)
        elif isinstance(outcome, Exited):
            await self._fail(
                spec, handle, "exit", f"exited with code {outcome.exit_code} before registering",
                exit_code=outcome.exit_code,
            )
        else:
            handle.db_worker_id = outcome.db_worker_id
            self.report.started.append(StartedWorker(
                worker_type=spec.worker_type, index=spec.index, executor_id=handle.executor_id,
                db_worker_id=outcome.db_worker_id, spawned_at=spawned_at,
                registered_at=self.elapsed(outcome.at), pid=handle.pid,
                start_method=handle.start_method, note=handle.note,
            ))
            self._progress("registered", spec)

    async def _wait_for_outcome(self, handle: WorkerHandle) -> Outcome | str:
        """The worker's registration or exit, or, once its deadline passed, why it timed out.

        The deadline charges a worker only for the time it could run: it
        passes ``registration_timeout`` seconds after the spawn *plus* the
        time the worker's process waited for a CPU (on 2 cores, 40 booting
        workers each wait most of the time, and their boots are healthy).
        Each time the deadline passes, the wait so far moves it on; never
        beyond ``_MAX_WAIT_FACTOR`` timeouts after the spawn, however busy the
        machine.  Before a timeout is declared one last poll is made, so that a
        worker that registered as the deadline passed counts as registered.

        Cancellation: safe at any point (as :meth:`RegistrationWatcher.wait`).
        """
        timeout = self.settings.registration_timeout
        start = trio.current_time()
        limit = start + timeout * _MAX_WAIT_FACTOR
        deadline = start + timeout
        while True:
            with trio.move_on_at(min(deadline, limit)):
                return await self.watcher.wait(handle)
            outcome, waited = await self._last_look(handle)
            if outcome is not None:
                return outcome
            now = trio.current_time()
            if now >= limit:
                return (f"did not register within {timeout * _MAX_WAIT_FACTOR:g} s, the limit however "
                        f"busy the CPUs ({waited:.1f} s of it waiting for one); it was stopped")
            if start + timeout + waited <= now:
                busy = f" ({now - start:.1f} s since its start, {waited:.1f} s of it waiting for a CPU)"
                return (f"did not register within {timeout:g} s of run time"
                        f"{busy if waited >= 0.05 else ''}; it was stopped")
            deadline = max(start + timeout + waited, now + _MIN_DEADLINE_STEP)

    async def _last_look(self, handle: WorkerHandle) -> tuple[Outcome | None, float]:
        """At a deadline: did the worker register or exit after all, and how long it waited for a CPU."""
        try:
            last = await self.backend.poll([handle])
        except Exception as exc:  # as in the watcher: the database failed, every start is doomed
            self.fail_fatal(f"watching registrations failed: {exc}")
            return None, 0.0
        now = trio.current_time()
        if handle in last.registered:
            return Registered(last.registered[handle], now), 0.0
        if handle in last.exited:
            return Exited(last.exited[handle], now), 0.0
        try:
            return None, await self.backend.run_queue_wait(handle)
        except Exception as exc:  # a diagnostic only: the deadline stays where it is
            log.debug("no run-queue wait for %s: %s", handle.spec.label, exc)
            return None, 0.0

    async def _fail(
        self,
        spec: WorkerSpec,
        handle: WorkerHandle | None,
        phase: FailurePhase,
        reason: str,
        exit_code: int | None = None,
    ) -> None:
        """Stop what is left of a failed worker, mark its row dead, report it."""
        tail = ""
        if handle is not None:
            await stop_workers(self.backend, [handle], grace=self.settings.stop_grace, owner=self.owner)
            tail = (await self.backend.output_tail(handle)).strip()
            if phase == "timeout" and await self._registered_after_all(handle):
                # Its own registration event says "registered": say why that did not count.
                reason = f"{reason} (it registered only after its deadline, as it was being stopped)"
        try:
            await self.backend.mark_dead([spec], [handle] if handle else [])
        except Exception as exc:  # the database failed: every other start is doomed too
            self.fail_fatal(f"recording {spec.label} dead failed: {exc}")
        if tail:
            reason = f"{reason}; last output: {tail.splitlines()[-1]}"
        failure = FailedWorker(
            worker_type=spec.worker_type, index=spec.index, phase=phase, reason=reason,
            executor_id=handle.executor_id if handle else None, exit_code=exit_code,
            output_tail=tail, start_method=handle.start_method if handle else spec.start_method,
            note=handle.note if handle else "",
        )
        self.report.failed.append(failure)
        await self._audit([Event(
            "worker_failed", spec.worker_type, spec.db_worker_id, spec.execution_mode,
            f"{spec.label} failed ({phase}): {reason}", {"phase": phase, "elapsed": round(self.elapsed(), 3)},
        )])
        self._progress("failed", spec, reason, phase)
        if self.settings.fail_fast:
            self.fail_fatal(f"{spec.label} failed ({phase}) and fail_fast is set: {reason}")

    async def _registered_after_all(self, handle: WorkerHandle) -> bool:
        """Whether a worker failed as a timeout shows a registration now (it came too late)."""
        try:
            return handle in (await self.backend.poll([handle])).registered
        except Exception:  # a diagnostic only
            return False

    def _progress(
        self, kind: str, spec: WorkerSpec, detail: str = "", phase: FailurePhase | None = None
    ) -> None:
        if self.on_progress is not None:
            self.on_progress(ProgressEvent(
                kind, spec.worker_type, spec.index, self.elapsed(), detail, phase  # type: ignore[arg-type]
            ))

    # -- cleanup ---------------------------------------------------------------

    async def _clean_up(self) -> None:
        """Stop every worker this run started and release every row it created.

        Shielded from outside cancellation, bounded by ``settings.stop_bound``,
        and not cut short by Ctrl-C either: a ``KeyboardInterrupt`` that
        arrives meanwhile is raised once the cleanup is done.
        """
        try:
            await run_to_completion(self._stop_all_mine)
        finally:
            self.report.started.clear()

    async def _stop_all_mine(self) -> None:
        with trio.move_on_after(self.settings.stop_bound):  # shielded by run_to_completion
            handles = [h for h in self._mine.snapshot() if h in self.owner]
            await stop_workers(self.backend, handles, grace=self.settings.stop_grace, owner=self.owner)
            try:
                await self.backend.mark_dead(self.specs, handles)
            except Exception as exc:  # the database may be the very thing that failed
                log.warning("could not mark this start's rows dead: %s", exc)


def _pool_event(event_type: str, specs: Sequence[WorkerSpec], **metadata: object) -> Event:
    types = sorted({s.worker_type for s in specs})
    return Event(event_type, ",".join(types) or "-", metadata={"workers": len(specs), **metadata})
