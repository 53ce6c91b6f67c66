"""Generated startup scenarios and the five invariants checked after each.

A :class:`Scenario` is a plain, printable value: the pools, the settings, one
:class:`~clm_workers.testing.WorkerScript` per worker, the outside events (a
cancellation, a database that breaks, an unusable database) and a seed for
Trio's scheduler.  Its ``repr`` is Python that rebuilds it, so a failing
example Hypothesis prints can be replayed outside Hypothesis::

    from interleavings import *
    check(run_scenario(Scenario(...)))   # paste the printed Scenario

The invariants are the issue's (docs/property-tests.md explains each):

1. no leak;  2. the limiter is never exceeded;  3. every worker is in exactly
one of started/failed, with the right phase;  4. no worker waits more than
``registration_timeout`` after its spawn, and the whole start stays within
the time its scripts imply;  5. the registry agrees with the processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import trio
import trio.testing
from hypothesis import strategies as st

from clm_workers.config import StartupSettings, WorkerConfig
from clm_workers.errors import PoolStartupError
from clm_workers.ledger import LiveWorkers
from clm_workers.plan import WorkerSpec, plan_workers
from clm_workers.report import StartupReport
from clm_workers.startup import _MAX_WAIT_FACTOR, _MIN_DEADLINE_STEP, start_workers
from clm_workers.testing import ORPHANED_EXIT_CODE, FakeBackend, FakeWorker, ForkServerScript, WorkerScript

__all__ = [
    "ForkServerScript", "Run", "Scenario", "StartupSettings", "WorkerScript", "check", "run_scenario",
    "scenarios", "time_bound", "worker_scripts",
]

#: Float slack for comparisons of virtual times (sums of sleeps).
EPS = 1e-6
#: ``stopping._EXIT_POLL_INTERVAL``: how often a stop looks whether workers exited.
STOP_POLL = 0.02
#: Row statuses that claim a live worker.
LIVE = ("created", "idle", "busy")

WORKER_TYPES = ("notebook", "plantuml", "drawio")

#: Round times make ties (two events at one instant) likely; floats find the rest.
GRID = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 12.0)


def seconds(maximum: float) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from([t for t in GRID if t <= maximum]),
        st.floats(0.0, maximum, allow_nan=False, allow_infinity=False),
    )


# -- the scenario ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One generated start: replay it with ``check(run_scenario(scenario))``."""

    pools: tuple[tuple[str, int], ...]
    settings: StartupSettings
    #: One script per worker, in plan order (types in ``pools`` order, then index).
    scripts: tuple[WorkerScript, ...]
    #: Seconds after the start at which the caller cancels it (``trio.move_on_after``).
    cancel_at: float | None = None
    #: From this virtual time on the database cannot be read (every poll raises).
    poll_fails_at: float | None = None
    #: The database cannot be written at all (pre-registration fails).
    prepare_fails: bool = False
    #: From this virtual time on the manager's writes (``mark_dead``, events) fail.
    writes_fail_at: float | None = None
    #: Seeds Trio's scheduler, which orders the tasks that are ready at one instant.
    schedule_seed: int = 0
    #: Every pool is ``start_method="forkserver"``, forked by this fake fork server.
    fork_server: ForkServerScript | None = None

    def specs(self) -> list[WorkerSpec]:
        method = "forkserver" if self.fork_server is not None else "spawn"
        configs = [WorkerConfig(t, n, module="clm_workers.sim", start_method=method) for t, n in self.pools]
        return plan_workers(configs, "property-session")

    def script_of(self) -> dict[tuple[str, int], WorkerScript]:
        return {spec.key: script for spec, script in zip(self.specs(), self.scripts, strict=True)}


