"""Chaos with real processes: interrupts, a killed manager, a locked database.

Real simulated workers (``clm_workers.sim``), a real SQLite file, the direct
executor.  Every test polls with a deadline instead of sleeping to
synchronise (the only sleeps are the chaos itself: the random moment of an
interrupt, how long another process holds the database), and kills every
process it started in ``finally``.  Together they take well under a minute.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest
import trio

from clm_workers import MonitorSettings, PoolStartupError, WorkerConfig, WorkerPoolManager, schema
from clm_workers.plan import plan_workers
from procs import JsonLines as Lines
from procs import alive, session_processes, wait_until

SIM = "clm_workers.sim"
LIVE = ("created", "idle", "busy")

#: The interrupt moments of the SIGINT trials come from this seed, so a run can be repeated.
SIGINT_SEED = 20260403
SIGINT_TRIALS = 20


def live_rows(db: Path, session: str) -> list[tuple[int, str, str]]:
    """Rows of ``session`` that claim a live worker (``created``, ``idle`` or ``busy``)."""
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(
            "SELECT id, container_id, status FROM workers WHERE session_id = ? AND status IN (?, ?, ?)",
            (session, *LIVE),
        ).fetchall()


def rows_by_id(db: Path, session: str) -> dict[int, tuple[str, str]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return {
            row_id: (container_id, status)
            for row_id, container_id, status in conn.execute(
                "SELECT id, container_id, status FROM workers WHERE session_id = ?", (session,)
            )
        }


def kill_sessions(sessions: list[str]) -> None:
    """Last resort in ``finally``: SIGKILL whatever a failed test left of these sessions."""
    for session in sessions:
        for pid in session_processes(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def manager_process(tmp_path: Path, body: str, start_method: str = "spawn") -> subprocess.Popen:
    """A manager in its own process (so it can be interrupted or killed), talking JSON lines.

    Its ``sim()`` pools use ``start_method`` (``forkserver``: forked from a
    template that preloaded the simulated worker's runtime).
    """
    script = tmp_path / "chaos_manager.py"
    script.write_text(textwrap.dedent("""
        import json, signal, sys, trio
        from pathlib import Path
        # Ctrl-C is KeyboardInterrupt here even if this test runs where SIGINT is ignored
        # (a background job inherits SIG_IGN, and Trio then installs no handler).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from clm_workers import WorkerConfig, WorkerPoolManager
        tmp = Path(sys.argv[1])
        START_METHOD = sys.argv[2]
        def say(**message):
            print(json.dumps(message), flush=True)
        def sim(worker_type, count, boot):
            # Spawn is the default start method: such a pool is written the way any caller writes it.
            fork = {} if START_METHOD == "spawn" else {"start_method": START_METHOD,
                                                        "preload": ("clm_workers.worker",)}
            return WorkerConfig(worker_type, count, module="clm_workers.sim",
                                env={"CLM_SIM_BOOT_DELAY": str(boot)}, **fork)
    """) + textwrap.dedent(body))
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), start_method],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def end_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


# -- SIGINT at random moments ---------------------------------------------------------


SIGINT_MANAGER = """
    # 32 workers of four boot times; one trial per "go" line on stdin, all on one database.
    BOOTS = {"notebook": 0.1, "plantuml": 0.3, "drawio": 0.6, "slow": 1.0}
    db = tmp / "jobs.db"
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        manager = WorkerPoolManager(db, tmp, [sim(t, 8, b) for t, b in BOOTS.items()], stop_timeout=3)
        state = {"phase": "starting"}

        async def trial():
            say(event="starting", session=manager.session_id)
            await manager.start_pools()
            state["phase"] = "running"
            say(event="started", running=manager.running)
            try:
                await trio.sleep_forever()
            finally:  # what a careful caller does with a running pool
                with trio.CancelScope(shield=True):
                    await manager.stop_pools()

        try:
            trio.run(trial)
        except KeyboardInterrupt:
            say(event="interrupted", phase=state["phase"], running=manager.running)
        except BaseException as exc:
            say(event="error", error=repr(exc))
"""


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_sigint_at_random_moments_leaves_no_worker_and_no_claim(tmp_path, start_method):
    """20 starts of 32 workers, each interrupted by SIGINT at a random (seeded) moment."""
    rng = random.Random(SIGINT_SEED)
    db = tmp_path / "jobs.db"
    proc = manager_process(tmp_path, SIGINT_MANAGER, start_method)
    lines = Lines(proc)
    sessions: list[str] = []
    phases: list[str] = []
    try:
        for trial in range(SIGINT_TRIALS):
            proc.stdin.write(f"go {trial}\n")
            proc.stdin.flush()
            session = lines.next(15, until=lambda m: m["event"] == "starting")["session"]
            sessions.append(session)
            moment = rng.uniform(0.0, 1.4)
            time.sleep(moment)  # the chaos itself: an interrupt at a random moment, not a wait
            proc.send_signal(signal.SIGINT)
            outcome = lines.next(15, until=lambda m: m["event"] in ("interrupted", "error"))
            context = f"trial {trial}, SIGINT {moment:.3f} s after the start: {outcome}"
            assert outcome["event"] == "interrupted", context
            phases.append(outcome["phase"])
            # The manager stopped (killed and reaped) every worker itself before the
            # interrupt came out: none is left even now, before any lifeline could act.
            assert outcome["running"] == 0, context
            assert session_processes(session) == [], context
            assert live_rows(db, session) == [], context
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        end_process(proc)
        kill_sessions(sessions)
    # The moments must mostly fall inside start_pools, or the test tests something else.
    print(f"SIGINT landed {phases.count('starting')}x during start_pools, "
          f"{phases.count('running')}x after it")
    assert phases.count("starting") >= SIGINT_TRIALS // 2, phases


# -- SIGKILL of the manager ---------------------------------------------------------------


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
@pytest.mark.parametrize("moment", ["while spawning", "while waiting for registrations", "after startup"])
def test_manager_killed_with_sigkill_leaves_no_worker_after_2_s(tmp_path, moment, start_method):
    """Unlike tests/test_manager.py's version: 32 workers, a kill in the middle of the
    spawns too, every process of the session checked (not only those seen before the
    kill), and no row left claiming a registered worker."""
    boot = 0.2 if moment == "after startup" else 30
    # Two spawns at a time: the spawns take long enough to be caught in the middle.
    concurrency = 2 if moment == "while spawning" else 10
    db = tmp_path / "jobs.db"
    proc = manager_process(tmp_path, f"""
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [sim("notebook", 32, {boot})],
                                    max_startup_concurrency={concurrency})
        say(event="session", session=manager.session_id)
        trio.run(manager.start_pools)
        say(event="started", running=manager.running)
        trio.run(trio.sleep_forever)
    """, start_method)
    lines = Lines(proc)
    session = ""
    try:
        session = lines.next(15)["session"]
        if moment == "while spawning":
            seen = wait_until(lambda: session_processes(session), 15, interval=0.002)
        elif moment == "while waiting for registrations":
            templates = 1 if start_method == "forkserver" else 0

            def all_spawned():
                found = session_processes(session)
                return len(found) == 32 + templates and found

            seen = wait_until(all_spawned, 15)
        else:
            assert lines.next(15) == {"event": "started", "running": 32}
            seen = session_processes(session)
        proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(5)
        if moment == "while spawning":
            # (a fork server's template counts as one of them)
            assert len(seen) < 32, "the kill should have come in the middle of the spawns"
        left = 2.0 - (time.monotonic() - killed_at)
        wait_until(lambda: not session_processes(session), max(left, 0.0))
        assert not any(alive(pid) for pid in seen)
        # Registered workers mark their own rows dead when their lifeline ends; rows of
        # workers that never registered stay "created" for the next manager to retire.
        claims = [r for r in live_rows(db, session) if r[2] != "created"]
        assert claims == []
        if moment == "after startup":
            assert live_rows(db, session) == []
    finally:
        end_process(proc)
        kill_sessions([session] if session else [])


# -- a database another process holds a write lock on -------------------------------------


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))  # how long this process holds the lock: the chaos itself
conn.execute("ROLLBACK")
print("released", flush=True)
"""


