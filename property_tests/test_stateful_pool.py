"""One pool over time: starts, stops and worker deaths, interleaved (a Hypothesis state machine).

The machine drives what a pool's manager does with the engine's public
functions, on one :class:`~clm_workers.testing.FakeBackend` and one
:class:`~clm_workers.ledger.LiveWorkers` ledger for its whole life:

* ``start``: ``start_workers`` for a new batch of workers (a first start, a
  replacement, a scale-up), possibly cancelled from outside at some moment;
* ``stop_some`` / ``stop_all``: ``stop_workers`` then ``mark_dead``, as
  ``WorkerPoolManager.stop_pools`` does;
* ``start_while_stopping``: a start and a stop of earlier workers at once;
* ``die``: a started worker dies by itself, now or later (then possibly
  during a later start);
* ``wait``: time passes.

Virtual time persists across rules: each rule is one ``trio.run`` on a fresh
``MockClock(autojump_threshold=0)`` moved forward (``jump``) to where the
previous rule ended, so the fake's times (``trio.current_time()`` values)
stay on one time line.

After every step: nothing runs that the pool does not own; the pool owns
nothing it has stopped; no worker is killed twice (unless its kill failed and
was retried); every started worker that was neither stopped nor made to die
runs; every row that claims a live worker belongs to a worker the pool owns;
the limiter held in the last start.  At the end the pool is stopped and
nothing may remain.
"""

from __future__ import annotations

import math

import trio
import trio.testing
from hypothesis import currently_in_test_context, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from clm_workers.config import StartupSettings, WorkerConfig
from clm_workers.errors import PoolStartupError
from clm_workers.executors.base import WorkerHandle
from clm_workers.ledger import LiveWorkers
from clm_workers.plan import plan_workers
from clm_workers.startup import start_workers
from clm_workers.stopping import stop_workers
from clm_workers.testing import FakeBackend, FakeWorker, WorkerScript
from interleavings import (
    LIVE,
    seconds,
    seed_trio_scheduler,
    startup_settings,
    worker_scripts,
)
from profiles import examples