@st.composite
def worker_scripts(draw: st.DrawFn) -> WorkerScript:
    """What one worker does: spawn, then register, crash, hang; and how it stops."""
    # Shrinks towards 0: a worker that registers.
    kind = draw(st.integers(0, 99))
    register_after: float | None = None
    exit_after: float | None = None
    spawn_failure: str | None = None
    if kind < 55:
        register_after = draw(seconds(12.0))
    elif kind < 75:  # crashes before registering (it may have been about to)
        exit_after = draw(seconds(12.0))
        register_after = draw(st.none() | seconds(12.0).map(lambda r: exit_after + r))
    elif kind < 88:  # hangs: never registers, never exits
        pass
    elif kind < 97:
        spawn_failure = "error"
    else:
        spawn_failure = "fatal"
    rare = st.integers(0, 9).map(lambda x: x == 9)
    return WorkerScript(
        spawn_latency=draw(seconds(3.0)),
        spawn_failure=spawn_failure,
        register_after=register_after,
        exit_after=exit_after,
        exit_code=draw(st.sampled_from([3, 0, 1, 70, 137])),
        term_latency=draw(st.one_of(st.just(0.0), st.none(), seconds(5.0))),
        kill_raises=draw(rare),
        stop_raises=draw(rare),
        kill_latency=draw(st.sampled_from([0.0, 0.0, 0.01, 0.2, 1.0])),
        # Booting on a machine with more boots than cores: most of the time
        # waiting for a CPU (0.97: past the deadline's limit however busy).
        cpu_wait_fraction=draw(st.sampled_from([0.0, 0.0, 0.0, 0.5, 0.9, 0.97])),
    )


@st.composite
def fork_server_scripts(draw: st.DrawFn) -> ForkServerScript:
    """A fork server: how long its templates preload, whether they work, when the first one dies."""
    return ForkServerScript(
        preload=draw(seconds(3.0)),
        fork_latency=draw(st.sampled_from([0.0, 0.0, 0.01, 0.2])),
        available=draw(st.integers(0, 4).map(lambda x: x != 4)),
        dies_at=draw(st.none() | seconds(12.0)),
        orphan_delay=draw(st.sampled_from([0.0, 0.5, 1.0])),
    )


@st.composite
def startup_settings(draw: st.DrawFn) -> StartupSettings:
    return StartupSettings(
        concurrency=draw(st.integers(1, 6) | st.sampled_from([10, 1000])),
        registration_timeout=draw(
            st.sampled_from([10.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0])
            | st.floats(0.1, 10.0, allow_nan=False, allow_infinity=False)
        ),
        slot_mode=draw(st.sampled_from(["spawn", "registration"])),
        fail_fast=draw(st.booleans()),
        stop_grace=draw(st.sampled_from([1.0, 0.0, 0.05, 0.5, 5.0])),
        poll_interval=draw(st.sampled_from([0.01, 0.05, 0.2])),
    )


@st.composite
def scenarios(
    draw: st.DrawFn, *, max_per_type: int = 6, outside_events: bool = True, fork_server: bool | None = None
) -> Scenario:
    """A generated start; ``fork_server`` ``True``/``False`` forces one or none (``None``: sometimes)."""
    types = draw(st.lists(st.sampled_from(WORKER_TYPES), min_size=1, max_size=3, unique=True))
    pools = tuple((t, draw(st.integers(0, max_per_type))) for t in types)
    total = sum(n for _, n in pools)
    scripts = tuple(draw(st.lists(worker_scripts(), min_size=total, max_size=total)))
    cancel_at = poll_fails_at = writes_fail_at = None
    prepare_fails = False
    if outside_events:
        cancel_at = draw(st.none() | seconds(15.0))
        poll_fails_at = draw(st.none() | st.none() | seconds(12.0))
        writes_fail_at = draw(st.none() | st.none() | st.none() | seconds(12.0))
        prepare_fails = draw(st.integers(0, 29).map(lambda x: x == 29))
    server = None
    if fork_server or (fork_server is None and draw(st.integers(0, 3)) == 3):
        server = draw(fork_server_scripts())
    return Scenario(
        pools=pools, settings=draw(startup_settings()), scripts=scripts, cancel_at=cancel_at,
        poll_fails_at=poll_fails_at, prepare_fails=prepare_fails, writes_fail_at=writes_fail_at,
        schedule_seed=draw(st.integers(0, 2**32 - 1)), fork_server=server,
    )


# -- running one --------------------------------------------------------------------------


