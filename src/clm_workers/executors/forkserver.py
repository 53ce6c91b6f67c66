"""The fork server executor: direct workers forked from a template that imported their dependencies once.

``WorkerConfig(..., start_method="forkserver")``.  A spawned worker pays for
its interpreter and its imports (a CLM notebook worker: 0.5-1 s of CPU)
before it registers, so N spawns on C cores cannot take less than
N x boot CPU / C.  Here the manager starts one *template* per worker module
(:mod:`clm_workers.forktemplate`): it imports the pool's ``preload`` modules
once, and forks each worker from itself on request, so a worker costs a
fork and its own ``main()``, and shares the template's pages until it writes
to them.  (Python's ``multiprocessing`` forkserver, gunicorn's ``--preload``
and Android's zygote work the same way.)

Everything else is as for a spawned worker (:mod:`.direct`, whose
lifeline, log files, environment and signalling this executor reuses): the
worker runs ``module`` as ``__main__`` through :mod:`clm_workers.launch`'s
lifeline keeper, in its own process group, with the same environment,
working folder and log file; stop and kill reach its group and its
descendants.  Two things differ because the template, not the manager, is
its parent:

* the template reaps it and sends its exit code over the control socket
  (a reader thread per template keeps the books);
* it also holds the template's lifeline: a template that dies (SIGKILL
  included) takes its workers with it the way a dead manager does, and they
  are reported exited with :data:`~clm_workers.launch.ORPHANED_EXIT_CODE`
  and the reason in their output tail.  The next start of that module
  starts a new template.

A template that cannot preload its modules, or that is not safe to fork
(a thread, an open socket or database, any open file after preloading:
:func:`clm_workers.forktemplate.fork_hazards`), answers ``unavailable``; its
pool's workers are then spawned, with the reason logged once and kept in
each handle's ``note`` (and so in the startup report).

Docker pools are not forked: a container is its own process tree made by
the engine (``create`` + ``start``), with its own filesystem and limits.

Blocking and thread-safe, like every executor: the engine calls it through
``trio.to_thread``, many starts at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

from ..errors import FatalExecutorError
from ..launch import ORPHANED_EXIT_CODE
from ..plan import WorkerSpec
from ..proctree import ProcessTree
from .base import Activity, WorkerHandle
from .direct import KILL_REAP_TIMEOUT, DirectExecutor, kill_tree, tail, terminate_tree, wait_descendants_gone

__all__ = ["ForkServerExecutor", "PER_WORKER_VARIABLES", "TemplateInfo"]

log = logging.getLogger(__name__)

#: The variables that differ between the workers of one template; every other
#: one is the template's too, so a module that reads one when imported reads
#: the value its workers get.  A preloaded module that looks one of these up
#: when imported is imported afresh in each worker (the template notes it).
PER_WORKER_VARIABLES = ("WORKER_ID", "CLM_WORKER_ID")

#: How long a template may take to preload before its pool is spawned instead
#: (CLM 1.35's notebook imports take about 1 s of CPU; a busy machine, longer).
READY_TIMEOUT = 120.0
#: How long one fork request may take to be answered.
REPLY_TIMEOUT = 30.0
#: How long a closing template gets to exit by itself before SIGKILL.
_CLOSE_TIMEOUT = 2.0

_TemplateKey = tuple[str, str, tuple[str, ...], tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class TemplateInfo:
    """One template, for reports and benchmarks."""

    worker_type: str
    module: str
    pid: int
    state: str
    #: CPU and wall seconds its preloading took (``ready`` only).
    preload_cpu: float = 0.0
    preload_wall: float = 0.0
    reason: str = ""


class ForkServerExecutor:
    """Start direct workers by forking them from preloaded templates (``start_method="forkserver"``).

    ``direct`` provides the lifeline, the environment, the log files and the
    fallback; close it after this executor (closing it ends the lifeline,
    which ends every template and worker still running).
    """

    def __init__(
        self,
        direct: DirectExecutor,
        *,
        ready_timeout: float = READY_TIMEOUT,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.direct = direct
        self.ready_timeout = ready_timeout
        self.reply_timeout = reply_timeout
        self._templates: dict[_TemplateKey, _Template] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._fallbacks_logged: set[_TemplateKey] = set()

    # -- Executor protocol ---------------------------------------------------

    def check(self, specs: Sequence[WorkerSpec]) -> None:
        """Start (without waiting) the template of every module among ``specs``.

        They preload while the database is prepared; :meth:`start` waits.
        Raises :class:`FatalExecutorError` when the interpreter or the log
        folder is unusable (every start would fail).
        """
        for spec in specs:
            self._template(spec)

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Fork the worker from its template (starting it first if needed); return at once.

        Blocks until the template has preloaded (at most ``ready_timeout``)
        and answered (``reply_timeout``).  Where the template is unavailable
        the worker is spawned instead, with the reason in ``handle.note``.
        Raises like :meth:`DirectExecutor.start`; on error nothing is left behind.
        """
        template = self._template(spec)
        reason = template.wait_ready(self.ready_timeout)
        if reason is None:
            try:
                return template.fork(spec, self.reply_timeout)
            except _Unavailable as exc:
                reason = str(exc)
        return self._spawn_instead(spec, template, reason)

    def exit_codes(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, int]:
        """Exit codes of the handles whose worker ended (as the template reported it); non-blocking."""
        spawned = [h for h in handles if isinstance(h.native, subprocess.Popen)]
        codes = self.direct.exit_codes(spawned)
        for handle in handles:
            if isinstance(handle.native, _Forked):
                code = handle.native.exit_code()
                if code is not None:
                    codes[handle] = code
        return codes

    def activity(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, Activity]:
        """CPU time of each running worker's process tree, and whether it is stopped."""
        found = self.direct.activity([h for h in handles if isinstance(h.native, subprocess.Popen)])
        for handle in handles:
            worker = handle.native
            if not isinstance(worker, _Forked) or worker.exit_code() is not None:
                continue
            tree = handle.tree
            found[handle] = (Activity(cpu_seconds=None) if tree is None
                             else Activity(cpu_seconds=tree.cpu_seconds(), stopped=tree.stopped()))
        return found

    def request_stop(self, handle: WorkerHandle) -> None:
        """SIGTERM to the worker's group and its descendants; returns at once; idempotent."""
        worker = self._forked(handle)
        if worker is None:
            self.direct.request_stop(handle)
        elif worker.exit_code() is None:
            terminate_tree(worker.pid, handle.tree)

    def kill(self, handle: WorkerHandle) -> None:
        """SIGKILL the worker's group and every descendant seen; wait until it is reaped (bounded)."""
        worker = self._forked(handle)
        if worker is None:
            self.direct.kill(handle)
            return
        kill_tree(worker.pid, handle.tree, running=worker.exit_code() is None)
        if not worker.wait_ended(KILL_REAP_TIMEOUT):
            log.error("worker %s (pid %s) did not end within %g s of SIGKILL",
                      handle.spec.label, worker.pid, KILL_REAP_TIMEOUT)
        wait_descendants_gone(handle)

    def run_queue_wait(self, handle: WorkerHandle) -> float:
        worker = self._forked(handle)
        if worker is None:
            return self.direct.run_queue_wait(handle)
        if handle.tree is None or worker.exit_code() is not None:
            return 0.0
        return handle.tree.run_queue_wait()

    def output_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        """The worker's log tail; for a worker whose template died, with a line that says so."""
        text = tail(self.direct.log_path(handle.spec), lines)
        worker = self._forked(handle)
        if worker is not None and worker.orphaned():
            text = "\n".join(filter(None, [text, worker.template.death_notice()]))
        return text

    def close(self) -> None:
        """Stop every template (after every worker is stopped); idempotent; later starts raise."""
        with self._lock:
            self._closed = True
            templates = list(self._templates.values())
        for template in templates:
            template.close()

    # -- extras --------------------------------------------------------------

    def templates(self) -> list[TemplateInfo]:
        with self._lock:
            return [t.info() for t in self._templates.values()]

    # -- internals -----------------------------------------------------------

    def _template(self, spec: WorkerSpec) -> _Template:
        key: _TemplateKey = (spec.worker_type, spec.module, spec.preload, tuple(sorted(spec.env.items())))
        with self._lock:
            if self._closed:
                raise RuntimeError("ForkServerExecutor is closed; cannot start more workers")
            template = self._templates.get(key)
            if template is None or template.state == "dead":
                # A dead template's workers died with it; the pool goes on with a new one.
                template = self._templates[key] = _Template(key, spec, self.direct)
            return template

    def _spawn_instead(self, spec: WorkerSpec, template: _Template, reason: str) -> WorkerHandle:
        if template.key not in self._fallbacks_logged:
            self._fallbacks_logged.add(template.key)
            log.warning("the fork server for %s workers (%s) is unavailable, so they are spawned: %s",
                        spec.worker_type, spec.module, reason)
        handle = self.direct.start(spec)
        handle.note = f"spawned, not forked: the fork server is unavailable: {reason}"
        return handle

    @staticmethod
    def _forked(handle: WorkerHandle) -> _Forked | None:
        native = handle.native
        if isinstance(native, _Forked):
            return native
        if isinstance(native, subprocess.Popen):
            return None
        raise TypeError(f"handle of {handle.spec.label} was not made by a ForkServerExecutor")


