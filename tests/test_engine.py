"""The startup engine against pure-Trio fakes, in virtual time (exact timings)."""

from __future__ import annotations

import pytest
import trio

from clm_workers.config import StartupSettings, WorkerConfig
from clm_workers.errors import PoolStartupError
from clm_workers.ledger import LiveWorkers
from clm_workers.plan import plan_workers
from clm_workers.startup import start_workers
from clm_workers.stopping import stop_workers
from clm_workers.testing import FakeBackend, WorkerScript


def specs(n: int, worker_type: str = "notebook"):
    return plan_workers([WorkerConfig(worker_type, n, module="clm_workers.sim")], "session")


def settings(**overrides) -> StartupSettings:
    return StartupSettings(**{"registration_timeout": 10.0, "stop_grace": 1.0, **overrides})


def assert_nothing_leaked(backend: FakeBackend, owner: LiveWorkers, started: list = ()) -> None:
    """Every spawned worker is either reported started and running, or stopped once."""
    now = trio.current_time()
    started_keys = {(w.worker_type, w.index) for w in started}
    for worker in backend.workers:
        if worker.spec.key in started_keys:
            assert worker.running(now) and worker.kills == 0, worker.spec.label
        else:
            assert not worker.running(now) and worker.kills == 1, worker.spec.label
    assert len(owner) == len(started_keys)
    for key in backend.row_of:
        status = backend.row_status(key, now)
        assert (status != "dead") == (key in started_keys), (key, status)


async def test_all_register_at_once_in_virtual_time(autojump_clock):
    backend, owner = FakeBackend(default=WorkerScript(spawn_latency=0.1, register_after=1.0)), LiveWorkers()
    t0 = trio.current_time()
    report = await start_workers(specs(32), backend, settings(), owner)
    assert len(report.started) == 32 and not report.failed
    # Four waves of ten 0.1 s spawns, then each worker's 1 s boot: bounded by the
    # slowest worker, not by the pool size.
    assert 1.4 <= trio.current_time() - t0 <= 1.4 + 0.02
    for worker in report.started:
        delay = worker.registered_at - (worker.spawned_at + 1.0)
        assert 0 <= delay <= settings().poll_interval + 1e-9
    assert_nothing_leaked(backend, owner, report.started)


async def test_limiter_bounds_spawns(autojump_clock):
    backend = FakeBackend(default=WorkerScript(spawn_latency=1.0, register_after=0.0))
    report = await start_workers(specs(25), backend, settings(concurrency=10), LiveWorkers())
    assert backend.max_spawning == 10
    assert len(report.started) == 25
    assert report.duration == pytest.approx(3.0, abs=0.02)


async def test_registration_slot_mode_holds_slot_until_registered(autojump_clock):
    backend = FakeBackend(default=WorkerScript(spawn_latency=0.0, register_after=1.0))
    report = await start_workers(
        specs(25), backend, settings(concurrency=10, slot_mode="registration"), LiveWorkers()
    )
    assert len(report.started) == 25
    # ceil(25 / 10) boots one after another: the original proposal's semantics.
    assert report.duration == pytest.approx(3.0, abs=0.05)


async def test_worker_that_never_registers_times_out_and_is_stopped(autojump_clock):
    backend = FakeBackend(scripts={("notebook", 1): WorkerScript(register_after=None, term_latency=None)})
    owner = LiveWorkers()
    report = await start_workers(specs(3), backend, settings(registration_timeout=5.0), owner)
    [failed] = report.failed
    assert (failed.index, failed.phase) == (1, "timeout")
    assert "did not register within 5 s" in failed.reason
    assert "fake output of notebook#1" in failed.reason
    # It ignored SIGTERM, so it was killed after the grace period.
    assert report.duration == pytest.approx(5.0 + 1.0, abs=0.1)
    assert_nothing_leaked(backend, owner, report.started)


async def test_exit_before_registration_fails_at_once_not_after_timeout(autojump_clock):
    crasher = WorkerScript(register_after=None, exit_after=0.2, exit_code=3)
    backend = FakeBackend(scripts={("notebook", 0): crasher})
    owner = LiveWorkers()
    report = await start_workers(specs(2), backend, settings(), owner)
    [failed] = report.failed
    assert (failed.phase, failed.exit_code) == ("exit", 3)
    assert "exited with code 3 before registering" in failed.reason
    assert report.duration < 1.0  # the other worker's 0.5 s boot, not the 10 s timeout
    assert_nothing_leaked(backend, owner, report.started)


async def test_spawn_error_is_reported_and_others_start(autojump_clock):
    backend = FakeBackend(scripts={("notebook", 2): WorkerScript(spawn_failure="error")})
    owner = LiveWorkers()
    report = await start_workers(specs(4), backend, settings(), owner)
    assert [(f.index, f.phase) for f in report.failed] == [(2, "spawn")]
    assert "FakeSpawnError: cannot spawn notebook#2" in report.failed[0].reason
    assert len(report.started) == 3
    assert_nothing_leaked(backend, owner, report.started)


async def test_fatal_executor_error_cancels_pending_and_stops_started(autojump_clock):
    # Worker 5 fails fatally after 0.7 s; by then 0-4 are spawned and some registered.
    scripts = {("notebook", i): WorkerScript(spawn_latency=0.1 * i, register_after=0.3) for i in range(8)}
    scripts[("notebook", 5)] = WorkerScript(spawn_latency=0.7, spawn_failure="fatal")
    backend, owner = FakeBackend(scripts=scripts), LiveWorkers()
    with pytest.raises(PoolStartupError, match="the fake engine is unreachable") as info:
        await start_workers(specs(8), backend, settings(), owner)
    assert backend.workers, "the test should have started some workers before the fatal error"
    assert info.value.report.started == []
    assert_nothing_leaked(backend, owner)


