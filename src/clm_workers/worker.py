"""The worker-side runtime: register in CLM's SQLite file, heartbeat, pull jobs.

Standard library only (plus :mod:`clm_workers.schema`): a worker must run in a
bare ``python3`` image, and every worker of a pool pays this module's import
time on the same cores, so nothing here imports more than it uses (this is
also why :class:`Job` and :class:`WorkerContext` are small hand-written frozen
records instead of dataclasses: ``dataclasses`` pulls in ``inspect``, about
7 ms per worker).

A worker is :func:`run_worker` with a job handler::

    def handle(job: Job, ctx: WorkerContext) -> dict | None: ...
    sys.exit(run_worker(handle))

Life of a worker (see clm-protocol.md for the table layouts):

1. read its configuration from the environment (exit 2 when it is wrong);
2. ``boot(stopping)`` (imports, warming up) -- a SIGTERM here ends the
   process at once with 143, a closed lifeline with 70;
3. register: activate the pre-registered row (``CLM_WORKER_ID``, CLM 1.x) or
   insert its own (CLM 0.3), plus a ``worker_registered`` event;
4. heartbeat from a thread, claim and run jobs on the main thread;
5. on SIGTERM/SIGINT finish the current job (at most ``CLM_STOP_JOB_GRACE``
   seconds), mark the row ``dead`` and exit 0.  When the manager is gone
   (the lifeline pipe reaches EOF) stop the same way but give the job only
   1 s, and exit 70.  When the row was deleted, stop and exit 0.

Environment (read once, by :func:`run_worker`):

``WORKER_TYPE`` (required)
    the job type to pull and the row's ``worker_type``.
``CLM_JOBS_DB_PATH``, else ``DB_PATH`` (required)
    the SQLite file; its schema is created only if the file does not exist.
``WORKSPACE_PATH`` (default ``.``)
    :attr:`WorkerContext.workspace`.
``CLM_WORKER_ID``
    the pre-registered row to activate; without it the worker self-registers
    with ``container_id`` = ``WORKER_ID``, else ``HOSTNAME`` (always ``HOSTNAME``
    with ``CLM_REGISTER_AS=hostname``: as a CLM 0.3 container).
``CLM_SESSION_ID``
    stored on a self-registered row and the event; only jobs of this session
    (or of none) are claimed.
``CLM_EXECUTION_MODE``
    ``execution_mode`` of a self-registered row; by default ``docker`` when
    ``WORKER_ID`` starts with ``docker`` or only ``HOSTNAME`` is set, else
    ``direct``.
``LOG_LEVEL`` (default ``INFO``), ``CLM_LIFELINE_FD`` (the inherited read end
of the manager's lifeline pipe), ``CLM_HEARTBEAT_INTERVAL`` (2.0 s),
``CLM_POLL_INTERVAL`` (0.1 s), ``CLM_STOP_JOB_GRACE`` (10 s).

Exit codes: 0 stopped as asked, 1 database failure, 2 bad configuration,
3 activation found no ``created`` row, 70 the manager died, 128+N signal N
before registration.
"""

from __future__ import annotations

# Only what registration needs is imported here: a pool boots all its workers
# at once on the same cores, so every millisecond of import CPU before a worker
# registers delays the whole pool.  ``json``, ``pathlib`` and ``traceback`` are
# imported where a job needs them, and ``logging`` (with ``re``, ``enum``,
# ``traceback``... about 4 ms) is replaced by :class:`_Log`.
import os
import sqlite3
import sys
import threading
import time

# Free: ``sqlite3`` imports ``collections.abc`` anyway; ``Handler`` needs it at run time.
from collections.abc import Callable

from . import schema

# Not ``typing.TYPE_CHECKING``: importing ``typing`` costs every worker time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Mapping
    from pathlib import Path
    from types import FrameType
    from typing import Any
else:
    # The C half of ``signal`` (same functions and constants, but ints instead
    # of enums): ``import signal`` imports ``enum``, another ~1.5 ms.
    import _signal

__all__ = ["Handler", "Job", "LeaseWatch", "WorkerContext", "claim_next", "run_worker"]

EXIT_OK = 0
EXIT_DB_ERROR = 1
EXIT_CONFIG = 2
EXIT_NOT_ACTIVATED = 3
EXIT_PARENT_DIED = 70

#: After the lifeline closes: how long the main loop may take to stop cleanly.
PARENT_DEATH_GRACE = 1.0
#: Consecutive failed job polls after which the worker gives up (database gone).
MAX_CONSECUTIVE_DB_ERRORS = 20
#: How long a container must find its session's lease expired, while it can
#: write the database itself, before it takes its manager for dead.
LEASE_CONFIRM_SECONDS = 1.0
#: Waiting longer than this for the write lock means someone else held it.
LEASE_LOCK_TOLERANCE = 0.5
#: How long a worker that gives up its job may wait for the database to take the release
#: (when a manager dies, all its workers release at once).
GIVE_UP_SECONDS = 5.0