GRACE = 0.5


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.backend = FakeBackend(scripts={})
        self.owner = LiveWorkers()
        self.now = 0.0
        self.rounds = 0
        #: The model: workers a start reported started that no rule stopped.
        self.started: dict[FakeWorker, WorkerHandle] = {}
        #: Workers a rule stopped (their stop must have ended them).
        self.stopped: set[FakeWorker] = set()

    # -- driving Trio ---------------------------------------------------------------

    def _run(self, fn, seed: int = 0):
        """Run ``fn`` in one ``trio.run`` whose virtual clock continues from ``self.now``."""
        clock = trio.testing.MockClock(autojump_threshold=0)
        clock.jump(self.now)
        seed_trio_scheduler(seed)
        result = trio.run(fn, clock=clock)
        assert clock.current_time() >= self.now
        return result

    def _owned_handles(self) -> list[WorkerHandle]:
        return sorted(self.owner.snapshot(), key=lambda h: h.spec.key)

    def _pick(self, indices: list[int]) -> list[WorkerHandle]:
        handles = [h for h in self._owned_handles() if h.native in self.started]
        return list({h.spec.key: h for h in (handles[i % len(handles)] for i in indices)}.values())

    async def _stop(self, handles: list[WorkerHandle]) -> None:
        """What ``stop_pools`` does: a parallel stop, then the rows are marked dead."""
        await stop_workers(self.backend, handles, grace=GRACE, owner=self.owner)
        await self.backend.mark_dead([h.spec for h in handles], handles)

    def _record_stopped(self, handles: list[WorkerHandle]) -> None:
        for h in handles:
            self.started.pop(h.native, None)
            self.stopped.add(h.native)

    # -- rules ----------------------------------------------------------------------

    def _start_round(self, scripts, s: StartupSettings, cancel_at, seed, stopping=()):
        self.rounds += 1
        worker_type = f"round{self.rounds}"
        specs = plan_workers([WorkerConfig(worker_type, len(scripts), module="clm_workers.sim")], "pool")
        scripts_by_key = {sp.key: w for sp, w in zip(specs, scripts, strict=True)}
        self.backend.scripts = {**self.backend.scripts, **scripts_by_key}
        self.backend.max_spawning = self.backend.spawning
        self.backend.max_booting = self.backend.booting
        before = set(self.backend.workers)
        outcome: dict[str, object] = {}

        async def main() -> None:
            deadline = math.inf if cancel_at is None else trio.current_time() + cancel_at
            async with trio.open_nursery() as nursery:
                if stopping:
                    nursery.start_soon(self._stop, list(stopping))
                with trio.CancelScope(deadline=deadline) as scope:
                    try:
                        outcome["report"] = await start_workers(specs, self.backend, s, self.owner)
                    except PoolStartupError as exc:
                        outcome["error"] = exc
                outcome["cancelled"] = scope.cancelled_caught
            self.now = trio.current_time()

        self._run(main, seed)
        self._record_stopped(list(stopping))
        report = outcome.get("report")
        if currently_in_test_context():
            note(f"round {self.rounds}: {report.summary() if report else outcome}")
        new = [w for w in self.backend.workers if w not in before]
        started_keys = {(w.worker_type, w.index) for w in report.started} if report else set()
        by_key = {h.spec.key: h for h in self.owner.snapshot()}
        for w in new:
            if w.spec.key in started_keys:
                self.started[w] = by_key[w.spec.key]
            else:
                assert not w.running(self.now), f"{w.spec.label}: not started, yet running"
                assert w.kills >= 1, f"{w.spec.label}: not started, never killed"
        assert self.backend.max_spawning <= s.concurrency, (
            f"{self.backend.max_spawning} spawns at once with concurrency {s.concurrency}")
        if s.slot_mode == "registration":
            assert self.backend.max_booting <= s.concurrency, (
                f"{self.backend.max_booting} workers booting at once with concurrency "
                f"{s.concurrency} in registration slot mode")
        if report is not None:
            assert len(report.started) + len(report.failed) == len(specs), "a worker is not accounted for"

    @rule(
        scripts=st.lists(worker_scripts(), min_size=1, max_size=5),
        s=startup_settings(),
        cancel_at=st.none() | st.none() | seconds(6.0),
        seed=st.integers(0, 2**32 - 1),
    )
    def start(self, scripts, s, cancel_at, seed):
        self._start_round(scripts, s, cancel_at, seed)

    @precondition(lambda self: self.started)
    @rule(
        scripts=st.lists(worker_scripts(), min_size=1, max_size=4),
        s=startup_settings(),
        which=st.lists(st.integers(0, 20), min_size=1, max_size=3),
        seed=st.integers(0, 2**32 - 1),
    )
    def start_while_stopping(self, scripts, s, which, seed):
        self._start_round(scripts, s, None, seed, stopping=self._pick(which))

    @precondition(lambda self: self.started)
    @rule(which=st.lists(st.integers(0, 20), min_size=1, max_size=4))
    def stop_some(self, which):
        handles = self._pick(which)

        async def main() -> None:
            await self._stop(handles)
            self.now = trio.current_time()

        self._run(main)
        self._record_stopped(handles)

    @rule()
    def stop_all(self):
        handles = self._owned_handles()

        async def main() -> None:
            await self._stop(handles)
            self.now = trio.current_time()

        self._run(main)
        self._record_stopped(handles)

    @precondition(lambda self: self.started)
    @rule(which=st.integers(0, 20), after=st.just(0.0) | seconds(5.0))
    def die(self, which, after):
        [handle] = self._pick([which])
        self.backend.die(handle, at=self.now + after)

    @rule(seconds_=seconds(5.0))
    def wait(self, seconds_):
        async def main() -> None:
            await trio.sleep(seconds_)
            self.now = trio.current_time()

        self._run(main)

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def nothing_runs_unowned(self):
        owned = {h.native for h in self.owner.snapshot()}
        for w in self.backend.running_workers(self.now):
            assert w in owned, f"{w.spec.label} runs but the pool does not own it (leaked)"

    @invariant()
    def owns_nothing_it_stopped(self):
        for h in self.owner.snapshot():
            w = h.native
            if w.kills:
                assert w.script.kill_raises, f"{w.spec.label} was killed but is still owned"

    @invariant()
    def killed_at_most_once(self):
        for w in self.backend.workers:
            assert w.kills <= 1 or w.script.kill_raises, f"{w.spec.label} killed {w.kills} times"

    @invariant()
    def started_workers_run_until_stopped_or_dead(self):
        for w in self.started:
            if w.died_at is not None and w.died_at <= self.now:
                assert not w.running(self.now), f"{w.spec.label} died at {w.died_at} but runs"
                continue
            assert w.running(self.now), f"{w.spec.label} was started, not stopped, yet is not running"
            assert w.kills == 0 and not w.stop_requests, f"{w.spec.label} was stopped by someone else"
        for w in self.stopped:
            assert not w.running(self.now), f"{w.spec.label} was stopped but runs"

    @invariant()
    def live_rows_belong_to_owned_workers(self):
        owned = {h.spec.key for h in self.owner.snapshot()}
        for key in self.backend.row_of:
            status = self.backend.row_status(key, self.now)
            if status in LIVE:
                # A worker that died by itself keeps its row until the pool
                # notices (the monitor's job) or stops it: it is still owned.
                assert key in owned, f"row of {key} says {status!r}, but the pool owns no such worker"

    @invariant()
    def every_start_accounted_for_its_workers(self):
        assert self.backend.booting == 0, "a worker was left between spawn and registration"
        for key, calls in self.backend.spawn_calls.items():
            assert calls == 1, f"{key} spawned {calls} times"

    def teardown(self):
        handles = self._owned_handles()

        async def main() -> None:
            await self._stop(handles)
            self.now = trio.current_time()

        self._run(main)
        assert not self.backend.running_workers(self.now), "workers run after the pool was stopped"
        assert all(h.native.script.kill_raises for h in self.owner.snapshot()), (
            "the pool still owns workers after stopping them all")
        for key in self.backend.row_of:
            assert self.backend.row_status(key, self.now) not in LIVE, f"row of {key} claims a live worker"


PoolMachine.TestCase.settings = settings(max_examples=examples(300), stateful_step_count=12)
test_pool_over_time = PoolMachine.TestCase


def test_a_worker_that_dies_stays_owned_until_stopped():
    """A small fixed walk, so the machine's wiring is checked without Hypothesis."""
    machine = PoolMachine()
    machine.start([WorkerScript(register_after=0.1)] * 3, StartupSettings(), None, 0)
    [victim, *_] = machine._pick([0])
    machine.die(0, 0.0)
    machine.wait(1.0)
    assert victim in machine.owner.snapshot() and not victim.native.running(machine.now)
    machine.nothing_runs_unowned()
    machine.live_rows_belong_to_owned_workers()
    machine.stop_all()
    assert len(machine.owner) == 0
    machine.teardown()