def hold_write_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process takes the database's write lock (``BEGIN IMMEDIATE``) for ``seconds``."""
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the lock is held (or the process ends)
    assert line.strip() == "locked", line
    return proc


def sim(worker_type: str, count: int, boot: float) -> WorkerConfig:
    return WorkerConfig(worker_type, count, module=SIM, env={"CLM_SIM_BOOT_DELAY": str(boot)})


@pytest.mark.parametrize(
    ("when", "registration_timeout"),
    [
        ("before the start", 10.0),      # pre-registration waits for the lock
        ("while workers register", 10.0),  # every registration waits for the lock
        ("longer than the timeout", 1.5),  # registrations cannot finish in time
    ],
)
async def test_database_locked_by_another_process_during_startup(tmp_path, when, registration_timeout):
    db = tmp_path / "jobs.db"
    conn = schema.connect(db)
    schema.ensure_schema(conn)
    conn.close()
    # Boots long enough that the other process surely holds the lock before any registers.
    configs = [sim("notebook", 6, 1.0), sim("plantuml", 4, 1.0)]
    manager = WorkerPoolManager(db, tmp_path, configs, registration_timeout=registration_timeout,
                                stop_timeout=2)
    lockers: list[subprocess.Popen] = []

    def on_progress(event) -> None:
        # The first spawn: the other process takes the lock while the workers boot.
        if event.kind == "spawned" and not lockers:
            lockers.append(hold_write_lock(db, 3.0))

    if when == "before the start":
        lockers.append(hold_write_lock(db, 3.0))
    try:
        began = trio.current_time()
        with trio.fail_after(30):
            try:
                report = await manager.start_pools(on_progress=on_progress if not lockers else None)
            except PoolStartupError as exc:
                # Failing is allowed, but only with a reason that names the database, and
                # with nothing left behind.
                assert "database" in str(exc), exc
                assert session_processes(manager.session_id) == []
                assert live_rows(db, manager.session_id) == []
                return
        assert lockers and lockers[0].wait(10) == 0, "the lock should have been held and released"
        planned = {(c.worker_type, i) for c in configs for i in range(c.count)}
        started = {(w.worker_type, w.index): w for w in report.started}
        failed = {(f.worker_type, f.index): f for f in report.failed}
        # Nothing is lost: every worker is started or failed, once, with a reason.
        assert started.keys() | failed.keys() == planned and not started.keys() & failed.keys()
        assert all(f.reason for f in failed.values())
        rows = rows_by_id(db, manager.session_id)
        for worker in started.values():
            assert alive(worker.pid), worker
            assert rows[worker.db_worker_id] == (worker.executor_id, "idle")
        for failure in failed.values():
            assert failure.phase == "timeout" and "did not register within" in failure.reason, failure
            assert (failure.executor_id, "dead") in rows.values(), failure
        assert sorted(session_processes(manager.session_id)) == sorted(w.pid for w in started.values())
        if when == "longer than the timeout":
            assert failed, "a 3 s lock should have made 1.5 s registrations time out"
        else:
            assert not failed, report.failed
            # The lock was in the way (1 s boots took over 3 s), and startup waited it out.
            assert trio.current_time() - began > 3.0, report.duration
    finally:
        with trio.CancelScope(shield=True):
            await manager.stop_pools()
        for locker in lockers:
            end_process(locker)
        kill_sessions([manager.session_id])
    assert session_processes(manager.session_id) == []
    assert live_rows(db, manager.session_id) == []


