"""What a CLM database says about its workers: a read-only view for the CLI.

``clm-workers status``, ``jobs``, ``logs``, the live table of
``clm-workers start`` and ``clm-workers stop`` read the ``workers``,
``worker_events``, ``jobs`` and ``clm_worker_sessions`` tables through these
functions.  Blocking (SQLite, and a look at this host's processes for
whether a manager or worker still runs); the Trio side calls them through
``trio.to_thread``.

Nothing here creates a database or changes the schema (CLM's schema is a
contract): the file is opened with ``mode=rw``, so a wrong path is an error
instead of a new empty file.  The two writes: :func:`expire_lease`, for
``stop``, and :func:`submit_job`, for ``submit``.

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
import socket
import sqlite3
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .clm.ownership import running_session_sql
from .errors import ConfigError
from .ownership import start_stamp
from .processes import alive, runs_since
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
    #: Whether the worker's process runs: known for direct workers of this host's
    #: sessions with a recorded pid, else ``None``.  A row that claims ``idle``
    #: while this is ``False`` belongs to a worker that is gone (its manager died).
    process_running: bool | None = None

    @property
    def shown_status(self) -> str:
        """The status to show: ``gone`` for a row that claims a live worker no process is behind."""
        return "gone" if self.status in ACTIVE_STATUSES and self.process_running is False else self.status

    @property
    def index(self) -> int | None:
        """The worker's index within its type, from its executor id (``direct-notebook-3-...``)."""
        return executor_index(self.container_id)

    @property
    def label(self) -> str:
        """``notebook#3``, or ``notebook row 12`` for a worker clm-workers did not name."""
        return worker_label(self.worker_type, self.container_id, self.id)

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
        if self.worker_id is None:
            return self.worker_type
        return worker_label(self.worker_type, self.container_id, self.worker_id)


#: A session's states (:attr:`SessionRow.state`), from its manager's process, lease and events.
SESSION_STATES = ("starting", "running", "stopping", "stopped", "gone")


@dataclass(frozen=True)
class SessionRow:
    """One manager (``clm_worker_sessions``): who runs it, whether its lease is alive, its state.

    ``state``: ``starting``/``running``/``stopping`` while its manager runs
    (from the session's last ``pool_*`` event), ``stopped`` once it recorded
    ``pool_stopped`` (itself, or ``clm-workers stop`` for it), ``gone`` when
    its manager died without stopping: its process is not running on this
    host any more, or its lease ran out.
    """

    session_id: str
    pid: int | None
    host: str | None
    started_at: str | None
    #: Seconds until the lease expires; negative once expired (the manager is gone).
    lease_left: float
    state: str = "running"
    #: Whether the manager's process runs (``None``: it runs on another host, so unknown).
    manager_running: bool | None = None
    #: The manager's own ``<boot id>:<start tick>`` (:mod:`clm_workers.ownership`); ``None`` in
    #: rows of an older clm-workers.
    proc_start: str | None = None

    @property
    def alive(self) -> bool:
        """Whether the lease is alive (a killed manager's lease still is, until it runs out)."""
        return self.lease_left > 0

    @property
    def this_host(self) -> bool:
        return self.host in (None, socket.gethostname())