@dataclass
class Run:
    """What happened: the fake's books, the report or the error, the times."""

    scenario: Scenario
    specs: list[WorkerSpec]
    backend: FakeBackend
    owner: LiveWorkers
    t0: float = 0.0
    end: float = 0.0
    report: StartupReport | None = None
    error: PoolStartupError | None = None
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """``start_workers`` returned a report (no fatal error, no cancellation)."""
        return self.report is not None

    def scripts(self) -> dict[tuple[str, int], WorkerScript]:
        """Each worker's script as it came to run: a fork server's death ends its workers early."""
        scripts = self.scenario.script_of()
        for worker in self.backend.workers:
            scripts[worker.spec.key] = effective_script(worker)
        return scripts

    def plan_scripts(self) -> list[WorkerScript]:
        scripts = self.scripts()
        return [scripts[spec.key] for spec in self.specs]

    def summary(self) -> str:
        outcome = (
            self.report.summary() if self.report is not None
            else f"PoolStartupError({self.error})" if self.error is not None
            else "cancelled" if self.cancelled else "?"
        )
        lines = [f"outcome: {outcome}; took {self.end - self.t0:.4f} s (virtual)"]
        for w in self.backend.workers:
            lines.append(
                f"  {w.spec.label}: spawn {w.spawn_started_at}->{w.spawned_at}, "
                f"seen registered {w.registered_seen_at}, stop requests {w.stop_requests}, "
                f"kills {w.kill_times}, exit time {w.exit_time()}"
            )
        if self.report is not None:
            lines += [f"  failed {f.worker_type}#{f.index}: {f.phase}: {f.reason}"
                      for f in self.report.failed]
        return "\n".join(lines)


def seed_trio_scheduler(seed: int) -> None:
    """Make Trio's choice among tasks ready at one instant follow ``seed``.

    Trio registers this generator with Hypothesis (which seeds it per
    example); seeding it from the scenario makes a replay outside Hypothesis
    schedule the same way and lets Hypothesis vary (and shrink) the order.
    """
    generator = getattr(getattr(trio._core, "_run", None), "_r", None)
    if generator is not None:
        generator.seed(seed)


def run_scenario(scenario: Scenario) -> Run:
    """Run ``start_workers`` on the scenario in virtual time; never raises for the engine's errors."""
    specs = scenario.specs()
    backend = FakeBackend(
        scripts=scenario.script_of(),
        poll_fails_at=scenario.poll_fails_at,
        prepare_fails=scenario.prepare_fails,
        writes_fail_at=scenario.writes_fail_at,
    )
    backend.fork_server = scenario.fork_server
    run = Run(scenario, specs, backend, LiveWorkers())

    async def main() -> None:
        run.t0 = trio.current_time()
        cancel_at = math.inf if scenario.cancel_at is None else run.t0 + scenario.cancel_at
        with trio.CancelScope(deadline=cancel_at) as scope:
            try:
                run.report = await start_workers(specs, backend, scenario.settings, run.owner)
            except PoolStartupError as exc:
                run.error = exc
        run.cancelled = scope.cancelled_caught
        run.end = trio.current_time()

    seed_trio_scheduler(scenario.schedule_seed)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return run


# -- what each worker should come to --------------------------------------------------------


def expected_outcomes(script: WorkerScript, settings: StartupSettings) -> frozenset[str]:
    """The outcomes the script allows: ``started`` or a failure phase (``fatal``: none).

    A registration or exit is noticed within one poll interval; one that
    happens so close to the deadline that the poll may come after it may end
    either way.
    """
    if script.spawn_failure == "fatal":
        return frozenset({"fatal"})
    if script.spawn_failure == "error":
        return frozenset({"spawn"})
    r, e = script.register_after, script.exit_after
    registers = r is not None and (e is None or r < e)
    first = r if registers else e
    if first is None:
        return frozenset({"timeout"})
    kind = "started" if registers else "exit"
    # A registration or exit before the deadline is seen by the last poll the
    # engine makes there: only one exactly at the deadline may end either way.
    earliest, latest = deadline_window(script, settings)
    if first < earliest - EPS:
        return frozenset({kind})
    if first > latest + EPS:
        return frozenset({"timeout"})
    return frozenset({kind, "timeout"})


def deadline_window(script: WorkerScript, settings: StartupSettings) -> tuple[float, float]:
    """Seconds after its spawn between which a silent worker is declared timed out.

    The deadline charges only the time a worker does not wait for a CPU: a
    worker waiting a fraction ``f`` of the time reaches ``T`` of run time at
    ``T / (1 - f)``; the deadline moves there in steps of at least
    ``_MIN_DEADLINE_STEP``, never beyond ``_MAX_WAIT_FACTOR`` timeouts.
    """
    timeout, f = settings.registration_timeout, script.cpu_wait_fraction
    limit = timeout * _MAX_WAIT_FACTOR
    if f == 0.0:
        return timeout, timeout
    exact = timeout / (1.0 - f) if f < 1.0 else math.inf
    if exact >= limit:
        return limit, limit
    return exact, min(exact + _MIN_DEADLINE_STEP, limit)