# -- a replacement start into a running pool ------------------------------------------------


@pytest.mark.parametrize("how", ["fails with fail_fast", "is cancelled"])
async def test_a_replacement_that_fails_leaves_the_running_pool_alone(tmp_path, how):
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, tmp_path, [sim("notebook", 3, 0.1)], fail_fast=True)
    report = await manager.start_pools()
    try:
        pids = [w.pid for w in report.started]
        assert len(pids) == 3
        env = {"CLM_SIM_FAIL": "crash"} if how == "fails with fail_fast" else {"CLM_SIM_BOOT_DELAY": "30"}
        [replacement] = plan_workers([WorkerConfig("plantuml", 1, module=SIM, env=env)], manager.session_id)
        with trio.move_on_after(1.0 if how == "is cancelled" else 30):
            assert await manager.replace_worker(replacement) is False
        assert all(alive(pid) for pid in pids), "the replacement's cleanup stopped the running pool"
        assert manager.running == 3
    finally:
        with trio.CancelScope(shield=True):
            await manager.stop_pools()
        kill_sessions([manager.session_id])


# -- Ctrl-C twice (or more) in CLM's library path -------------------------------------------


def assert_interrupted_leaving_nothing(outcome: dict, db: Path, session: str) -> None:
    """start_pools raised one KeyboardInterrupt, and its cleanup left no process and no live row."""
    assert outcome == {"event": "raised", "type": "KeyboardInterrupt", "running": 0}, outcome
    assert session_processes(session) == []
    assert live_rows(db, session) == []


