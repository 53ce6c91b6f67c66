"""The blocking executor interface shared by the direct and docker executors.

Executors never touch the database and contain nothing async: the startup
engine calls them through ``trio.to_thread``.  Every method may be called from
any thread, and several at once for different handles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..clm.generations import JOBS_DB_VARIABLES
from ..plan import WorkerSpec
from ..proctree import ProcessTree


@dataclass(eq=False)  # identity semantics: a handle is one started process
class WorkerHandle:
    """A started worker, as its executor knows it."""

    spec: WorkerSpec
    #: The id the worker registers under (``workers.container_id``).
    executor_id: str
    #: The executor's own object (``subprocess.Popen``, a docker container, ...).
    native: Any
    #: Process id (direct workers) or ``None``.
    pid: int | None = None
    #: The worker's row once it registered (set by the startup engine).
    db_worker_id: int | None = None
    #: The worker's processes on this host, where the executor can see them.
    tree: ProcessTree | None = None
    #: How its process came to be: ``spawn`` (or a container) or ``forkserver``.
    start_method: str = "spawn"
    #: Why it was started otherwise than its pool asked (a fork server that fell back to spawn).
    note: str = ""


@dataclass(frozen=True)
class Activity:
    """What a running worker is doing right now, as its executor sees it (for the monitor)."""

    #: User + system CPU seconds of the worker's whole process tree (a Jupyter
    #: kernel included) or container so far; ``None`` when it cannot be measured.
    cpu_seconds: float | None
    #: The worker cannot run: stopped by SIGSTOP or a debugger, or a paused container.
    stopped: bool = False


class Executor(Protocol):
    def check(self, specs: Sequence[WorkerSpec]) -> None:
        """Preflight, once per pool start and before any :meth:`start`: fail fast.

        Raises :class:`~clm_workers.errors.FatalExecutorError` for what would
        fail every start of ``specs`` the same way (the Docker engine is
        unreachable, an image is missing), so that the pool fails before any
        worker exists.
        """
        ...

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Start one worker and return its handle.

        Either returns a handle to a started worker or raises having left
        nothing behind.  Raises :class:`~clm_workers.errors.FatalExecutorError`
        when every start would fail the same way.
        """
        ...

    def exit_codes(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, int]:
        """The exit code of each handle whose process has ended (one call for many)."""
        ...

    def activity(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, Activity]:
        """CPU time and stopped state of each handle that still runs (one call for many).

        Handles whose process has ended are left out.  Blocking; the monitor
        calls it once per tick for the busy workers.
        """
        ...

    def request_stop(self, handle: WorkerHandle) -> None:
        """Ask the worker to stop (SIGTERM); returns at once; idempotent."""
        ...

    def kill(self, handle: WorkerHandle) -> None:
        """Stop the worker for good (SIGKILL), reap it and release its resources.

        Idempotent, and safe on a worker that has already exited.
        """
        ...

    def run_queue_wait(self, handle: WorkerHandle) -> float:
        """Seconds the worker was ready to run but waited for a CPU since it started (0.0: unknown).

        The registration deadline does not count them: a boot that is slow
        because the cores are busy is not a failed boot.
        """
        ...

    def output_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        """The last ``lines`` lines of the worker's stderr (or log), for failure reasons."""
        ...

    def close(self) -> None:
        """Release the executor's own resources (after every worker is stopped)."""
        ...


def protocol_environment(
    spec: WorkerSpec,
    *,
    db_path: Path | str,
    workspace_path: Path | str,
    log_level: str = "INFO",
) -> dict[str, str]:
    """The variables every CLM generation's worker reads, in each generation's spelling.

    ``db_path`` and ``workspace_path`` are as the worker sees them (inside a
    container: ``/db/<file>`` and ``/workspace``).  The config's own ``env``
    is applied last so a pool can override anything but the variables that
    tie a worker to its session, row and database (``config.RESERVED_ENV``,
    refused when the config is made).
    """
    env = {
        "WORKER_TYPE": spec.worker_type,
        "WORKER_ID": spec.executor_id,
        **{variable: str(db_path) for variable in JOBS_DB_VARIABLES},
        "WORKSPACE_PATH": str(workspace_path),
        "LOG_LEVEL": log_level,
        "USE_SQLITE_QUEUE": "true",
        "CLM_SESSION_ID": spec.session_id,
    }
    if spec.db_worker_id is not None:
        env["CLM_WORKER_ID"] = str(spec.db_worker_id)
    env.update(spec.env)
    return env