async def test_broken_database_during_wait_is_fatal(autojump_clock):
    backend, owner = FakeBackend(default=WorkerScript(register_after=2.0), poll_fails_at=1.0), LiveWorkers()
    with pytest.raises(PoolStartupError, match="watching registrations failed: database disk image"):
        await start_workers(specs(5), backend, settings(), owner)
    assert len(backend.workers) == 5
    assert_nothing_leaked(backend, owner)


async def test_unusable_database_is_fatal_before_any_spawn(autojump_clock):
    backend = FakeBackend(prepare_fails=True)
    with pytest.raises(PoolStartupError, match="cannot use the database: attempt to write a readonly"):
        await start_workers(specs(5), backend, settings(), LiveWorkers())
    assert backend.workers == []


async def test_fail_fast_makes_first_failure_fatal(autojump_clock):
    backend = FakeBackend(scripts={("notebook", 3): WorkerScript(register_after=None, exit_after=0.1)},
                          default=WorkerScript(register_after=5.0))
    owner = LiveWorkers()
    with pytest.raises(PoolStartupError, match="notebook#3 failed \\(exit\\) and fail_fast is set"):
        await start_workers(specs(6), backend, settings(fail_fast=True), owner)
    assert trio.current_time() < 1.0
    assert_nothing_leaked(backend, owner)


@pytest.mark.parametrize("cancel_at", [0.0, 0.05, 0.25, 0.55, 1.3])
async def test_outside_cancellation_stops_everything(autojump_clock, cancel_at):
    backend = FakeBackend(default=WorkerScript(spawn_latency=0.1, register_after=1.0))
    owner = LiveWorkers()
    with trio.move_on_after(cancel_at) as scope:
        await start_workers(specs(30), backend, settings(concurrency=10), owner)
    assert scope.cancelled_caught
    assert_nothing_leaked(backend, owner)


async def test_spawn_in_flight_at_cancellation_is_still_stopped(autojump_clock):
    # Cancelled while every spawn is mid-flight: the spawns complete (like a
    # thread) and their workers must still be stopped.
    backend = FakeBackend(default=WorkerScript(spawn_latency=1.0))
    owner = LiveWorkers()
    with trio.move_on_after(0.5):
        await start_workers(specs(4), backend, settings(), owner)
    assert len(backend.workers) == 4
    assert_nothing_leaked(backend, owner)


async def test_stop_workers_kills_those_ignoring_sigterm_after_grace(autojump_clock):
    backend = FakeBackend(scripts={("notebook", 0): WorkerScript(register_after=0.0, term_latency=None)},
                          default=WorkerScript(register_after=0.0, term_latency=0.2))
    owner = LiveWorkers()
    await start_workers(specs(5), backend, settings(), owner)
    t0 = trio.current_time()
    failures = await stop_workers(backend, owner.snapshot(), grace=2.0, owner=owner)
    assert failures == []
    assert trio.current_time() - t0 == pytest.approx(2.0, abs=0.05)
    assert len(owner) == 0
    assert not backend.running_workers(trio.current_time())
    assert all(w.kills == 1 for w in backend.workers)


async def test_stop_failure_keeps_worker_owned(autojump_clock):
    backend = FakeBackend(scripts={("notebook", 1): WorkerScript(register_after=0.0, kill_raises=True)},
                          default=WorkerScript(register_after=0.0))
    owner = LiveWorkers()
    await start_workers(specs(3), backend, settings(), owner)
    failures = await stop_workers(backend, owner.snapshot(), grace=1.0, owner=owner)
    assert [h.spec.index for h, _ in failures] == [1]
    assert [h.spec.index for h in owner.snapshot()] == [1]


# -- the registration deadline counts run time, not time waiting for a CPU ---------------


@pytest.mark.parametrize(
    ("register_after", "cpu_wait", "outcome", "decided_after"),
    [
        (15.0, 0.5, "started", 15.0),   # 7.5 s of run time: a healthy boot on busy cores
        (None, 0.0, "timeout", 10.0),   # an idle machine: the plain deadline
        (None, 0.5, "timeout", 20.0),   # 10 s of run time take 20 s
        (None, 0.97, "timeout", 100.0),  # however busy: at most ten timeouts
    ],
)
async def test_a_boot_slowed_by_busy_cpus_is_not_a_timeout(
    autojump_clock, register_after, cpu_wait, outcome, decided_after
):
    script = WorkerScript(register_after=register_after, cpu_wait_fraction=cpu_wait)
    backend, owner = FakeBackend(default=script), LiveWorkers()
    t0 = trio.current_time()
    report = await start_workers(specs(1), backend, settings(), owner)
    if outcome == "started":
        assert report.started and not report.failed
        assert report.started[0].registered_at == pytest.approx(decided_after, abs=0.011)
    else:
        [failure] = report.failed
        assert failure.phase == "timeout"
        assert backend.workers[0].stop_requests[0] - t0 == pytest.approx(decided_after, abs=0.11)
        if cpu_wait:
            assert "waiting for" in failure.reason and "CPU" in failure.reason, failure.reason
    assert_nothing_leaked(backend, owner, report.started)


async def test_a_registration_at_the_deadline_counts_even_between_polls(autojump_clock):
    """The watcher polls every 0.3 s (9.9, 10.2); the worker registers at 9.95 s: the last look sees it."""
    backend, owner = FakeBackend(default=WorkerScript(register_after=9.95)), LiveWorkers()
    report = await start_workers(specs(1), backend, settings(poll_interval=0.3), owner)
    assert [w.index for w in report.started] == [0] and not report.failed
    assert backend.workers[0].stop_requests == []
