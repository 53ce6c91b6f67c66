"""The races after startup (Hypothesis): a hung worker claiming, a busy database against the lease
and against the monitor.

* **Claims** run the worker runtime's own transaction (:func:`clm_workers.worker.claim_next`)
  and the registry's own statements (``flag_hung``, ``clear_hung``, ``mark_dead``) on a
  real SQLite file, in generated orders: the monitor flags a worker ``hung`` before it
  retires it, and a worker may still run meanwhile (Docker unpauses a container to
  kill it).  A worker whose row is not ``idle`` must never take a job.
* **The lease** and **the heartbeats** are the timelines of :mod:`races`: the product's
  :class:`~clm_workers.worker.LeaseWatch` and :func:`~clm_workers.monitor.assess` decide,
  the lock stretches and who gets the lock first are generated.
"""

from __future__ import annotations

import tempfile
from contextlib import closing
from pathlib import Path

from hypothesis import given, note, settings
from hypothesis import strategies as st

from clm_workers import schema
from clm_workers.registry import Registry
from clm_workers.worker import _COMPLETE_JOB, _COUNT_SUCCESS, claim_next
from profiles import examples
from races import heartbeat_scenarios, lease_bound, lease_scenarios, run_heartbeats, run_lease

ACTIONS = ("claim", "flag", "clear", "retire", "finish")


@settings(max_examples=examples(300))
@given(workers=st.integers(2, 4), jobs=st.integers(1, 3),
       steps=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 3)), max_size=30))
def test_a_worker_whose_row_is_not_idle_never_takes_a_job(workers, jobs, steps):
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "jobs.db"
        with closing(schema.connect(db)) as setup:
            schema.ensure_schema(setup)
            for i in range(workers):
                setup.execute("INSERT INTO workers (worker_type, container_id, status, session_id)"
                              " VALUES ('notebook', ?, 'idle', 's')", (f"direct-notebook-{i}-0000000{i}",))
            for i in range(jobs):
                setup.execute("INSERT INTO jobs (job_type, status, input_file, output_file, content_hash,"
                              " payload) VALUES ('notebook', 'pending', ?, 'out', '', '{}')", (f"in{i}",))
        registry = Registry(db, session_id="s")
        registry.open()
        conn = schema.connect(db)
        try:
            #: Workers the monitor killed: their processes can claim nothing any more.
            killed: set[int] = set()
            holding: dict[int, int] = {}
            claims: dict[int, int] = {}
            for action, index in steps:
                row = 1 + index % workers
                status = conn.execute("SELECT status FROM workers WHERE id = ?", (row,)).fetchone()[0]
                if action == "claim" and row not in killed and row not in holding:
                    job, _ = claim_next(conn, row, "notebook", None)
                    note(f"claim by row {row} ({status}): {job and job[0]}")
                    if job is not None:
                        assert status == "idle", f"row {row} took job {job[0]} while {status}"
                        holding[row] = job[0]
                        claims[job[0]] = claims.get(job[0], 0) + 1
                elif action == "flag":
                    registry.flag_hung([row])
                elif action == "clear" and row not in killed:
                    registry.clear_hung([row])
                elif action == "retire" and row not in killed:
                    # What the monitor does: the row hung first, the worker killed, then released.
                    registry.flag_hung([row])
                    killed.add(row)
                    registry.mark_dead([row], reason="retired")
                    holding.pop(row, None)
                elif action == "finish" and row in holding and row not in killed:
                    job = holding.pop(row)
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(_COMPLETE_JOB, (None, job, row))
                    conn.execute(_COUNT_SUCCESS, (0.1, row))
                    conn.execute("COMMIT")
            for job, attempts in conn.execute("SELECT id, attempts FROM jobs"):
                assert attempts == claims.get(job, 0), f"job {job}: {attempts} attempts, {claims} claims"
            held = conn.execute("SELECT j.id, w.status FROM jobs j JOIN workers w ON w.id = j.worker_id"
                                " WHERE j.status = 'processing' AND w.status = 'dead'").fetchall()
            assert held == [], f"dead workers hold jobs: {held}"
        finally:
            conn.close()
            registry.close()


@settings(max_examples=examples(1000))
@given(lease_scenarios())
def test_a_busy_database_never_makes_a_live_manager_look_dead(scenario):
    run = run_lease(scenario)
    note(run.summary())
    if run.gone_at is not None:
        assert scenario.death is not None and run.gone_at >= scenario.death, (
            f"the container took its live manager for dead at {run.gone_at:.3f} s")


@settings(max_examples=examples(300))
@given(lease_scenarios().filter(lambda s: s.death is not None))
def test_a_dead_manager_is_noticed_in_bounded_time(scenario):
    run = run_lease(scenario)
    note(run.summary())
    bound = lease_bound(scenario, run)
    if bound is not None and bound < scenario.horizon:
        assert run.gone_at is not None and run.gone_at <= bound + 1e-9, (
            f"noticed at {run.gone_at}, bound {bound:.3f} s")


@settings(max_examples=examples(1000))
@given(heartbeat_scenarios())
def test_a_healthy_idle_worker_is_never_hung_however_long_the_database_is_locked(scenario):
    verdicts = run_heartbeats(scenario)
    bad = [(round(t, 3), round(age, 3), v) for t, age, v in verdicts if v != "ok"]
    note(f"{scenario}")
    assert bad == [], f"a healthy worker judged: {bad[:5]}"


def test_the_models_reach_the_interesting_cases():
    """Guard against vacuous properties: the timelines do hold the lock longer than the lease."""
    from hypothesis import find

    long_lock = find(lease_scenarios(), lambda s: s.death is None and any(
        k.duration > s.ttl for k in s.locks.stretches))
    assert run_lease(long_lock).gone_at is None