class _FrozenRecord:
    """Immutable attribute record: the part of ``@dataclass(frozen=True)`` we use."""

    __slots__: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _FrozenRecord)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Job(_FrozenRecord):
    """One claimed row of ``jobs``, as the handler sees it.

    ``input_file``/``output_file`` are as stored (relative paths are relative
    to the workspace); ``attempts`` counts this attempt (1 on the first run).
    """

    __slots__ = ("id", "job_type", "input_file", "output_file", "payload", "attempts")
    __match_args__ = ("id", "job_type", "input_file", "output_file", "payload", "attempts")

    id: int
    job_type: str
    input_file: str
    output_file: str
    payload: dict[str, Any]
    attempts: int

    def __init__(
        self,
        id: int,  # noqa: A002 - the column's name
        job_type: str,
        input_file: str,
        output_file: str,
        payload: dict[str, Any],
        attempts: int,
    ) -> None:
        init = object.__setattr__
        init(self, "id", id)
        init(self, "job_type", job_type)
        init(self, "input_file", input_file)
        init(self, "output_file", output_file)
        init(self, "payload", payload)
        init(self, "attempts", attempts)


class WorkerContext(_FrozenRecord):
    """What a handler may know about the worker running it.

    ``stopping`` is set when the worker has been asked to stop; a long handler
    may check it to cut its work short (the job is then recorded as whatever
    the handler returns or raises).
    """

    __slots__ = ("worker_type", "db_worker_id", "workspace", "stopping")
    __match_args__ = ("worker_type", "db_worker_id", "workspace", "stopping")

    worker_type: str
    db_worker_id: int
    workspace: Path
    stopping: threading.Event

    def __init__(
        self, worker_type: str, db_worker_id: int, workspace: Path, stopping: threading.Event
    ) -> None:
        init = object.__setattr__
        init(self, "worker_type", worker_type)
        init(self, "db_worker_id", db_worker_id)
        init(self, "workspace", workspace)
        init(self, "stopping", stopping)


#: A job handler: returns an optional JSON-serialisable result (``jobs.result``)
#: or raises to fail the job.  Runs on the worker's main thread.
Handler = Callable[[Job, WorkerContext], "dict[str, Any] | None"]


