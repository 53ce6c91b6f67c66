"""How a manager proves that it is a session's manager, and how ``clm-workers stop`` checks it.

``stop`` signals the process named in a session's row; rows can be written
by anyone who can write the database (a worker, a container), so the row
alone proves nothing.  A pid is taken for the session's manager only when

1. it is a process of this host and of our pid namespace (a container's
   process never manages a pool);
2. its start time, to the clock tick and on this boot, is the one the manager
   recorded for itself (``clm_worker_sessions.proc_start``): a pid that was
   reused after the manager died starts later;
3. it holds open its **manager token**: the file ``<session id>.manager`` in
   a folder that only its user can write (``$XDG_RUNTIME_DIR/clm-workers``,
   else ``~/.cache/clm-workers/managers``), created by the manager when the
   session began and naming its pid and start time.  Nothing else holds that
   file open, and no container sees that folder.

When 2 fails the pid is another process: the session's manager is gone.  When
1 or 3 cannot be shown (no token, a folder of the wrong owner, a process
``stop`` may not inspect) it is *unknown*, and ``stop`` refuses to signal.

Standard library only; blocking and quick (a few small reads in ``/proc``).
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass
from pathlib import Path

TOKEN_SUFFIX = ".manager"


def start_stamp(pid: int | str = "self") -> str | None:
    """``<boot id>:<start time in clock ticks>`` of a process; ``None`` when it is gone or unreadable.

    The pair names one process for the life of the machine: a pid is reused,
    a pid with its start tick on one boot is not.  A zombie (state ``Z``,
    or ``X``) is gone: it has died, and only waits for its parent to reap it,
    which a parent that started a manager may take its time to do.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return f"{boot}:{fields[19]}"


def token_folder() -> Path:
    """Where this user's managers keep their tokens: a folder only this user can write."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "clm-workers"
    return Path.home() / ".cache" / "clm-workers" / "managers"


class ManagerToken:
    """The file a live manager holds open to prove it is the manager of ``session_id``.

    :meth:`create` makes it (and its folder, mode 0700) and keeps it open;
    :meth:`close` removes it.  Blocking.  A token that cannot be made (no
    writable home) is logged by the caller; ``stop`` then cannot prove the
    manager and says how to stop it by hand.
    """

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.path: Path | None = None
        self._fd: int | None = None

    def create(self) -> None:
        """Raises :class:`OSError` when the folder or the file cannot be made safely."""
        folder = token_folder()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_private(folder, os.getuid())
        _prune(folder)
        path = folder / f"{self.session_id}{TOKEN_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{os.getpid()} {start_stamp()}\n".encode())
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self.path = fd, path

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _prune(folder: Path) -> None:
    """Remove the tokens of managers that died without removing theirs (SIGKILL)."""
    for path in folder.glob(f"*{TOKEN_SUFFIX}"):
        try:
            pid, stamp = path.read_text().split()
            if start_stamp(pid) != stamp:
                path.unlink()
        except (OSError, ValueError):
            continue


class Verdict(enum.Enum):
    MANAGER = "manager"
    #: The pid is not (or no longer) the session's manager: the manager is gone.
    NOT_MANAGER = "not_manager"
    #: It cannot be shown either way: never signal.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Proof:
    verdict: Verdict
    why: str = ""


def prove_manager(pid: int, session_id: str, recorded_start: str | None) -> Proof:
    """Whether ``pid`` is the manager of ``session_id`` that recorded ``recorded_start``."""
    seen = start_stamp(pid)
    if seen is None:
        return Proof(Verdict.NOT_MANAGER, f"no process {pid} runs")
    if not recorded_start:
        return Proof(Verdict.UNKNOWN, "the session's row records no start time of its manager "
                                      "(written by an older clm-workers, or not by a manager)")
    if seen != recorded_start:
        return Proof(Verdict.NOT_MANAGER, f"pid {pid} is another process now: it started at "
                                          f"{seen.split(':')[-1]}, the manager at "
                                          f"{recorded_start.split(':')[-1]} (clock ticks since boot)")
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid"):
            return Proof(Verdict.UNKNOWN, f"pid {pid} runs in another pid namespace (a container)")
        owner = os.stat(f"/proc/{pid}").st_uid
        for entry in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = Path(os.readlink(entry.path))
            except OSError:
                continue
            if target.name == f"{session_id}{TOKEN_SUFFIX}" and _token_is_sound(target, owner, pid, seen):
                return Proof(Verdict.MANAGER)
    except PermissionError:
        return Proof(Verdict.UNKNOWN, f"not allowed to inspect pid {pid} (run stop as its user or root)")
    except OSError as exc:
        return Proof(Verdict.UNKNOWN, f"cannot inspect pid {pid}: {exc.strerror or exc}")
    return Proof(Verdict.UNKNOWN, f"pid {pid} does not hold the session's manager token")


def _token_is_sound(path: Path, owner: int, pid: int, stamp: str) -> bool:
    """The token is a regular file of ``owner`` in a folder only ``owner`` can write, naming ``pid``."""
    try:
        _check_private(path.parent, owner)
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != owner:
            return False
        return path.read_text().split() == [str(pid), stamp]
    except (OSError, ValueError):
        return False


def _check_private(folder: Path, owner: int) -> None:
    """Raise :class:`PermissionError` unless ``folder`` is a folder of ``owner``, writable by it alone."""
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner or info.st_mode & 0o022:
        raise PermissionError(f"{folder} is not a folder of uid {owner} that only it can write")
