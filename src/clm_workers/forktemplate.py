"""A fork server's template: import a worker's dependencies once, fork a worker per request.

``python -m clm_workers.forktemplate --control FD [--preload MODULE[,...]] [--per-worker NAME[,...]]``

Started by :class:`clm_workers.executors.forkserver.ForkServerExecutor`, one
template per worker module (and environment).  The template imports the
``--preload`` modules, checks that it is safe to fork (:func:`fork_hazards`),
freezes the garbage collector's view of everything it imported (so the pages
stay shared with every worker), and then forks one worker per request.

Each forked worker becomes what ``python -m clm_workers.launch MODULE`` would
have been: its own session and process group, its own log file as stdout and stderr,
stdin from ``/dev/null``, the working folder and the whole environment of the
request, every other inherited descriptor closed, ``random`` reseeded; then
the lifeline keeper of :mod:`clm_workers.launch`, watching the manager's
lifeline *and* the template's, and the module run afresh as ``__main__``, as
``python -m`` runs it.  What it imports stays as the template imported it:
the template runs with its workers' environment, so a module that reads its
settings from the environment when it is imported (CLM's worker modules do)
reads the workers' values.  Only the ``--per-worker`` variables (a worker's
own row and id) differ; the template has none of them, and notes every
module whose import-time code looks one up: those modules run afresh in each
worker, with that worker's value.  Importing a module afresh in a forked
child costs about three times what it costs in the template (every object it
touches is a page to copy), so nothing else is imported twice.

The control socket carries one JSON object per line.  The manager sends
``{"op": "fork", "id", "module", "args", "env", "cwd", "log"}``; the
template answers ``ready`` (or ``unavailable`` with a reason, then exits) once,
``forked`` (with the pid) or ``refused`` (with a reason) per request, and
``exit`` (pid and exit code, negative for a signal) whenever a worker it
forked ends: it is their parent and reaps them.  It exits when the manager's
lifeline or the control socket reaches EOF; its workers then stop by their
lifelines.

Standard library only, and no thread ever: forking a process that runs
threads can leave locks held forever in the child.  Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import random
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

from .launch import LIFELINE_ENV, keep_lifelines, run_module

USAGE = ("usage: python -m clm_workers.forktemplate --control FD [--preload MODULE[,MODULE...]] "
         "[--per-worker NAME[,NAME...]]")

_SQLITE_HEADER = b"SQLite format 3\x00"


class _ChildOrder:
    """What a freshly forked worker does next (only ever built in the child)."""

    def __init__(self, request: dict[str, object], log_fd: int, lifelines: list[int],
                 afresh: frozenset[str]) -> None:
        self.request = request
        self.log_fd = log_fd
        self.lifelines = lifelines
        #: Preloaded modules that looked up a per-worker variable when imported.
        self.afresh = afresh


def main(argv: list[str]) -> None:
    control_fd, lists = _parse(argv)
    order = serve(control_fd, lists["--preload"], frozenset(lists["--per-worker"]))
    if order is not None:  # in a forked worker: its own life starts here
        become_worker(order)


def _parse(argv: list[str]) -> tuple[int, dict[str, list[str]]]:
    control: int | None = None
    lists: dict[str, list[str]] = {"--preload": [], "--per-worker": []}
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("--control", *lists) and args:
            value = args.pop(0)
            if flag == "--control" and value.isdigit():
                control = int(value)
            elif flag in lists:
                lists[flag] = [name for name in value.split(",") if name]
            else:
                break
        else:
            break
    else:
        if control is not None:
            return control, lists
    print(USAGE, file=sys.stderr)
    raise SystemExit(2)


# -- the template ----------------------------------------------------------------------


def serve(
    control_fd: int, preload: list[str], per_worker: frozenset[str] = frozenset()
) -> _ChildOrder | None:
    """Preload, report, then fork on request until the manager is gone.

    ``per_worker``: the variables whose value differs between workers; a
    preloaded module that looks one up when imported runs afresh in each.

    Returns ``None`` in the template when it should exit, and the child's
    order in each forked child (which must then call :func:`become_worker`,
    and never come back here).
    """
    control = socket.socket(fileno=control_fd)
    lifeline = _manager_lifeline()
    t0, cpu0 = time.monotonic(), time.process_time()
    with _lookups_of(per_worker) as readers:
        failures = _preload(preload)
    # The template's own lifeline: only the template holds the write end, so
    # its workers see EOF when it dies, however it dies.
    template_read, template_write = os.pipe()
    own = {control.fileno(), template_read, template_write, *([lifeline] if lifeline is not None else [])}
    hazards = fork_hazards(own)
    if failures or hazards:
        reason = "; ".join([*(f"cannot preload {name}: {error}" for name, error in failures), *hazards])
        _send(control, {"op": "unavailable", "reason": reason})
        return None
    gc.freeze()  # what preloading made is never collected here: its pages stay shared
    _send(control, {
        "op": "ready", "pid": os.getpid(), "preload_cpu": round(time.process_time() - cpu0, 4),
        "preload_wall": round(time.monotonic() - t0, 4), "modules": len(sys.modules),
        "afresh": sorted(readers),
    })
    afresh = frozenset(readers)
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    own |= {wake_read, wake_write}
    signal.signal(signal.SIGCHLD, _on_child_exit)
    signal.set_wakeup_fd(wake_write)
    pending = b""
    manager = [lifeline] if lifeline is not None else []
    lifelines = [*manager, template_read]  # what each worker watches
    watched = [control.fileno(), wake_read, *manager]
    while True:
        try:
            ready, _, _ = select.select(watched, [], [])
        except InterruptedError:  # pragma: no cover - PEP 475 retries select itself
            continue
        try:
            if wake_read in ready:
                _drain(wake_read)
                _reap(control)
            if lifeline is not None and lifeline in ready and not os.read(lifeline, 1):
                return None  # the manager is gone; the workers go by their lifelines
            if control.fileno() in ready:
                data = control.recv(1 << 16)
                if not data:
                    return None  # the manager closed the fork server
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    order = _fork(json.loads(line), control, own, lifelines, afresh)
                    if order is not None:
                        _leave_template(control, [template_write, wake_read, wake_write])
                        return order
        except OSError:
            return None  # the control socket broke: the manager is gone


def _manager_lifeline() -> int | None:
    value = os.environ.get(LIFELINE_ENV, "")
    try:
        fd = int(value)
        os.set_inheritable(fd, False)
    except (ValueError, OSError):
        return None
    return fd


def _preload(names: list[str]) -> list[tuple[str, str]]:
    """Import each module; the ones that failed, with why."""
    failures = []
    for name in names:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:
            failures.append((name, f"{type(exc).__name__}: {exc}"))
    return failures


@contextlib.contextmanager
def _lookups_of(names: frozenset[str]) -> Iterator[set[str]]:
    """Note which modules' import-time code looks up one of ``names`` in ``os.environ``.

    Yields the set it fills: the name of the module whose top-level code was
    running (directly or through a function it called) at each lookup.
    ``os.getenv``, ``os.environ.get``, ``in`` and ``[]`` all go through
    ``__getitem__``, which is watched by giving ``os.environ`` a subclass of
    its own class for the while.
    """
    readers: set[str] = set()
    environ = os.environ
    plain = type(environ)

    class Watched(plain):  # type: ignore[valid-type,misc]  # os._Environ, private but a plain class
        def __getitem__(self, key: str) -> str:
            if key in names:
                readers.add(_importing_module())
            return super().__getitem__(key)  # type: ignore[no-any-return]

    if names:
        environ.__class__ = Watched
    try:
        yield readers
    finally:
        environ.__class__ = plain
        readers.discard("")


def _importing_module() -> str:
    """The module whose top-level code is running on this stack (innermost), or ``""``."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            return str(frame.f_globals.get("__name__", ""))
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def fork_hazards(own_fds: set[int]) -> list[str]:
    """What makes forking this process unsafe right now, in words; empty when it is safe.

    * a thread besides this one (the child would inherit its locks held, and
      not the thread): counted in ``/proc/self/task``, which sees threads
      started from C too;
    * an open socket or SQLite database: the child would share it with the
      template (two processes on one connection corrupt it);
    * any other open descriptor: the forked worker closes every descriptor it
      inherits, so the module that opened it would find it closed.

    ``own_fds`` are the template's own descriptors, which are allowed.
    """
    hazards = []
    others = len(_entries("/proc/self/task")) - 1
    if others > 0:
        names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if others > len(names):
            names.append(f"{others - len(names)} not started by Python")
        hazards.append(f"{others} thread(s) besides the main one are running ({', '.join(names)}): "
                       "forking would copy their locks but not them")
    for entry in _entries("/proc/self/fd"):
        fd = int(entry)
        if fd <= 2 or fd in own_fds:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the directory listing's own descriptor, closed by now
        if target.startswith("socket:"):
            hazards.append(f"an open socket (fd {fd}): the workers would share it")
        elif _is_sqlite(fd, target):
            hazards.append(f"an open SQLite database (fd {fd}: {target}): "
                           "the workers would share the connection")
        else:
            hazards.append(f"an open file (fd {fd}: {target}): a forked worker closes what it inherits")
    return hazards


