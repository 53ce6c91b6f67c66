"""The manager's side of the SQLite file: rows, registrations, events, jobs.

Blocking code: the async side calls it through ``trio.to_thread``.  One
connection is shared by the threads that call in, serialised by a lock, so
that every call sees the others' writes and the file has one writer of ours.
Everything this class changes is scoped to its own ``session_id`` or to row
ids it created: it never touches another manager's workers.  Its rows are
owned or shared (see :mod:`clm_workers.clm.ownership`); either way they are
the session's own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schema
from .clm.database import Kind, prepare_database
from .clm.installed import installed_clm
from .clm.ownership import RowOwner, row_owner, running_session_sql
from .inventory import docker_sessions
from .lease import SessionLease
from .ownership import start_stamp
from .plan import WorkerSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowHealth:
    """What the database shows of one live worker, for the monitor (ages in seconds, UTC)."""

    row_id: int
    status: str
    #: Since ``workers.last_heartbeat`` (CLM's workers write it only while idle).
    heartbeat_age: float | None
    #: The ``processing`` job the worker holds, and since its ``started_at``.
    job_id: int | None = None
    job_age: float | None = None
    #: Since the worker's ``worker_heartbeats`` row (CLM's notebook workers stamp
    #: it before each cell and on output); ``None`` without a row or the table.
    progress_age: float | None = None

    @property
    def busy(self) -> bool:
        return self.job_id is not None or self.status == "busy"


@dataclass(frozen=True)
class Event:
    """One ``worker_events`` row to write."""

    event_type: str
    worker_type: str
    worker_id: int | None = None
    execution_mode: str | None = None
    message: str | None = None
    metadata: dict[str, Any] | None = None


class Registry:
    def __init__(
        self, db_path: Path, *, session_id: str, lease_ttl: float | None = None,
        watch_path: Path | None = None, serve_builds: bool = False,
    ) -> None:
        """``lease_ttl``: keep a session lease (see :mod:`clm_workers.lease`) while open.

        ``db_path`` is opened as it is (the manager passes the resolved path);
        ``watch_path``, the path as the user gave it (default ``db_path``), is
        the one the lease watches for being deleted, replaced or swapped.
        ``serve_builds``: write shared rows, which every CLM build on the database may use.
        """
        self.db_path = Path(db_path)
        self.session_id = session_id
        self._lease = None if lease_ttl is None else SessionLease(
            watch_path or self.db_path, session_id, ttl=lease_ttl)
        self.owner: RowOwner = row_owner(session_id, serve_builds=serve_builds)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        #: Queries issued by :meth:`registered_rows` (benchmarks read it).
        self.poll_queries = 0
        #: The columns of this file's ``jobs`` table (CLM 1.9.2's has no ``session_id``).
        self._job_columns: set[str] = set()
        self._probe: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        """Open the database, giving a new file CLM's schema (see :mod:`clm_workers.clm.database`).

        Raises :class:`ConfigError` for a file that is not a CLM database (left
        unchanged), :class:`sqlite3.Error` or :class:`OSError` when the file
        cannot be created, opened or written: a fatal error for the whole pool.
        """
        with self._lock:
            if self._conn is not None:
                return
            if prepare_database(self.db_path, installed_clm()).kind is Kind.NEW:
                _give_to_folder_owner(self.db_path)
            conn = schema.connect(self.db_path, check_same_thread=False)
            try:
                self._job_columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(jobs)")}
                if self._lease is not None:
                    self._lease.start()
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def close(self) -> None:
        """Close the connection and expire this session's lease."""
        with self._lock:
            if self._conn is not None:
                if self._lease is not None:
                    self._lease.stop()
                self._conn.close()
                self._conn = None
            if self._probe is not None:
                self._probe.close()
                self._probe = None

    def lost(self) -> str | None:
        """Why this pool's database is gone (deleted, replaced, its path swapped, its session row
        deleted), or ``None``: what the lease found, or a fresh look at the file (a ``stat``)."""
        if self._lease is None:
            return None
        return self._lease.lost or self._lease.check_file()

    def writable(self, wait: float = 0.5) -> bool:
        """Whether the write lock can be had within ``wait`` seconds (taken and released at once).

        ``False`` means another process holds it: nobody's heartbeat gets
        through while that lasts, so silence then proves nothing.
        """
        with self._lock:
            if self._probe is None:
                self._probe = sqlite3.connect(str(self.db_path), timeout=wait, isolation_level=None,
                                              check_same_thread=False)
            try:
                self._probe.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return False
                raise
            self._probe.execute("ROLLBACK")
            return True

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("Registry.open() was not called")
        return self._conn

    # -- rows --------------------------------------------------------------

    def pre_register(self, specs: Sequence[WorkerSpec], events: Iterable[Event] = ()) -> list[WorkerSpec]:
        """Insert a ``created`` row for each ``pre`` spec, in one transaction.

        Returns the specs with ``db_worker_id`` set (``self`` specs unchanged).
        The events are written in the same transaction, so that an unwritable
        database fails here, before anything is spawned.
        """
        result: list[WorkerSpec] = []
        with self._lock, _transaction(self._db()) as db:
            for spec in specs:
                if spec.registration != "pre":
                    result.append(spec)
                    continue
                cursor = db.execute(
                    "INSERT INTO workers (worker_type, container_id, status, execution_mode,"
                    " config, session_id, managed_by, parent_pid)"
                    " VALUES (?, ?, 'created', ?, ?, ?, ?, ?)",
                    (
                        spec.worker_type, spec.executor_id, spec.execution_mode,
                        json.dumps({"module": spec.module, "image": spec.image}),
                        self.owner.session_id, self.owner.managed_by, os.getpid(),
                    ),
                )
                assert cursor.lastrowid is not None
                result.append(spec.with_db_id(cursor.lastrowid))
            self._insert_events(db, [*events, *(
                Event("worker_starting", s.worker_type, s.db_worker_id, s.execution_mode,
                      f"{s.label} starting as {s.executor_id}")
                for s in result
            )])
        return result

    def registered_rows(
        self, db_ids: Collection[int], container_ids: Collection[str]
    ) -> list[tuple[int, str]]:
        """``(id, container_id)`` of the rows that show a registration, in one query.

        A pre-registered row counts once it has left ``created``; a
        self-registering worker counts once a row with its ``container_id`` exists.
        """
        with self._lock:
            self.poll_queries += 1
            rows = self._db().execute(
                "SELECT id, container_id FROM workers"
                " WHERE (id IN (SELECT value FROM json_each(?)) AND status != 'created')"
                " OR container_id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(db_ids)), json.dumps(list(container_ids))),
            ).fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]

    def mark_dead(
        self, db_ids: Collection[int], container_ids: Collection[str] = (), *, reason: str = "worker stopped"
    ) -> int:
        """Record workers ``dead`` and give back their in-flight jobs, in one transaction.

        A ``processing`` job of such a worker goes back to ``pending`` while
        ``attempts < max_attempts``, else it becomes ``failed`` with ``reason``:
        a dead worker never holds a job.  Returns how many jobs went back to pending.
        """
        if not db_ids and not container_ids:
            return 0
        params = (json.dumps(list(db_ids)), json.dumps(list(container_ids)))
        with self._lock, _transaction(self._db()) as db:
            ids = [
                r[0] for r in db.execute(
                    "SELECT id FROM workers WHERE id IN (SELECT value FROM json_each(?))"
                    " OR container_id IN (SELECT value FROM json_each(?))",
                    params,
                )
            ]
            # A CLM worker deletes its own row when it stops: its job may
            # still name it, and CLM's own requeue (a join on a dead row)
            # would never find that job.
            requeued = self._release_jobs(db, sorted({*ids, *db_ids}), reason)
            db.execute(
                "UPDATE workers SET status = 'dead' WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )
        return requeued

    @staticmethod
    def _release_jobs(db: sqlite3.Connection, worker_ids: list[int], reason: str) -> int:
        ids = json.dumps(worker_ids)
        requeued = db.execute(
            "UPDATE jobs SET status = 'pending', worker_id = NULL, started_at = NULL"
            " WHERE status = 'processing' AND attempts < max_attempts"
            " AND worker_id IN (SELECT value FROM json_each(?))",
            (ids,),
        ).rowcount
        db.execute(
            "UPDATE jobs SET status = 'failed', completed_at = CURRENT_TIMESTAMP,"
            " error = ? || ' (after ' || attempts || ' attempts)'"
            " WHERE status = 'processing' AND worker_id IN (SELECT value FROM json_each(?))",
            (reason, ids),
        )
        return requeued

    def health(self, db_ids: Collection[int]) -> list[RowHealth]:
        """The :class:`RowHealth` of each given row that is ``idle``, ``busy`` or ``hung``, in one query.

        Every age is computed by SQLite (``julianday('now')``), so the naive
        UTC of ``CURRENT_TIMESTAMP`` is never compared with local time.
        ``worker_heartbeats`` is read where the database has it (CLM 1.9 and later).
        """
        age = "(julianday('now') - julianday({})) * 86400.0"
        with self._lock:
            db = self._db()
            has_progress = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'worker_heartbeats'"
            ).fetchone() is not None
            progress, join = ("NULL", "")
            if has_progress:
                progress = age.format("h.heartbeat_at")
                join = " LEFT JOIN worker_heartbeats h ON h.worker_id = w.id"
            rows = db.execute(
                f"SELECT w.id, w.status, {age.format('w.last_heartbeat')}, j.job_id,"
                f" {age.format('j.started_at')}, {progress}"
                " FROM workers w"
                " LEFT JOIN (SELECT worker_id, MIN(id) AS job_id, MIN(started_at) AS started_at"
                "   FROM jobs WHERE status = 'processing' GROUP BY worker_id) j ON j.worker_id = w.id"
                f"{join}"
                " WHERE w.id IN (SELECT value FROM json_each(?)) AND w.status IN ('idle', 'busy', 'hung')",
                (json.dumps(list(db_ids)),),
            ).fetchall()
        return [
            RowHealth(int(r[0]), str(r[1]), _float(r[2]), None if r[3] is None else int(r[3]),
                      _float(r[4]), _float(r[5]))
            for r in rows
        ]

    def flag_hung(self, db_ids: Collection[int]) -> list[int]:
        """Set ``hung`` on those rows that are still ``idle`` or ``busy``; returns them.

        Conditional, so that a worker that marked itself ``dead`` meanwhile stays dead.
        """
        with self._lock:
            rows = self._db().execute(
                "UPDATE workers SET status = 'hung' WHERE id IN (SELECT value FROM json_each(?))"
                " AND status IN ('idle', 'busy') RETURNING id",
                (json.dumps(list(db_ids)),),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def clear_hung(self, db_ids: Collection[int]) -> list[int]:
        """Give ``hung`` rows whose worker recovered their status back; returns them.

        ``busy`` while the worker holds a ``processing`` job, else ``idle``,
        decided in the same statement, so a job the worker finishes meanwhile
        cannot leave it ``busy``.
        """
        with self._lock:
            rows = self._db().execute(
                "UPDATE workers SET status = CASE WHEN EXISTS (SELECT 1 FROM jobs"
                "   WHERE jobs.worker_id = workers.id AND jobs.status = 'processing')"
                " THEN 'busy' ELSE 'idle' END"
                " WHERE id IN (SELECT value FROM json_each(?)) AND status = 'hung' RETURNING id",
                (json.dumps(list(db_ids)),),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def clean_dead_sessions(self, *, expired_for: float = 0.0) -> dict[str, int]:
        """Retire the rows that managers which died left claiming live workers.

        A session is dead when its lease expired (its manager stopped renewing
        it), at least ``expired_for`` seconds ago (see :meth:`expired_sessions`).
        Its ``created``/``idle``/``busy``/``hung`` rows become ``dead`` and
        their in-flight jobs are requeued.  A live session (lease valid) is
        never touched, nor are rows without a session (CLM's own workers), nor
        this registry's own session.  Returns ``{session id: rows retired}``.
        """
        cleaned: dict[str, int] = {}
        for session in self.expired_sessions(expired_for=expired_for):
            with self._lock:
                ids = [
                    int(r[0]) for r in self._db().execute(
                        f"SELECT id FROM workers WHERE {running_session_sql()} = ?"
                        " AND status IN ('created', 'idle', 'busy', 'hung')",
                        (session,),
                    )
                ]
            if ids:
                self.mark_dead(ids, reason=f"the manager of session {session} died")
                cleaned[session] = len(ids)
        return cleaned

    def expired_sessions(self, *, expired_for: float = 0.0) -> list[str]:
        """Sessions whose manager stopped renewing its lease (``expired_for`` seconds ago or more).

        Never this registry's own session, and never one whose manager
        provably still runs on this host (its pid with the start tick it
        recorded): its renewals are only late, held up by a busy database.
        """
        with self._lock:  # open() gave the table every column (schema.ensure_own_tables)
            rows = self._db().execute(
                "SELECT session_id, pid, host, proc_start FROM clm_worker_sessions"
                " WHERE lease_expires_at < julianday('now') - ? AND session_id != ?",
                (expired_for / 86400.0, self.session_id),
            ).fetchall()
        here = socket.gethostname()
        return [str(session) for session, pid, host, stamp in rows
                if not (host == here and stamp and pid and start_stamp(int(pid)) == stamp)]

    def sessions_with_docker_rows(self) -> set[str]:
        """Sessions that ever had a docker worker in this database (so may have left containers)."""
        with self._lock:
            return docker_sessions(self._db())

    # -- events ------------------------------------------------------------

    def record_events(self, events: Iterable[Event]) -> None:
        with self._lock, _transaction(self._db()) as db:
            self._insert_events(db, events)

    def _insert_events(self, db: sqlite3.Connection, events: Iterable[Event]) -> None:
        db.executemany(
            "INSERT INTO worker_events (event_type, worker_id, worker_type, execution_mode,"
            " message, metadata, session_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.event_type, e.worker_id, e.worker_type, e.execution_mode, e.message,
                    None if e.metadata is None else json.dumps(e.metadata), self.session_id,
                )
                for e in events
            ],
        )

    # -- jobs (for the demo, tests and CLM-like callers) -------------------

    def submit_job(
        self,
        job_type: str,
        input_file: str,
        output_file: str,
        payload: dict[str, Any] | None = None,
        *,
        priority: int = 0,
    ) -> int:
        """Queue one ``pending`` job (for this session, where the schema has job sessions); its id."""
        row: dict[str, object] = {
            "job_type": job_type, "status": "pending", "priority": priority, "input_file": input_file,
            "output_file": output_file, "content_hash": "", "payload": json.dumps(payload or {}),
        }
        if "session_id" in self._job_columns:
            row["session_id"] = self.session_id
        with self._lock:
            cursor = self._db().execute(
                f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def job_statuses(self, job_ids: Collection[int]) -> dict[int, tuple[str, int | None]]:
        """``{job id: (status, worker id)}`` for the given jobs."""
        with self._lock:
            rows = self._db().execute(
                "SELECT id, status, worker_id FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(job_ids)),),
            ).fetchall()
        return {int(r[0]): (str(r[1]), r[2]) for r in rows}


def _give_to_folder_owner(db_path: Path) -> None:
    """A database that root just made in someone's folder belongs to that someone.

    The workers (containers never run as root) must write it, and a file in
    a user's folder that the user cannot write helps nobody.  SQLite gives its
    ``-wal`` and ``-shm`` files the database's owner from then on.
    """
    if os.geteuid() != 0:
        return
    folder = os.stat(db_path.parent)
    if folder.st_uid == 0:
        return
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, folder.st_uid, folder.st_gid, follow_symlinks=False)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any error, roll back what is left and raise that error.

    SQLite itself rolls the transaction back on some errors (``database or
    disk is full``, I/O errors): a ``ROLLBACK`` then would fail with "no
    transaction is active" and hide the real cause, so it is issued only
    while a transaction is open, and its own failure never replaces the original.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error as exc:  # the original error is the one that matters
                log.debug("rollback after an error failed too: %s", exc)
        raise


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
