"""The session lease: the lifeline of workers that cannot inherit a pipe (containers)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from clm_workers import WorkerConfig, WorkerPoolManager, schema
from clm_workers.lease import SessionLease
from procs import killed_at_exit, wait_until


def lease_row(db, session):
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT lease_expires_at, lease_expires_at > julianday('now') FROM clm_worker_sessions"
            " WHERE session_id = ?", (session,),
        ).fetchone()


def make_db(path):
    conn = schema.connect(path)
    schema.ensure_schema(conn)
    conn.close()


def test_lease_is_renewed_then_expired_on_stop(tmp_path):
    db = tmp_path / "jobs.db"
    make_db(db)
    lease = SessionLease(db, "s1", ttl=1.5)
    lease.start()
    try:
        first, valid = lease_row(db, "s1")
        assert valid
        wait_until(lambda: lease_row(db, "s1")[0] > first, 3)  # renewed every ttl/3
    finally:
        lease.stop()
    assert lease_row(db, "s1")[1] == 0


def start_sim(db, tmp_path, session, *, fail=""):
    env = {
        **os.environ, "WORKER_TYPE": "notebook", "DB_PATH": str(db), "WORKSPACE_PATH": str(tmp_path),
        "WORKER_ID": f"direct-notebook-0-{session}", "CLM_SESSION_ID": session,
        "CLM_HEARTBEAT_INTERVAL": "0.1", "CLM_SIM_FAIL": fail,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "clm_workers.sim"], env=env, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("fail", ["", "hang"], ids=["registered", "never registers"])
def test_worker_stops_when_its_session_lease_expires(tmp_path, fail):
    db = tmp_path / "jobs.db"
    make_db(db)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO clm_worker_sessions (session_id, lease_expires_at)"
                     " VALUES ('s2', julianday('now') + 1.0 / 86400)")
    proc = start_sim(db, tmp_path, "s2", fail=fail)
    with killed_at_exit(proc):
        # Nobody renews the lease: it runs out after 1 s, the worker notices within a check.
        assert proc.wait(timeout=5) == 70
        assert "session lease expired" in proc.stderr.read()


def test_worker_without_lease_row_keeps_running(tmp_path):
    db = tmp_path / "jobs.db"
    make_db(db)
    proc = start_sim(db, tmp_path, "no-such-session")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)  # ten lease checks that find no lease: still running
    finally:
        proc.terminate()
        proc.wait()


async def test_manager_holds_a_lease_while_running(tmp_path):
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, tmp_path, [WorkerConfig("notebook", 1, module="clm_workers.sim")],
                                lease_ttl=5)
    await manager.start_pools()
    try:
        assert lease_row(db, manager.session_id)[1] == 1
        assert manager.registry.expired_sessions() == []
    finally:
        await manager.stop_pools()
    assert lease_row(db, manager.session_id)[1] == 0


def test_a_relative_database_path_stays_the_pools_after_the_caller_changes_folder(tmp_path, monkeypatch):
    """CLM may change its working folder between start_pools and stop_pools: that is no lost database."""
    monkeypatch.chdir(tmp_path)
    make_db(tmp_path / "jobs.db")
    lease = SessionLease(Path("jobs.db"), "s3", ttl=1.5)
    lease.start()
    try:
        monkeypatch.chdir("/")
        assert lease.check_file() is None
        assert lease.renew()
    finally:
        lease.stop()
