"""Sharing the jobs database with CLM: foreign files refused untouched, versions never faked."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from clm_workers import ConfigError, WorkerConfig, WorkerPoolManager
from clm_workers import schema
from clm_workers.clm.database import Kind, inspect_database, prepare_database
from clm_workers.clm.installed import InstalledClm

SIM = [WorkerConfig("notebook", 1, module="clm_workers.sim")]
NO_CLM = InstalledClm(None)


def fingerprint(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """Another application's SQLite file, in WAL mode and closed (no -wal beside it)."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
    return path


def test_another_applications_sqlite_file_is_refused_and_left_byte_for_byte(foreign: Path):
    before = fingerprint(foreign.parent)
    assert inspect_database(foreign).kind is Kind.FOREIGN
    with pytest.raises(ConfigError, match="a CLM jobs database or a new file: it has no jobs, "
                                          "schema_version, workers table") as info:
        WorkerPoolManager(foreign, foreign.parent, SIM)
    assert info.value.setting == "db_path"
    with pytest.raises(ConfigError):
        prepare_database(foreign, NO_CLM)
    assert fingerprint(foreign.parent) == before  # no -wal, no -shm, no new table


def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path: Path):
    path = tmp_path / "jobs.db"
    path.write_text("not a database\n")
    before = fingerprint(tmp_path)
    with pytest.raises(ConfigError, match="it is not a SQLite database"):
        WorkerPoolManager(path, tmp_path, SIM)
    assert fingerprint(tmp_path) == before


def test_a_new_file_gets_clms_newest_schema_and_its_true_version(tmp_path: Path):
    path = tmp_path / "jobs.db"
    assert prepare_database(path, NO_CLM).kind is Kind.NEW
    assert {"workers", "jobs", "worker_events", "results_cache", "worker_heartbeats",
            "schema_version", "clm_worker_sessions"} <= tables(path)
    assert versions(path) == [schema.SCHEMA_VERSION]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    state = inspect_database(path)
    assert (state.kind, state.version) == (Kind.CLM, schema.SCHEMA_VERSION)


def test_an_older_clm_database_keeps_its_version_without_clm(tmp_path: Path):
    """Stamping 11 on a version-8 file would make CLM 1.35 skip the migrations it needs."""
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(schema.CLM_SCHEMA_SQL.replace("    session_id TEXT,\n    FOREIGN KEY (worker_id)",
                                                         "    FOREIGN KEY (worker_id)", 1))
        conn.execute("INSERT INTO schema_version (version) VALUES (8)")
    assert prepare_database(path, NO_CLM).version == 8
    assert versions(path) == [8]
    assert "clm_worker_sessions" in tables(path)


def test_events_survive_a_worker_that_deleted_its_own_row(tmp_path: Path):
    """CLM's workers delete their row on SIGTERM; the manager's worker_stopped event still lands."""
    from clm_workers.registry import Event, Registry

    registry = Registry(tmp_path / "jobs.db", session_id="s")
    registry.open()
    try:
        with sqlite3.connect(tmp_path / "jobs.db") as conn:
            conn.execute("INSERT INTO workers (worker_type, container_id, status) VALUES ('notebook', 'c', 'idle')")
            row = conn.execute("SELECT id FROM workers").fetchone()[0]
            conn.execute("DELETE FROM workers WHERE id = ?", (row,))
        registry.record_events([Event("worker_stopped", "notebook", row)])
    finally:
        registry.close()
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("SELECT worker_id FROM worker_events WHERE event_type = 'worker_stopped'").fetchall() \
            == [(row,)]


def test_a_job_of_a_worker_that_deleted_its_row_is_given_back(tmp_path: Path):
    """CLM's workers delete their row on SIGTERM; the job they held must not stay `processing`."""
    from clm_workers.registry import Registry

    db = tmp_path / "jobs.db"
    registry = Registry(db, session_id="s")
    registry.open()
    try:
        job = registry.submit_job("notebook", "in.py", "out.ipynb")
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO workers (worker_type, container_id, status) VALUES ('notebook', 'c', 'busy')")
            row = conn.execute("SELECT id FROM workers").fetchone()[0]
            conn.execute("UPDATE jobs SET status = 'processing', worker_id = ?, attempts = 1 WHERE id = ?",
                         (row, job))
            conn.execute("DELETE FROM workers WHERE id = ?", (row,))
        assert registry.mark_dead([row], ["c"]) == 1
        assert registry.job_statuses([job]) == {job: ("pending", None)}
    finally:
        registry.close()
