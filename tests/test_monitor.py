"""The monitor's judgement of busy and idle workers, with real worker processes and SQLite.

The workers are simulated ones that, like CLM's, write no ``last_heartbeat``
while a job runs (``CLM_SIM_QUIET_WHILE_BUSY=1``).  Settings are small so that
each test takes seconds; the rules are the same as with the defaults.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import trio

from clm_workers import ConfigError, MonitorSettings, RestartPolicy, WorkerConfig, open_worker_pool
from clm_workers.executors.base import Activity
from clm_workers.executors.direct import DirectExecutor
from clm_workers.monitor import Watch, assess
from clm_workers.plan import WorkerSpec, new_executor_id
from clm_workers.registry import Registry, RowHealth
from clm_workers.settings_file import load_settings
from procs import alive, session_processes, wait_for, wait_until

RESTART = RestartPolicy(backoff_initial=0.1, backoff_max=0.5, flap_limit=10, flap_window=60)
# Idle: hung after 2 s, killed after 3.5 s (as FAST_MONITOR in test_pool.py).
BASE = dict(interval=0.1, heartbeat_timeout=2.0, hung_timeout=3.5, restart=RESTART)


def quiet_sim(count: int = 1) -> WorkerConfig:
    env = {"CLM_HEARTBEAT_INTERVAL": "0.2", "CLM_SIM_QUIET_WHILE_BUSY": "1"}
    return WorkerConfig("notebook", count, module="clm_workers.sim", env=env)


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def submit(pool, name: str, **payload: float) -> int:
    (pool.manager.workspace_path / f"{name}.in").write_text(name)
    return pool.manager.registry.submit_job("notebook", f"{name}.in", f"{name}.out", payload)


def job_row(db: Path, job: int) -> tuple:
    [row] = query(db, "SELECT status, worker_id, attempts, error FROM jobs WHERE id = ?", job)
    return row


def failures(db: Path) -> list[str]:
    return [m for (m,) in query(db, "SELECT message FROM worker_events WHERE event_type = 'worker_failed'"
                                    " ORDER BY id")]


async def processing(db: Path, job: int) -> int:
    """Wait until ``job`` runs; the row id of its worker."""
    [(worker,)] = await wait_for(
        lambda: query(db, "SELECT worker_id FROM jobs WHERE id = ? AND status = 'processing'", job), 15)
    return worker


def pid_of(pool, row_id: int) -> int:
    [handle] = [h for h in pool.manager._live.snapshot() if h.db_worker_id == row_id]
    return handle.pid


# -- real processes ------------------------------------------------------------------


async def test_busy_worker_silent_in_last_heartbeat_but_alive_is_not_killed(tmp_path):
    """Sleeping (no CPU, no heartbeat) for longer than heartbeat_timeout + hung_timeout."""
    db = tmp_path / "jobs.db"
    settings = MonitorSettings(**BASE, progress_timeout=12.0, max_job_time=30.0)
    async with open_worker_pool(db, tmp_path, [quiet_sim()], monitor=settings) as pool:
        await pool.wait_started()
        job = submit(pool, "sleepy", seconds=7.0)
        worker = await processing(db, job)
        longest_silence = 0.0
        statuses = set()
        while True:
            # One query, so the worker's status belongs to the job's state it is read with.
            [(state, status, age)] = query(
                db, "SELECT j.status, w.status, (julianday('now') - julianday(w.last_heartbeat)) * 86400"
                    " FROM jobs j, workers w WHERE j.id = ? AND w.id = ?", job, worker)
            if state != "processing":
                break
            statuses.add(status)
            longest_silence = max(longest_silence, age)
            await trio.sleep(0.1)
        assert job_row(db, job)[:3] == ("completed", worker, 1)
        assert longest_silence > settings.heartbeat_timeout + settings.hung_timeout
        assert statuses == {"busy"}  # never flagged hung
        assert pool.monitor.deaths == 0 and failures(db) == []


async def test_busy_worker_whose_kernel_computes_is_not_stalled(tmp_path):
    """No heartbeat of any kind for longer than progress_timeout, but CPU time in a child process."""
    db = tmp_path / "jobs.db"
    settings = MonitorSettings(**BASE, progress_timeout=2.0, max_job_time=60.0)
    async with open_worker_pool(db, tmp_path, [quiet_sim()], monitor=settings) as pool:
        await pool.wait_started()
        job = submit(pool, "compute", child_cpu=5.0)
        worker = await processing(db, job)
        await wait_for(lambda: job_row(db, job)[0] != "processing", 60)
        assert job_row(db, job)[:3] == ("completed", worker, 1)
        assert pool.monitor.deaths == 0 and failures(db) == []


async def test_sigstopped_busy_worker_is_found_and_replaced_and_its_job_requeued(tmp_path):
    db = tmp_path / "jobs.db"
    settings = MonitorSettings(**BASE, progress_timeout=60.0, max_job_time=60.0)
    async with open_worker_pool(db, tmp_path, [quiet_sim()], monitor=settings) as pool:
        await pool.wait_started()
        job = submit(pool, "frozen", seconds=2.0)
        victim = await processing(db, job)
        pid = pid_of(pool, victim)
        os.kill(pid, signal.SIGSTOP)
        stopped_at = trio.current_time()
        try:
            await wait_for(
                lambda: query(db, "SELECT status FROM workers WHERE id = ?", victim) == [("hung",)],
                settings.heartbeat_timeout + 3)
            await wait_for(lambda: pool.monitor.deaths == 1, settings.hung_timeout + 3)
            found_after = trio.current_time() - stopped_at
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)
        assert settings.hung_timeout <= found_after < settings.hung_timeout + 2
        assert not alive(pid)
        assert query(db, "SELECT status FROM workers WHERE id = ?", victim) == [("dead",)]
        # The replacement takes the requeued job and completes it.
        await wait_for(lambda: job_row(db, job)[0] == "completed", 20)
        status, worker, attempts, _ = job_row(db, job)
        assert worker != victim and attempts == 2 and pool.monitor.replacements == 1
        [hung, dead] = failures(db)
        assert "is hung: stopped for" in hung and f"job {job}" in hung
        assert "frozen: stopped for" in dead
    assert session_processes(pool.manager.session_id) == []


async def test_stopped_worker_continued_in_time_gets_its_status_back(tmp_path):
    db = tmp_path / "jobs.db"
    settings = MonitorSettings(**{**BASE, "hung_timeout": 10.0}, progress_timeout=60.0, max_job_time=60.0)
    status = "SELECT status FROM workers WHERE id = ?"
    async with open_worker_pool(db, tmp_path, [quiet_sim()], monitor=settings) as pool:
        await pool.wait_started()
        job = submit(pool, "paused", seconds=8.0)
        worker = await processing(db, job)
        pid = pid_of(pool, worker)
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_for(lambda: query(db, status, worker) == [("hung",)], settings.heartbeat_timeout + 3)
        finally:
            os.kill(pid, signal.SIGCONT)
        # Running again in the middle of its job: the monitor gives the row back its status.
        await wait_for(lambda: query(db, status, worker) == [("busy",)], 2)
        assert job_row(db, job)[0] == "processing"
        await wait_for(lambda: job_row(db, job)[0] == "completed", 15)
        assert job_row(db, job)[1:3] == (worker, 1)
        assert pool.monitor.deaths == 0 and alive(pid)


async def test_job_past_max_job_time_retires_its_worker_then_fails_after_its_attempts(tmp_path):
    db = tmp_path / "jobs.db"
    settings = MonitorSettings(**BASE, progress_timeout=60.0, max_job_time=2.0)
    async with open_worker_pool(db, tmp_path, [quiet_sim()], monitor=settings) as pool:
        await pool.wait_started()
        job = submit(pool, "endless", seconds=60.0)
        query(db, "UPDATE jobs SET max_attempts = 2 WHERE id = ?", job)
        first = await processing(db, job)
        # First attempt: the worker is retired and the job goes back to pending.
        await wait_for(lambda: pool.monitor.deaths == 1, 10)
        assert query(db, "SELECT status FROM workers WHERE id = ?", first) == [("dead",)]
        second = await processing(db, job)  # the replacement claims it again
        assert second != first and job_row(db, job)[2] == 2
        # Second attempt: the last one, so the job fails with the reason.
        await wait_for(lambda: job_row(db, job)[0] == "failed", 10)
        status, worker, attempts, error = job_row(db, job)
        assert attempts == 2 and pool.monitor.deaths == 2
        assert f"ran job {job} for" in error and "longer than max_job_time (2 s)" in error
        assert error.endswith("(after 2 attempts)")
        # The pool heals: a third worker runs.
        await wait_for(lambda: pool.monitor.replacements == 2 and pool.manager.running == 1, 10)
    assert session_processes(pool.manager.session_id) == []


async def test_busy_worker_without_any_progress_is_stalled_and_replaced(tmp_path):
    """No CPU time, no heartbeat of any kind: a deadlock, found after progress_timeout."""
    db = tmp_path / "jobs.db"
    settings = MonitorSettings(**BASE, progress_timeout=3.0, max_job_time=60.0)
    async with open_worker_pool(db, tmp_path, [quiet_sim()], monitor=settings) as pool:
        await pool.wait_started()
        job = submit(pool, "deadlocked", seconds=60.0)
        victim = await processing(db, job)
        t0 = trio.current_time()
        await wait_for(lambda: pool.monitor.deaths == 1, 20)
        # CURRENT_TIMESTAMP has 1 s resolution (ages read up to 1 s long), and t0 is
        # taken a poll after the claim.
        assert trio.current_time() - t0 >= settings.progress_timeout - 1.2
        assert job_row(db, job)[1] != victim  # requeued (and maybe claimed by the replacement)
        message = failures(db)[0]
        assert "stalled: no CPU time and no heartbeat for" in message and f"job {job}" in message


def test_activity_of_a_real_worker_tree(tmp_path):
    """The direct executor's activity: CPU seconds of the whole tree, and SIGSTOP seen."""
    executor = DirectExecutor(db_path=tmp_path / "jobs.db", workspace_path=tmp_path, log_dir=tmp_path,
                              extra_env={"PYTHONPATH": str(Path(__file__).resolve().parent)})
    spec = WorkerSpec("notebook", 0, "direct", "workers_for_tests.sleeper", "pre",
                      new_executor_id("direct", "notebook", 0), "session-test")
    handle = executor.start(spec)
    try:
        first = executor.activity([handle])[handle]
        assert first.cpu_seconds is not None and not first.stopped
        os.kill(handle.pid, signal.SIGSTOP)
        wait_until(lambda: executor.activity([handle])[handle].stopped, 5, "stopped")
        os.kill(handle.pid, signal.SIGCONT)
        wait_until(lambda: not executor.activity([handle])[handle].stopped, 5, "running again")
    finally:
        executor.kill(handle)
        executor.close()
    assert executor.activity([handle]) == {}  # ended: left out


