"""CLM's SQLite schema and connection settings (standard library only).

Shared by the manager's registry and by the worker runtime, so both sides
agree on one definition.  The schema is CLM 1.35's (version 11), a superset
of CLM 0.3's and 1.9.2's: their workers register into it too.
"""

from __future__ import annotations

import sqlite3

# Not ``typing.TYPE_CHECKING``, and ``Path`` for annotations only: workers
# import this module before they register, and ``pathlib`` costs them ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

#: The newest schema this module knows: CLM 1.35's (``DATABASE_VERSION`` 11).
SCHEMA_VERSION = 11

#: How long a connection waits for another writer before ``database is locked``.
BUSY_TIMEOUT_SECONDS = 30.0

WORKER_STATUSES = ("created", "idle", "busy", "hung", "dead")
#: Statuses that claim a live process behind the row.
LIVE_STATUSES = ("created", "idle", "busy")

#: CLM 1.35's ``SCHEMA_SQL`` (clm/infrastructure/database/schema.py, MIT), table
#: for table and index for index, so that CLM finds exactly what it would have
#: created itself and its migrations see a true version 11.
CLM_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_type TEXT NOT NULL,
    status TEXT NOT NULL CHECK(status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    priority INTEGER DEFAULT 0,
    input_file TEXT NOT NULL,
    output_file TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    payload TEXT NOT NULL,
    correlation_id TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,
    worker_id INTEGER,
    attempts INTEGER DEFAULT 0,
    max_attempts INTEGER DEFAULT 3,
    error TEXT,
    traceback TEXT,
    cancelled_at TIMESTAMP,
    cancelled_by TEXT,
    result TEXT,
    execution_mode TEXT,
    session_id TEXT,
    FOREIGN KEY (worker_id) REFERENCES workers(id)
);
CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs(status, job_type);
CREATE INDEX IF NOT EXISTS idx_jobs_content_hash ON jobs(content_hash);
CREATE INDEX IF NOT EXISTS idx_jobs_status_completed ON jobs(status, completed_at);
CREATE INDEX IF NOT EXISTS idx_jobs_completed_at ON jobs(completed_at);
CREATE TABLE IF NOT EXISTS results_cache (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    output_file TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    result_metadata TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    last_accessed TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    access_count INTEGER DEFAULT 0,
    UNIQUE(output_file, content_hash)
);
CREATE INDEX IF NOT EXISTS idx_cache_lookup ON results_cache(output_file, content_hash);
CREATE TABLE IF NOT EXISTS workers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    worker_type TEXT NOT NULL,
    container_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK(status IN ('created', 'idle', 'busy', 'hung', 'dead')),
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
CREATE INDEX IF NOT EXISTS idx_workers_status ON workers(worker_type, status);
CREATE TABLE IF NOT EXISTS worker_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type TEXT NOT NULL CHECK(event_type IN (
        'worker_starting', 'worker_registered', 'worker_ready', 'worker_stopping',
        'worker_stopped', 'worker_failed', 'parent_died', 'pool_starting',
        'pool_started', 'pool_stopping', 'pool_stopped'
    )),
    worker_id INTEGER,
    worker_type TEXT NOT NULL,
    execution_mode TEXT,
    message TEXT,
    metadata TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    session_id TEXT,
    FOREIGN KEY (worker_id) REFERENCES workers(id)
);
CREATE INDEX IF NOT EXISTS idx_worker_events_type ON worker_events(event_type, created_at);
CREATE INDEX IF NOT EXISTS idx_worker_events_worker ON worker_events(worker_id, created_at);
CREATE INDEX IF NOT EXISTS idx_worker_events_time ON worker_events(created_at);
CREATE INDEX IF NOT EXISTS idx_worker_events_session ON worker_events(session_id, created_at);
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS worker_heartbeats (
    worker_id INTEGER PRIMARY KEY,
    job_id INTEGER,
    current_cell_index INTEGER,
    total_cells INTEGER,
    current_cell_started_at TIMESTAMP,
    last_output_excerpt TEXT,
    last_output_at TIMESTAMP,
    heartbeat_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (worker_id) REFERENCES workers(id)
);
CREATE INDEX IF NOT EXISTS idx_worker_heartbeats_job ON worker_heartbeats(job_id);
"""

#: clm-workers' own table (CLM ignores it): one row per manager session; the
#: manager keeps ``lease_expires_at`` (a julianday) in the future while it lives.
#: ``proc_start`` is the manager's own ``<boot id>:<start tick>`` (see
#: :mod:`clm_workers.ownership`): ``stop`` signals only that very process.
OWN_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS clm_worker_sessions (
    session_id TEXT PRIMARY KEY,
    pid INTEGER,
    host TEXT,
    started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    lease_expires_at REAL NOT NULL,
    proc_start TEXT
);
"""
#: Columns added to ``clm_worker_sessions`` after its first release, for files made before.
_OWN_COLUMNS_ADDED = (("proc_start", "TEXT"),)


def connect(db_path: Path | str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open ``db_path`` as CLM's own code does: busy timeout, ``synchronous=NORMAL``.

    The journal mode is left as the file has it: it is a property of the
    file, chosen by whoever created it (CLM picks WAL on local disks and
    rollback journaling on network shares), and one connection setting WAL
    would undo that choice for everyone.  Foreign keys stay off, as on CLM's
    connections: CLM's workers delete their own row on shutdown while
    ``worker_events`` rows still name it.

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
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Give a file that has no CLM tables yet CLM's newest schema (WAL), stamped with its version.

    Idempotent.  Only for a file this process just found empty: the version
    stamp is true only for tables made here (on an older CLM file, CLM itself
    migrates; see :mod:`clm_workers.clm.database`).
    """
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(CLM_SCHEMA_SQL)
    conn.execute("INSERT OR IGNORE INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    ensure_own_tables(conn)


def ensure_own_tables(conn: sqlite3.Connection) -> None:
    """Add clm-workers' own table to a CLM database (idempotent; CLM's tables untouched)."""
    conn.executescript(OWN_SCHEMA_SQL)
    have = {str(r[1]) for r in conn.execute("PRAGMA table_info(clm_worker_sessions)")}
    for name, kind in _OWN_COLUMNS_ADDED:
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE clm_worker_sessions ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:  # another manager added it just now
                if "duplicate column" not in str(exc):
                    raise
