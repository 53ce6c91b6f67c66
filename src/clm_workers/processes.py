"""Other processes on this host, seen through Linux's ``/proc``: the CLI's view of managers and workers.

``clm-workers status`` asks whether a session's manager still runs (a
SIGKILLed manager leaves a lease that looks alive for up to ``lease_ttl``);
``clm-workers stop`` signals managers and finds the workers they left.  A
pid is only trusted together with a start time: a process that started after
the session (or worker) it is supposed to be is a reused pid, not it.

Blocking and quick (a few small file reads); no database, no signals sent
except by :func:`signal_quietly` and :func:`kill_group`.
"""

from __future__ import annotations

import calendar
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Slack between a process's start time (clock ticks) and a timestamp in the database (seconds).
START_SLACK_SECONDS = 2.0
_POLL_SECONDS = 0.05


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_start(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (``None``: unknown or gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def utc_epoch(timestamp: str | None) -> float | None:
    """SQLite's ``CURRENT_TIMESTAMP`` (UTC ``YYYY-MM-DD HH:MM:SS``) in seconds since the epoch."""
    if not timestamp:
        return None
    try:
        return float(calendar.timegm(time.strptime(timestamp[:19], "%Y-%m-%d %H:%M:%S")))
    except ValueError:
        return None


def runs_since(pid: int | None, started_at: str | None) -> bool:
    """Whether ``pid`` runs and is the process that was there at ``started_at`` (not a reused pid).

    ``started_at`` is a database timestamp (UTC) taken just after the process
    started; when either start time is unknown, a running pid counts.
    """
    if pid is None or not alive(pid):
        return False
    started = process_start(pid)
    since = utc_epoch(started_at)
    if started is None or since is None:
        return True
    return started <= since + START_SLACK_SECONDS


def command_line(pid: int) -> list[bytes]:
    """The process's arguments (empty when it is gone or not ours to read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def session_processes(session_id: str) -> list[int]:
    """Pids of this host's processes (in our pid namespace) that carry ``CLM_SESSION_ID=session_id``."""
    marker = f"CLM_SESSION_ID={session_id}".encode()
    try:
        our_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        our_ns = None
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if our_ns is not None and os.readlink(entry / "ns" / "pid") != our_ns:
                continue  # a container's process: removed with its container
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Wait (bounded) until the processes have exited; those still alive."""
    deadline = time.monotonic() + seconds
    running = [p for p in pids if alive(p)]
    while running and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)  # polling foreign processes, bounded by the deadline
        running = [p for p in running if alive(p)]
    return running


def kill_group(pid: int) -> None:
    """SIGKILL a worker and its children: a direct worker leads its own process group."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return
    except (ProcessLookupError, PermissionError):
        pass
    signal_quietly(pid, signal.SIGKILL)


def signal_quietly(pid: int, signum: signal.Signals) -> None:
    """Send a signal; a process that is gone (or not ours) is only logged."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError) as exc:
        log.debug("cannot send %s to %d: %s", signum.name, pid, exc)
