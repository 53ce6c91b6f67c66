"""Helpers for tests with real processes: find a session's workers, poll with a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import trio

T = TypeVar("T")


#: Whom the data of a test with containers belongs to when the tests run as root:
#: containers run as the data's owner, never as root (a root-owned folder is refused).
DATA_OWNER = (4242, 4242)


def give_to_data_owner(folder: Path) -> Path:
    """Make ``folder`` a user's (not root's), as containers need, when the tests run as root."""
    if os.getuid() == 0:
        os.chown(folder, *DATA_OWNER)
    return folder


@contextlib.contextmanager
def killed_at_exit(process: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """``process``, SIGKILLed and reaped at the end of the block (a no-op if it already ended)."""
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def wait_until(
    predicate: Callable[[], T], timeout: float = 5.0, what: str = "", *, interval: float = 0.01
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


#: ``PF_EXITING`` in the flags field of /proc/PID/stat: the kernel has begun to end the process.
PF_EXITING = 0x4


async def wait_for(predicate: Callable[[], T], deadline: float, interval: float = 0.05) -> T:
    """Poll ``predicate`` (which may block briefly on SQLite) until true, within ``deadline`` s (Trio).

    The conditions live in other processes and the database: there is no
    event to wait on, so this polls.  Raises :class:`trio.TooSlowError`.
    """
    with trio.fail_after(deadline):
        while not (value := predicate()):  # noqa: ASYNC110
            await trio.sleep(interval)
    return value


def alive(pid: int) -> bool:
    """True while ``pid`` can still run its own code.

    Gone: no such process, a zombie or dead task (state ``Z`` or ``X``), or a process
    whose exit has begun (``PF_EXITING``).  The last one matters: between the start of
    its exit and becoming a zombie a process still shows as running (``R``), but it will
    never run its own code again, and it has already released its memory, so its
    environment reads as empty and :func:`session_processes` could not tell its session.
    Both helpers use this one definition, so they never disagree about a process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat.rsplit(")", 1)[1].split()
    state, flags = fields[0], int(fields[6])
    return state not in ("Z", "X") and not flags & PF_EXITING


def session_processes(session_id: str) -> list[int]:
    """Pids of processes :func:`alive` whose environment carries ``CLM_SESSION_ID=session_id``."""
    return environment_processes(f"CLM_SESSION_ID={session_id}")


def environment_processes(*variables: str) -> list[int]:
    """Pids of processes :func:`alive` whose environment carries any of ``NAME=value`` ``variables``."""
    markers = {variable.encode() for variable in variables}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if markers & set(environ.split(b"\0")) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class JsonLines:
    """JSON lines from a child's stdout, read by a thread so that every read has a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith("{"):
                self._queue.put(json.loads(line))
        self._queue.put(None)

    def next(
        self, timeout: float, *, until: Callable[[dict[str, Any]], bool] = lambda message: True
    ) -> dict[str, Any]:
        """The next message for which ``until`` is true; fail after ``timeout`` s or at end of output."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching message from the child within {timeout} s") from None
            if message is None:
                raise AssertionError("the child process ended its output")
            if until(message):
                return message