# -- the rules -------------------------------------------------------------------------

S = MonitorSettings()  # the defaults


def row(status="busy", heartbeat=None, job=7, job_age=None, progress=None) -> RowHealth:
    return RowHealth(1, status, heartbeat, job, job_age, progress)


def watch(now=1000.0, cpu_quiet=0.0, stopped_for=None) -> Watch:
    return Watch(1.0, cpu_changed_at=now - cpu_quiet,
                 stopped_since=None if stopped_for is None else now - stopped_for)


@pytest.mark.parametrize(("health", "seen", "action", "why"), [
    # Idle: by last_heartbeat.
    (row("idle", heartbeat=9, job=None), None, "ok", ""),
    (row("idle", heartbeat=11, job=None), None, "hung", "no heartbeat for 11 s"),
    (row("hung", heartbeat=31, job=None), None, "retire", "hung: no heartbeat for 31 s"),
    # Busy: CLM's 35-40 s cell that sleeps: silent last_heartbeat, no CPU, no output.
    (row(heartbeat=40, job_age=40, progress=40), watch(cpu_quiet=40), "ok", ""),
    # ... silent like that for 5 minutes: deadlocked.
    (row(heartbeat=301, job_age=301, progress=301), watch(cpu_quiet=301), "retire",
     "stalled: no CPU time and no heartbeat for 301 s while running job 7"),
    # ... but any sign of life keeps it: CPU time, a worker_heartbeats row, last_heartbeat.
    (row(heartbeat=400, job_age=400, progress=400), watch(cpu_quiet=1), "ok", ""),
    (row(heartbeat=400, job_age=400, progress=3), watch(cpu_quiet=400), "ok", ""),
    (row(heartbeat=2, job_age=400, progress=None), watch(cpu_quiet=400), "ok", ""),
    # A job that just started counts as progress.
    (row(heartbeat=900, job_age=5, progress=None), watch(cpu_quiet=900), "ok", ""),
    # The job limit, whatever the progress.
    (row(heartbeat=1, job_age=601, progress=1), watch(cpu_quiet=0), "retire",
     "ran job 7 for 601 s, longer than max_job_time (600 s)"),
    # Stopped: hung after heartbeat_timeout, retired after hung_timeout.
    (row(heartbeat=1, job_age=20), watch(stopped_for=5), "ok", ""),
    (row(heartbeat=1, job_age=20), watch(stopped_for=11), "hung", "stopped for 11 s while running job 7"),
    (row("hung", heartbeat=1, job_age=40), watch(stopped_for=31), "retire",
     "frozen: stopped for 31 s while running job 7"),
])
def test_rules(health, seen, action, why):
    verdict = assess(health, seen, 1000.0, S)
    assert (verdict.action, verdict.why) == (action, why)