def test_more_ctrl_c_during_the_cleanup_of_start_pools_do_not_abandon_it(tmp_path):
    """Three SIGINTs: one while 8 workers boot, two more while the cleanup waits out their grace."""
    reports = tmp_path / "reports"
    reports.mkdir()
    db = tmp_path / "jobs.db"
    proc = manager_process(tmp_path, f"""
        env = {{"PYTHONPATH": {str(Path(__file__).resolve().parent)!r}, "TEST_REPORT_DIR": {str(reports)!r}}}
        manager = WorkerPoolManager(tmp / "jobs.db", tmp,
                                    [WorkerConfig("notebook", 8, module="workers_for_tests.deaf", env=env)],
                                    registration_timeout=60, stop_timeout=2)
        say(event="session", session=manager.session_id)
        try:
            trio.run(manager.start_pools)
        except BaseException as exc:
            say(event="raised", type=type(exc).__name__, running=manager.running)
        sys.stdin.readline()
    """)
    lines = Lines(proc)
    session = ""
    try:
        session = lines.next(15)["session"]
        wait_until(lambda: len(list(reports.glob("*.ready"))) == 8, 30, "eight workers booting")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: any(reports.glob("*.term")), 15, "the cleanup's SIGTERM")
        proc.send_signal(signal.SIGINT)   # during the 2 s grace
        proc.send_signal(signal.SIGINT)
        outcome = lines.next(30)
        # Still the one exception a Ctrl-C makes, and the cleanup finished: it killed
        # every worker (they ignore SIGTERM) and released every row, before the child
        # exits (whose lifeline would end the workers anyway).
        assert_interrupted_leaving_nothing(outcome, db, session)
    finally:
        end_process(proc)
        kill_sessions([session])


def test_a_ctrl_c_in_a_collector_callback_during_start_pools_is_not_lost(tmp_path):
    """The SIGINT arrives while a weakref callback runs, inside start_pools' own tasks.

    Python ignores an exception raised in such a callback ("Exception ignored
    in: ... WeakSet ..."), so a ``KeyboardInterrupt`` raised there is lost.
    start_pools takes a Ctrl-C at its next checkpoint instead: it is raised,
    and the cleanup leaves nothing.  (A progress callback frees an object with
    a weakref callback that sends the SIGINT, so the signal always lands there.)
    """
    db = tmp_path / "jobs.db"
    proc = manager_process(tmp_path, """
        import os, weakref
        class Garbage:
            pass
        sent = []
        def on_progress(event):
            if event.kind == "registered" and not sent:
                sent.append(True)
                garbage = Garbage()
                ref = weakref.ref(garbage, lambda _: os.kill(os.getpid(), signal.SIGINT))
                del garbage
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [sim("notebook", 1, 0), sim("plantuml", 4, 1.0)])
        say(event="session", session=manager.session_id)
        try:
            trio.run(lambda: manager.start_pools(on_progress=on_progress))
            say(event="started", running=manager.running)
            trio.run(manager.stop_pools)
        except BaseException as exc:
            say(event="raised", type=type(exc).__name__, running=manager.running)
    """)
    lines = Lines(proc)
    session = ""
    try:
        session = lines.next(15)["session"]
        outcome = lines.next(30)
        assert_interrupted_leaving_nothing(outcome, db, session)
    finally:
        end_process(proc)
        kill_sessions([session])