# --------------------------------------------------------------------------- logging

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class _Log:
    """The runtime's log lines on stderr: ``clm-worker[<type>#<pid>] LEVEL message``.

    A stand-in for a :mod:`logging` logger (same ``%``-style calls) that costs
    nothing to import.  :func:`run_worker` sets the level and the prefix.
    """

    def __init__(self) -> None:
        self.level = _LEVELS["INFO"]
        self.prefix = "clm-worker"
        self._lock = threading.Lock()

    def _log(self, level: str, msg: str, args: tuple[object, ...]) -> None:
        if _LEVELS[level] < self.level:
            return
        line = f"{self.prefix} {level} {msg % args if args else msg}\n"
        with self._lock:
            try:
                sys.stderr.write(line)
                sys.stderr.flush()  # before a possible os._exit
            except (OSError, ValueError, AttributeError):  # no usable stderr: drop the line
                pass

    def debug(self, msg: str, *args: object) -> None:
        self._log("DEBUG", msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._log("INFO", msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._log("WARNING", msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._log("ERROR", msg, args)


log = _Log()


# --------------------------------------------------------------------------- config


class _ConfigError(Exception):
    pass


class _Config:
    """The worker's environment, parsed and checked once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.worker_type = _required(env, "WORKER_TYPE", "the worker type, e.g. notebook")
        db_path = env.get("CLM_JOBS_DB_PATH") or env.get("DB_PATH")
        if not db_path:
            raise _ConfigError(
                "CLM_JOBS_DB_PATH (or DB_PATH) is not set; expected the path of the jobs database"
            )
        self.db_path = db_path
        #: A string: ``pathlib`` is imported only when a job needs the ``Path``.
        self.workspace = env.get("WORKSPACE_PATH") or "."
        worker_id = env.get("CLM_WORKER_ID") or None
        self.db_worker_id = None if worker_id is None else _positive_int("CLM_WORKER_ID", worker_id)
        # CLM_REGISTER_AS=hostname: register as a CLM 0.3 container does, by
        # HOSTNAME (its 12-character id), whatever WORKER_ID says.
        by_hostname = env.get("CLM_REGISTER_AS") == "hostname"
        self.container_id = (None if by_hostname else env.get("WORKER_ID")) or env.get("HOSTNAME") or ""
        if self.db_worker_id is None and not self.container_id:
            raise _ConfigError(
                "WORKER_ID (or HOSTNAME) is not set; a self-registering worker needs it as "
                "its container_id (or set CLM_WORKER_ID to activate a pre-registered row)"
            )
        self.session_id = env.get("CLM_SESSION_ID") or None
        self.execution_mode = env.get("CLM_EXECUTION_MODE") or _execution_mode(env)
        level = (env.get("LOG_LEVEL") or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"):
            raise _ConfigError(
                f"LOG_LEVEL: {env['LOG_LEVEL']!r} is not allowed; "
                "expected DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        self.log_level = "WARNING" if level == "WARN" else level
        fd = env.get("CLM_LIFELINE_FD") or None
        self.lifeline_fd = None if fd is None else _lifeline_fd(fd)
        self.heartbeat_interval = _seconds(env, "CLM_HEARTBEAT_INTERVAL", 2.0, positive=True)
        self.poll_interval = _seconds(env, "CLM_POLL_INTERVAL", 0.1, positive=True)
        self.stop_job_grace = _seconds(env, "CLM_STOP_JOB_GRACE", 10.0, positive=False)


def _execution_mode(env: Mapping[str, str]) -> str:
    """``direct``/``docker`` for a self-registered row, from the id the worker was given.

    Executor ids start with the mode (``direct-<type>-<index>-<hex>``); a worker
    with only ``HOSTNAME`` is a CLM 0.3 Docker worker.
    """
    worker_id = env.get("WORKER_ID") or ""
    if not worker_id or env.get("CLM_REGISTER_AS") == "hostname":
        return "docker"
    return "docker" if worker_id.startswith("docker") else "direct"


def _required(env: Mapping[str, str], name: str, meaning: str) -> str:
    value = env.get(name)
    if not value:
        raise _ConfigError(f"{name} is not set; expected {meaning}")
    return value


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise _ConfigError(f"{name}: {text!r} is not allowed; expected a positive whole number")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float, *, positive: bool) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        bound = "a number of seconds > 0" if positive else "a number of seconds >= 0"
        raise _ConfigError(f"{name}: {text!r} is not allowed; expected {bound}")
    return value


def _lifeline_fd(text: str) -> int:
    try:
        fd = int(text)
        os.fstat(fd)
    except (ValueError, OSError):
        raise _ConfigError(
            f"CLM_LIFELINE_FD: {text!r} is not allowed; expected an open file descriptor "
            "(the read end of the manager's lifeline pipe)"
        ) from None
    return fd


# --------------------------------------------------------------------------- SQL

_ACTIVATE = (
    "UPDATE workers SET status = 'idle', last_heartbeat = CURRENT_TIMESTAMP "
    "WHERE id = ? AND status = 'created'"
)
_SELF_REGISTER = (
    "INSERT INTO workers (worker_type, container_id, status, session_id, execution_mode) "
    "VALUES (?, ?, 'idle', ?, ?)"
)
_REGISTERED_EVENT = (
    "INSERT INTO worker_events (event_type, worker_id, worker_type, execution_mode, "
    "message, metadata, session_id) VALUES ('worker_registered', ?, ?, "
    "(SELECT execution_mode FROM workers WHERE id = ?), ?, ?, ?)"
)
_HEARTBEAT = "UPDATE workers SET last_heartbeat = CURRENT_TIMESTAMP WHERE id = ?"
_LEASE_EXPIRED = (
    "SELECT lease_expires_at < julianday('now') FROM clm_worker_sessions WHERE session_id = ?"
)
_SET_STATUS = "UPDATE workers SET status = ? WHERE id = ?"
# Only an idle row takes a job: a ``hung`` worker (the monitor is retiring it) does not.
_CLAIM_SELF = "UPDATE workers SET status = 'busy' WHERE id = ? AND status = 'idle'"
_STATUS = "SELECT status FROM workers WHERE id = ?"


def claim_next(
    conn: sqlite3.Connection, worker_id: int, worker_type: str, session_id: str | None
) -> tuple[tuple[Any, ...] | None, str | None]:
    """Take the next pending job of ``worker_type`` for row ``worker_id``, in one transaction.

    ``session_id``: only jobs of that session (or of none); ``None``: any.
    Returns ``(job row, None)``, or ``(None, why)``: ``None`` when there is no
    job or the row is ``hung`` (the monitor is about to retire this worker,
    or it recovers and the monitor says so: a job taken now would only be
    lost again), ``"row_gone"`` or ``"row_dead"`` when the worker must stop.
    """
    query = _CANDIDATE.format(session=" AND (session_id IS NULL OR session_id = ?)" if session_id else "")
    params: tuple[object, ...] = (worker_type,) if session_id is None else (worker_type, session_id)
    # Look before taking the write lock: idle workers poll often.
    if not conn.execute(query, params).fetchall():
        return None, None
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(query, params).fetchall()
        if not rows:
            conn.execute("ROLLBACK")
            return None, None
        if conn.execute(_CLAIM_SELF, (worker_id,)).rowcount == 0:
            status = conn.execute(_STATUS, (worker_id,)).fetchone()
            conn.execute("ROLLBACK")
            if status is None:
                return None, "row_gone"
            return None, "row_dead" if status[0] == "dead" else None
        conn.execute(_START_JOB, (worker_id, rows[0][0]))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return tuple(rows[0]), None


class LeaseWatch:
    """When a container takes its manager for dead, from its checks of the session's lease.

    Each check reports whether the lease looked expired with the write lock
    in hand, and how long taking that lock took.  The manager is gone only
    once the lease has looked so for :data:`LEASE_CONFIRM_SECONDS`, each
    check getting the lock at once (within :data:`LEASE_LOCK_TOLERANCE`): a
    lock someone held, or a renewal that may be waiting right behind us, is
    no expiry.  Pure (no clock of its own) so that it can be checked against
    any timeline.
    """

    __slots__ = ("expired_since",)

    def __init__(self) -> None:
        self.expired_since: float | None = None

    def interval(self, heartbeat_interval: float) -> float:
        """How long until the next check: sooner while an expiry waits for confirmation."""
        if self.expired_since is None:
            return heartbeat_interval
        return min(heartbeat_interval, LEASE_CONFIRM_SECONDS / 2)

    def observe(self, expired: bool, waited: float, now: float) -> bool:
        """One check's result at ``now`` (monotonic seconds); whether the manager is gone."""
        if not expired or waited > LEASE_LOCK_TOLERANCE:
            self.expired_since = None
            return False
        if self.expired_since is None:
            self.expired_since = now
        return now - self.expired_since >= LEASE_CONFIRM_SECONDS

    def unknown(self) -> None:
        """A check that could not be made (the database failed or stayed locked): no evidence."""
        self.expired_since = None


def _lease_expired(conn: sqlite3.Connection, session_id: str | None) -> tuple[bool | None, float]:
    """Whether the session's lease has expired (``None``: no such session), and how long the
    write lock took to get (0 when the lease is alive for a plain reader)."""
    row = conn.execute(_LEASE_EXPIRED, (session_id,)).fetchone()
    if row is None or not row[0]:
        return (None if row is None else False), 0.0
    began = time.monotonic()
    conn.execute("BEGIN IMMEDIATE")  # waits (busy timeout) while someone holds the lock
    try:
        waited = time.monotonic() - began
        row = conn.execute(_LEASE_EXPIRED, (session_id,)).fetchone()
    finally:
        _rollback(conn)
    return (None if row is None else bool(row[0])), waited


def _rollback(conn: sqlite3.Connection) -> None:
    """End an open transaction without letting a failed ROLLBACK hide the error being handled.

    SQLite rolls back by itself on some errors (a full disk); a ROLLBACK then
    has nothing to do.
    """
    if conn.in_transaction:
        try:  # noqa: SIM105 - contextlib would cost every worker its import
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
_CANDIDATE = (
    "SELECT id, job_type, input_file, output_file, payload, attempts FROM jobs "
    "WHERE status = 'pending' AND job_type = ? AND attempts < max_attempts{session} "
    "ORDER BY priority DESC, created_at, id LIMIT 1"
)
_START_JOB = (
    "UPDATE jobs SET status = 'processing', worker_id = ?, started_at = CURRENT_TIMESTAMP, "
    "attempts = attempts + 1 WHERE id = ? AND status = 'pending'"
)
# Guarded by status/worker_id: a job cancelled or requeued meanwhile is not overwritten.
_COMPLETE_JOB = (
    "UPDATE jobs SET status = 'completed', completed_at = CURRENT_TIMESTAMP, result = ? "
    "WHERE id = ? AND status = 'processing' AND worker_id = ?"
)
_FAIL_JOB = (
    "UPDATE jobs SET status = 'failed', completed_at = CURRENT_TIMESTAMP, error = ?, "
    "traceback = ? WHERE id = ? AND status = 'processing' AND worker_id = ?"
)
# SQLite evaluates every right-hand side with the row's old values.
_COUNT_SUCCESS = (
    "UPDATE workers SET status = 'idle', jobs_processed = COALESCE(jobs_processed, 0) + 1, "
    "avg_processing_time = (COALESCE(avg_processing_time, 0) * COALESCE(jobs_processed, 0) + ?)"
    " / (COALESCE(jobs_processed, 0) + 1) WHERE id = ?"
)
_COUNT_FAILURE = (
    "UPDATE workers SET status = 'idle', jobs_failed = COALESCE(jobs_failed, 0) + 1 WHERE id = ?"
)
# A job given up at shutdown: back to the queue while it has attempts left.
_RELEASE_JOB = (
    "UPDATE jobs SET "
    "status = CASE WHEN attempts < max_attempts THEN 'pending' ELSE 'failed' END, "
    "worker_id = CASE WHEN attempts < max_attempts THEN NULL ELSE worker_id END, "
    "started_at = CASE WHEN attempts < max_attempts THEN NULL ELSE started_at END, "
    "completed_at = CASE WHEN attempts < max_attempts THEN NULL ELSE CURRENT_TIMESTAMP END, "
    "error = CASE WHEN attempts < max_attempts THEN error ELSE 'worker stopped' END "
    "WHERE id = ? AND status = 'processing' AND worker_id = ?"
)


# --------------------------------------------------------------------------- runtime

_BOOT, _REGISTERING, _RUNNING = "boot", "registering", "running"


class _Runtime:
    """One worker process's state; the main thread drives it (see :func:`run_worker`).

    Threads: the main thread (boot, registration, job loop, handler); a
    heartbeat thread with its own connection; a stop controller that turns
    stop requests into ``stopping`` and enforces the grace period; and, with a
    lifeline, a thread blocked reading it.  The signal handler only writes to
    a pipe (or raises before registration): ``Event.set`` takes a lock the
    interrupted main thread may hold.
    """

    def __init__(self, config: _Config, handler: Handler, *, heartbeat_while_busy: bool = True) -> None:
        self.cfg = config
        self.handler = handler
        self.heartbeat_while_busy = heartbeat_while_busy
        self.stopping = threading.Event()
        #: Set when the main thread has finished its cleanup.
        self.done = threading.Event()
        self.phase = _BOOT
        self.db_worker_id: int | None = None
        self.stop_reason: str | None = None
        self.stop_requested_at = 0.0
        self.parent_died_at: float | None = None
        self.row_gone = False
        self.signal_received = 0
        self._job_sessions: bool | None = None
        self._stop_lock = threading.Lock()
        #: Held by the main thread around every job-state transaction, and for
        #: good by the stop controller once it gives up on the main thread.
        self.job_lock = threading.Lock()
        #: (job id) of the job claimed by this worker and not yet finished.
        self.current_job: int | None = None
        self.conn: sqlite3.Connection | None = None
        self._logging_configured = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        #: The manager (or, for a forked worker, its template): a new parent means it died.
        self._parent = os.getppid()

    # ---------------------------------------------------------------- stopping

    def request_stop(self, reason: str) -> None:
        """Ask the main loop to stop (any thread but the signal handler's)."""
        with self._stop_lock:
            now = time.monotonic()
            if reason in _MANAGER_GONE and self.parent_died_at is None:
                self.parent_died_at = now
            if self.stop_reason is None:
                self.stop_reason = reason
                self.stop_requested_at = now
                log.info("stopping (%s)", _REASONS.get(reason, reason))
        self.stopping.set()
        self._wake()

    def _wake(self) -> None:
        fd = self._wake_w
        if fd < 0:  # the main thread has finished and closed it
            return
        try:
            os.write(fd, b"!")
        except OSError:  # full: already woken
            return

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.phase == _BOOT:
            # Nothing to clean up yet: end even a boot sleeping in C at once.
            raise SystemExit(128 + signum)
        self.signal_received = signum
        self._wake()

    def _stop_controller(self) -> None:
        """Turn wake-ups into stop requests; end the process if the main loop overstays."""
        try:
            while not self.stopping.is_set():
                if not os.read(self._wake_r, 64):  # write end closed: main thread done
                    return
                if self.signal_received:
                    self.request_stop(f"signal {self.signal_received}")
            while not self.done.wait(0.05):
                deadline = self.stop_requested_at + self.cfg.stop_job_grace
                if self.parent_died_at is not None:
                    deadline = min(deadline, self.parent_died_at + PARENT_DEATH_GRACE)
                if time.monotonic() >= deadline:
                    self._give_up()
        except OSError:
            pass
        finally:
            os.close(self._wake_r)

    def _give_up(self) -> None:
        """The main thread did not stop in time: release our job, mark us dead, exit now.

        The release may wait for the database (every worker of a dead manager
        gives up at once, each with a write), up to :data:`GIVE_UP_SECONDS`.
        """
        code = self.exit_code()
        deadline = time.monotonic() + GIVE_UP_SECONDS
        # Never released: the main thread must not record the job after this.
        if self.job_lock.acquire(timeout=GIVE_UP_SECONDS / 2) and self.db_worker_id is not None:
            if self.current_job is not None:
                log.warning("job %d did not finish in time; giving it up", self.current_job)
            conn: sqlite3.Connection | None = None
            while True:
                try:
                    conn = conn or sqlite3.connect(self.cfg.db_path, isolation_level=None,
                                                   timeout=max(0.1, deadline - time.monotonic()))
                    conn.execute("BEGIN IMMEDIATE")
                    if self.current_job is not None:
                        conn.execute(_RELEASE_JOB, (self.current_job, self.db_worker_id))
                    if not self.row_gone:
                        conn.execute(_SET_STATUS, ("dead", self.db_worker_id))
                    conn.execute("COMMIT")
                    break
                except sqlite3.Error as exc:
                    if conn is not None:
                        _rollback(conn)
                    if time.monotonic() >= deadline:
                        log.warning("could not record the stop in the database: %s", exc)
                        break
        if self.parent_died_at is not None:
            _kill_own_tree()
        log.info("exiting without waiting for the main loop (code %d)", code)
        os._exit(code)  # log records are flushed as they are written

    def _manager_gone(self) -> bool:
        """Whether the manager is gone, looking for ourselves (the lifeline's thread may not have yet).

        A launcher kills the job's processes, then closes the lifeline; the
        handler may fail of the first before the second.  But by then the
        manager, this process's parent, has died: the process has a new parent,
        or is about to (the kernel closes a dying process's files, the lifeline
        among them, before it gives its children a new parent: in between the
        parent is still ours, exiting).
        """
        fd = self.cfg.lifeline_fd
        if self.parent_died_at is None and fd is not None and (
                os.getppid() != self._parent or _exiting(self._parent)):
            self.request_stop("parent_died")
        if self.parent_died_at is None and fd is not None:
            import select  # deferred: only a failed job asks

            try:
                # Nobody ever writes to a lifeline: readable means it reached EOF.
                ended = bool(select.select([fd], [], [], 0)[0])
            except (OSError, ValueError):
                ended = False
            if ended:
                self.request_stop("parent_died")
        return self.parent_died_at is not None

    def _lifeline(self, fd: int) -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        self.request_stop("parent_died")

    def _watch_lease(self) -> None:
        """Stop like an orphan once the manager's session lease has expired.

        Containers cannot inherit the lifeline pipe; the lease (a row the
        manager keeps renewing, see ``clm_workers.lease``) is their lifeline.
        Checked from boot on, so a worker that never registers stops too.  A
        database without the lease table, or without this session's row, has
        no lease to watch (a CLM-started worker, or a test).

        A lease that looks expired may only mean that nobody could write: a
        process that holds the database's write lock for longer than the
        lease blocks the manager's renewal as well.  So an expiry counts only
        when this worker takes the write lock itself (at once, not after
        waiting for someone's lock) and still finds the lease expired, again
        and again for :data:`LEASE_CONFIRM_SECONDS`: the manager had the lock
        free all that time and did not renew.
        """
        conn: sqlite3.Connection | None = None
        watch = LeaseWatch()
        try:
            while not self.done.wait(watch.interval(self.cfg.heartbeat_interval)):
                try:
                    conn = conn or schema.connect(self.cfg.db_path)
                    expired, waited = _lease_expired(conn, self.cfg.session_id)
                except sqlite3.OperationalError as exc:
                    if "no such table" in str(exc):
                        return
                    # Locked beyond the busy timeout, or a passing fault: the database, not the manager.
                    watch.unknown()
                    log.warning("cannot check the session lease: %s", exc)
                    continue
                if expired is None:
                    return
                if watch.observe(expired, waited, time.monotonic()):
                    self.request_stop("lease_expired")
                    return
        finally:
            if conn is not None:
                conn.close()

    def exit_code(self) -> int:
        """70 once the manager is gone, else the first stop reason's code (0 if asked)."""
        if self.parent_died_at is not None:
            return EXIT_PARENT_DIED
        return _EXIT_CODES.get(self.stop_reason or "", EXIT_OK)

    # ---------------------------------------------------------------- main thread

    def run(self, boot: Callable[[threading.Event], None] | None) -> int:
        previous: dict[int, Any] = {}
        try:
            previous = _install_signal_handlers(self._on_signal)
            threading.Thread(target=self._stop_controller, name="clm-stop", daemon=True).start()
            if self.cfg.lifeline_fd is not None:
                fd = self.cfg.lifeline_fd
                os.set_inheritable(fd, False)  # the handler's own subprocesses need not hold it
                threading.Thread(
                    target=self._lifeline, args=(fd,), name="clm-lifeline", daemon=True
                ).start()
            if self.cfg.session_id is not None and self.cfg.lifeline_fd is None:
                # Only without a lifeline (a container): the lifeline tells a direct
                # worker of its manager's death at once, and a busy database cannot fake it.
                threading.Thread(target=self._watch_lease, name="clm-lease", daemon=True).start()
            log.info(
                "worker starting: type=%s pid=%d db=%s",
                self.cfg.worker_type,
                os.getpid(),
                self.cfg.db_path,
            )
            self._configure_logging_if_imported()
            try:
                if boot is not None:
                    boot(self.stopping)
                if self.stopping.is_set():
                    log.info("stopped before registering")
                    return self.exit_code()
                self.conn = self._open_database()
            except SystemExit as exc:
                if self.phase != _BOOT:
                    raise
                return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
            except sqlite3.Error as exc:
                log.error("cannot open the jobs database %s: %s", self.cfg.db_path, exc)
                return EXIT_DB_ERROR
            self.phase = _REGISTERING  # from here a signal only requests a stop
            code = self._register(self.conn)
            if code is not None:
                return code
            self.phase = _RUNNING
            threading.Thread(target=self._heartbeat, name="clm-heartbeat", daemon=True).start()
            self._job_loop(self.conn)
            return self.exit_code()
        finally:
            try:
                self._clean_up()
                if self.parent_died_at is not None:
                    _kill_own_tree()  # the manager is gone: nobody else stops our children
            finally:
                self.done.set()
                _restore_signal_handlers(previous)
                fd, self._wake_w = self._wake_w, -1
                os.close(fd)  # ends the stop controller if it still waits

    def _configure_logging_if_imported(self) -> None:
        """Set up the root logger for a boot or handler that uses :mod:`logging`.

        What ``logging.basicConfig`` always did (a no-op if the application
        configured logging itself), but only once something has imported
        ``logging``: a worker that never uses it does not pay for the import.
        Called before the boot and before each job.
        """
        logging = sys.modules.get("logging")
        if logging is None or self._logging_configured:
            return
        self._logging_configured = True
        logging.basicConfig(
            level=self.cfg.log_level,
            format=log.prefix.replace("%", "%%") + " %(levelname)s %(message)s",
            stream=sys.stderr,
        )

    def _open_database(self) -> sqlite3.Connection:
        path = self.cfg.db_path
        try:
            fresh = os.stat(path).st_size == 0
        except FileNotFoundError:
            fresh = True
        for suffix in ("-wal", "-shm"):
            # Mounted into a container one by one, a log that the host has deleted
            # since would be a second, private log: writing to it corrupts the database.
            try:
                deleted = os.stat(path + suffix).st_nlink == 0
            except OSError:
                continue
            if deleted:
                raise sqlite3.OperationalError(f"{path}{suffix} was deleted where the database lives; "
                                               "refusing a stale copy of it")
        conn = schema.connect(path)
        if fresh:  # CLM workers create the schema only in a file that is not there yet
            schema.ensure_schema(conn)
        return conn

    def _register(self, conn: sqlite3.Connection) -> int | None:
        """Activate or insert our row; ``None`` on success, else the exit code."""
        cfg = self.cfg
        # What ``json.dumps`` writes for these two numbers, without importing ``json``.
        metadata = f'{{"registered_at_unix": {time.time()!r}, "pid": {os.getpid()}}}'
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if cfg.db_worker_id is not None:
                    worker_id = cfg.db_worker_id
                    if conn.execute(_ACTIVATE, (worker_id,)).rowcount != 1:
                        conn.execute("ROLLBACK")
                        sys.stderr.write(
                            f"clm_workers.worker: cannot activate worker row {worker_id} "
                            f"(CLM_WORKER_ID): {_row_state(conn, worker_id)}\n"
                        )
                        return EXIT_NOT_ACTIVATED
                    how = "activated pre-registered row"
                else:
                    cursor = conn.execute(
                        _SELF_REGISTER,
                        (cfg.worker_type, cfg.container_id, cfg.session_id, cfg.execution_mode),
                    )
                    assert cursor.lastrowid is not None
                    worker_id = cursor.lastrowid
                    how = "registered new row"
                conn.execute(
                    _REGISTERED_EVENT,
                    (
                        worker_id,
                        cfg.worker_type,
                        worker_id,
                        f"{how} {worker_id}",
                        metadata,
                        cfg.session_id,
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            log.error("registration failed: %s", exc)
            return EXIT_DB_ERROR
        self.db_worker_id = worker_id
        log.info(
            "%s %d: type=%s container_id=%s pid=%d",
            how,
            worker_id,
            cfg.worker_type,
            cfg.container_id or "-",
            os.getpid(),
        )
        return None

    def _heartbeat(self) -> None:
        assert self.db_worker_id is not None
        try:
            conn = schema.connect(self.cfg.db_path)
        except sqlite3.Error as exc:
            log.error("heartbeat cannot open the database: %s", exc)
            return
        try:
            while not self.done.wait(self.cfg.heartbeat_interval):
                if not self.heartbeat_while_busy and self.current_job is not None:
                    continue
                try:
                    changed = conn.execute(_HEARTBEAT, (self.db_worker_id,)).rowcount
                except sqlite3.Error as exc:
                    log.warning("heartbeat failed: %s", exc)
                    continue
                if changed == 0:
                    self.row_gone = True
                    self.request_stop("row_deleted")
                    return
        finally:
            conn.close()

    def _job_loop(self, conn: sqlite3.Connection) -> None:
        errors = 0
        while not self.stopping.is_set():
            try:
                job = self._claim(conn)
                errors = 0
            except sqlite3.Error as exc:
                errors += 1
                log.warning("cannot poll for jobs (%d in a row): %s", errors, exc)
                if errors >= MAX_CONSECUTIVE_DB_ERRORS:
                    self.request_stop("database errors")
                    break
                job = None
            if job is None:
                self.stopping.wait(self.cfg.poll_interval)
            else:
                self._run(conn, job)

    def _jobs_have_sessions(self, conn: sqlite3.Connection) -> bool:
        if self._job_sessions is None:
            self._job_sessions = any(r[1] == "session_id" for r in conn.execute("PRAGMA table_info(jobs)"))
        return self._job_sessions

    def _claim(self, conn: sqlite3.Connection) -> tuple[Any, ...] | None:
        """Claim the next job in one ``BEGIN IMMEDIATE`` transaction, or ``None``."""
        assert self.db_worker_id is not None
        # Jobs have a session only from CLM's schema 11 on (1.9.2's have none).
        by_session = bool(self.cfg.session_id) and self._jobs_have_sessions(conn)
        with self.job_lock:
            row, refusal = claim_next(conn, self.db_worker_id, self.cfg.worker_type,
                                      self.cfg.session_id if by_session else None)
            if row is not None:
                self.current_job = row[0]
        if refusal == "row_gone":
            # Our row is gone: a worker without a row must not take jobs.
            self.row_gone = True
            self.request_stop("row_deleted")
        elif refusal == "row_dead":
            # Retired (its manager took it for dead): it must not take jobs either.
            self.request_stop("row_dead")
        return row

    def _run(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
        import json  # deferred to the first job, see the imports
        from pathlib import Path

        assert self.db_worker_id is not None
        self._configure_logging_if_imported()
        job_id, job_type, input_file, output_file, payload_text, attempts = row
        context = WorkerContext(
            self.cfg.worker_type, self.db_worker_id, Path(self.cfg.workspace), self.stopping
        )
        started = time.monotonic()
        try:
            payload = json.loads(payload_text) if payload_text else {}
            if not isinstance(payload, dict):
                raise TypeError(f"payload is a JSON {type(payload).__name__}, not an object")
            job = Job(job_id, job_type, input_file, output_file, payload, attempts + 1)
            result = self.handler(job, context)
            result_text = None if result is None else json.dumps(result)
        except Exception as exc:
            import traceback

            seconds = time.monotonic() - started
            error = f"{type(exc).__name__}: {exc}"
            if self._manager_gone():
                # The manager died meanwhile, and its launcher killed the job's
                # processes (a kernel): not the job's failure.  It goes back.
                self._finish(conn, job_id, [(_RELEASE_JOB, (job_id, self.db_worker_id)),
                                            (_SET_STATUS, ("idle", self.db_worker_id))])
                log.warning("job %d interrupted by the manager's death after %.3f s (%s); given back",
                            job_id, seconds, error)
                return
            self._finish(
                conn,
                job_id,
                [
                    (_FAIL_JOB, (error, traceback.format_exc(), job_id, self.db_worker_id)),
                    (_COUNT_FAILURE, (self.db_worker_id,)),
                ],
            )
            log.warning("job %d failed after %.3f s: %s", job_id, seconds, error)
        else:
            seconds = time.monotonic() - started
            self._finish(
                conn,
                job_id,
                [
                    (_COMPLETE_JOB, (result_text, job_id, self.db_worker_id)),
                    (_COUNT_SUCCESS, (seconds, self.db_worker_id)),
                ],
            )
            log.info("job %d done in %.3f s", job_id, seconds)

    def _finish(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        statements: list[tuple[str, tuple[object, ...]]],
    ) -> None:
        """Record a job's outcome and our return to ``idle`` in one transaction."""
        for attempt in range(3):
            with self.job_lock:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    for sql, params in statements:
                        conn.execute(sql, params)
                    conn.execute("COMMIT")
                    self.current_job = None
                    return
                except sqlite3.Error as exc:
                    _rollback(conn)
                    log.warning("cannot record job %d (try %d): %s", job_id, attempt + 1, exc)
        # A worker that cannot record results must not take more jobs; the
        # unrecorded job stays ``current_job`` and is released at exit.
        self.request_stop("database errors")

    def _clean_up(self) -> None:
        """Release an unfinished job and mark our row dead (best effort)."""
        conn, worker_id = self.conn, self.db_worker_id
        if conn is None:
            return
        try:
            if worker_id is not None and self.job_lock.acquire(timeout=5.0):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    if self.current_job is not None:
                        log.warning("releasing unfinished job %d", self.current_job)
                        conn.execute(_RELEASE_JOB, (self.current_job, worker_id))
                        self.current_job = None
                    if not self.row_gone:
                        conn.execute(_SET_STATUS, ("dead", worker_id))
                    conn.execute("COMMIT")
                    log.info("worker %d stopped", worker_id)
                except sqlite3.Error as exc:
                    log.warning("cannot mark worker %d dead: %s", worker_id, exc)
                finally:
                    self.job_lock.release()
        finally:
            conn.close()


_EXIT_CODES = {"database errors": EXIT_DB_ERROR}
#: Stop reasons that mean the manager is dead: short grace, exit code 70.
_MANAGER_GONE = ("parent_died", "lease_expired")
_REASONS = {
    "row_dead": "the worker's row was marked dead",
    "parent_died": "the manager is gone: lifeline closed",
    "lease_expired": "the manager is gone: its session lease expired",
    "row_deleted": "the worker's row was deleted",
}


#: ``PF_EXITING`` in the flags of /proc/PID/stat: the kernel has begun to end the process.
_PF_EXITING = 0x4


def _exiting(pid: int) -> bool:
    """Whether ``pid`` is gone, a zombie, or has begun to exit."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)


def _kill_own_tree() -> None:
    """SIGKILL what this worker started (its descendants, and its process group if it leads one).

    For a worker whose manager is gone: nothing else would stop the children
    (a direct worker's launcher does the same; a container's init does not
    outlive the worker).  This process itself is spared, so its exit code
    tells why it ended.
    """
    from .orphans import kill_tree  # deferred: only an orphan needs it

    kill_tree(os.getpid())


def _row_state(conn: sqlite3.Connection, worker_id: int) -> str:
    try:
        rows = conn.execute("SELECT status FROM workers WHERE id = ?", (worker_id,)).fetchall()
    except sqlite3.Error as exc:
        return f"cannot read it: {exc}"
    if not rows:
        return "no such row"
    return f"its status is {rows[0][0]!r}, not 'created'"


_SIGNALS = (_signal.SIGTERM, _signal.SIGINT)


def _install_signal_handlers(
    handler: Callable[[int, FrameType | None], None],
) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        log.warning("not on the main thread: SIGTERM/SIGINT are not handled")
        return previous
    for signum in _SIGNALS:
        previous[signum] = _signal.signal(signum, handler)
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, old in previous.items():
        _signal.signal(signum, old if old is not None else _signal.SIG_DFL)


def run_worker(
    handler: Handler,
    *,
    boot: Callable[[threading.Event], None] | None = None,
    env: Mapping[str, str] | None = None,
    heartbeat_while_busy: bool = True,
) -> int:
    """Run a worker process until it is stopped; returns the process exit code.

    Reads its configuration from ``env`` (default ``os.environ``), calls
    ``boot(stopping)`` before registering, then runs ``handler`` for each
    claimed job on the calling thread, which must be the main thread for
    SIGTERM/SIGINT to be handled.  See the module docstring for the exit codes.
    ``heartbeat_while_busy=False`` leaves ``last_heartbeat`` alone while a job
    runs, as CLM's own workers do.

    Cancellation: before registration SIGTERM ends the process at once
    (``SystemExit`` out of ``boot``, returned as 143); afterwards the current
    job gets ``CLM_STOP_JOB_GRACE`` seconds (1 s if the manager is gone)
    before the process ends with ``os._exit``.
    """
    try:
        config = _Config(os.environ if env is None else env)
    except _ConfigError as exc:
        sys.stderr.write(f"clm_workers.worker: {exc}\n")
        return EXIT_CONFIG
    log.level = _LEVELS[config.log_level]
    log.prefix = f"clm-worker[{config.worker_type}#{os.getpid()}]"
    return _Runtime(config, handler, heartbeat_while_busy=heartbeat_while_busy).run(boot)
