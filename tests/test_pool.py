"""A pool that stays healthy: monitor, restarts, job recovery, readiness, hand-over.

Real simulated worker processes and a real SQLite file throughout.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import trio

from clm_workers import (
    MonitorSettings,
    PoolNotReadyError,
    RestartPolicy,
    WorkerConfig,
    WorkerPoolManager,
    open_worker_pool,
)
from clm_workers.clm.database import prepare_database
from clm_workers.clm.installed import InstalledClm
from procs import alive, killed_at_exit, session_processes, wait_for, wait_until

FAST_MONITOR = MonitorSettings(
    interval=0.05, heartbeat_timeout=2.0, hung_timeout=3.5,
    restart=RestartPolicy(backoff_initial=0.1, backoff_max=1.0, flap_limit=3, flap_window=30),
)


def sim(worker_type="notebook", count=1, **env) -> WorkerConfig:
    env = {"CLM_HEARTBEAT_INTERVAL": "0.2", **{k: str(v) for k, v in env.items()}}
    return WorkerConfig(worker_type, count, module="clm_workers.sim", env=env)


def query(db, sql, *params):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def submit(pool, worker_type: str, name: str, seconds: float = 0.0) -> int:
    workspace = pool.manager.workspace_path
    (workspace / f"{name}.in").write_text(name)
    return pool.manager.registry.submit_job(worker_type, f"{name}.in", f"{name}.out", {"seconds": seconds})


def worker_pid(pool, db_worker_id: int) -> int:
    [handle] = [h for h in pool.manager._live.snapshot() if h.db_worker_id == db_worker_id]
    return handle.pid


async def test_worker_killed_during_a_job_job_requeued_and_pool_healed(tmp_path):
    db = tmp_path / "jobs.db"
    async with open_worker_pool(db, tmp_path, [sim(count=2)], monitor=FAST_MONITOR) as pool:
        await pool.wait_started()
        job = submit(pool, "notebook", "slow", seconds=1.0)
        [(victim,)] = await wait_for(
            lambda: query(db, "SELECT worker_id FROM jobs WHERE id = ? AND status = 'processing'", job), 10)
        os.kill(worker_pid(pool, victim), signal.SIGKILL)

        # The job goes back to pending and another worker completes it.
        [(status, worker, attempts)] = await wait_for(lambda: [
            r for r in query(db, "SELECT status, worker_id, attempts FROM jobs WHERE id = ?", job)
            if r[0] == "completed"], 15)
        assert worker != victim and attempts == 2
        assert (tmp_path / "slow.out").read_text() == "slow"
        assert query(db, "SELECT status FROM workers WHERE id = ?", victim) == [("dead",)]
        # The pool is back to full size after the backoff.
        await pool.wait_ready("notebook", 2)
        assert pool.manager.running == 2 and pool.monitor.replacements == 1
        [(message,)] = query(db, "SELECT message FROM worker_events WHERE event_type = 'worker_failed'"
                                 " AND worker_id = ?", victim)
        assert "exited with code -9" in message
    assert session_processes(pool.manager.session_id) == []


async def test_type_that_keeps_dying_stops_being_restarted(tmp_path):
    db = tmp_path / "jobs.db"
    configs = [sim("notebook", 1), sim("plantuml", 1, CLM_SIM_LIFETIME=0.4)]
    async with open_worker_pool(db, tmp_path, configs, monitor=FAST_MONITOR) as pool:
        await pool.wait_started()
        await wait_for(lambda: "plantuml" in pool.monitor.flapping, 20)
        assert pool.monitor.deaths == 3  # the flap limit
        assert "3 plantuml workers died within 30 s; restarts of this type are stopped" in (
            pool.monitor.flapping["plantuml"])
        # Nothing is restarted after that, and the healthy type is untouched.
        assert pool.readiness.value.running == {"notebook": 1, "plantuml": 0}
        assert query(db, "SELECT count(*) FROM workers WHERE worker_type = 'plantuml'"
                         " AND status != 'dead'") == [(0,)]
        assert query(db, "SELECT count(*) FROM worker_events WHERE message LIKE '%restarts of this type"
                         " are stopped%'") == [(1,)]


async def test_hung_worker_is_flagged_then_replaced(tmp_path):
    db = tmp_path / "jobs.db"
    async with open_worker_pool(db, tmp_path, [sim(count=1)], monitor=FAST_MONITOR) as pool:
        await pool.wait_started()
        [started] = pool.report.started
        os.kill(started.pid, signal.SIGSTOP)  # alive, but no heartbeat any more
        try:
            await wait_for(lambda: query(db, "SELECT status FROM workers WHERE id = ?",
                                         started.db_worker_id) == [("hung",)], 10)
            await wait_for(lambda: pool.monitor.replacements == 1, 10)
        finally:
            if alive(started.pid):
                os.kill(started.pid, signal.SIGCONT)
        assert not alive(started.pid)
        assert query(db, "SELECT status FROM workers WHERE id = ?", started.db_worker_id) == [("dead",)]


async def test_wait_ready_returns_before_the_whole_pool(tmp_path):
    configs = [sim("notebook", 1, CLM_SIM_BOOT_DELAY=0.1), sim("plantuml", 3, CLM_SIM_BOOT_DELAY=3.0)]
    async with open_worker_pool(tmp_path / "jobs.db", tmp_path, configs, monitor=FAST_MONITOR) as pool:
        t0 = trio.current_time()
        await pool.wait_ready("notebook", 1)
        first = trio.current_time() - t0
        await pool.wait_started()
        everyone = trio.current_time() - t0
    assert first < 1.5 <= 3.0 <= everyone


async def test_wait_ready_fails_when_startup_ends_short(tmp_path):
    configs = [sim("notebook", 1), sim("plantuml", 1, CLM_SIM_FAIL="crash")]
    async with open_worker_pool(tmp_path / "jobs.db", tmp_path, configs, monitor=FAST_MONITOR) as pool:
        await pool.wait_ready("notebook")
        with pytest.raises(PoolNotReadyError, match="startup finished with 0 plantuml running"):
            await pool.wait_ready("plantuml")


async def test_two_pools_on_one_database_stay_independent(tmp_path):
    db = tmp_path / "jobs.db"
    # Jobs carry their session from CLM's schema 11 on (CLM 1.9.2's own init
    # makes version 8, where any worker of a type takes any job of it).
    prepare_database(db, InstalledClm(None))
    async with open_worker_pool(db, tmp_path, [sim(count=2)], monitor=FAST_MONITOR) as a:
        async with open_worker_pool(db, tmp_path, [sim(count=2)], monitor=FAST_MONITOR) as b:
            await a.wait_started()
            await b.wait_started()
            jobs_a = [submit(a, "notebook", f"a{i}") for i in range(4)]
            jobs_b = [submit(b, "notebook", f"b{i}") for i in range(4)]
            ids_a = {w.db_worker_id for w in a.report.started}
            ids_b = {w.db_worker_id for w in b.report.started}

            def done(jobs):
                rows = query(db, "SELECT status, worker_id FROM jobs WHERE id IN (SELECT value FROM"
                                 " json_each(?))", json.dumps(jobs))
                return rows if all(s == "completed" for s, _ in rows) else None

            # Each pool's workers take only their own session's jobs.
            assert {w for _, w in await wait_for(lambda: done(jobs_a), 10)} <= ids_a
            assert {w for _, w in await wait_for(lambda: done(jobs_b), 10)} <= ids_b
        # B stopped: its workers are gone, A's run on, and A's monitor replaced nothing.
        assert session_processes(b.manager.session_id) == []
        assert len(session_processes(a.manager.session_id)) == 2
        assert query(db, "SELECT count(*) FROM workers WHERE status = 'idle'"
                         " AND id IN (SELECT value FROM json_each(?))", json.dumps(list(ids_a))) == [(2,)]
        assert a.monitor.deaths == 0


def test_new_manager_retires_what_a_killed_manager_left(tmp_path):
    db = tmp_path / "jobs.db"
    prepare_database(db, InstalledClm(None))  # job sessions (schema 11): the new pool's worker leaves it
    script = tmp_path / "manager.py"
    script.write_text(textwrap.dedent("""
        import json, sys, trio
        from pathlib import Path
        from clm_workers import WorkerConfig, WorkerPoolManager
        tmp = Path(sys.argv[1])
        (tmp / "in.txt").write_text("x")
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [WorkerConfig("notebook", 2,
                                    module="clm_workers.sim")], lease_ttl=1.0)
        trio.run(manager.start_pools)
        job = manager.registry.submit_job("notebook", "in.txt", "out.txt", {"seconds": 60})
        print(json.dumps({"session": manager.session_id, "job": job}), flush=True)
        trio.run(trio.sleep_forever)
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    with killed_at_exit(proc):
        info = json.loads(proc.stdout.readline())
        old = info["session"]
        job_status = "SELECT status, worker_id FROM jobs WHERE id = ?"
        wait_until(lambda: query(db, job_status, info["job"])[0][0] == "processing", 10)
        # Everything dies at once, with no chance to clean up (a host crash, the OOM killer).
        workers = session_processes(old)
        for pid in [*workers, proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(5)
        wait_until(lambda: not any(alive(pid) for pid in workers), 5)
        live_rows = "SELECT count(*) FROM workers WHERE session_id = ? AND status != 'dead'"
        assert query(db, live_rows, old) == [(2,)]
        wait_until(lambda: query(db, "SELECT lease_expires_at < julianday('now') FROM clm_worker_sessions"
                                     " WHERE session_id = ?", old) == [(1,)], 5)

        manager = WorkerPoolManager(db, tmp_path, [sim(count=1)])
        trio.run(manager.start_pools)
        try:
            assert query(db, live_rows, old) == [(0,)]
            # The old session's in-flight job is not lost: it is pending again.
            assert query(db, job_status, info["job"]) == [("pending", None)]
        finally:
            trio.run(manager.stop_pools)


def test_a_live_managers_rows_are_never_touched(tmp_path):
    db = tmp_path / "jobs.db"
    first = WorkerPoolManager(db, tmp_path, [sim(count=2)])
    trio.run(first.start_pools)
    try:
        second = WorkerPoolManager(db, tmp_path, [sim(count=1)])
        trio.run(second.start_pools)
        trio.run(second.stop_pools)
        assert query(db, "SELECT count(*) FROM workers WHERE session_id = ? AND status = 'idle'",
                     first.session_id) == [(2,)]
        assert len(session_processes(first.session_id)) == 2
    finally:
        trio.run(first.stop_pools)


def test_monitoring_between_start_and_stop_calls(tmp_path):
    manager = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [sim(count=2)])
    report = trio.run(manager.start_pools)
    try:
        monitor = manager.start_monitoring(FAST_MONITOR)
        os.kill(report.started[0].pid, signal.SIGKILL)
        wait_until(lambda: monitor.replacements == 1 and manager.running == 2, 10)
    finally:
        trio.run(manager.stop_pools)
    assert session_processes(manager.session_id) == []
