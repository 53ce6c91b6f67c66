"""The session lease: proof, in the database, that a manager is still alive.

A container cannot inherit a lifeline pipe from its manager, so a manager
that dies without stopping its workers (SIGKILL, OOM) would leave them
running.  Instead, each manager keeps a row in ``clm_worker_sessions`` whose
``lease_expires_at`` it pushes forward every ``ttl / 3`` seconds from a
daemon thread.  Workers check the lease with their heartbeat and stop once it
has expired, and the next manager on the same database treats an expired
session as dead and removes what it left behind.

Times are SQLite's ``julianday('now')`` on both sides, so manager and worker
compare one clock (the host's), never local time.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from . import schema

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 10.0
_SECONDS_PER_DAY = 86400.0


class SessionLease:
    """Keeps one session's lease alive while :meth:`start`..:meth:`stop` lasts.

    Blocking; :meth:`start` writes the row before returning (so that no
    worker can exist without a lease), then a daemon thread renews it.
    """

    def __init__(self, db_path: Path, session_id: str, *, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self.db_path = db_path
        self.session_id = session_id
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with closing(schema.connect(self.db_path)) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO clm_worker_sessions"
                " (session_id, pid, host, lease_expires_at) VALUES (?, ?, ?, julianday('now') + ?)",
                (self.session_id, os.getpid(), socket.gethostname(), self.ttl / _SECONDS_PER_DAY),
            )
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_forever, name="clm-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and expire the lease at once (stragglers stop by themselves)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            with closing(schema.connect(self.db_path)) as conn:
                conn.execute(
                    "UPDATE clm_worker_sessions SET lease_expires_at = julianday('now')"
                    " WHERE session_id = ?",
                    (self.session_id,),
                )
        except Exception as exc:  # the lease runs out by itself anyway
            log.warning("could not expire the session lease: %s", exc)

    def _renew_forever(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(self.ttl / 3):
            try:
                conn = conn or schema.connect(self.db_path)
                conn.execute(
                    "UPDATE clm_worker_sessions SET lease_expires_at = julianday('now') + ?"
                    " WHERE session_id = ?",
                    (self.ttl / _SECONDS_PER_DAY, self.session_id),
                )
            except Exception as exc:  # keep trying: a locked database is usually brief
                log.warning("could not renew the session lease: %s", exc)
        if conn is not None:
            conn.close()

