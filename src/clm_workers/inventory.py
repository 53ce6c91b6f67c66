"""What a CLM database says about its workers: a read-only view for the CLI.

``clm-workers status``, the live table of ``clm-workers start`` and
``clm-workers stop`` read the ``workers``, ``worker_events``, ``jobs`` and
``clm_worker_sessions`` tables through these functions.  Blocking (SQLite);
the Trio side calls them through ``trio.to_thread``.

Nothing here creates a database or changes the schema (CLM's schema is a
contract): the file is opened with ``mode=rw``, so a wrong path is an error
instead of a new empty file.  The one write, :func:`expire_lease`, is for
``stop``.

A worker row's session is the session that runs it, owned or shared (see
:mod:`clm_workers.clm.ownership`: a shared row names its session in
``managed_by``).

A direct worker's pid is not a column of ``workers``; the worker writes it
in the metadata of its ``worker_registered`` event, which is where it is read
from.  A container's pid is its own namespace's, so containers are shown by
their name (``workers.container_id``).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .clm.ownership import running_session_sql
from .errors import ConfigError
from .schema import BUSY_TIMEOUT_SECONDS

#: Statuses whose row claims a live worker (``hung`` included: it still runs).
ACTIVE_STATUSES = ("created", "idle", "busy", "hung")

#: How many ended sessions :func:`snapshot` lists (besides every running one).
ENDED_SESSIONS_SHOWN = 3

_EXECUTOR_ID = re.compile(r"(?:direct|docker)-(?P<type>.+)-(?P<index>\d+)-[0-9a-f]{8}")
_SECONDS = "86400.0"


@dataclass(frozen=True)
class WorkerRow:
    id: int
    worker_type: str
    status: str
    execution_mode: str | None
    container_id: str
    session_id: str | None
    #: The direct worker's pid (from its registration event), else ``None``.
    pid: int | None
    jobs_processed: int
    jobs_failed: int
    started_at: str | None
    last_heartbeat: str | None
    #: Seconds since the last heartbeat (``None`` before registration).
    heartbeat_age: float | None
    #: Seconds since the row was created.
    age: float | None

    @property
    def index(self) -> int | None:
        """The worker's index within its type, from its executor id (``direct-notebook-3-...``)."""
        match = _EXECUTOR_ID.fullmatch(self.container_id)
        return int(match.group("index")) if match else None

    @property
    def label(self) -> str:
        """``notebook#3``, or ``notebook row 12`` for a worker clm-workers did not name."""
        index = self.index
        return f"{self.worker_type}#{index}" if index is not None else f"{self.worker_type} row {self.id}"

    @property
    def where(self) -> str:
        """The pid of a direct worker, else its container (or executor) id."""
        if self.pid is not None and self.execution_mode != "docker":
            return str(self.pid)
        return self.container_id


@dataclass(frozen=True)
class EventRow:
    id: int
    created_at: str | None
    event_type: str
    worker_type: str
    worker_id: int | None
    execution_mode: str | None
    message: str | None
    session_id: str | None
    metadata: dict[str, Any] | None
    #: ``container_id`` of the event's worker row, when it has one.
    container_id: str | None = None

    @property
    def label(self) -> str:
        match = _EXECUTOR_ID.fullmatch(self.container_id or "")
        if match:
            return f"{self.worker_type}#{match.group('index')}"
        return self.worker_type if self.worker_id is None else f"{self.worker_type} row {self.worker_id}"


@dataclass(frozen=True)
class SessionRow:
    """One manager (``clm_worker_sessions``): who runs it, and whether its lease is alive."""

    session_id: str
    pid: int | None
    host: str | None
    started_at: str | None
    #: Seconds until the lease expires; negative once expired (the manager is gone).
    lease_left: float

    @property
    def alive(self) -> bool:
        return self.lease_left > 0


@dataclass
class Snapshot:
    database: str
    sessions: list[SessionRow] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    #: ``{status: count}`` over the whole ``jobs`` table.
    jobs: dict[str, int] = field(default_factory=dict)
    #: Dead rows left out of ``workers`` (``include_dead=False``).
    dead_hidden: int = 0

    def to_json(self) -> dict[str, Any]:
        """A plain structure for ``--json`` (times are UTC, ISO 8601)."""
        return {
            "database": self.database,
            "sessions": [{**asdict(s), "alive": s.alive, "started_at": iso(s.started_at)}
                         for s in self.sessions],
            "workers": [
                {**asdict(w), "label": w.label, "index": w.index,
                 "started_at": iso(w.started_at), "last_heartbeat": iso(w.last_heartbeat)}
                for w in self.workers
            ],
            "events": [
                {k: v for k, v in {**asdict(e), "created_at": iso(e.created_at)}.items()
                 if k != "container_id"}
                for e in self.events
            ],
            "jobs": dict(self.jobs),
            "dead_hidden": self.dead_hidden,
        }


