"""A full disk, a database locked for longer than the lease, a database file deleted or replaced.

Real workers (``clm_workers.sim``), real SQLite files, a real small file
system (a tmpfs, mounted where this user may mount one) for the full disk.
Each test names the failure it guards against: a fault of the database
must neither kill a healthy pool worker by worker nor hide its cause, and a
pool whose database is gone stops, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from clm_workers import (
    MonitorSettings,
    RestartPolicy,
    WorkerConfig,
    WorkerPoolManager,
    open_worker_pool,
    schema,
)
from clm_workers.errors import PoolStoppedError
from procs import alive, session_processes, wait_until

RESTART = RestartPolicy(backoff_initial=0.1, backoff_max=0.5, flap_limit=10, flap_window=60)
FAST = MonitorSettings(interval=0.1, heartbeat_timeout=2.0, hung_timeout=3.5, restart=RESTART)


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


def sim(count: int, **env: str) -> WorkerConfig:
    return WorkerConfig("notebook", count, module="clm_workers.sim",
                        env={"CLM_HEARTBEAT_INTERVAL": "0.2", **env})


@contextlib.contextmanager
def small_disk(folder: Path, megabytes: int = 8) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` at ``folder``: a real file system that can fill up."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path) -> Path:
    """Write a ballast file until the file system is full (ENOSPC)."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (65536, 1):  # big blocks, then the last bytes one by one
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return ballast


def test_a_full_disk_keeps_its_error_and_the_monitor_releases_everything_once_there_is_room(
    tmp_path, caplog
):
    """Disk full while 3 jobs run: the monitor survives, says why, and releases rows and jobs later."""
    caplog.set_level(logging.WARNING)
    with small_disk(tmp_path / "disk") as disk:
        db = disk / "jobs.db"
        manager = WorkerPoolManager(db, tmp_path, [sim(3)], log_dir=tmp_path / "logs")
        trio.run(manager.start_pools)
        monitor = manager.start_monitoring(FAST)
        try:
            jobs = []
            for i in range(3):
                (tmp_path / f"in{i}").write_text("x")
                jobs.append(manager.registry.submit_job("notebook", f"in{i}", f"out{i}", {"seconds": 1.5}))
            wait_until(lambda: len(query(db, "SELECT id FROM jobs WHERE status = 'processing'")) == 3, 15,
                       "three jobs processing")
            ballast = fill(disk)
            # The workers cannot record their jobs and give up; the monitor retires them and
            # cannot write either.  It must keep running and say what SQLite said.
            wait_until(lambda: monitor.deaths >= 1 and monitor._unreleased, 30,
                       "a worker retired whose row the database refuses")
            wait_until(lambda: any("database or disk is full" in r.getMessage() for r in caplog.records),
                       10, "the original error in the log")
            assert not any("cannot rollback" in r.getMessage() for r in caplog.records)
            assert manager._monitor_thread is not None and manager._monitor_thread._thread.is_alive()
            ballast.unlink()
            # With room again, every dead worker's row and every job it held are released.
            wait_until(lambda: query(db, "SELECT count(*) FROM jobs WHERE status = 'processing'"
                                         " AND worker_id IN (SELECT id FROM workers WHERE status = 'dead')"
                                     ) == [(0,)], 20, "no job held by a dead worker")
            wait_until(lambda: all(s == "completed" for (s,) in query(db, "SELECT status FROM jobs")), 30,
                       "every job done by the replacements")
        finally:
            trio.run(manager.stop_pools)
        assert not session_processes(manager.session_id)


