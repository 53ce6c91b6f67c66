"""Engine bugs the property suite found, kept as regression tests.

Each test is the shrunk form of a generated counterexample; both bugs are
fixed in ``startup.py`` (see docs/property-tests.md, "Engine bugs found").
"""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

from clm_workers.config import StartupSettings, WorkerConfig
from clm_workers.errors import PoolStartupError
from clm_workers.ledger import LiveWorkers
from clm_workers.plan import plan_workers
from clm_workers.startup import start_workers
from clm_workers.testing import FakeBackend, WorkerScript
from interleavings import Scenario, check_timing, run_scenario


@pytest.mark.parametrize("trigger", ["outside cancellation", "fatal error"])
def test_cleanup_does_not_wait_for_spawns_in_flight(trigger):
    hanging = WorkerScript(register_after=None)  # spawned at once, never registers
    slow_spawn = WorkerScript(spawn_latency=30.0)
    scenario = Scenario(
        pools=(("notebook", 2),),
        settings=StartupSettings(registration_timeout=2.0, stop_grace=0.5),
        scripts=(hanging, slow_spawn),
        cancel_at=1.0 if trigger == "outside cancellation" else None,
        poll_fails_at=1.0 if trigger == "fatal error" else None,
    )
    run = run_scenario(scenario)
    [first, *_] = run.backend.workers
    assert first.spec.index == 0
    # Stopped when the start was cancelled or failed (1 s), within its 2 s deadline;
    # before the fix it was stopped only when the 30 s spawn returned.
    assert first.stop_requests and first.stop_requests[0] <= 1.0 + scenario.settings.poll_interval + 1e-6
    check_timing(run)


@pytest.mark.parametrize("trigger", ["outside cancellation", "fatal error"])
def test_cleanup_stops_only_the_workers_this_start_started(trigger):
    backend, owner = FakeBackend(default=WorkerScript(register_after=0.1)), LiveWorkers()
    first = plan_workers([WorkerConfig("notebook", 2, module="clm_workers.sim")], "pool")
    second = plan_workers([WorkerConfig("plantuml", 1, module="clm_workers.sim")], "pool")
    if trigger == "fatal error":
        backend.scripts = {("plantuml", 0): WorkerScript(spawn_failure="fatal")}

    async def main() -> None:
        report = await start_workers(first, backend, StartupSettings(), owner)
        assert len(report.started) == 2
        expected = pytest.raises(PoolStartupError) if trigger == "fatal error" else contextlib.nullcontext()
        with trio.move_on_after(0.05), expected:
            await start_workers(second, backend, StartupSettings(), owner)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    earlier = [w for w in backend.workers if w.spec.worker_type == "notebook"]
    assert all(w.kills == 0 and not w.stop_requests for w in earlier), (
        "the second start stopped the first start's workers"
    )
    assert {h.spec.key for h in owner.snapshot()} == {("notebook", 0), ("notebook", 1)}