class _Unavailable(Exception):
    """The template cannot fork this worker (it refused, died or did not answer)."""


@dataclass(eq=False)
class _Forked:
    """One forked worker as its template reports it (the handle's ``native``)."""

    template: _Template
    pid: int
    code: int | None = None
    #: Its root process, for telling whether an orphan is gone (None: ended before it was seen).
    process: psutil.Process | None = field(default=None, repr=False)

    def exit_code(self) -> int | None:
        """Its exit code once it ended: as reaped by the template, or, after the template's death, 70."""
        with self.template.cond:
            if self.code is not None:
                return self.code
        if self.orphaned() and not _running(self.process):
            return ORPHANED_EXIT_CODE
        return None

    def orphaned(self) -> bool:
        """Its template died before reporting its exit: it stops by its lifeline, unreaped by us."""
        return self.template.state == "dead" and self.code is None

    def wait_ended(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.exit_code() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self.template.cond:
                self.template.cond.wait(min(remaining, 0.05))
        return True


def _running(process: psutil.Process | None) -> bool:
    try:
        return process is not None and process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class _Template:
    """One template process, its control socket and the reader thread that keeps its books.

    ``state``: ``starting`` -> ``ready`` | ``unavailable``; ``dead`` once its
    control socket closed while it was starting or ready.  ``cond`` guards
    every field the reader writes.
    """

    def __init__(self, key: _TemplateKey, spec: WorkerSpec, direct: DirectExecutor) -> None:
        self.key = key
        self.worker_type, self.module = spec.worker_type, spec.module
        self.direct = direct
        self.cond = threading.Condition()
        self.state = "starting"
        self.reason = ""
        self.ready_info: dict[str, object] = {}
        self._replies: dict[str, dict[str, object]] = {}
        self._abandoned: set[str] = set()
        self._live: dict[int, _Forked] = {}
        self._send_lock = threading.Lock()
        env = {k: v for k, v in direct.environment(spec).items() if k not in PER_WORKER_VARIABLES}
        self.log_path = direct.log_dir / f"forkserver-{spec.worker_type}-{secrets.token_hex(4)}.log"
        ours, theirs = socket.socketpair()  # both non-inheritable; theirs is passed explicitly
        command = [direct.python, "-m", "clm_workers.forktemplate", "--control", str(theirs.fileno()),
                   "--per-worker", ",".join(PER_WORKER_VARIABLES)]
        if spec.preload:
            command += ["--preload", ",".join(spec.preload)]
        try:
            self.popen = direct.spawn_process(f"{spec.worker_type} fork server", command, env, self.log_path,
                                              pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self._reader = threading.Thread(target=self._read, name=f"clm-forkserver-{spec.worker_type}",
                                        daemon=True)
        self._reader.start()

    # -- the manager's side ----------------------------------------------------

    def wait_ready(self, timeout: float) -> str | None:
        """``None`` once the template is ready to fork; else why it is not (it then stays so)."""
        with self.cond:
            self.cond.wait_for(lambda: self.state != "starting", timeout)
            if self.state == "starting":
                self.state, self.reason = "unavailable", f"it did not finish preloading within {timeout:g} s"
                self.popen.kill()
            if self.state == "ready":
                return None
            return self.reason or "its template ended before it was ready"

    def fork(self, spec: WorkerSpec, timeout: float) -> WorkerHandle:
        ident = spec.executor_id
        log_path = self.direct.log_path(spec)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalExecutorError(f"cannot create the log folder {log_path.parent}: {exc}") from exc
        request = {
            "op": "fork", "id": ident, "module": spec.module, "args": [],
            "env": self.direct.environment(spec), "cwd": str(self.direct.workspace_path),
            "log": str(log_path),
        }
        try:
            with self._send_lock:
                self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise _Unavailable(f"its template cannot be reached: {exc}") from exc
        with self.cond:
            self.cond.wait_for(lambda: ident in self._replies or self.state == "dead", timeout)
            reply = self._replies.pop(ident, None)
            if reply is None:
                self._abandoned.add(ident)  # a late "forked" is killed by the reader
                raise _Unavailable("its template died" if self.state == "dead"
                                   else f"its template did not answer within {timeout:g} s")
        if reply["op"] == "refused":
            if reply.get("fatal"):
                raise FatalExecutorError(f"cannot start worker {spec.label}: {reply['reason']}")
            raise _Unavailable(f"it refused to fork: {reply['reason']}")
        worker = reply["worker"]
        assert isinstance(worker, _Forked)
        tree: ProcessTree | None = None
        with contextlib.suppress(psutil.Error):
            tree = ProcessTree(worker.pid)
            worker.process = tree.root
        return WorkerHandle(spec=spec, executor_id=ident, native=worker, pid=worker.pid, tree=tree,
                            start_method="forkserver")

    def death_notice(self) -> str:
        code = self.popen.poll()
        how = f"exit code {code}" if code is not None else "its control socket closed"
        return (f"clm-workers: its fork server (pid {self.popen.pid}) ended ({how}), "
                "and the worker stopped with it")

    def info(self) -> TemplateInfo:
        with self.cond:
            return TemplateInfo(
                worker_type=self.worker_type, module=self.module, pid=self.popen.pid, state=self.state,
                preload_cpu=float(self.ready_info.get("preload_cpu", 0.0)),  # type: ignore[arg-type]
                preload_wall=float(self.ready_info.get("preload_wall", 0.0)),  # type: ignore[arg-type]
                reason=self.reason,
            )

    def close(self) -> None:
        """Tell the template to exit (EOF on its socket), then make sure it did; reap it."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        try:
            self.popen.wait(timeout=_CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=KILL_REAP_TIMEOUT)
        self._reader.join(timeout=_CLOSE_TIMEOUT)
        self.sock.close()
        # Its books reference it back (a worker record names its template): drop
        # them, so that no cycle leaves the template (and its thread object) to
        # the cyclic collector, whose callbacks run at any moment, a Ctrl-C's
        # included (a KeyboardInterrupt raised in one is lost).
        with self.cond:
            self._live.clear()
            self._replies.clear()

    # -- the reader thread -------------------------------------------------------

    def _read(self) -> None:
        try:
            with self.sock.makefile("rb") as stream:
                for line in stream:
                    self._on_message(json.loads(line))
        except (OSError, ValueError) as exc:
            log.debug("fork server of %s: control socket: %s", self.worker_type, exc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=_CLOSE_TIMEOUT)  # for its exit code in the reason
        with self.cond:
            if self.state in ("starting", "ready"):
                self.state = "dead"
                self.reason = (self.reason or tail(self.log_path, 5)
                               or f"its template ended ({self.death_notice()})")
                if self._live:
                    log.error("the fork server of %s workers (pid %s) died; its %d workers stop with it",
                              self.worker_type, self.popen.pid, len(self._live))
            self.cond.notify_all()

    def _on_message(self, message: dict[str, object]) -> None:
        op = message.get("op")
        with self.cond:
            if op == "ready":
                self.state, self.ready_info = "ready", message
            elif op == "unavailable":
                self.state, self.reason = "unavailable", str(message.get("reason", ""))
            elif op == "forked":
                pid, ident = int(str(message["pid"])), str(message["id"])
                worker = self._live[pid] = _Forked(self, pid)
                if ident in self._abandoned:
                    self._abandoned.discard(ident)
                    kill_tree(pid, None, running=True)  # its start gave up on it: nobody owns it
                else:
                    self._replies[ident] = {**message, "worker": worker}
            elif op == "refused":
                self._replies[str(message["id"])] = message
            elif op == "exit":
                ended = self._live.pop(int(str(message["pid"])), None)
                if ended is not None:
                    ended.code = int(str(message["code"]))
            self.cond.notify_all()