def test_ctrl_c_during_stop_pools_does_not_abandon_the_stop(tmp_path):
    """A SIGINT while stop_pools waits for two busy workers: the stop completes, then KeyboardInterrupt."""
    db = tmp_path / "jobs.db"
    logs = tmp_path / "logs"
    proc = manager_process(tmp_path, f"""
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [sim("notebook", 2, 0)], stop_timeout=3,
                                    log_dir={str(logs)!r})
        trio.run(manager.start_pools)
        for i in range(2):
            (tmp / f"in{{i}}").write_text("x")
            manager.registry.submit_job("notebook", f"in{{i}}", f"out{{i}}", {{"seconds": 60}})
        say(event="session", session=manager.session_id)
        sys.stdin.readline()
        try:
            trio.run(manager.stop_pools)
            say(event="stopped", running=manager.running)
        except BaseException as exc:
            say(event="raised", type=type(exc).__name__, running=manager.running)
        sys.stdin.readline()
    """)
    lines = Lines(proc)
    session = ""
    try:
        session = lines.next(30)["session"]
        wait_until(lambda: sqlite3.connect(db).execute(
            "SELECT count(*) FROM jobs WHERE status = 'processing'").fetchone()[0] == 2, 15,
            "two jobs running")
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        # The workers finish their job on SIGTERM (they get the 3 s grace): interrupt then.
        wait_until(lambda: sum("stopping (signal 15)" in p.read_text() for p in logs.glob("*.log")) == 2,
                   15, "both workers asked to stop")
        proc.send_signal(signal.SIGINT)
        outcome = lines.next(30)
        assert outcome == {"event": "raised", "type": "KeyboardInterrupt", "running": 0}, outcome
        assert session_processes(session) == []
        assert live_rows(db, session) == []
        with sqlite3.connect(db) as conn:  # the jobs went back to the queue, as in any stop
            assert conn.execute("SELECT status FROM jobs").fetchall() == [("pending",), ("pending",)]
    finally:
        end_process(proc)
        kill_sessions([session])


# -- a manager that dies while its workers are busy -------------------------------------------


def test_busy_workers_of_a_killed_manager_leave_no_child_and_give_every_job_back(tmp_path):
    """24 workers, each running a job with a child process (as a kernel): the manager is SIGKILLed.

    Every worker and child is gone within 2 s, and every job is back in the queue: all
    24 workers give their job back at the same moment, and each release must get through.
    """
    db = tmp_path / "jobs.db"
    proc = manager_process(tmp_path, """
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [sim("notebook", 24, 0)])
        trio.run(manager.start_pools)
        for i in range(24):
            (tmp / f"in{i}").write_text("x")
            manager.registry.submit_job("notebook", f"in{i}", f"out{i}", {"child_seconds": 120})
        say(event="started", session=manager.session_id, running=manager.running)
        trio.run(trio.sleep_forever)
    """)
    lines = Lines(proc)
    session = ""
    try:
        started = lines.next(120)
        session = started["session"]
        assert started["running"] == 24
        # Each worker and its job's child: 48 processes of the session.
        wait_until(lambda: len(session_processes(session)) == 48, 60, "24 jobs with a child each")
        proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(5)
        wait_until(lambda: not session_processes(session), 15, "the workers and their children to go",
                   interval=0.02)
        gone_after = time.monotonic() - killed_at
        with sqlite3.connect(db, timeout=30) as conn:
            jobs = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
        print(f"all 48 processes gone {gone_after:.2f} s after the SIGKILL; jobs: {jobs}")
        assert gone_after <= 2.0
        assert jobs == {"pending": 24}, jobs
        assert live_rows(db, session) == []
    finally:
        end_process(proc)
        kill_sessions([session] if session else [])