# -- a database locked for longer than the lease -------------------------------------------

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))   # the fault itself: the write lock held this long
conn.execute("ROLLBACK")
print("released", flush=True)
"""


def hold_write_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holds the database's write lock for ``seconds`` (from when this returns)."""
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_database_locked_for_longer_than_the_lease_does_not_kill_a_healthy_pool(tmp_path):
    """Lock held for twice the lease and longer than the idle timeouts: every worker survives."""
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, tmp_path, [sim(8)], lease_ttl=3.0, log_dir=tmp_path / "logs")
    report = trio.run(manager.start_pools)
    monitor = manager.start_monitoring(FAST)
    try:
        assert len(report.started) == 8, report.failed
        pids = sorted(w.pid for w in report.started)
        locker = hold_write_lock(db, 6.0)
        try:
            assert locker.wait(timeout=30) == 0
        finally:
            locker.kill()
        # The lease (3 s), the heartbeat timeout (2 s) and the hung timeout (3.5 s) all passed
        # while nobody could write.  Give every check a few rounds after the lock.
        wait_until(lambda: query(db, "SELECT count(*) FROM workers WHERE status = 'idle'"
                                     " AND (julianday('now') - julianday(last_heartbeat)) * 86400 < 1.5"
                                 ) == [(8,)], 10, "eight fresh heartbeats")
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:  # watching for a late death: it must not come
            assert all(alive(pid) for pid in pids), "a healthy worker died after the lock"
            assert monitor.deaths == 0, query(db, "SELECT message FROM worker_events"
                                                  " WHERE event_type = 'worker_failed'")
            time.sleep(0.2)
        (tmp_path / "in").write_text("x")
        job = manager.registry.submit_job("notebook", "in", "out")
        wait_until(lambda: query(db, "SELECT status FROM jobs WHERE id = ?", job) == [("completed",)], 10,
                   "a job after the lock")
    finally:
        trio.run(manager.stop_pools)
    assert not session_processes(manager.session_id)


# -- a database file deleted or replaced under a running pool -------------------------------


def another_clm_database(path: Path) -> Path:
    with contextlib.closing(schema.connect(path)) as conn:
        schema.ensure_schema(conn)
    return path


@pytest.mark.parametrize("fault", ["deleted", "replaced", "symlink swapped", "rows deleted"])
async def test_a_pool_whose_database_file_is_gone_stops_and_says_why(tmp_path, fault):
    real = tmp_path / "real.db"
    db = real
    if fault == "symlink swapped":
        db = tmp_path / "jobs.db"
        db.symlink_to(real)
    other = another_clm_database(tmp_path / "other.db")
    with pytest.raises(PoolStoppedError) as stopped:
        with trio.fail_after(30):
            async with open_worker_pool(db, tmp_path, [sim(2)], monitor=FAST, lease_ttl=1.5,
                                        log_dir=tmp_path / "logs") as pool:
                await pool.wait_ready()
                session = pool.manager.session_id
                if fault == "deleted":
                    real.unlink()
                elif fault == "replaced":
                    os.replace(other, real)
                elif fault == "symlink swapped":
                    db.unlink()
                    db.symlink_to(other)
                else:  # someone emptied the tables behind the pool's back
                    with contextlib.closing(sqlite3.connect(real, isolation_level=None)) as conn:
                        conn.execute("DELETE FROM clm_worker_sessions")
                await trio.sleep_forever()
    message = str(stopped.value)
    expected = {"deleted": "was deleted", "replaced": "was replaced by another file",
                "symlink swapped": "now leads to another file", "rows deleted": "session row is gone"}[fault]
    assert expected in message and str(db) in message, message
    assert not session_processes(session)


def test_clm_workers_start_exits_1_saying_its_database_was_deleted(tmp_path):
    from clitools import StartProcess, sim_pools, write_config

    write_config(tmp_path, "lease_ttl = 1.5\n" + sim_pools(notebook=2, plantuml=1))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        [(session,)] = wait_until(
            lambda: query(tmp_path / "jobs.db", "SELECT session_id FROM clm_worker_sessions"), 10)
        (tmp_path / "jobs.db").unlink()
        assert start.wait(timeout=30) == 1, start.stderr
    assert f"clm-workers: the database file {tmp_path / 'jobs.db'} was deleted" in start.stderr
    assert not session_processes(session)