def _is_sqlite(fd: int, target: str) -> bool:
    if target.endswith(("-wal", "-shm", "-journal")):
        return True
    try:
        return os.pread(fd, len(_SQLITE_HEADER), 0) == _SQLITE_HEADER
    except OSError:
        return False


def _entries(folder: str) -> list[str]:
    try:
        return [name for name in os.listdir(folder) if name.isdigit()]
    except OSError:
        return []


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _on_child_exit(signum: int, frame: object) -> None:
    """Nothing: the wakeup descriptor tells the loop, which reaps."""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _reap(control: socket.socket) -> None:
    """Reap every worker that ended and report its exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(control, {"op": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _fork(request: dict[str, object], control: socket.socket, own: set[int],
          lifelines: list[int], afresh: frozenset[str]) -> _ChildOrder | None:
    """Fork one worker; in the child, return its order; in the template, report and return None."""
    ident = request.get("id")
    hazards = fork_hazards(own)
    if hazards:
        _send(control, {"op": "refused", "id": ident, "reason": "; ".join(hazards)})
        return None
    try:
        log_fd = os.open(str(request["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        _send(control, {"op": "refused", "id": ident, "fatal": True,
                        "reason": f"cannot open the log file {request['log']}: {exc.strerror or exc}"})
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the child would write the template's buffered output again
    gc.freeze()
    led_read, led_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        # A session (and so a process group) of its own, as a spawned worker
        # and CLM's own workers have; then tell the template.
        os.setsid()
        os.close(led_write)
        os.close(led_read)
        return _ChildOrder(request, log_fd, lifelines, afresh)
    os.close(led_write)
    os.close(log_fd)
    # Answer only once the child leads its group: a stop sent at once must
    # reach it by its group, not miss it in the template's.
    os.read(led_read, 1)
    os.close(led_read)
    _send(control, {"op": "forked", "id": ident, "pid": pid})
    return None


def _send(control: socket.socket, message: dict[str, object]) -> None:
    control.sendall(json.dumps(message).encode() + b"\n")


def _leave_template(control: socket.socket, fds: list[int]) -> None:
    """In a new child: drop the template's signal handling and its own descriptors."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    control.close()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the forked worker -------------------------------------------------------------------