#: ``jobs.status`` values (CLM's CHECK constraint).
JOB_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class JobRow:
    """One row of CLM's ``jobs`` table, with the label of the worker that took it."""

    id: int
    job_type: str
    status: str
    priority: int
    input_file: str
    output_file: str
    worker_id: int | None
    #: ``notebook#1`` (``notebook row 7`` for a worker clm-workers did not name); ``None`` if none took it.
    worker: str | None
    attempts: int
    max_attempts: int
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    #: Seconds since it was queued.
    age: float | None
    #: Seconds from its (last) start to its end, or to now while it runs.
    duration: float | None
    error: str | None
    session_id: str | None
    #: Only in :func:`read_job` (``None`` in listings): the whole payload, result and traceback.
    payload: str | None = None
    result: str | None = None
    traceback: str | None = None

    @property
    def error_line(self) -> str:
        """The first line of the error ("" when there is none)."""
        return (self.error or "").strip().split("\n", 1)[0]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("created_at", "started_at", "completed_at"):
            data[key] = iso(data[key])
        for key in ("payload", "result"):
            data[key] = _json_value(data[key])
        return data


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
            # ``proc_start`` is for ``stop``'s proof of the manager, not for readers.
            "sessions": [{**_without(asdict(s), "proc_start"), "alive": s.alive,
                          "started_at": iso(s.started_at)}
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


def executor_index(container_id: str | None) -> int | None:
    """The index in an executor id (``direct-notebook-3-1a2b3c4d`` -> 3), else ``None``."""
    match = _EXECUTOR_ID.fullmatch(container_id or "")
    return int(match.group("index")) if match else None


def worker_label(worker_type: str, container_id: str | None, row_id: int) -> str:
    """``notebook#3`` for a worker clm-workers named, else ``notebook row 12``."""
    index = executor_index(container_id)
    return f"{worker_type}#{index}" if index is not None else f"{worker_type} row {row_id}"


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


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


def docker_sessions(conn: sqlite3.Connection) -> set[str]:
    """Sessions that ever had a docker worker in this database (so may have left containers)."""
    return {str(r[0]) for r in conn.execute(
        "SELECT DISTINCT session_id FROM workers WHERE execution_mode = 'docker' AND session_id IS NOT NULL")}


def read_sessions(conn: sqlite3.Connection) -> list[SessionRow]:
    """Every clm-workers session of the database, newest first (none in a CLM-only database)."""
    if not _has_table(conn, "clm_worker_sessions"):
        return []
    columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(clm_worker_sessions)")}
    rows = conn.execute(
        f"SELECT session_id, pid, host, started_at, (lease_expires_at - julianday('now')) * {_SECONDS},"
        f" {'proc_start' if 'proc_start' in columns else 'NULL'}"
        " FROM clm_worker_sessions ORDER BY started_at DESC, rowid DESC"
    ).fetchall()
    # One pass over the events: each session's last pool event (SQLite takes the
    # bare column from the row of max(id)).
    last_event = {str(r[0]): str(r[1]) for r in conn.execute(
        "SELECT session_id, event_type, max(id) FROM worker_events"
        " WHERE event_type IN ('pool_starting', 'pool_started', 'pool_stopping', 'pool_stopped')"
        " AND session_id IS NOT NULL GROUP BY session_id"
    )}
    here = socket.gethostname()
    sessions = []
    for r in rows:
        session_id, lease_left = str(r[0]), round(float(r[4]), 3)
        manager_running = None
        if r[2] in (None, here):
            # Exact where the manager recorded its start tick: a reused pid is not it.
            manager_running = (start_stamp(r[1]) == r[5]) if r[5] and r[1] else runs_since(r[1], r[3])
        state = _session_state(lease_left > 0, manager_running, last_event.get(session_id))
        sessions.append(SessionRow(session_id, r[1], r[2], r[3], lease_left, state, manager_running,
                                   r[5]))
    return sessions


def _session_state(lease_alive: bool, manager_running: bool | None, last_pool_event: str | None) -> str:
    if last_pool_event == "pool_stopped":
        return "stopped"
    if not lease_alive or manager_running is False:
        return "gone"
    return {"pool_started": "running", "pool_stopping": "stopping"}.get(last_pool_event or "", "starting")


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
    local = _local_sessions(conn)
    workers = []
    for r in rows:
        pid = cache.get(int(r[0]))
        process_running = (alive(pid) if pid is not None and r[3] != "docker" and r[5] in local
                           and r[2] in ACTIVE_STATUSES else None)
        workers.append(WorkerRow(
            id=int(r[0]), worker_type=str(r[1]), status=str(r[2]), execution_mode=r[3],
            container_id=str(r[4]), session_id=r[5], pid=pid,
            jobs_processed=int(r[6]), jobs_failed=int(r[7]), started_at=r[8], last_heartbeat=r[9],
            heartbeat_age=None if r[2] == "created" or r[10] is None else round(max(0.0, float(r[10])), 3),
            age=None if r[11] is None else round(max(0.0, float(r[11])), 3),
            process_running=process_running,
        ))
    return workers


def _local_sessions(conn: sqlite3.Connection) -> set[str]:
    """The sessions whose manager runs (or ran) on this host: their pids mean something here."""
    if not _has_table(conn, "clm_worker_sessions"):
        return set()
    here = socket.gethostname()
    return {str(r[0]) for r in conn.execute("SELECT session_id, host FROM clm_worker_sessions")
            if r[1] in (None, here)}


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


def job_counts(conn: sqlite3.Connection, session: str | None = None) -> dict[str, int]:
    """``{status: count}`` of the whole ``jobs`` table, or of one session's pool.

    A pool's jobs are the ones its workers took (``worker_id`` one of the
    session's rows: processing, completed, failed) and the ``pending`` ones of
    its worker types, which it is there to serve; jobs that workers of other
    sessions (or of earlier runs) handled are not counted.
    """
    if session is None:
        rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")
    else:
        rows = conn.execute(
            "SELECT status, count(*) FROM jobs WHERE"
            f" worker_id IN (SELECT id FROM workers WHERE {running_session_sql()} = ?)"
            " OR (status = 'pending' AND job_type IN"
            f" (SELECT worker_type FROM workers WHERE {running_session_sql()} = ?))"
            " GROUP BY status",
            (session, session),
        )
    return {str(s): int(n) for s, n in rows}


#: Columns of ``jobs`` that not every CLM generation has (CLM 1.9 has no ``session_id``):
#: read as ``NULL`` where the table lacks them.
_OPTIONAL_JOB_COLUMNS = ("priority", "attempts", "max_attempts", "error", "session_id", "payload", "result",
                         "traceback")


def _job_columns(conn: sqlite3.Connection, *, details: bool = False) -> str:
    present = {str(r[1]) for r in conn.execute("PRAGMA table_info(jobs)")}

    def col(name: str) -> str:
        return f"j.{name}" if name in present or name not in _OPTIONAL_JOB_COLUMNS else "NULL"

    columns = (
        f"j.id, j.job_type, j.status, COALESCE({col('priority')}, 0), j.input_file, j.output_file,"
        f" j.worker_id, w.worker_type, w.container_id,"
        f" COALESCE({col('attempts')}, 0), COALESCE({col('max_attempts')}, 3),"
        " j.created_at, j.started_at, j.completed_at,"
        f" (julianday('now') - julianday(j.created_at)) * {_SECONDS},"
        f" (julianday(COALESCE(j.completed_at, 'now')) - julianday(j.started_at)) * {_SECONDS},"
        f" {col('error')}, {col('session_id')}"
    )
    if details:
        columns += f", {col('payload')}, {col('result')}, {col('traceback')}"
    return columns


def read_jobs(
    conn: sqlite3.Connection,
    *,
    status: str | None = None,
    job_type: str | None = None,
    last: int = 20,
) -> list[JobRow]:
    """The ``last`` jobs (by id; filtered by status and type), oldest of them first."""
    where: list[str] = []
    params: list[object] = []
    if status is not None:
        where.append("j.status = ?")
        params.append(status)
    if job_type is not None:
        where.append("j.job_type = ?")
        params.append(job_type)
    rows = conn.execute(
        f"SELECT * FROM (SELECT {_job_columns(conn)} FROM jobs j LEFT JOIN workers w ON w.id = j.worker_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY j.id DESC LIMIT ?) ORDER BY 1",
        [*params, last],
    ).fetchall()
    return [_job(r) for r in rows]


def read_job(conn: sqlite3.Connection, job_id: int) -> JobRow | None:
    """One job with its payload, result and traceback; ``None`` when there is no such id."""
    row = conn.execute(
        f"SELECT {_job_columns(conn, details=True)}"
        " FROM jobs j LEFT JOIN workers w ON w.id = j.worker_id WHERE j.id = ?",
        (job_id,),
    ).fetchone()
    return None if row is None else _job(row[:18], payload=row[18], result=row[19], traceback=row[20])


def _job(r: tuple[Any, ...], **details: str | None) -> JobRow:
    worker = None if r[6] is None else worker_label(str(r[7] or "?"), r[8], int(r[6]))
    return JobRow(
        id=int(r[0]), job_type=str(r[1]), status=str(r[2]), priority=int(r[3]), input_file=str(r[4]),
        output_file=str(r[5]), worker_id=r[6], worker=worker, attempts=int(r[9]), max_attempts=int(r[10]),
        created_at=r[11], started_at=r[12], completed_at=r[13],
        age=None if r[14] is None else round(max(0.0, float(r[14])), 3),
        duration=None if r[12] is None or r[15] is None else round(max(0.0, float(r[15])), 3),
        error=r[16], session_id=r[17], **details,
    )


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
            jobs=job_counts(conn, session),
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


# -- the two writes: ``stop`` ends a lease, ``submit`` queues a job ----------------------


def expire_lease(conn: sqlite3.Connection, session: str) -> None:
    """End a session's lease now: its containers stop by themselves, and the next
    manager on the database treats the session as dead."""
    if _has_table(conn, "clm_worker_sessions"):
        conn.execute(
            "UPDATE clm_worker_sessions SET lease_expires_at = julianday('now')"
            " WHERE session_id = ? AND lease_expires_at > julianday('now')",
            (session,),
        )


def submit_job(
    conn: sqlite3.Connection,
    job_type: str,
    input_file: str,
    output_file: str,
    payload: dict[str, Any],
    *,
    priority: int = 0,
    max_attempts: int = 3,
) -> int:
    """Queue one ``pending`` job the way CLM does; its id.

    Without a ``session_id`` (``NULL``): a worker of any pool on the database
    may take it (CLM's workers only take jobs of their own session or none).
    """
    values: dict[str, object] = {
        "job_type": job_type, "status": "pending", "input_file": input_file, "output_file": output_file,
        "content_hash": "", "payload": json.dumps(payload), "priority": priority,
        "max_attempts": max_attempts,
    }
    present = {str(r[1]) for r in conn.execute("PRAGMA table_info(jobs)")}
    names = [name for name in values if name in present or name not in _OPTIONAL_JOB_COLUMNS]
    cursor = conn.execute(
        f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [values[name] for name in names],
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _json_value(text: str | None) -> Any:
    """A JSON column's value, or the text itself when it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json(text: object) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
