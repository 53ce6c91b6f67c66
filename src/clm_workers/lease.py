"""The session lease: proof, in the database, that a manager is still alive.

A container cannot inherit a lifeline pipe from its manager, so a manager
that dies without stopping its workers (SIGKILL, OOM) would leave them
running.  Instead, each manager keeps a row in ``clm_worker_sessions`` whose
``lease_expires_at`` it pushes forward every ``ttl / 3`` seconds from a
daemon thread.  Containers check the lease and stop once it has expired, and
the next manager on the same database (or any running manager's monitor)
treats an expired session as dead and removes what it left behind.  Direct
workers have their lifeline and do not watch the lease.

A busy database is not a dead manager: a renewal that waits for the write
lock keeps waiting (and is retried at once when SQLite gives up), and a
worker counts the lease as expired only while it can take the write lock
itself (see ``clm_workers.worker``), so a lock held for longer than the
lease expires nothing.

The lease is also the pool's watch on its database *file*: the path is
resolved once, the file's identity (device and inode) is kept, and every
renewal checks that the path still leads to that file and that the
session's row is still there (the renewal's row count).  When not, the
database was deleted, replaced or swapped under the pool: :attr:`SessionLease.lost`
says which, and the pool's monitor stops the pool with that reason
(:class:`clm_workers.errors.PoolStoppedError`).

Times are SQLite's ``julianday('now')`` on both sides, so manager and worker
compare one clock (the host's), never local time.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
from pathlib import Path

from . import schema
from .ownership import ManagerToken, start_stamp

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 10.0
_SECONDS_PER_DAY = 86400.0


def file_identity(path: Path | str) -> tuple[int, int] | None:
    """``(device, inode)`` of the file ``path`` leads to (symlinks followed); ``None`` if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class SessionLease:
    """Keeps one session's lease alive while :meth:`start`..:meth:`stop` lasts.

    Blocking; :meth:`start` writes the row before returning (so that no
    worker can exist without a lease), then a daemon thread renews it.
    ``db_path`` is the path as the user gave it (a symlink stays one):
    the lease watches that it keeps leading to the file it led to at
    :meth:`start`.
    """

    def __init__(self, db_path: Path, session_id: str, *, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self.db_path = Path(db_path)
        self.session_id = session_id
        self.ttl = ttl
        #: Why the pool's database is no longer the file it started with, or ``None``.
        self.lost: str | None = None
        self._real_path = self.db_path
        self._identity: tuple[int, int] | None = None
        self._conn: sqlite3.Connection | None = None
        self._token = ManagerToken(session_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write the session's row, remember the file it is in, and start renewing.

        The row names this process exactly (pid and start tick), and the
        manager token is made (:mod:`clm_workers.ownership`), so that
        ``clm-workers stop`` can tell this manager from any other process.
        Raises :class:`sqlite3.Error` when the row cannot be written.
        """
        # Absolute now (a caller may change its folder later), symlinks kept: watched as given.
        self.db_path = Path(os.path.abspath(self.db_path))
        self._real_path = self.db_path.resolve()
        self._identity = file_identity(self._real_path)
        try:
            self._token.create()
        except OSError as exc:
            log.warning("no manager token (%s): `clm-workers stop` will not signal this process; "
                        "stop it with Ctrl-C or kill -INT %d", exc, os.getpid())
        # One connection for the whole session, opened now: opened later, it
        # would open whatever file the path leads to by then.
        conn = schema.connect(self._real_path, check_same_thread=False)
        try:
            conn.execute(
                "INSERT OR REPLACE INTO clm_worker_sessions (session_id, pid, host, lease_expires_at,"
                " proc_start) VALUES (?, ?, ?, julianday('now') + ?, ?)",
                (self.session_id, os.getpid(), socket.gethostname(), self.ttl / _SECONDS_PER_DAY,
                 start_stamp()),
            )
        except BaseException:
            conn.close()
            self._token.close()
            raise
        self._conn = conn
        self.lost = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_forever, name="clm-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and expire the lease at once (stragglers stop by themselves)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                conn.execute(
                    "UPDATE clm_worker_sessions SET lease_expires_at = julianday('now') WHERE session_id = ?",
                    (self.session_id,),
                )
        except sqlite3.Error as exc:  # the lease runs out by itself anyway
            log.warning("could not expire the session lease: %s", exc)
        finally:
            if conn is not None:
                conn.close()
            self._token.close()  # after the expiry: until then `stop` may still need the proof

    def check_file(self) -> str | None:
        """Why the database path no longer leads to the pool's file, or ``None`` (a ``stat`` or two)."""
        if self._identity is None:
            return None
        if not os.path.lexists(self.db_path):
            return f"the database file {self.db_path} was deleted"
        seen = file_identity(self.db_path)
        if seen == self._identity:
            return None
        if self.db_path.resolve() != self._real_path:
            return (f"the database path {self.db_path} now leads to another file "
                    f"({self.db_path.resolve()}, not {self._real_path})")
        if seen is None:
            return f"the database file {self.db_path} was deleted"
        return f"the database file {self.db_path} was replaced by another file"

    def renew(self) -> bool:
        """Push the lease forward once; ``False`` (and :attr:`lost` set) when the database is gone.

        Blocks while another process holds the write lock, up to SQLite's
        busy timeout; a renewal that timed out on the lock is no loss (the
        caller tries again).  Raises :class:`sqlite3.Error` for other failures.
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError("SessionLease.start() was not called")
        lost = self.check_file()
        if lost is None:
            changed = conn.execute(
                "UPDATE clm_worker_sessions SET lease_expires_at = julianday('now') + ?"
                " WHERE session_id = ?",
                (self.ttl / _SECONDS_PER_DAY, self.session_id),
            ).rowcount
            if changed == 0:
                lost = (f"the session row is gone from the database {self.db_path} "
                        "(its table was emptied, or the file replaced in place)")
        if lost is not None and self.lost is None:
            self.lost = lost
            log.error("%s: the pool cannot go on with it", lost)
        return self.lost is None

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            while not self._stop.is_set():
                try:
                    if not self.renew():
                        return  # nothing left to renew: the monitor stops the pool
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        # Another process held the lock for longer than the busy timeout:
                        # wait for it again at once, the lease must follow its release.
                        log.warning("the session lease waits for the database lock: %s", exc)
                        continue
                    log.warning("could not renew the session lease: %s", exc)
                except sqlite3.Error as exc:  # a full disk, an I/O error: try again next round
                    log.warning("could not renew the session lease: %s", exc)
                break
