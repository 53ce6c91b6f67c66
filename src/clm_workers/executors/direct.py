"""The direct executor: each worker is a ``python -m <module>`` subprocess.

Blocking and thread-safe: the startup engine calls every method through
``trio.to_thread``, many at once for different handles.  Nothing here knows
about the database.

Two choices shape this module (see DESIGN.md):

* Each worker leads its own session, and so its own process group
  (``start_new_session``, which, unlike ``preexec_fn``, is safe when many
  threads spawn at once).  Stop and kill signal the whole group, so a
  worker's own children go with it.  A session of its own also gives each
  worker its own share of the CPU where the kernel groups scheduling by
  session (Linux's autogroup), as CLM's own executor does (``setsid``):
  otherwise, on a machine busy with other sessions, a whole pool would get
  one session's share.
* Orphan protection is a *lifeline*: one pipe per executor whose write end only
  this process holds and never writes to.  Every worker inherits the read end
  (its number is in ``CLM_LIFELINE_FD``) and sees EOF when the manager dies
  for any reason, SIGKILL included.  Each worker runs through
  :mod:`clm_workers.launch`, which watches the lifeline in the worker's own
  process and, on EOF, stops the worker's whole tree: so unmodified CLM
  workers and their kernels cannot outlive the manager either.  Linux's
  parent-death signal is not used: it fires when the *thread* that spawned the
  worker exits, and Trio's worker threads come and go.
* Stop and kill also reach descendants outside the group (a Jupyter kernel
  runs in a session of its own): see :mod:`clm_workers.proctree`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import FatalExecutorError
from ..plan import WorkerSpec
from ..proctree import ProcessTree, refresh_trees
from .base import Activity, WorkerHandle, protocol_environment

__all__ = ["DirectExecutor", "LIFELINE_ENV", "kill_tree", "tail", "terminate_tree", "wait_descendants_gone"]

log = logging.getLogger(__name__)

#: The variable that tells a worker which inherited fd is the lifeline's read end.
LIFELINE_ENV = "CLM_LIFELINE_FD"

#: How long :meth:`DirectExecutor.kill` waits for a SIGKILLed worker to be reaped.
KILL_REAP_TIMEOUT = 5.0
#: ... and for its SIGKILLed descendants (reaped by whoever adopted them) to be gone.
_DESCENDANT_EXIT_TIMEOUT = 1.0

# Errors that every start would hit the same way: the interpreter, the
# workspace or the log folder is missing or not accessible.
_FATAL_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENOEXEC})
# ... or that the machine refuses to every start alike, each with its own remedy.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EAGAIN, errno.ENOMEM})


class DirectExecutor:
    """Start CLM workers as local subprocesses (``execution_mode="direct"``).

    ``db_path`` and ``workspace_path`` are passed to the workers in the
    protocol's variables; the workspace is also their working directory.  Each
    worker's stdout and stderr are appended to ``log_dir/<executor_id>.log``.
    ``extra_env`` is applied over this process's environment and under the
    protocol variables (which the worker config's ``env`` may still override).

    Call :meth:`close` after every worker is stopped: it drops the lifeline, so
    any worker still running exits by itself.
    """

    def __init__(
        self,
        *,
        db_path: Path,
        workspace_path: Path,
        log_dir: Path,
        python: str = sys.executable,
        log_level: str = "INFO",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.workspace_path = Path(workspace_path)
        self.log_dir = Path(log_dir)
        self.python = python
        self.log_level = log_level
        self.extra_env = dict(extra_env or {})
        # Both ends are non-inheritable (PEP 446); pass_fds makes the read end,
        # and only it, inheritable in each worker.  Concurrent spawns from other
        # threads therefore never leak the write end into any child.
        self._lifeline_read, self._lifeline_write = os.pipe()
        # Guards _closed and counts starts in flight, so close() never closes
        # (and the OS never reuses) the read end's number while a spawn passes it.
        self._state = threading.Condition()
        self._closed = False
        self._starts_in_flight = 0

    # -- Executor protocol ---------------------------------------------------

    def check(self, specs: Sequence[WorkerSpec]) -> None:
        """Nothing to check ahead: :meth:`start` itself fails fatally, before spawning."""

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Spawn ``python -m <spec.module>``; return at once (no wait for registration).

        Raises :class:`FatalExecutorError` when the interpreter, the workspace
        or the log folder is missing or inaccessible (every start would fail),
        :class:`RuntimeError` for any other spawn failure or after
        :meth:`close`.  On error no process is left behind.
        """
        popen = self.spawn_process(
            spec.label, self.command(spec), self.environment(spec), self.log_path(spec)
        )
        return WorkerHandle(
            spec=spec, executor_id=spec.executor_id, native=popen, pid=popen.pid,
            tree=ProcessTree(popen.pid),
        )

    def spawn_process(
        self,
        label: str,
        cmd: list[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen[bytes]:
        """Spawn ``cmd`` as a worker is spawned: its own group, the lifeline, output to ``log_path``.

        For the fork server's templates too.  ``pass_fds`` are inherited
        besides the lifeline.  Raises as :meth:`start` does.
        """
        with self._state:
            if self._closed:
                raise RuntimeError("DirectExecutor is closed; cannot start more workers")
            self._starts_in_flight += 1
        try:
            return self._spawn(label, cmd, env, log_path, pass_fds)
        finally:
            with self._state:
                self._starts_in_flight -= 1
                self._state.notify_all()

    def exit_codes(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, int]:
        """Exit codes of the handles whose process has ended (negative: killed by signal).

        Non-blocking; reaps the processes it reports.
        """
        codes: dict[WorkerHandle, int] = {}
        for handle in handles:
            code = _popen(handle).poll()
            if code is not None:
                codes[handle] = code
        return codes

    def activity(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, Activity]:
        """CPU time of each running worker's process tree, and whether the worker is stopped.

        Non-blocking beyond reading ``/proc``; handles that exited are left out.
        """
        found: dict[WorkerHandle, Activity] = {}
        running = [h for h in handles if _popen(h).poll() is None]
        refresh_trees(h.tree for h in running if h.tree is not None)  # one read of the process table
        for handle in running:
            tree = handle.tree
            if tree is None:  # the tree could not be made at spawn: nothing to measure
                found[handle] = Activity(cpu_seconds=None)
            else:
                found[handle] = Activity(cpu_seconds=tree.cpu_seconds(), stopped=tree.stopped())
        return found

    def request_stop(self, handle: WorkerHandle) -> None:
        """SIGTERM to the worker's process group and to every descendant outside it.

        Returns at once; idempotent.  The descendants (a Jupyter kernel in its
        own session, say) are looked up now, while the worker still links them.
        """
        popen = _popen(handle)
        if popen.returncode is not None:
            return  # reaped: its pid may already belong to someone else
        terminate_tree(popen.pid, handle.tree)

    def kill(self, handle: WorkerHandle) -> None:
        """SIGKILL the worker's process group and every descendant it was seen with; reap it.

        Idempotent and safe after the worker exited.  The group is signalled
        even then, to take any children the worker left behind (Linux does
        not reuse a pid while it still names a process group), and so are the
        descendants its tree remembers (psutil never signals a reused pid).
        Returns once every one of them is gone, or after a bound.
        """
        popen = _popen(handle)
        kill_tree(popen.pid, handle.tree, running=popen.returncode is None)
        try:
            popen.wait(timeout=KILL_REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill_stubborn(handle, popen)
        wait_descendants_gone(handle)

    def _kill_stubborn(self, handle: WorkerHandle, popen: subprocess.Popen[bytes]) -> None:
        # The worker left its group (setpgid/setsid) or is stuck in the kernel.
        log.warning(
            "worker %s (pid %s) survived SIGKILL of its group; killing the pid",
            handle.spec.label,
            popen.pid,
        )
        try:
            popen.kill()
            popen.wait(timeout=KILL_REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error(
                "worker %s (pid %s) could not be reaped after SIGKILL", handle.spec.label, popen.pid
            )

    def run_queue_wait(self, handle: WorkerHandle) -> float:
        """The worker's run-queue wait (:meth:`ProcessTree.run_queue_wait`)."""
        if handle.tree is None or _popen(handle).returncode is not None:
            return 0.0  # reaped: the pid may be someone else's
        return handle.tree.run_queue_wait()

    def output_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        """The last ``lines`` lines of the worker's log (stdout + stderr); "" if none."""
        return tail(self.log_path(handle.spec), lines)

    def close(self) -> None:
        """Close both ends of the lifeline; idempotent.

        Waits for starts in flight to finish; later starts raise RuntimeError.
        Any worker still running sees EOF on its lifeline and exits.
        """
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.wait_for(lambda: self._starts_in_flight == 0)
        for fd in (self._lifeline_write, self._lifeline_read):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- extras --------------------------------------------------------------

    @property
    def lifeline_fd(self) -> int:
        """The lifeline's read end as this process numbers it (workers get the same number)."""
        return self._lifeline_read

    def log_path(self, spec: WorkerSpec) -> Path:
        """Where the worker's stdout and stderr go."""
        return self.log_dir / f"{spec.executor_id}.log"

    def command(self, spec: WorkerSpec) -> list[str]:
        """``python -m clm_workers.launch <module>``: the module, run by the lifeline's keeper."""
        return [self.python, "-m", "clm_workers.launch", spec.module]

    # -- internals -----------------------------------------------------------

    def environment(self, spec: WorkerSpec) -> dict[str, str]:
        """The worker's whole environment: this process's, the extras, the protocol's, the lifeline."""
        env = os.environ.copy()
        env.update(self.extra_env)
        env.update(
            protocol_environment(
                spec,
                db_path=self.db_path,
                workspace_path=self.workspace_path,
                log_level=self.log_level,
            )
        )
        env[LIFELINE_ENV] = str(self._lifeline_read)
        return env

    def _spawn(
        self, label: str, cmd: list[str], env: Mapping[str, str], log_path: Path, pass_fds: Sequence[int]
    ) -> subprocess.Popen[bytes]:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            created_log = not log_path.exists()
            log_file = open(log_path, "ab")  # noqa: SIM115 - closed right after Popen
        except OSError as exc:
            raise FatalExecutorError(
                f"cannot open the log file {log_path} for worker {label}: {exc}; "
                f"{_what_to_do(exc, 'check that the log folder is writable')}"
            ) from exc
        try:
            return subprocess.Popen(
                cmd,
                env=env,
                cwd=self.workspace_path,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                close_fds=True,
                pass_fds=(self._lifeline_read, *pass_fds),
                start_new_session=True,
            )
        except BaseException as exc:
            if created_log:
                _unlink_quietly(log_path)
            described = f"{' '.join(cmd)!r} (cwd {str(self.workspace_path)!r})"
            if isinstance(exc, OSError) and exc.errno in _FATAL_ERRNOS | _RESOURCE_ERRNOS:
                raise FatalExecutorError(
                    f"cannot start worker {label}: {described}: {exc.strerror or exc}; "
                    f"{_what_to_do(exc, 'check the Python interpreter and the workspace folder')}"
                ) from exc
            if isinstance(exc, Exception):
                raise RuntimeError(f"cannot start worker {label}: {described}: {exc}") from exc
            raise
        finally:
            log_file.close()  # the worker has its own copy


def _what_to_do(exc: OSError, otherwise: str) -> str:
    """The remedy for an error of the machine, not of the folder (say, too many open files)."""
    if exc.errno == errno.EMFILE:
        import resource  # deferred: only this error needs it

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (f"this process has too many open files (its limit is {soft}, `ulimit -n`): raise the "
                "limit or start fewer workers at once")
    if exc.errno == errno.ENFILE:
        return "the system has too many open files: close some, or raise fs.file-max"
    if exc.errno == errno.ENOSPC:
        return "the disk is full: make room"
    if exc.errno in (errno.EAGAIN, errno.ENOMEM):
        return "the machine cannot start more processes now (its process or memory limit)"
    return otherwise


def _popen(handle: WorkerHandle) -> subprocess.Popen[bytes]:
    native = handle.native
    if not isinstance(native, subprocess.Popen):
        raise TypeError(f"handle of {handle.spec.label} was not made by a DirectExecutor")
    return native


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # Gone already (PermissionError: macOS reports a group of zombies so).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def terminate_tree(pid: int, tree: ProcessTree | None) -> None:
    """SIGTERM to a running worker's group (led by ``pid``) and to its descendants outside it."""
    if tree is not None:
        tree.refresh()  # before the signal: a dead worker links no descendant
    _signal_group(pid, signal.SIGTERM)
    if tree is not None:
        tree.signal(signal.SIGTERM, include_root=False)


def kill_tree(pid: int, tree: ProcessTree | None, *, running: bool) -> None:
    """SIGKILL a worker's group and every descendant it was seen with; returns at once."""
    if tree is not None and running:
        tree.refresh()
    _signal_group(pid, signal.SIGKILL)
    if tree is not None:
        tree.signal(signal.SIGKILL)


def wait_descendants_gone(handle: WorkerHandle) -> None:
    """After :func:`kill_tree` and the reaping: wait (bounded) for the descendants; log survivors."""
    if handle.tree is not None:
        for survivor in handle.tree.wait_gone(_DESCENDANT_EXIT_TIMEOUT):
            log.error("process %s of worker %s survived SIGKILL", survivor.pid, handle.spec.label)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def tail(path: Path, lines: int, block: int = 8192) -> str:
    """The last ``lines`` lines of ``path``, reading backwards from its end."""
    if lines <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            pos = end
            data = b""
            # One newline more than needed: the file usually ends with one.
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    if not text:
        return ""
    # Split on "\n" only: a progress bar's "\r" is not a line of its own.
    return "\n".join(line.rstrip("\r") for line in text.split("\n")[-lines:])