def _graham(durations: Sequence[float], slots: int) -> float:
    """Makespan bound of greedy list scheduling of jobs all ready at 0 on ``slots`` slots."""
    return sum(durations) / slots + max(durations, default=0.0)


def _post_spawn_bound(script: WorkerScript, s: StartupSettings) -> float:
    """Longest a worker can take from the end of its spawn until it is accounted for."""
    if script.spawn_failure is not None:
        return 0.0
    outcomes = expected_outcomes(script, s)
    r, e = script.register_after, script.exit_after
    events = [t for t in (r, e) if t is not None]
    latest = deadline_window(script, s)[1]
    wait = min(latest, min(events) + s.poll_interval) if events else latest
    if outcomes == {"started"}:
        return wait
    sigterm_works = script.term_latency is not None and not script.stop_raises
    exit_wait = min(s.stop_grace, script.term_latency + STOP_POLL) if sigterm_works else s.stop_grace
    return wait + exit_wait + script.kill_latency


def effective_script(worker: FakeWorker) -> WorkerScript:
    """``worker``'s script, with its template's death as an exit (code 70) where that came first."""
    script = worker.script
    if worker.orphaned_at is None:
        return script
    death = worker.orphaned_at - worker.spawned_at
    if script.exit_after is not None and script.exit_after <= death:
        return script
    return replace(script, exit_after=death, exit_code=ORPHANED_EXIT_CODE)


def orphaned_by(worker: FakeWorker, now: float) -> bool:
    """Whether ``worker`` ended by ``now`` because its template died."""
    return (worker.orphaned_at is not None and worker.orphaned_at <= now
            and worker.exit_code == ORPHANED_EXIT_CODE)


def spawn_bound(script: WorkerScript, server: ForkServerScript | None) -> float:
    """The longest one spawn of a worker can block: with a fork server, its template's preload first."""
    if server is None:
        return script.spawn_latency
    # Wait for the template, try to fork, and (its template died meanwhile) spawn instead.
    return server.preload + server.fork_latency + script.spawn_latency


def time_bound(scenario: Scenario, scripts: Sequence[WorkerScript] | None = None) -> float:
    """The longest ``start_workers`` may take, derived from the scripts (docs/property-tests.md).

    No fatal event: the spawns are greedy list scheduling on ``concurrency``
    slots (every task asks for a slot at time 0, a freed slot is taken at
    once), so they all end by ``sum/C + max``; each worker then needs at most
    its post-spawn time (wait for registration, exit or the deadline, plus a
    stop if it failed).  In ``registration`` slot mode a worker holds its slot
    for spawn and post-spawn time together.  A fatal event (fatal spawn,
    broken database, ``fail_fast`` failure, cancellation) happens within that
    bound (a cancellation at ``cancel_at``) and adds at most: the
    uncancellable work in flight (a spawn or a kill), then one parallel stop
    of everything (grace, then the slowest kill).
    """
    s = scenario.settings
    if scenario.prepare_fails:
        return EPS
    scripts = scenario.scripts if scripts is None else scripts
    spawn = [spawn_bound(w, scenario.fork_server) for w in scripts]
    post = [_post_spawn_bound(w, s) for w in scripts]
    if s.slot_mode == "spawn":
        normal = _graham(spawn, s.concurrency) + max(post, default=0.0)
    else:
        normal = _graham([a + b for a, b in zip(spawn, post, strict=True)], s.concurrency)
    slowest_kill = max((w.kill_latency for w in scripts), default=0.0)
    after_fatal = max(max(spawn, default=0.0), slowest_kill) + s.stop_grace + STOP_POLL + slowest_kill
    may_fail = any(expected_outcomes(w, s) != {"started"} for w in scripts)
    fatal_possible = (
        any(w.spawn_failure == "fatal" for w in scripts)
        or scenario.poll_fails_at is not None
        or scenario.writes_fail_at is not None
        or (s.fail_fast and may_fail)
        or scenario.cancel_at is not None  # it may land as the last worker is accounted for
    )
    bound = normal + (after_fatal if fatal_possible else 0.0)
    if scenario.cancel_at is not None:
        bound = min(bound, scenario.cancel_at + after_fatal)
    return bound + EPS


# -- the invariants ----------------------------------------------------------------------


class InvariantViolated(AssertionError):
    pass


def _require(condition: object, invariant: str, message: str) -> None:
    if not condition:
        raise InvariantViolated(f"{invariant}: {message}")


