"""``clm-workers logs [TYPE#INDEX] [-f]``: a worker's log, or every worker's of a session.

Where the logs are (see :mod:`clm_workers.logfiles`): a direct worker's
stdout and stderr are one file, ``<executor id>.log``, beside the database
(``jobs.db.logs/<session id>/``, kept for the last few sessions) or in the
pool's ``log_dir``.  A container's log is the Docker engine's, there while the
container is (it is removed when the pool stops).

The worker's rows come from the database: a worker that was replaced has one
row (and one log) per incarnation, printed in order; ``--follow`` picks up
a replacement's log as soon as its row appears, and ends once the session
has stopped (or its manager is gone) and every log has been read to its end.

Blocking: reads files and the database, polling with a short sleep while it
follows (another process is writing).  Ctrl-C ends it (exit 0).
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import display, inventory, logfiles
from ..errors import ConfigError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NO_LOG = 1

#: How often ``--follow`` reads the files, and how often it looks for new rows (replacements).
FOLLOW_POLL_SECONDS = 0.2
ROWS_POLL_SECONDS = 1.0
_CHUNK = 1 << 16


@dataclass(frozen=True)
class LogRequest:
    #: ``notebook#0``; ``None`` for every worker of the session.
    worker: str | None = None
    follow: bool = False
    session_prefix: str | None = None
    #: The pool's ``log_dir``; ``None``: the default folder beside the database.
    log_dir: Path | None = None
    #: Only the last ``tail`` lines of each log (``None``: all).
    tail: int | None = None


@dataclass
class _Source:
    """One log being read: a file (direct worker) and how far it has been printed."""

    row: inventory.WorkerRow
    path: Path
    offset: int = 0
    partial: bytes = b""
    seen: bool = False


def run_logs(db_path: Path, request: LogRequest, *, setting: str = "--db") -> int:
    """Print the selected logs (and follow them); 0, or 1 when none of them can be found."""
    conn = inventory.open_database(db_path, setting)
    try:
        session = _pick_session(conn, request)
        rows = _select(conn, session, request.worker)
        log_dir = request.log_dir or logfiles.session_log_dir(db_path.resolve(), session.session_id)
        log.info("session %s, %d worker rows, logs in %s", session.session_id, len(rows), log_dir)
        docker_rows = [r for r in rows if r.execution_mode == "docker"]
        if docker_rows and request.worker is not None and len(docker_rows) == len(rows):
            return _docker_logs(docker_rows[-1], request)
        for row in docker_rows:
            display.note(f"clm-workers: {row.label} runs in a container; its log: "
                         f"clm-workers logs {row.label} (or docker logs {row.container_id})", "dim")
        sources = [_Source(r, logfiles.worker_log(log_dir, r.container_id)) for r in rows
                   if r.execution_mode != "docker"]
        prefix = len({s.row.label for s in sources}) > 1
        width = max((len(s.row.label) for s in sources), default=0)
        try:
            for source in sources:
                _print_new(source, prefix, width, tail=request.tail)
            if not request.follow:
                for source in sources:
                    _flush_partial(source, prefix, width)
                return _missing(sources, request)
            _follow(conn, session.session_id, request.worker, log_dir, sources, prefix, width)
        except KeyboardInterrupt:
            pass
        return EXIT_OK
    finally:
        conn.close()


def _pick_session(conn: sqlite3.Connection, request: LogRequest) -> inventory.SessionRow:
    sessions = inventory.read_sessions(conn)
    if request.session_prefix:
        matching = [s for s in sessions if s.session_id.startswith(request.session_prefix)]
        if not matching:
            known = ", ".join(s.session_id[:8] for s in sessions) or "none"
            raise ConfigError("--session", request.session_prefix,
                              f"a session id (or its start) of this database; it has: {known}")
        return matching[0]
    with_rows = {r[0] for r in conn.execute("SELECT DISTINCT session_id FROM workers")}
    candidates = [s for s in sessions if s.session_id in with_rows]
    if request.worker is not None:
        labelled = {w.session_id for w in inventory.read_workers(conn) if w.label == request.worker}
        candidates = [s for s in candidates if s.session_id in labelled] or candidates
    if not candidates:
        raise ConfigError("--db", "(no sessions)", "a database in which clm-workers has started workers")
    # Newest first; a session whose manager runs before one that ended.
    running = [s for s in candidates if s.state in ("starting", "running", "stopping")]
    return (running or candidates)[0]


def _select(conn: sqlite3.Connection, session: inventory.SessionRow, worker: str | None
            ) -> list[inventory.WorkerRow]:
    rows = sorted(inventory.read_workers(conn, session=session.session_id), key=display.by_name)
    if worker is None:
        return rows
    chosen = [r for r in rows if r.label == worker]
    if not chosen:
        labels = sorted({r.label for r in rows}, key=lambda label: (label.split("#")[0], len(label), label))
        raise ConfigError("TYPE#INDEX", worker,
                          f"a worker of session {session.session_id[:8]}: " + (", ".join(labels) or "none"))
    return chosen


def _print_new(source: _Source, prefix: bool, width: int, *, tail: int | None = None) -> bool:
    """Print what the file has beyond what was printed; whether there was anything."""
    try:
        size = source.path.stat().st_size
    except OSError:
        return False
    if not source.seen:
        source.seen = True
        if tail is not None:
            source.offset = _tail_offset(source.path, size, tail)
    if size < source.offset:  # truncated or replaced: start over
        source.offset, source.partial = 0, b""
    if size == source.offset:
        return False
    with open(source.path, "rb") as f:
        f.seek(source.offset)
        data = f.read(size - source.offset)
    source.offset += len(data)
    lines = (source.partial + data).split(b"\n")
    source.partial = lines.pop()
    _write(lines, source.row.label, prefix, width)
    return bool(lines)


def _flush_partial(source: _Source, prefix: bool, width: int) -> None:
    if source.partial:
        _write([source.partial], source.row.label, prefix, width)
        source.partial = b""


def _write(lines: list[bytes], label: str, prefix: bool, width: int) -> None:
    head = f"{label:<{width}} | " if prefix else ""
    out = sys.stdout
    for line in lines:
        out.write(head + line.decode("utf-8", errors="replace") + "\n")
    out.flush()


def _tail_offset(path: Path, size: int, lines: int) -> int:
    """Where the last ``lines`` lines of the file begin."""
    if lines == 0:
        return size
    with open(path, "rb") as f:
        end = size
        found = 0
        position = size
        while position > 0:
            start = max(0, position - _CHUNK)
            f.seek(start)
            block = f.read(position - start)
            for i in range(len(block) - 1, -1, -1):
                if block[i] == 0x0A and start + i < end - 1:
                    found += 1
                    if found == lines:
                        return start + i + 1
            position = start
    return 0


def _missing(sources: list[_Source], request: LogRequest) -> int:
    """Say which logs are not there; 1 when none of them is."""
    missing = [s for s in sources if not s.path.exists()]
    if not missing:
        return EXIT_OK
    where = ("the pool's log_dir" if request.log_dir is not None
             else f"the last {logfiles.KEEP_SESSIONS} sessions' logs are kept beside the database; "
                  "a pool with log_dir wrote them there (--log-dir)")
    for source in missing:
        display.note(f"clm-workers: no log for {source.row.label} (row {source.row.id}): {source.path} "
                     f"does not exist ({where})", "yellow")
    return EXIT_NO_LOG if len(missing) == len(sources) else EXIT_OK


def _follow(conn: sqlite3.Connection, session_id: str, worker: str | None, log_dir: Path,
            sources: list[_Source], prefix: bool, width: int) -> None:
    """Print new lines until the session has stopped and every log is read to its end."""
    known = {s.row.id for s in sources}
    next_rows = time.monotonic() + ROWS_POLL_SECONDS
    while True:
        for source in sources:
            _print_new(source, prefix, width)
        if time.monotonic() >= next_rows:
            next_rows = time.monotonic() + ROWS_POLL_SECONDS
            rows = [r for r in inventory.read_workers(conn, session=session_id)
                    if r.execution_mode != "docker" and (worker is None or r.label == worker)]
            for row in sorted(rows, key=display.by_name):
                if row.id not in known:  # a replacement (or a worker started later)
                    known.add(row.id)
                    sources.append(_Source(row, logfiles.worker_log(log_dir, row.container_id)))
            state = next((s.state for s in inventory.read_sessions(conn) if s.session_id == session_id),
                         "gone")
            if state in ("stopped", "gone"):
                for source in sources:
                    _print_new(source, prefix, width)
                    _flush_partial(source, prefix, width)
                return
        time.sleep(FOLLOW_POLL_SECONDS)  # following files another process writes


def _docker_logs(row: inventory.WorkerRow, request: LogRequest) -> int:
    """A container's log from the engine (streamed with ``--follow``)."""
    import docker  # type: ignore[import-untyped]  # only for containers
    import docker.errors  # type: ignore[import-untyped]

    try:
        client = docker.from_env()
        stream = client.api.logs(row.container_id, stdout=True, stderr=True, stream=True,
                                 follow=request.follow,
                                 tail="all" if request.tail is None else request.tail)
        try:
            for chunk in stream:
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        return EXIT_OK
    except docker.errors.NotFound:
        display.note(f"clm-workers: no log for {row.label}: its container {row.container_id} is gone "
                     "(removed when its pool stopped); the last lines of a container that failed are in "
                     "clm-workers status's events", "yellow")
    except docker.errors.DockerException as exc:
        display.note(f"clm-workers: cannot read the log of {row.label} from the Docker engine: {exc}", "red")
    return EXIT_NO_LOG