def iso(timestamp: str | None) -> str | None:
    """SQLite's ``CURRENT_TIMESTAMP`` (UTC, ``YYYY-MM-DD HH:MM:SS``) as ISO 8601 with ``Z``."""
    if timestamp is None or not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", timestamp):
        return timestamp
    return timestamp.replace(" ", "T") + "Z"


# -- opening -----------------------------------------------------------------------


def open_database(db_path: Path, setting: str = "--db") -> sqlite3.Connection:
    """Open an existing CLM database for reading (never creates one).

    Raises :class:`ConfigError` (``setting`` names where the path came from)
    when there is no file, it is not SQLite, or it has no ``workers`` table.
    """
    path = Path(db_path)
    if not path.exists():
        raise ConfigError(setting, str(path), "the path of an existing CLM jobs database (no file there)")
    if path.is_dir():
        raise ConfigError(setting, str(path), "a database file, not a folder")
    conn = connect_existing(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ConfigError(setting, str(path), f"a CLM jobs database (SQLite says: {exc})") from None
    if "workers" not in tables or "worker_events" not in tables:
        conn.close()
        raise ConfigError(setting, str(path), "a CLM jobs database (this file has no workers table)")
    return conn


def connect_existing(path: Path) -> sqlite3.Connection:
    """A connection to an existing file (``mode=rw``: a missing file is an error, not created)."""
    conn = sqlite3.connect(
        f"{Path(path).resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_SECONDS,
        isolation_level=None, check_same_thread=False,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    return conn


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone() is not None


# -- reading -----------------------------------------------------------------------


def read_sessions(conn: sqlite3.Connection) -> list[SessionRow]:
    """Every clm-workers session of the database, newest first (none in a CLM-only database)."""
    if not _has_table(conn, "clm_worker_sessions"):
        return []
    rows = conn.execute(
        f"SELECT session_id, pid, host, started_at, (lease_expires_at - julianday('now')) * {_SECONDS}"
        " FROM clm_worker_sessions ORDER BY started_at DESC, rowid DESC"
    ).fetchall()
    return [SessionRow(str(r[0]), r[1], r[2], r[3], round(float(r[4]), 3)) for r in rows]


def read_workers(
    conn: sqlite3.Connection,
    *,
    session: str | None = None,
    include_dead: bool = True,
    pids: dict[int, int | None] | None = None,
) -> list[WorkerRow]:
    """Worker rows (of one session, or all), by type and id.

    ``pids`` is a cache of row id -> pid that the caller keeps between calls
    (a row's pid never changes); rows missing from it are looked up.
    """
    where: list[str] = []
    params: list[object] = []
    if session is not None:
        where.append(f"{running_session_sql()} = ?")
        params.append(session)
    if not include_dead:
        where.append("status != 'dead'")
    rows = conn.execute(
        f"SELECT id, worker_type, status, execution_mode, container_id, {running_session_sql()},"
        " COALESCE(jobs_processed, 0), COALESCE(jobs_failed, 0), started_at, last_heartbeat,"
        f" (julianday('now') - julianday(last_heartbeat)) * {_SECONDS},"
        f" (julianday('now') - julianday(started_at)) * {_SECONDS}"
        " FROM workers" + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY worker_type, id",
        params,
    ).fetchall()
    cache = {} if pids is None else pids
    missing = [int(r[0]) for r in rows if int(r[0]) not in cache and r[2] != "created"]
    if missing:
        cache.update(registered_pids(conn, missing))
    return [
        WorkerRow(
            id=int(r[0]), worker_type=str(r[1]), status=str(r[2]), execution_mode=r[3],
            container_id=str(r[4]), session_id=r[5], pid=cache.get(int(r[0])),
            jobs_processed=int(r[6]), jobs_failed=int(r[7]), started_at=r[8], last_heartbeat=r[9],
            heartbeat_age=None if r[2] == "created" or r[10] is None else round(max(0.0, float(r[10])), 3),
            age=None if r[11] is None else round(max(0.0, float(r[11])), 3),
        )
        for r in rows
    ]


def registered_pids(conn: sqlite3.Connection, worker_ids: Collection[int]) -> dict[int, int | None]:
    """``{row id: pid}`` from the workers' ``worker_registered`` events (``None``: no pid recorded)."""
    found: dict[int, int | None] = dict.fromkeys(worker_ids)
    rows = conn.execute(
        "SELECT worker_id, CASE WHEN json_valid(metadata) THEN json_extract(metadata, '$.pid') END"
        " FROM worker_events WHERE event_type = 'worker_registered'"
        " AND worker_id IN (SELECT value FROM json_each(?)) ORDER BY id",
        (json.dumps(list(worker_ids)),),
    ).fetchall()
    for worker_id, pid in rows:
        if isinstance(pid, int):
            found[int(worker_id)] = pid
    return found


def read_events(
    conn: sqlite3.Connection,
    *,
    session: str | None = None,
    after_id: int = 0,
    last: int | None = None,
) -> list[EventRow]:
    """Events in order: those after ``after_id``, or only the ``last`` n of them."""
    where = ["e.id > ?"]
    params: list[object] = [after_id]
    if session is not None:
        where.append("e.session_id = ?")
        params.append(session)
    query = (
        "SELECT e.id, e.created_at, e.event_type, e.worker_type, e.worker_id, e.execution_mode,"
        " e.message, e.session_id, e.metadata, w.container_id"
        " FROM worker_events e LEFT JOIN workers w ON w.id = e.worker_id"
        " WHERE " + " AND ".join(where)
    )
    if last is not None:
        query = f"SELECT * FROM ({query} ORDER BY e.id DESC LIMIT ?) ORDER BY 1"
        params.append(last)
    else:
        query += " ORDER BY e.id"
    return [
        EventRow(int(r[0]), r[1], str(r[2]), str(r[3]), r[4], r[5], r[6], r[7], _json(r[8]), r[9])
        for r in conn.execute(query, params).fetchall()
    ]


def job_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")}


def snapshot(
    conn: sqlite3.Connection,
    database: Path | str,
    *,
    session: str | None = None,
    include_dead: bool = True,
    events: int = 10,
) -> Snapshot:
    """Sessions, workers, the last ``events`` events and job counts in one read transaction."""
    conn.execute("BEGIN")
    try:
        sessions = read_sessions(conn)
        if session is not None:
            sessions = [s for s in sessions if s.session_id == session]
        workers = read_workers(conn, session=session, include_dead=include_dead)
        # Every running session and every session with live rows; of the ended
        # ones only the latest few (a database keeps every session it ever had).
        busy = {w.session_id for w in workers if w.status in ACTIVE_STATUSES}
        ended = [s for s in sessions if not s.alive and s.session_id not in busy]
        shown_ended = ended[:ENDED_SESSIONS_SHOWN]
        sessions = [s for s in sessions if s.alive or s.session_id in busy or s in shown_ended]
        return Snapshot(
            database=str(database),
            sessions=sessions,
            workers=workers,
            events=read_events(conn, session=session, last=events) if events else [],
            jobs=job_counts(conn),
            dead_hidden=0 if include_dead else _count_dead(conn, session),
        )
    finally:
        conn.execute("COMMIT")


def _count_dead(conn: sqlite3.Connection, session: str | None) -> int:
    if session is None:
        return int(conn.execute("SELECT count(*) FROM workers WHERE status = 'dead'").fetchone()[0])
    return int(conn.execute(
        f"SELECT count(*) FROM workers WHERE status = 'dead' AND {running_session_sql()} = ?", (session,)
    ).fetchone()[0])


def active_rows(conn: sqlite3.Connection, session: str) -> list[WorkerRow]:
    """The session's rows that still claim a worker (``created``/``idle``/``busy``/``hung``)."""
    return [w for w in read_workers(conn, session=session) if w.status in ACTIVE_STATUSES]


# -- the one write, for ``stop`` -------------------------------------------------------


def expire_lease(conn: sqlite3.Connection, session: str) -> None:
    """End a session's lease now: its containers stop by themselves, and the next
    manager on the database treats the session as dead."""
    if _has_table(conn, "clm_worker_sessions"):
        conn.execute(
            "UPDATE clm_worker_sessions SET lease_expires_at = julianday('now')"
            " WHERE session_id = ? AND lease_expires_at > julianday('now')",
            (session,),
        )


def _json(text: object) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