def check_no_leak(run: Run) -> None:
    """1. Every spawned worker is started-and-running or stopped exactly once; after
    a fatal error or a cancellation every spawned worker is stopped."""
    inv = "invariant 1 (no leak)"
    now = run.end
    started = {(w.worker_type, w.index) for w in run.report.started} if run.report else set()
    if not run.finished:
        _require(not started, inv, "a start that raised reports started workers")
    for key, calls in run.backend.spawn_calls.items():
        _require(calls == 1, inv, f"{key} was spawned {calls} times")
    kill_failed: set[FakeWorker] = set()
    for w in run.backend.workers:
        if w.spec.key in started:
            # A fork server that dies after its worker registered is an outside event (the monitor's).
            _require(w.running(now) or orphaned_by(w, now), inv,
                     f"{w.spec.label} is reported started but is not running")
            _require(not w.kill_times and not w.stop_requests, inv,
                     f"{w.spec.label} is reported started but was stopped at "
                     f"{w.stop_requests or w.kill_times}")
            continue
        _require(not w.running(now), inv,
                 f"{w.spec.label} was spawned, is not reported started, and still runs")
        _require(w.kills >= 1, inv, f"{w.spec.label} ended without being stopped (killed and reaped)")
        if w.script.kill_raises:
            kill_failed.add(w)  # stays owned; the next stop tries again
        else:
            _require(w.kills == 1, inv, f"{w.spec.label} was killed {w.kills} times, at {w.kill_times}")
    owned = {h.native for h in run.owner.snapshot()}
    expected = {w for w in run.backend.workers if w.spec.key in started} | kill_failed
    _require(owned == expected, inv,
             f"the owner holds {sorted(w.spec.label for w in owned)}, expected "
             f"{sorted(w.spec.label for w in expected)} (started, and those whose kill failed)")


def check_limiter(run: Run) -> None:
    """2. The limiter is never exceeded, in either slot mode."""
    inv = "invariant 2 (limiter)"
    s = run.scenario.settings
    _require(run.backend.max_spawning <= s.concurrency, inv,
             f"{run.backend.max_spawning} spawns ran at once with concurrency {s.concurrency}")
    if s.slot_mode == "registration":
        _require(run.backend.max_booting <= s.concurrency, inv,
                 f"{run.backend.max_booting} workers were between spawn and registration at once "
                 f"with concurrency {s.concurrency} in registration slot mode")
    _require(run.backend.booting == 0, inv, f"{run.backend.booting} workers were never accounted for")


def check_accounting(run: Run) -> None:
    """3. Every worker is in exactly one of started/failed (when no fatal error), with the right phase."""
    inv = "invariant 3 (accounting)"
    sc = run.scenario
    scripts = run.scripts()
    report = run.report if run.report is not None else (run.error.report if run.error else None)
    if isinstance(report, StartupReport):
        keys = [(w.worker_type, w.index) for w in report.started]
        keys += [(f.worker_type, f.index) for f in report.failed]
        # How each reported worker's process came to be is reported as it happened:
        # forked, or spawned with the reason (a pool asked for a fork server).
        for reported in [*report.started, *(f for f in report.failed if f.phase != "spawn")]:
            fake = run.backend.worker_for((reported.worker_type, reported.index))
            assert fake is not None
            _require((reported.start_method, reported.note) == (fake.start_method, fake.note), inv,
                     f"{fake.spec.label} is reported {reported.start_method!r} ({reported.note!r}), "
                     f"but was {fake.start_method!r} ({fake.note!r})")
            _require(bool(fake.note) == (sc.fork_server is not None and fake.start_method == "spawn"), inv,
                     f"{fake.spec.label}: started with {fake.start_method!r}, note {fake.note!r}")
        _require(len(keys) == len(set(keys)), inv, f"a worker is reported twice: {sorted(keys)}")
        for f in report.failed:
            allowed = expected_outcomes(scripts[(f.worker_type, f.index)], sc.settings)
            _require(f.phase in allowed, inv,
                     f"{f.worker_type}#{f.index} failed in phase {f.phase!r}; "
                     f"its script allows {sorted(allowed)}")
            if f.phase == "exit":
                code = scripts[(f.worker_type, f.index)].exit_code
                _require(f.exit_code == code, inv,
                         f"{f.worker_type}#{f.index}: exit code {f.exit_code} != {code}")
    if run.finished:
        assert run.report is not None
        _require(sorted(keys) == sorted(s.key for s in run.specs), inv,
                 f"reported {sorted(keys)}, planned {sorted(s.key for s in run.specs)}")
        for w in run.report.started:
            allowed = expected_outcomes(scripts[(w.worker_type, w.index)], sc.settings)
            _require("started" in allowed, inv,
                     f"{w.worker_type}#{w.index} is reported started; its script allows {sorted(allowed)}")
        if sc.settings.fail_fast:
            _require(not run.report.failed, inv, "fail_fast is set, yet the start returned with failures")
        return
    # A start that raised: it must have had a reason to.
    if run.error is not None:
        message = str(run.error)
        causes = [
            sc.prepare_fails and "cannot use the database" in message,
            "the fake engine is unreachable" in message
            and any(w.spawn_failure == "fatal" for w in sc.scripts),
            "watching registrations failed" in message and sc.poll_fails_at is not None,
            "dead failed: disk I/O error" in message and sc.writes_fail_at is not None,
            "fail_fast is set" in message and sc.settings.fail_fast,
        ]
        _require(any(causes), inv, f"the start raised without a cause in the scenario: {message}")
        _require(not sc.prepare_fails or not run.backend.workers, inv,
                 "workers were spawned although pre-registration failed")
    else:
        _require(run.cancelled and sc.cancel_at is not None, inv, "the start neither returned nor raised")