def test_idle_silence_counts_from_the_end_of_the_job_at_the_earliest():
    """A worker quiet during a 40 s job is idle with a 40 s old heartbeat for a moment."""
    back = row("idle", heartbeat=40, job=None)
    assert assess(back, None, 1000.0, S, busy_seen_at=999.0).action == "ok"
    assert assess(back, None, 1000.0, S, busy_seen_at=988.0).why == "no heartbeat for 12 s"
    assert assess(back, None, 1000.0, S).action == "retire"


def test_watch_notices_any_cpu_change_and_the_start_of_a_stop():
    w = Watch(None, cpu_changed_at=0.0)
    w.update(Activity(1.5), 1.0)
    assert (w.cpu_seconds, w.cpu_changed_at, w.stopped_since) == (1.5, 1.0, None)
    w.update(Activity(1.5, stopped=True), 2.0)
    w.update(Activity(1.5, stopped=True), 3.0)
    assert (w.cpu_changed_at, w.stopped_since) == (1.0, 2.0)
    w.update(Activity(1.4), 4.0)  # a member exited unreaped: still a change
    assert (w.cpu_changed_at, w.stopped_since) == (4.0, None)
    w.update(Activity(None), 5.0)  # not measurable: no news
    assert w.cpu_changed_at == 4.0


