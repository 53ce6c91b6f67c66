"""A pure-Trio fake of the startup backend, for tests of the engine.

No threads and no processes: fake workers follow a :class:`WorkerScript`
in Trio's (virtual) time, so tests under ``MockClock(autojump_threshold=0)``
are exact and a 10 s timeout costs nothing.  The fake keeps the books that
the safety properties are checked against: how many spawns ran at once, how
many workers were between spawn and registration at once (the bound of the
``registration`` slot mode), when each worker was asked to stop and killed,
and which rows claim a live worker.

Like ``trio.testing``, this is public so that callers such as CLM can test
their own use of the engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio

from .backend import Own, PollResult
from .errors import FatalExecutorError
from .executors.base import Activity, WorkerHandle
from .plan import WorkerSpec
from .registry import Event


class FakeSpawnError(RuntimeError):
    pass


class FakeStopError(RuntimeError):
    pass


class FakeDatabaseError(RuntimeError):
    pass


@dataclass(frozen=True)
class WorkerScript:
    """What one fake worker does, in seconds of (virtual) time."""

    spawn_latency: float = 0.0
    #: ``None``: spawn works; ``"error"``: it raises; ``"fatal"``: it raises FatalExecutorError.
    spawn_failure: str | None = None
    #: Seconds after its spawn until it registers; ``None``: never.
    register_after: float | None = 0.5
    #: Seconds after its spawn until it exits by itself; ``None``: never.
    exit_after: float | None = None
    exit_code: int = 3
    #: Seconds it takes to exit after SIGTERM; ``None``: it ignores SIGTERM.
    term_latency: float | None = 0.0
    #: Kill raises (the worker still dies).
    kill_raises: bool = False
    #: SIGTERM cannot be delivered: ``request_stop`` reports a failure for it.
    stop_raises: bool = False
    #: Seconds a kill call for it blocks (reaping a slow process, a slow engine);
    #: like a thread, not cancellable once begun.
    kill_latency: float = 0.0
    #: The share of its time since spawn it waits for a CPU (a machine with
    #: more booting workers than cores): not charged to its registration deadline.
    cpu_wait_fraction: float = 0.0
    #: CPU seconds its process tree uses per second while it runs (not while stopped).
    cpu_per_second: float = 0.0


#: The exit code of a worker whose fork server died (as :data:`clm_workers.launch.ORPHANED_EXIT_CODE`).
ORPHANED_EXIT_CODE = 70


@dataclass(frozen=True)
class ForkServerScript:
    """What the fake fork server does for the ``start_method="forkserver"`` workers.

    One template per worker type starts at the first spawn of that type and
    is ready ``preload`` seconds later; every spawn waits for it (shielded,
    like the real executor's thread), then forks in ``fork_latency``.  A
    template that is not ``available`` (it could not preload, or was unsafe
    to fork) makes its workers spawned as their scripts say, after its
    preload time.  The first template of each type dies at ``dies_at``
    (virtual time): its workers end ``orphan_delay`` later with
    :data:`ORPHANED_EXIT_CODE`; a spawn that was waiting for it is spawned
    instead; the next spawn starts a new template, which never dies.
    """

    preload: float = 0.5
    fork_latency: float = 0.0
    available: bool = True
    dies_at: float | None = None
    orphan_delay: float = 0.5


@dataclass
class FakeTemplate:
    worker_type: str
    generation: int
    ready_at: float
    dies_at: float | None


@dataclass(eq=False)
class FakeWorker:
    spec: WorkerSpec
    script: WorkerScript
    spawned_at: float
    term_at: float | None = None
    killed_at: float | None = None
    kills: int = 0
    #: When the spawn began (before its latency); ``spawned_at`` is when it returned.
    spawn_started_at: float | None = None
    #: Every ``request_stop`` and every ``kill`` call for this worker, by time.
    stop_requests: list[float] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)
    #: When a poll first reported it registered.
    registered_seen_at: float | None = None
    #: When it died by itself from outside its script (see :meth:`FakeBackend.die`).
    died_at: float | None = None
    #: Since when it is stopped (SIGSTOP, a paused container; see :meth:`FakeBackend.freeze`).
    stopped_at: float | None = None
    #: Between spawn start and registration (or its end): it holds a
    #: ``registration`` slot, as far as the fake can tell.
    booting: bool = False
    #: ``forkserver`` when forked from a fake template, else ``spawn``; and why not forked.
    start_method: str = "spawn"
    note: str = ""
    #: When it ends because its template died (forked workers only).
    orphaned_at: float | None = None

    @property
    def exit_code(self) -> int:
        """The script's exit code, unless its template's death ended it first."""
        if self.orphaned_at is not None and self.orphaned_at <= self._exit_time(orphan=False):
            return ORPHANED_EXIT_CODE
        return self.script.exit_code

    def exit_time(self) -> float:
        return self._exit_time(orphan=True)

    def _exit_time(self, *, orphan: bool) -> float:
        times = [math.inf]
        if orphan and self.orphaned_at is not None:
            times.append(self.orphaned_at)
        if self.script.exit_after is not None:
            times.append(self.spawned_at + self.script.exit_after)
        if self.died_at is not None:
            times.append(self.died_at)
        if self.term_at is not None and self.script.term_latency is not None:
            times.append(self.term_at + self.script.term_latency)
        if self.killed_at is not None:
            times.append(self.killed_at)
        return min(times)

    def running(self, now: float) -> bool:
        return now < self.exit_time()

    def cpu_seconds(self, now: float) -> float:
        ran_until = now if self.stopped_at is None else min(now, self.stopped_at)
        return self.script.cpu_per_second * max(0.0, ran_until - self.spawned_at)

    def stopped(self, now: float) -> bool:
        return self.stopped_at is not None and self.stopped_at <= now

    def registered_by(self, now: float) -> bool:
        after = self.script.register_after
        if after is None:
            return False
        at = self.spawned_at + after
        # A worker can only register while alive; SIGTERM before registering ends it at once.
        return at <= now and at < self.exit_time() and (self.term_at is None or at < self.term_at)


@dataclass
class FakeBackend:
    """Implements :class:`~clm_workers.backend.StartupBackend` in pure Trio."""

    scripts: Mapping[tuple[str, int], WorkerScript] = field(default_factory=dict)
    default: WorkerScript = field(default_factory=WorkerScript)
    #: From this (virtual) time on every poll raises, like a database that broke.
    poll_fails_at: float | None = None
    #: From this (virtual) time on every write (``mark_dead``, ``record``) raises.
    writes_fail_at: float | None = None
    prepare_fails: bool = False

    workers: list[FakeWorker] = field(default_factory=list)
    rows: dict[int, str] = field(default_factory=dict)  # db id -> status
    row_of: dict[tuple[str, int], int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    spawning: int = 0
    max_spawning: int = 0
    #: Workers between the start of their spawn and a poll that reported them
    #: registered, their kill, or their spawn's failure.  In ``registration``
    #: slot mode the engine holds a slot over a superset of that interval, so
    #: ``max_booting <= concurrency`` must hold there.
    booting: int = 0
    max_booting: int = 0
    polls: int = 0
    #: How often each worker (by key) was spawned, failed spawns included.
    spawn_calls: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Workers (by key) whose row a ``mark_dead`` call failed to mark.
    unmarked: set[tuple[str, int]] = field(default_factory=set)
    #: ``(call, began, ended)`` of every call that blocks uncancellably (a
    #: thread in the real backend): ``"spawn"`` and ``"kill"``.
    blocking_calls: list[tuple[str, float, float]] = field(default_factory=list)
    #: The fork server of ``start_method="forkserver"`` workers (``None``: they are spawned).
    fork_server: ForkServerScript | None = None
    #: Every template started, in order; the current one of each type last.
    templates: list[FakeTemplate] = field(default_factory=list)

    def script_for(self, spec: WorkerSpec) -> WorkerScript:
        return self.scripts.get(spec.key, self.default)

    # -- the seam --------------------------------------------------------------

    async def prepare(self, specs: Sequence[WorkerSpec], events: Sequence[Event]) -> list[WorkerSpec]:
        await trio.lowlevel.checkpoint()
        if self.prepare_fails:
            raise FakeDatabaseError("attempt to write a readonly database")
        result = []
        for spec in specs:
            db_id = len(self.rows) + 1
            self.rows[db_id] = "created"
            self.row_of[spec.key] = db_id
            result.append(spec.with_db_id(db_id))
        self.events.extend(events)
        return result

    async def spawn(self, spec: WorkerSpec, limiter: trio.CapacityLimiter, own: Own) -> WorkerHandle:
        script = self.script_for(spec)
        async with limiter:
            self.spawn_calls[spec.key] = self.spawn_calls.get(spec.key, 0) + 1
            started_at = trio.current_time()
            self.spawning += 1
            self.max_spawning = max(self.max_spawning, self.spawning)
            self._boot(+1)
            forked: tuple[FakeTemplate | None, str] = (None, "")
            try:
                # Like a thread, the spawn is not cancellable once it has begun.
                with trio.CancelScope(shield=True):
                    if spec.start_method == "forkserver" and self.fork_server is not None:
                        forked = await self._fork(spec, script)
                    else:
                        await trio.sleep(script.spawn_latency)
            finally:
                self.spawning -= 1
                self.blocking_calls.append(("spawn", started_at, trio.current_time()))
            if script.spawn_failure is not None:
                self._boot(-1)
                if script.spawn_failure == "fatal":
                    raise FatalExecutorError("the fake engine is unreachable")
                raise FakeSpawnError(f"cannot spawn {spec.label}")
            template, note = forked
            worker = FakeWorker(spec, script, spawned_at=trio.current_time(),
                                spawn_started_at=started_at, booting=True,
                                start_method="forkserver" if template is not None else "spawn", note=note)
            if template is not None and template.dies_at is not None and self.fork_server is not None:
                worker.orphaned_at = template.dies_at + self.fork_server.orphan_delay
            self.workers.append(worker)
            # No checkpoint between the worker existing and its owner knowing it.
            return own(WorkerHandle(spec, spec.executor_id, native=worker,
                                    start_method=worker.start_method, note=worker.note))

    async def _fork(self, spec: WorkerSpec, script: WorkerScript) -> tuple[FakeTemplate | None, str]:
        """Wait for the type's template and fork from it, or spawn instead; returns (template, note)."""
        server = self.fork_server
        assert server is not None
        now = trio.current_time()
        current = [t for t in self.templates if t.worker_type == spec.worker_type]
        template = current[-1] if current else None
        if template is None or (template.dies_at is not None and template.dies_at <= now):
            generation = len(current)
            template = FakeTemplate(spec.worker_type, generation, ready_at=now + server.preload,
                                    dies_at=server.dies_at if generation == 0 and server.dies_at is not None
                                    and server.dies_at > now else None)
            self.templates.append(template)
        await trio.sleep_until(template.ready_at)
        reason = ""
        if template.dies_at is not None and template.dies_at <= trio.current_time():
            reason = "its template ended before it was ready"
        elif not server.available:
            reason = "the fake template cannot preload"
        else:
            await trio.sleep(server.fork_latency)
            if template.dies_at is None or trio.current_time() < template.dies_at:
                return template, ""
            reason = "its template died"
        await trio.sleep(script.spawn_latency)
        return None, f"spawned, not forked: the fork server is unavailable: {reason}"

    async def poll(self, handles: Sequence[WorkerHandle]) -> PollResult:
        self.polls += 1
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        if self.poll_fails_at is not None and now >= self.poll_fails_at:
            raise FakeDatabaseError("database disk image is malformed")
        result = PollResult()
        for handle in handles:
            worker: FakeWorker = handle.native
            if not worker.running(now):
                result.exited[handle] = worker.exit_code
            if worker.registered_by(now):
                result.registered[handle] = self.row_of[handle.spec.key]
                if worker.registered_seen_at is None:
                    worker.registered_seen_at = now
                self._end_boot(worker)
        return result

    async def exit_codes(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, int]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        return {h: h.native.exit_code for h in handles if not h.native.running(now)}

    async def activity(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, Activity]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        return {
            h: Activity(h.native.cpu_seconds(now), stopped=h.native.stopped(now))
            for h in handles if h.native.running(now)
        }

    async def request_stop(self, handles: Sequence[WorkerHandle]) -> list[tuple[WorkerHandle, Exception]]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        failures: list[tuple[WorkerHandle, Exception]] = []
        for handle in handles:
            worker: FakeWorker = handle.native
            worker.stop_requests.append(now)
            if worker.script.stop_raises:
                failures.append((handle, FakeStopError(f"cannot signal {handle.spec.label}")))
            elif worker.term_at is None:
                worker.term_at = now
        return failures

    async def kill(self, handles: Sequence[WorkerHandle]) -> list[tuple[WorkerHandle, Exception]]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        failures: list[tuple[WorkerHandle, Exception]] = []
        for handle in handles:
            worker: FakeWorker = handle.native
            worker.kills += 1
            worker.kill_times.append(now)
            if worker.killed_at is None:
                worker.killed_at = now
            self._end_boot(worker)
            if worker.script.kill_raises:
                failures.append((handle, FakeStopError(f"cannot kill {handle.spec.label}")))
        # The kills run in parallel (threads in the real backend): the call
        # takes as long as the slowest, and cannot be cancelled.
        latency = max((h.native.script.kill_latency for h in handles), default=0.0)
        if latency > 0:
            with trio.CancelScope(shield=True):
                await trio.sleep(latency)
        self.blocking_calls.append(("kill", now, trio.current_time()))
        return failures

    async def output_tail(self, handle: WorkerHandle) -> str:
        await trio.lowlevel.checkpoint()
        return f"fake output of {handle.spec.label}"

    async def run_queue_wait(self, handle: WorkerHandle) -> float:
        await trio.lowlevel.checkpoint()
        worker: FakeWorker = handle.native
        return worker.script.cpu_wait_fraction * (trio.current_time() - worker.spawned_at)

    async def mark_dead(
        self,
        specs: Sequence[WorkerSpec],
        handles: Sequence[WorkerHandle] = (),
        *,
        reason: str = "worker stopped",
    ) -> int:
        await trio.lowlevel.checkpoint()
        # Like the real registry: by row id and by the handles' executor ids.
        keys = [spec.key for spec in [*specs, *(h.spec for h in handles)]]
        if self._write_fails():
            self.unmarked.update(keys)
            raise FakeDatabaseError("disk I/O error")
        for spec in [*specs, *(h.spec for h in handles)]:
            db_id = self.row_of.get(spec.key)
            if db_id is not None:
                self.rows[db_id] = "dead"
        return 0

    async def record(self, events: Sequence[Event]) -> None:
        await trio.lowlevel.checkpoint()
        if self._write_fails():
            raise FakeDatabaseError("disk I/O error")
        self.events.extend(events)

    def _write_fails(self) -> bool:
        return self.writes_fail_at is not None and trio.current_time() >= self.writes_fail_at

    # -- outside events ----------------------------------------------------------

    def die(self, handle: WorkerHandle, at: float | None = None) -> None:
        """Make a worker die by itself (a crash, the OOM killer) at ``at`` (default: now)."""
        worker: FakeWorker = handle.native
        when = trio.current_time() if at is None else at
        worker.died_at = when if worker.died_at is None else min(worker.died_at, when)

    def freeze(self, handle: WorkerHandle, at: float | None = None) -> None:
        """Stop a worker (SIGSTOP, a paused container) from ``at`` (default: now) on; a kill still ends it."""
        worker: FakeWorker = handle.native
        worker.stopped_at = trio.current_time() if at is None else at

    def _boot(self, delta: int) -> None:
        self.booting += delta
        self.max_booting = max(self.max_booting, self.booting)

    def _end_boot(self, worker: FakeWorker) -> None:
        if worker.booting:
            worker.booting = False
            self._boot(-1)

    # -- the books ---------------------------------------------------------------

    def row_status(self, key: tuple[str, int], now: float) -> str:
        """The row as a real database would show it: workers flip it to idle."""
        status = self.rows[self.row_of[key]]
        if status == "created":
            worker = self.worker_for(key)
            if worker is not None and worker.registered_by(now):
                return "idle"
        return status

    def worker_for(self, key: tuple[str, int]) -> FakeWorker | None:
        return next((w for w in self.workers if w.spec.key == key), None)

    def running_workers(self, now: float) -> list[FakeWorker]:
        return [w for w in self.workers if w.running(now)]