def check_timing(run: Run) -> None:
    """4. No worker waits longer than its deadline (``registration_timeout`` of run time) after its
    spawn; total
    time is within the bound the scripts imply.

    This holds after a fatal error or a cancellation too: the engine stops a
    waiting worker at once, without waiting for uncancellable calls in flight
    (an engine bug the suite found, see docs/property-tests.md).
    """
    inv = "invariant 4 (timing)"
    s = run.scenario.settings
    registered_at = {}
    if run.report is not None:
        registered_at = {(w.worker_type, w.index): run.t0 + w.registered_at for w in run.report.started}
    for w in run.backend.workers:
        script = w.script
        if w.spec.key in registered_at:
            at = registered_at[w.spec.key]
            assert script.register_after is not None
            _require(w.spawned_at + script.register_after - EPS <= at
                     <= w.spawned_at + script.register_after + s.poll_interval + EPS, inv,
                     f"{w.spec.label} registers {script.register_after} s after its spawn but was seen "
                     f"{at - w.spawned_at} s after it (poll interval {s.poll_interval})")
        else:
            # Seen registered (the watcher resolves it at that poll) or stopped, whichever first.
            ends = w.stop_requests + w.kill_times
            if w.registered_seen_at is not None:
                ends.append(w.registered_seen_at)
            at = min(ends) if ends else math.inf
        deadline = w.spawned_at + deadline_window(script, s)[1]
        if at <= deadline + EPS:
            continue
        message = (f"{w.spec.label} was left waiting {at - w.spawned_at:.4f} s after its spawn before it "
                   f"was started or stopped (registration_timeout {s.registration_timeout}, "
                   f"waiting for a CPU {script.cpu_wait_fraction:.0%} of the time)")
        _require(False, inv, message)
    took, bound = run.end - run.t0, time_bound(run.scenario, run.plan_scripts())
    _require(took <= bound, inv, f"the start took {took:.4f} s; its scripts imply at most {bound:.4f} s")


def check_registry(run: Run) -> None:
    """5. No ``created``, ``idle`` or ``busy`` row for a worker that is not running."""
    inv = "invariant 5 (registry)"
    now = run.end
    started = {(w.worker_type, w.index) for w in run.report.started} if run.report else set()
    for key in run.backend.row_of:
        status = run.backend.row_status(key, now)
        worker = run.backend.worker_for(key)
        running = worker is not None and (
            worker.running(now) or (key in started and orphaned_by(worker, now)))
        if status in LIVE and not running:
            # Allowed only where the database refused the engine's attempt to mark it.
            _require(key in run.backend.unmarked, inv,
                     f"the row of {key} says {status!r} but no such worker runs, and the engine "
                     "never tried to mark it dead")
        if key in started:
            _require(status == "idle", inv, f"{key} is reported started but its row says {status!r}")


INVARIANTS = (check_no_leak, check_limiter, check_accounting, check_timing, check_registry)


def check(run: Run) -> Run:
    for invariant in INVARIANTS:
        invariant(run)
    return run
