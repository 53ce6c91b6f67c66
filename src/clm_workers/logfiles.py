"""Where the direct workers' logs live, and for how long.

Each direct worker's stdout and stderr go to one file, ``<executor id>.log``
(the direct executor's naming).  Unless ``log_dir`` says otherwise, the folder
is beside the database, one per manager session::

    jobs.db
    jobs.db.logs/<session id>/direct-notebook-0-1a2b3c4d.log

so that ``clm-workers logs`` finds a worker's log from the database alone,
while the pool runs and after it stopped, even after its manager was killed.
A manager that stops prunes the folder: the logs of the
:data:`KEEP_SESSIONS` most recent sessions stay, and a session whose lease is
alive (its manager runs) is never pruned.  A ``log_dir`` the user chose is
never pruned.

Blocking (file system, one SQLite read); called from ``stop_pools``' cleanup
and by the CLI.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

#: How many sessions' log folders a database keeps.
KEEP_SESSIONS = 10


def log_root(db_path: Path) -> Path:
    """``jobs.db`` -> ``jobs.db.logs``: the folder of every session's log folder."""
    return db_path.parent / f"{db_path.name}.logs"


def session_log_dir(db_path: Path, session_id: str) -> Path:
    """The default log folder of one session (created by the first worker that starts)."""
    return log_root(db_path) / session_id


def worker_log(log_dir: Path, executor_id: str) -> Path:
    """The log file of one direct worker (the direct executor writes ``<executor id>.log``)."""
    return log_dir / f"{executor_id}.log"


def prune(db_path: Path, *, keep: int = KEEP_SESSIONS) -> list[str]:
    """Remove the log folders of all but the ``keep`` newest sessions whose lease is not alive.

    Newest by the folder's modification time (a worker's first log file
    touches it).  Returns the session ids whose logs were removed.  Never
    raises: a folder that cannot be read or removed is logged and left.
    """
    root = log_root(db_path)
    try:
        folders = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return []
    running = _sessions_with_live_lease(db_path)
    if running is None:
        return []  # which sessions run is unknown: prune nothing rather than a live one's logs
    candidates = []
    for folder in folders:
        if folder.name in running:
            continue
        try:
            candidates.append((folder.stat().st_mtime, folder))
        except OSError:
            continue
    candidates.sort(reverse=True)
    removed = []
    for _, folder in candidates[keep:]:
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            log.warning("could not remove the old worker logs %s: %s", folder, exc)
            continue
        removed.append(folder.name)
    if removed:
        log.info("removed the worker logs of %d old sessions from %s", len(removed), root)
    return removed


def _sessions_with_live_lease(db_path: Path) -> set[str] | None:
    """The sessions whose manager keeps its lease alive; ``None`` when the database cannot tell."""
    from .inventory import connect_existing  # a read of one table

    try:
        conn = connect_existing(db_path)
    except sqlite3.Error:
        return None
    try:
        return {str(r[0]) for r in conn.execute(
            "SELECT session_id FROM clm_worker_sessions WHERE lease_expires_at > julianday('now')")}
    except sqlite3.Error:
        return None
    finally:
        conn.close()
