"""CLM's SQLite schema and connection settings (standard library only).

Shared by the manager's registry and by the worker runtime, so both sides
agree on one definition.  The schema is CLM 1.x's (version 11), which is a
superset of CLM 0.3's: a CLM 0.3 worker can self-register into it.
"""

from __future__ import annotations

import sqlite3

# Not ``typing.TYPE_CHECKING``, and ``Path`` for annotations only: workers
# import this module before they register, and ``pathlib`` costs them ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

SCHEMA_VERSION = 11

#: How long a connection waits for another writer before ``database is locked``.
BUSY_TIMEOUT_SECONDS = 30.0

WORKER_STATUSES = ("created", "idle", "busy", "hung", "dead")
#: Statuses that claim a live process behind the row.
LIVE_STATUSES = ("created", "idle", "busy")

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS workers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    worker_type TEXT NOT NULL,
    container_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL
        CHECK (status IN ('created', 'idle', 'busy', 'hung', 'dead')),
    started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    last_heartbeat TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    cpu_usage REAL,
    memory_usage REAL,
    jobs_processed INTEGER DEFAULT 0,
    jobs_failed INTEGER DEFAULT 0,
    avg_processing_time REAL,
    execution_mode TEXT,
    config TEXT,
    session_id TEXT,
    managed_by TEXT,
    parent_pid INTEGER
);
CREATE INDEX IF NOT EXISTS idx_workers_type_status ON workers (worker_type, status);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_type TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    priority INTEGER DEFAULT 0,
    input_file TEXT NOT NULL,
    output_file TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    payload TEXT NOT NULL,
    correlation_id TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,
    worker_id INTEGER REFERENCES workers (id),
    attempts INTEGER DEFAULT 0,
    max_attempts INTEGER DEFAULT 3,
    error TEXT,
    traceback TEXT,
    cancelled_at TIMESTAMP,
    cancelled_by TEXT,
    result TEXT,
    execution_mode TEXT,
    session_id TEXT
);
CREATE INDEX IF NOT EXISTS idx_jobs_claim ON jobs (job_type, status, priority, created_at);
CREATE TABLE IF NOT EXISTS worker_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type TEXT NOT NULL CHECK (event_type IN (
        'worker_starting', 'worker_registered', 'worker_ready', 'worker_stopping',
        'worker_stopped', 'worker_failed', 'parent_died', 'pool_starting',
        'pool_started', 'pool_stopping', 'pool_stopped')),
    worker_id INTEGER,
    worker_type TEXT NOT NULL,
    execution_mode TEXT,
    message TEXT,
    metadata TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    session_id TEXT
);
CREATE TABLE IF NOT EXISTS results_cache (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    output_file TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    result_metadata TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    last_accessed TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    access_count INTEGER DEFAULT 0,
    UNIQUE (output_file, content_hash)
);
-- clm-workers' own (CLM ignores it): one row per manager session; the
-- manager keeps lease_expires_at (a julianday) in the future while it lives.
CREATE TABLE IF NOT EXISTS clm_worker_sessions (
    session_id TEXT PRIMARY KEY,
    pid INTEGER,
    host TEXT,
    started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    lease_expires_at REAL NOT NULL
);
INSERT OR IGNORE INTO schema_version (version) VALUES (11);
"""


def connect(db_path: Path | str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open ``db_path`` with CLM's settings: WAL, synchronous=NORMAL, busy timeout, FKs.

    ``isolation_level=None`` puts the connection in autocommit mode so that
    callers state their transactions explicitly (``BEGIN IMMEDIATE`` for claims).
    """
    conn = sqlite3.connect(
        str(db_path),
        timeout=BUSY_TIMEOUT_SECONDS,
        isolation_level=None,
        check_same_thread=check_same_thread,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create every CLM table that is missing (idempotent)."""
    conn.executescript(SCHEMA_SQL)
