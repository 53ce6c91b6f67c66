"""The manager's side of the SQLite file: rows, registrations, events, jobs.

Blocking code: the async side calls it through ``trio.to_thread``.  One
connection is shared by the threads that call in, serialised by a lock, so
that every call sees the others' writes and the file has one writer of ours.
Everything this class changes is scoped to its own ``session_id`` or to row
ids it created: it never touches another manager's workers.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schema
from .clm.database import prepare_database
from .clm.installed import installed_clm
from .lease import SessionLease
from .plan import WorkerSpec


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
    def __init__(self, db_path: Path, *, session_id: str, lease_ttl: float | None = None) -> None:
        """``lease_ttl``: keep a session lease (see :mod:`clm_workers.lease`) while open."""
        self.db_path = Path(db_path)
        self.session_id = session_id
        self._lease = None if lease_ttl is None else SessionLease(self.db_path, session_id, ttl=lease_ttl)
        self.managed_by = f"clm-workers@{socket.gethostname()}:{os.getpid()}"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        #: Queries issued by :meth:`registered_rows` (benchmarks read it).
        self.poll_queries = 0
        #: The columns of this file's ``jobs`` table (CLM 1.9.2's has no ``session_id``).
        self._job_columns: set[str] = set()

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
            prepare_database(self.db_path, installed_clm())
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
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
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
                            self.session_id, self.managed_by, os.getpid(),
                        ),
                    )
                    assert cursor.lastrowid is not None
                    result.append(spec.with_db_id(cursor.lastrowid))
                self._insert_events(db, [*events, *(
                    Event("worker_starting", s.worker_type, s.db_worker_id, s.execution_mode,
                          f"{s.label} starting as {s.executor_id}")
                    for s in result
                )])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
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
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
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
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
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

    def stale_workers(self, older_than: float) -> list[tuple[int, str, float]]:
        """``(id, status, seconds)`` of this session's idle/busy rows without a heartbeat
        for more than ``older_than`` seconds.  Compared in SQLite, in UTC."""
        with self._lock:
            rows = self._db().execute(
                "SELECT id, status, (julianday('now') - julianday(last_heartbeat)) * 86400.0"
                " FROM workers WHERE session_id = ? AND status IN ('idle', 'busy', 'hung')"
                " AND (julianday('now') - julianday(last_heartbeat)) * 86400.0 > ?",
                (self.session_id, older_than),
            ).fetchall()
        return [(int(r[0]), str(r[1]), float(r[2])) for r in rows]

    def set_status(self, db_ids: Collection[int], status: str) -> None:
        with self._lock:
            self._db().execute(
                "UPDATE workers SET status = ? WHERE id IN (SELECT value FROM json_each(?))",
                (status, json.dumps(list(db_ids))),
            )

    def clean_dead_sessions(self) -> dict[str, int]:
        """Retire the rows that managers which died left claiming live workers.

        A session is dead when its lease expired (its manager stopped renewing
        it).  Its ``created``/``idle``/``busy``/``hung`` rows become ``dead``
        and their in-flight jobs are requeued.  A live session (lease valid) is
        never touched, nor are rows without a session (CLM's own workers).
        Returns ``{session id: rows retired}``.
        """
        cleaned: dict[str, int] = {}
        for session in self.expired_sessions():
            with self._lock:
                ids = [
                    int(r[0]) for r in self._db().execute(
                        "SELECT id FROM workers WHERE session_id = ?"
                        " AND status IN ('created', 'idle', 'busy', 'hung')",
                        (session,),
                    )
                ]
            if ids:
                self.mark_dead(ids, reason=f"the manager of session {session} died")
                cleaned[session] = len(ids)
        return cleaned

    def expired_sessions(self) -> list[str]:
        """Sessions whose manager stopped renewing its lease: their manager is gone."""
        with self._lock:
            rows = self._db().execute(
                "SELECT session_id FROM clm_worker_sessions WHERE lease_expires_at < julianday('now')"
            ).fetchall()
        return [str(r[0]) for r in rows]

    # -- events ------------------------------------------------------------

    def record_events(self, events: Iterable[Event]) -> None:
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                self._insert_events(db, events)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

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