def test_a_running_manager_releases_what_a_dead_manager_left(tmp_path):
    """Another manager died long ago (its lease expired) and left a busy row and a job in
    processing: the running pool's monitor releases both, and its workers do the job."""
    db = tmp_path / "jobs.db"
    settings = MonitorSettings(interval=0.1, dead_session_sweep=0.5)
    manager = WorkerPoolManager(db, tmp_path, [sim("notebook", 1, 0)])
    trio.run(manager.start_pools)
    manager.start_monitoring(settings)
    try:
        dead = uuid.uuid4().hex
        (tmp_path / "left.in").write_text("x")
        with closing(sqlite3.connect(db, timeout=30)) as conn, conn:
            conn.execute("INSERT INTO clm_worker_sessions (session_id, pid, host, lease_expires_at)"
                         " VALUES (?, 999999, 'gone', julianday('now') - 1)", (dead,))
            row = conn.execute("INSERT INTO workers (worker_type, container_id, status, session_id)"
                               " VALUES ('notebook', ?, 'busy', ?)", (f"direct-notebook-0-{dead[:8]}", dead)
                               ).lastrowid
            job = conn.execute("INSERT INTO jobs (job_type, status, input_file, output_file, content_hash,"
                               " payload, worker_id, attempts, started_at) VALUES ('notebook', 'processing',"
                               " 'left.in', 'left.out', '', '{}', ?, 1, CURRENT_TIMESTAMP)", (row,)).lastrowid

        def state():
            with closing(sqlite3.connect(db, timeout=30)) as conn:
                return (conn.execute("SELECT status FROM workers WHERE id = ?", (row,)).fetchone()[0],
                        conn.execute("SELECT status, attempts FROM jobs WHERE id = ?", (job,)).fetchone())

        wait_until(lambda: state() == ("dead", ("completed", 2)), 15, "the left job done by this pool")
    finally:
        trio.run(manager.stop_pools)
    assert session_processes(manager.session_id) == []


def test_a_running_manager_releases_the_jobs_of_a_manager_killed_with_its_workers(tmp_path):
    """Manager A and its 6 busy workers are SIGKILLed at once (nobody left to give a job back).

    Manager B, running on the same database (with workers of another type, so that
    none takes the jobs again), releases A's rows and jobs from its monitor once A's
    lease has expired: within the lease and one sweep interval, give or take a tick.
    """
    db = tmp_path / "jobs.db"
    lease_ttl, sweep = 2.0, 0.5
    proc = manager_process(tmp_path, f"""
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [sim("notebook", 6, 0)], lease_ttl={lease_ttl})
        trio.run(manager.start_pools)
        for i in range(6):
            (tmp / f"in{{i}}").write_text("x")
            manager.registry.submit_job("notebook", f"in{{i}}", f"out{{i}}", {{"seconds": 120}})
        say(event="started", session=manager.session_id, running=manager.running)
        trio.run(trio.sleep_forever)
    """)
    lines = Lines(proc)
    dead = ""
    other = WorkerPoolManager(db, tmp_path, [sim("plantuml", 1, 0)])
    try:
        started = lines.next(60)
        dead = started["session"]
        assert started["running"] == 6

        def jobs() -> dict[str, int]:
            with closing(sqlite3.connect(db, timeout=30)) as conn:
                return dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())

        wait_until(lambda: jobs() == {"processing": 6}, 30, "A's 6 workers busy with a job each")
        trio.run(other.start_pools)
        other.start_monitoring(MonitorSettings(interval=0.1, dead_session_sweep=sweep))
        # Frozen first, so that no worker sees its lifeline close (and gives its job back)
        # and the manager sees no worker die: then killed, all of them.
        victims = [proc.pid, *session_processes(dead)]
        for pid in victims:
            os.kill(pid, signal.SIGSTOP)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # A stays a zombie until its parent (this test) reaps it, as any parent may take its
        # time to: a zombie manager is a dead one.
        wait_until(lambda: not session_processes(dead), 5, "A's workers to be gone")
        assert jobs() == {"processing": 6}, "nobody of A's may have given a job back"
        wait_until(lambda: jobs() == {"pending": 6}, lease_ttl + sweep + 5,
                   "B to give A's jobs back to the queue", interval=0.05)
        released_after = time.monotonic() - killed_at
        proc.wait(5)
        print(f"A's 6 jobs back in the queue {released_after:.2f} s after the SIGKILL")
        assert live_rows(db, dead) == []
        assert {status for _, status in rows_by_id(db, dead).values()} == {"dead"}
    finally:
        end_process(proc)
        kill_sessions([dead] if dead else [])
        if other.running:
            trio.run(other.stop_pools)
    assert session_processes(other.session_id) == []
