"""Whose a worker row is: owned by the manager's session, or shared by every CLM build (``serve_builds``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clm_workers import ConfigError, WorkerConfig, WorkerPoolManager, inventory
from clm_workers.registry import Registry
from procs import session_processes, wait_for

SIM = "clm_workers.sim"


def sim(count: int = 1) -> WorkerConfig:
    return WorkerConfig("notebook", count, module=SIM, env={"CLM_SIM_BOOT_DELAY": "0"})


def ownership(db: Path) -> list[tuple[str | None, str | None, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT session_id, managed_by, status FROM workers ORDER BY id").fetchall()


async def test_a_managers_rows_are_its_sessions_own_as_clm_marks_a_builds_own(tmp_path: Path):
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, tmp_path, [sim(2)], session_id="session-20261202-093000")
    report = await manager.start_pools()
    try:
        assert report.failed == []
        assert ownership(db) == [("session-20261202-093000", "build", "idle")] * 2
        assert session_processes("session-20261202-093000")  # the workers' own CLM_SESSION_ID
        with sqlite3.connect(db) as conn:
            events = {r[0] for r in conn.execute("SELECT DISTINCT session_id FROM worker_events")}
            leases = {r[0] for r in conn.execute("SELECT session_id FROM clm_worker_sessions")}
        assert events == leases == {"session-20261202-093000"}
    finally:
        await manager.stop_pools()


async def test_a_pool_that_serves_builds_has_shared_rows_that_stay_its_own_for_clm_workers(tmp_path: Path):
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, tmp_path, [sim(2)], serve_builds=True)
    session = manager.session_id
    await manager.start_pools()
    try:
        # No session for CLM (any build's gate accepts them, they claim any job) ...
        assert ownership(db) == [(None, f"clm-workers:{session}", "idle")] * 2
        # ... and the session's own for clm-workers' views.
        with sqlite3.connect(db) as conn:
            mine = inventory.read_workers(conn, session=session)
            assert [(w.session_id, w.status) for w in mine] == [(session, "idle")] * 2
            assert inventory.read_workers(conn, session="another") == []
            (tmp_path / "a.in").write_text("a")
            inventory.submit_job(conn, "notebook", "a.in", "a.out", {"seconds": 0})
        # The jobs its workers took are the pool's in its counts.
        await wait_for(lambda: job_counts(db, session) == {"completed": 1}, 10)
        assert job_counts(db, "another") == {}
    finally:
        await manager.stop_pools()
    assert [row[2] for row in ownership(db)] == ["dead", "dead"]


def job_counts(db: Path, session: str) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return inventory.job_counts(conn, session)


def test_the_rows_of_a_dead_shared_pool_are_retired_and_no_one_elses(tmp_path: Path):
    db = tmp_path / "jobs.db"
    registry = Registry(db, session_id="alive", lease_ttl=10.0)
    registry.open()
    try:
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO clm_worker_sessions (session_id, pid, host, lease_expires_at)"
                         " VALUES ('gone', 1, 'h', julianday('now') - 1)")
            conn.executemany(
                "INSERT INTO workers (worker_type, container_id, status, session_id, managed_by)"
                " VALUES ('notebook', ?, 'idle', ?, ?)",
                [("direct-notebook-0-aaaaaaaa", None, "clm-workers:gone"),   # the dead pool's, shared
                 ("direct-notebook-1-bbbbbbbb", "gone", "build"),             # the dead pool's, owned
                 ("direct-notebook-2-cccccccc", None, "persistent"),          # CLM's own, unowned
                 ("direct-notebook-3-dddddddd", None, "clm-workers:alive")],  # a live pool's
            )
        assert registry.clean_dead_sessions() == {"gone": 2}
    finally:
        registry.close()
    assert [row[2] for row in ownership(db)] == ["dead", "dead", "idle", "idle"]


@pytest.mark.parametrize("bad", ["", "two words", "-leading-dash", "x" * 201, 42])
def test_a_session_id_that_cannot_name_a_session_is_refused_before_anything(tmp_path: Path, bad: object):
    with pytest.raises(ConfigError, match="session_id: .* is not allowed; expected 1-200 letters"):
        WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [sim()], session_id=bad)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