def become_worker(order: _ChildOrder) -> None:
    """Turn this freshly forked child into the requested worker and run it (as ``python -m``).

    Returns when the module returns; raises what it raises (``SystemExit``
    with its exit code), so the interpreter ends the way ``python -m`` would.
    """
    request = order.request
    os.dup2(order.log_fd, 1)
    os.dup2(order.log_fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    _close_all_but({0, 1, 2, *order.lifelines})
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    os.chdir(str(request["cwd"]))
    random.seed()  # else every worker would draw the template's numbers
    module = str(request["module"])
    args = request.get("args") or []
    assert isinstance(args, list)
    for name in _run_afresh(module, order.afresh):
        _forget(name)
    keep_lifelines(order.lifelines)
    run_module(module, [str(a) for a in args])


def _run_afresh(module: str, readers: frozenset[str]) -> set[str]:
    """The modules a worker must import again: what it runs, and the per-worker variables' readers.

    ``runpy`` runs a package's ``__main__`` afresh by itself; a plain module
    it runs only if it is not imported yet.
    """
    loaded = sys.modules.get(module)
    own = {module} if loaded is not None and not hasattr(loaded, "__path__") else set()
    return {*own, f"{module}.__main__", *readers}


def _forget(name: str) -> None:
    """Make the next import of ``name`` run it again (``from package import name`` included)."""
    forgotten = sys.modules.pop(name, None)
    parent_name, _, attribute = name.rpartition(".")
    parent = sys.modules.get(parent_name)
    if forgotten is not None and parent is not None and getattr(parent, attribute, None) is forgotten:
        delattr(parent, attribute)


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor but ``keep``, as ``subprocess``'s ``close_fds`` does for a spawn."""
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)


if __name__ == "__main__":
    main(sys.argv[1:])
