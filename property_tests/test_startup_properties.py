"""The startup engine under generated failure interleavings (Hypothesis, virtual time).

Each example draws a pool, one script per worker and outside events, runs
``start_workers`` against the pure-Trio :class:`~clm_workers.testing.FakeBackend`
under ``MockClock(autojump_threshold=0)`` in its own ``trio.run``, and checks
the five invariants of :mod:`interleavings`.  A failure prints the shrunk
:class:`~interleavings.Scenario` (replayable Python) and what happened.
"""

from __future__ import annotations

from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from clm_workers.config import StartupSettings
from interleavings import Run, Scenario, check, run_scenario, scenarios, worker_scripts
from profiles import examples


def run_and_check(scenario: Scenario) -> Run:
    run = run_scenario(scenario)
    note(run.summary())
    # Shown by --hypothesis-show-statistics: what the generated runs came to.
    if run.finished:
        assert run.report is not None
        event("returned, all started" if run.report.ok else "returned with failures")
    elif run.error is not None:
        message = str(run.error)
        event("raised: fail_fast" if "fail_fast is set" in message else f"raised: {message.split(':')[0]}")
    else:
        event("cancelled from outside")
    if run.backend.workers and run.scenario.settings.slot_mode == "registration":
        event("registration slot mode, workers spawned")
    check(run)
    return run


@settings(max_examples=examples(2000))
@given(scenarios())
def test_any_interleaving_keeps_the_five_invariants(scenario):
    run_and_check(scenario)


@settings(max_examples=examples(600))
@given(scenarios(fork_server=True))
def test_a_fork_server_keeps_the_five_invariants(scenario):
    """Forked workers: a template's preload, its unavailability (spawned instead), its death."""
    run = run_and_check(scenario)
    if run.backend.templates:
        event("fork server: some template died" if any(w.orphaned_at is not None for w in run.backend.workers)
              else "fork server: no template died")
    if any(w.start_method == "spawn" for w in run.backend.workers):
        event("fork server: some workers spawned instead")


@settings(max_examples=examples(400))
@given(scenarios(outside_events=False))
def test_without_outside_events_every_worker_is_accounted_for(scenario):
    """No cancellation, no broken database: the start returns unless a script is fatal."""
    run = run_and_check(scenario)
    if not scenario.settings.fail_fast and all(s.spawn_failure != "fatal" for s in scenario.scripts):
        assert run.finished


@settings(max_examples=examples(400))
@given(
    st.lists(worker_scripts(), min_size=1, max_size=12),
    st.integers(1, 4),
    st.sampled_from(["spawn", "registration"]),
    st.floats(0.0, 6.0, allow_nan=False),
    st.integers(0, 2**32 - 1),
)
def test_cancellation_at_any_moment_stops_everything(scripts, concurrency, slot_mode, cancel_at, seed):
    """An outside cancellation (Ctrl-C, a caller's deadline) at any moment of a start."""
    scenario = Scenario(
        pools=(("notebook", len(scripts)),),
        settings=StartupSettings(concurrency=concurrency, slot_mode=slot_mode, registration_timeout=5.0,
                                 stop_grace=0.5),
        scripts=tuple(scripts), cancel_at=cancel_at, schedule_seed=seed,
    )
    run = run_and_check(scenario)
    if run.cancelled:
        assert not run.owner.snapshot() or all(h.native.script.kill_raises for h in run.owner.snapshot())
