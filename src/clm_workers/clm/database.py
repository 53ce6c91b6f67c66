"""Is a file a CLM database, and how it gets CLM's schema without being corrupted.

:func:`inspect_database` only reads (``immutable=1`` where SQLite has no log
beside the file: no lock, and no ``-wal`` or ``-shm`` created), so a file
that turns out not to be CLM's is left byte for byte as it was.
:func:`prepare_database` then lets the installed CLM's own
``init_database`` create or migrate it, as CLM would on its next
connection; without CLM a new file gets :mod:`clm_workers.schema`'s copy of
CLM's newest schema.  A version is never stamped on tables it does not
describe: an existing file keeps its CLM tables and version as they are.

Blocking.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .. import schema
from ..errors import ConfigError
from .installed import InstalledClm

#: A SQLite database that is not empty has at least one page, of 512 bytes or more.
_SMALLEST_DATABASE = 512
#: How long :func:`prepare_database` retries while another process creates the same file.
_PREPARE_RETRY_SECONDS = 10.0
#: The tables that make a file CLM's (every generation has them).
_CLM_TABLES = frozenset({"workers", "jobs", "schema_version"})
#: The columns of ``workers`` that clm-workers writes (CLM's schema v5 and later).
_WORKER_COLUMNS = frozenset({"id", "worker_type", "container_id", "status", "session_id", "parent_pid"})


class Kind(enum.Enum):
    NEW = "new"  # missing, empty, or a SQLite file without tables
    CLM = "clm"
    FOREIGN = "foreign"  # another application's SQLite file, or no SQLite file at all


@dataclass(frozen=True)
class DatabaseState:
    kind: Kind
    #: The stored ``schema_version`` of a CLM database.
    version: int | None = None
    #: Why a file is foreign, in words for the user.
    reason: str = ""


def inspect_database(path: Path) -> DatabaseState:
    """What ``path`` holds; reads only.  Raises :class:`OSError` when it cannot be read.

    The file is never opened but by SQLite: closing any other descriptor of
    it would drop the POSIX locks that SQLite connections of this process
    (CLM's own, when CLM runs clm-workers in its process) hold on it, and
    corrupt it.  SQLite itself keeps one descriptor per file and process.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return DatabaseState(Kind.NEW)
    if size == 0:
        return DatabaseState(Kind.NEW)
    if size < _SMALLEST_DATABASE or not path.is_file():
        return DatabaseState(Kind.FOREIGN, reason="it is not a SQLite database")
    if not os.access(path, os.R_OK):
        raise PermissionError(errno.EACCES, "permission denied", str(path))
    # ``immutable`` reads the file alone, creating nothing beside it.  A file
    # with a write-ahead log is in SQLite's use (its -wal and -shm exist
    # already) and part of it may be in the log: read it properly.
    in_use = Path(f"{path}-wal").exists()
    try:
        tables, columns, version = _read_schema(path, "mode=ro" if in_use else "immutable=1")
    except sqlite3.DatabaseError:
        # Read without locks, a file being written right now may look torn.
        try:
            tables, columns, version = _read_schema(path, "mode=ro")
        except sqlite3.DatabaseError as exc:
            if _not_a_database(exc):
                return DatabaseState(Kind.FOREIGN, reason="it is not a SQLite database")
            return DatabaseState(Kind.FOREIGN, reason=f"SQLite cannot read it ({exc})")
    if not tables - {"clm_worker_sessions"}:
        return DatabaseState(Kind.NEW)
    missing = _CLM_TABLES - tables
    if missing:
        return DatabaseState(
            Kind.FOREIGN,
            reason=f"it has no {', '.join(sorted(missing))} table (tables: {', '.join(sorted(tables))})",
        )
    if not columns >= _WORKER_COLUMNS:
        return DatabaseState(
            Kind.FOREIGN,
            reason=f"its workers table lacks {', '.join(sorted(_WORKER_COLUMNS - columns))} "
            "(a CLM schema older than version 5)",
        )
    return DatabaseState(Kind.CLM, version=version)


def _not_a_database(exc: sqlite3.DatabaseError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB or "not a database" in str(exc)


def _read_schema(path: Path, mode: str) -> tuple[set[str], set[str], int | None]:
    """The file's tables, the columns of ``workers``, and the stored schema version."""
    uri = f"file:{quote(str(path.resolve()))}?{mode}"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        tables = {
            str(r[0]) for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        columns = set()
        if "workers" in tables:
            columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(workers)")}
        row = None
        if "schema_version" in tables:
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    version = row[0] if row else None
    return tables, columns, version if isinstance(version, int) else None


def check_database(db_path: Path, setting: str = "db_path") -> DatabaseState:
    """:func:`inspect_database`, with every refusal as a :class:`ConfigError` naming ``setting``."""
    if not db_path.parent.is_dir():
        raise ConfigError(
            setting, str(db_path), f"a file in an existing folder ({db_path.parent} does not exist)"
        )
    if db_path.is_dir():
        raise ConfigError(setting, str(db_path), "a file, not a folder")
    try:
        state = inspect_database(db_path)
    except OSError as exc:
        raise ConfigError(setting, str(db_path), f"a readable file ({exc.strerror or exc})") from exc
    if state.kind is Kind.FOREIGN:
        raise ConfigError(
            setting, str(db_path),
            f"a CLM jobs database or a new file: {state.reason}; it was left unchanged",
        )
    return state


def prepare_database(db_path: Path, installed: InstalledClm) -> DatabaseState:
    """Give ``db_path`` CLM's schema (the installed CLM's own, where there is one) and our table.

    Refuses (:class:`ConfigError`) a file that is not a CLM database before
    writing anything.  Returns the state found before preparing.
    """
    deadline = time.monotonic() + _PREPARE_RETRY_SECONDS
    while True:
        try:
            return _prepare(db_path, installed)
        except sqlite3.OperationalError as exc:
            # Two managers creating one new file at once: CLM's init_database
            # switches the journal mode first, which one of them loses at once
            # (no busy wait).  Both are idempotent: the loser tries again.
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _prepare(db_path: Path, installed: InstalledClm) -> DatabaseState:
    state = check_database(db_path)
    clm_version = installed.schema_version
    needs_clm = state.kind is Kind.NEW or (
        clm_version is not None and (state.version or 0) < clm_version
    )
    if not (needs_clm and installed.init_database(db_path)) and state.kind is Kind.NEW:
        with contextlib.closing(schema.connect(db_path)) as conn:
            schema.ensure_schema(conn)
    with contextlib.closing(schema.connect(db_path)) as conn:
        schema.ensure_own_tables(conn)
    return state