def test_health_reads_jobs_and_worker_heartbeats_in_utc(tmp_path):
    """Ages come from SQLite's clock (UTC), for rows written with CURRENT_TIMESTAMP and by CLM."""
    registry = Registry(tmp_path / "jobs.db", session_id="s")
    registry.open()
    try:
        db = registry._db()
        db.execute("INSERT INTO workers (id, worker_type, container_id, status, last_heartbeat)"
                   " VALUES (1, 'notebook', 'a', 'busy', datetime('now', '-50 seconds')),"
                   " (2, 'notebook', 'b', 'idle', CURRENT_TIMESTAMP), (3, 'notebook', 'c', 'dead', NULL)")
        db.execute("INSERT INTO jobs (job_type, status, input_file, output_file, content_hash, payload,"
                   " worker_id, started_at) VALUES ('notebook', 'processing', 'i', 'o', '', '{}', 1,"
                   " datetime('now', '-40 seconds'))")
        [busy, idle] = sorted(registry.health([1, 2, 3]), key=lambda r: r.row_id)
        assert busy.busy and busy.job_id == 1 and 49 <= busy.heartbeat_age <= 52 and 39 <= busy.job_age <= 42
        assert busy.progress_age is None  # no worker_heartbeats table in this database
        assert not idle.busy and idle.heartbeat_age < 2 and idle.job_id is None
        # CLM (1.9.2 and later) adds worker_heartbeats; its rows are naive UTC strings.
        db.execute("CREATE TABLE IF NOT EXISTS worker_heartbeats (worker_id INTEGER PRIMARY KEY,"
                   " job_id INTEGER, heartbeat_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")
        utc = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - 5))
        db.execute("INSERT INTO worker_heartbeats (worker_id, job_id, heartbeat_at) VALUES (1, 1, ?)", (utc,))
        [busy] = [r for r in registry.health([1]) if r.row_id == 1]
        assert 4 <= busy.progress_age <= 7
        # hung and back: the status it had, decided in SQLite.
        assert sorted(registry.flag_hung([1, 2, 3])) == [1, 2]
        assert sorted(registry.clear_hung([1, 2, 3])) == [1, 2]
        assert dict(db.execute("SELECT id, status FROM workers")) == {1: "busy", 2: "idle", 3: "dead"}
    finally:
        registry.close()


@pytest.mark.parametrize(("toml", "message"), [
    ("[monitor]\nprogress_timeout = 5\n",
     "monitor.progress_timeout (workers.toml, line 2): 5.0 is not allowed; expected at least "
     "monitor.heartbeat_timeout (10 s)"),
    ("[monitor]\nmax_job_time = 0\n",
     "monitor.max_job_time (workers.toml, line 2): 0 is not allowed; expected a number of seconds "
     "from 1 to 86400"),
])
def test_bad_monitor_settings_name_the_setting(tmp_path, toml, message):
    path = tmp_path / "workers.toml"
    path.write_text(toml + '[[pools]]\ntype = "notebook"\ncount = 1\nmodule = "clm_workers.sim"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, shown_as="workers.toml", environ={}, cwd=tmp_path)
    assert str(caught.value) == message


def test_monitor_settings_from_the_file(tmp_path):
    path = tmp_path / "workers.toml"
    path.write_text('[monitor]\nprogress_timeout = 120\nmax_job_time = 900\n'
                    '[[pools]]\ntype = "notebook"\ncount = 1\nmodule = "clm_workers.sim"\n')
    monitor = load_settings(path, environ={}, cwd=tmp_path).monitor
    assert (monitor.progress_timeout, monitor.max_job_time) == (120.0, 900.0)
    assert (MonitorSettings().progress_timeout, MonitorSettings().max_job_time) == (300.0, 600.0)
