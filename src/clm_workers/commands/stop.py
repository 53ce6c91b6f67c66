"""``clm-workers stop --db PATH``: stop pools that other processes started.

A pool belongs to the manager process that started it: only that process
holds its workers' handles and lifelines.  So ``stop`` asks the manager to
stop (its pid and host are in ``clm_worker_sessions``) and waits, bounded;
and only when the manager is gone, or does not stop in time, does it clean up
after it, using what the database and the engine know:

1. **Signal the manager**, but only a process proven to be it
   (:mod:`clm_workers.ownership`: same host and pid namespace, the start
   tick the manager recorded for itself, and the manager token it holds
   open).  A pid that started at another moment is another process: the
   manager is gone.  A pid that cannot be proven either way is never
   signalled; ``stop`` says so and how to stop it by hand.
   ``clm-workers start`` gets SIGTERM (its clean stop: every worker
   SIGTERMed, ``stop.grace``, SIGKILL, rows ``dead``).  Any other manager
   (CLM itself) gets SIGINT first, which Python turns into
   ``KeyboardInterrupt`` and ``start_pools``/``stop_pools`` clean up on;
   SIGTERM at half the timeout.
2. **Wait** until the manager has exited, at most ``--timeout`` seconds;
   then SIGKILL it.
3. **Clean up what it left**, if anything:
   - direct workers exit by themselves within about a second of their
     manager's death (their lifeline pipe ends); any process of the session
     still there after that (found by ``CLM_SESSION_ID`` in its environment,
     this host only) is killed with its process group;
   - containers are removed by their labels (``clm.session``, ``clm.db``),
     also those of a session that ended long ago and left only exited ones;
   - the session's rows that still claim a worker become ``dead`` (in-flight
     jobs requeued, as the manager would have done), a ``pool_stopped`` event
     records who stopped it, and the lease is expired.

Rows without a session (workers CLM started itself) are never touched.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import inventory
from ..errors import ConfigError
from ..ownership import Verdict, prove_manager, start_stamp
from ..processes import (
    alive,
    command_line,
    kill_group,
    session_processes,
    signal_quietly,
    wait_gone,
)
from ..registry import Event, Registry

log = logging.getLogger(__name__)

EXIT_STOPPED = 0
EXIT_NOT_ALL_STOPPED = 1

#: How long direct workers get to exit through their lifeline once their manager is gone.
LIFELINE_WAIT_SECONDS = 3.0
#: How long a SIGKILLed process gets to disappear.
KILL_WAIT_SECONDS = 3.0
_POLL_SECONDS = 0.05


@dataclass
class SessionStop:
    """What ``stop`` did to one session."""

    session_id: str
    manager_pid: int | None
    host: str | None
    #: ``stopped``: its manager stopped it.  ``cleaned``: the manager was gone
    #: (or killed) and ``stop`` cleaned up.  ``not_stopped``: see ``detail``.
    outcome: str = "not_stopped"
    ok: bool = False
    detail: str = ""
    signals: list[str] = field(default_factory=list)
    manager_killed: bool = False
    seconds: float = 0.0
    rows_marked_dead: int = 0
    processes_killed: int = 0
    containers_removed: list[str] = field(default_factory=list)


Report = Callable[[str], None]


def stop_database(
    db_path: Path,
    *,
    session_prefix: str | None = None,
    timeout: float = 30.0,
    report: Report = lambda line: None,
    setting: str = "--db",
) -> list[SessionStop]:
    """Stop every pool (session) of the database that still runs or claims workers.

    Raises :class:`ConfigError` for a database that is not there or not CLM's
    (``setting`` names where its path came from), or a ``session_prefix``
    that names no session.  Blocking.
    """
    if session_prefix is not None and not session_prefix.strip():
        raise ConfigError("--session", session_prefix, "a session id or its first characters (not empty)")
    conn = inventory.open_database(db_path, setting)
    try:
        sessions = inventory.read_sessions(conn)
        if session_prefix:
            matching = [s for s in sessions if s.session_id.startswith(session_prefix)]
            if not matching:
                known = ", ".join(s.session_id[:8] for s in sessions) or "none"
                raise ConfigError("--session", session_prefix,
                                  f"a session id (or its start) of this database; it has: {known}")
            sessions = matching
        targets = [(s, inventory.active_rows(conn, s.session_id)) for s in sessions]
        ended = {s.session_id for s, rows in targets if not (s.alive or rows)}
        with_containers = _sessions_with_containers(db_path, ended & inventory.docker_sessions(conn))
    finally:
        conn.close()
    targets = [(s, rows) for s, rows in targets if s.alive or rows or s.session_id in with_containers]
    if not targets:
        return []

    t0 = time.monotonic()
    this_host = socket.gethostname()
    results: dict[str, SessionStop] = {}
    waiting: dict[str, tuple[int, str]] = {}  # session -> (manager pid, its start stamp) we signalled
    for session, rows in targets:
        result = results[session.session_id] = SessionStop(session.session_id, session.pid, session.host)
        short = session.session_id[:8]
        live = f"{len(rows)} worker{'s' if len(rows) != 1 else ''}"
        if session.alive and session.host not in (None, this_host):
            result.detail = (f"its manager (pid {session.pid}) runs on host {session.host}; "
                             "run `clm-workers stop` there")
            report(f"clm-workers: session {short}: {result.detail}")
            continue
        gone = "its manager is gone"
        if session.alive and session.pid is not None:
            proof = prove_manager(session.pid, session.session_id, session.proc_start)
            if proof.verdict is Verdict.UNKNOWN:
                pid = session.pid
                result.detail = (
                    f"cannot prove that pid {pid} is its manager ({proof.why}), so nothing was signalled; "
                    f"if it is, stop it yourself (`kill -INT {pid}` for CLM, `kill -TERM {pid}` for "
                    "clm-workers start) and run `clm-workers stop` again to clean up after it")
                report(f"clm-workers: session {short}: {result.detail}")
                continue
            if proof.verdict is Verdict.MANAGER:
                assert session.proc_start is not None
                first = signal.SIGTERM if _is_clm_workers_cli(session.pid) else signal.SIGINT
                try:
                    os.kill(session.pid, first)
                except ProcessLookupError:
                    pass  # it ended just now: clean up below
                except PermissionError:
                    result.detail = (f"not allowed to signal its manager (pid {session.pid}); "
                                     "run stop as its user")
                    report(f"clm-workers: session {short}: {result.detail}")
                    continue
                else:
                    result.signals.append(first.name)
                    waiting[session.session_id] = (session.pid, session.proc_start)
                    report(f"clm-workers: session {short} ({live}): {first.name} to its manager, "
                           f"pid {session.pid}; waiting up to {timeout:g} s for it to stop them")
                    continue
            else:
                gone = f"its manager is gone ({proof.why})"
        what = f"{live}" if rows else "its containers"
        report(f"clm-workers: session {short} ({what}): {gone}; cleaning up what it left")

    _wait_for_managers(waiting, results, t0, timeout, report)

    for session, _ in targets:
        result = results[session.session_id]
        if result.detail:  # elsewhere, or not ours to signal
            continue
        _clean_up(db_path, session, result, report)
        result.seconds = round(time.monotonic() - t0, 3)
    return list(results.values())


def _wait_for_managers(
    waiting: dict[str, tuple[int, str]], results: dict[str, SessionStop], t0: float, timeout: float,
    report: Report,
) -> None:
    """Wait for the signalled managers to exit; SIGTERM at half the timeout, SIGKILL at its end.

    Each later signal goes to the pid only while it is still the very process
    that was proven the manager (its start stamp), never to a pid reused meanwhile.
    """
    deadline = t0 + timeout
    escalate_at = t0 + timeout / 2

    def same(pid: int, stamp: str) -> bool:
        return alive(pid) and start_stamp(pid) == stamp

    while waiting and time.monotonic() < deadline:
        for session_id, (pid, stamp) in list(waiting.items()):
            if not same(pid, stamp):
                del waiting[session_id]
                results[session_id].seconds = round(time.monotonic() - t0, 3)
                continue
            result = results[session_id]
            if time.monotonic() >= escalate_at and "SIGTERM" not in result.signals:
                report(f"clm-workers: session {session_id[:8]}: its manager ignored "
                       f"{result.signals[-1]}; sending SIGTERM")
                signal_quietly(pid, signal.SIGTERM)
                result.signals.append("SIGTERM")
        time.sleep(_POLL_SECONDS)  # polling a foreign process, bounded by the deadline
    for session_id, (pid, stamp) in waiting.items():
        if not same(pid, stamp):
            continue
        report(f"clm-workers: session {session_id[:8]}: its manager (pid {pid}) did not stop "
               f"within {timeout:g} s; killing it")
        signal_quietly(pid, signal.SIGKILL)
        results[session_id].signals.append("SIGKILL")
        results[session_id].manager_killed = True
        wait_gone([pid], KILL_WAIT_SECONDS)


def _clean_up(db_path: Path, session: inventory.SessionRow, result: SessionStop, report: Report) -> None:
    """Stop what the (gone) manager left: processes, containers, rows, lease."""
    sid = session.session_id
    problems: list[str] = []
    conn = inventory.connect_existing(db_path)
    try:
        rows = inventory.read_workers(conn, session=sid)
        if any(r.execution_mode == "docker" for r in rows):
            try:
                result.containers_removed = _remove_containers(db_path, sid)
            except Exception as exc:
                problems.append(f"could not remove its containers: {exc}")
        leftovers = session_processes(sid)
        if leftovers:
            leftovers = wait_gone(leftovers, LIFELINE_WAIT_SECONDS)
        for pid in leftovers:
            kill_group(pid)
        if leftovers:
            still = wait_gone(leftovers, KILL_WAIT_SECONDS)
            result.processes_killed = len(leftovers) - len(still)
            if still:
                problems.append(f"processes {', '.join(map(str, still))} survived SIGKILL")
        active = [r.id for r in rows if r.status in inventory.ACTIVE_STATUSES]
        if active or result.processes_killed or result.containers_removed or result.manager_killed:
            registry = Registry(db_path, session_id=sid)
            registry.open()
            try:
                reason = f"stopped by clm-workers stop (pid {os.getpid()}): its manager was gone"
                registry.mark_dead(active, reason=reason)
                registry.record_events([Event(
                    "pool_stopped", "-", message=f"{reason}; {len(active)} rows marked dead",
                    metadata={"by": "clm-workers stop", "rows": len(active),
                              "processes_killed": result.processes_killed,
                              "containers_removed": len(result.containers_removed),
                              "manager_killed": result.manager_killed},
                )])
            finally:
                registry.close()
            result.rows_marked_dead = len(active)
        inventory.expire_lease(conn, sid)
    finally:
        conn.close()
    result.ok = not problems
    cleaned = bool(result.rows_marked_dead or result.processes_killed or result.containers_removed
                   or result.manager_killed)
    result.outcome = "cleaned" if cleaned or not result.signals else "stopped"
    result.outcome = result.outcome if result.ok else "not_stopped"
    result.detail = "; ".join(problems)
    short = sid[:8]
    if not result.ok:
        report(f"clm-workers: session {short}: {result.detail}")
    elif result.outcome == "stopped":
        report(f"clm-workers: session {short}: stopped by its manager in {result.seconds:.2f} s")
    else:
        parts = [f"{result.rows_marked_dead} rows marked dead"]
        if result.processes_killed:
            parts.append(f"{result.processes_killed} leftover processes killed")
        if result.containers_removed:
            parts.append(f"{len(result.containers_removed)} containers removed")
        report(f"clm-workers: session {short}: cleaned up ({', '.join(parts)}); direct workers "
               "whose manager is gone exit by themselves within about a second (lifeline)")


def _remove_containers(db_path: Path, session_id: str) -> list[str]:
    from ..executors.docker import DockerExecutor  # the docker SDK only when there are containers

    executor = DockerExecutor(db_path=db_path.resolve(), workspace_path=db_path.resolve().parent,
                              pool_size=2)
    try:
        return executor.remove_containers_of({session_id})
    finally:
        executor.close()


def _sessions_with_containers(db_path: Path, sessions: set[str]) -> set[str]:
    """Which of these (ended) sessions still have containers on the engine: one listing for all."""
    if not sessions:
        return set()
    try:
        from ..executors.docker import DockerExecutor

        executor = DockerExecutor(db_path=db_path.resolve(), workspace_path=db_path.resolve().parent,
                                  pool_size=2)
        try:
            return executor.sessions_with_containers() & sessions
        finally:
            executor.close()
    except Exception as exc:  # no engine, no SDK: nothing of theirs can be removed from here anyway
        log.info("cannot look for the containers of ended sessions: %s", exc)
        return set()


def _is_clm_workers_cli(pid: int) -> bool:
    """Whether ``pid`` is ``clm-workers start`` (which stops cleanly on SIGTERM)."""
    args = command_line(pid)
    ours = any(a == b"clm-workers" or a.endswith(b"/clm-workers") or a in (b"clm_workers.cli", b"clm_workers")
               for a in args)
    return ours and b"start" in args
