"""CLM's own ``WorkerPoolManager`` interface on clm-workers' engine: ``clm build`` on clm-workers.

CLM's lifecycle manager (what ``clm build`` runs) makes its pool manager as
``WorkerPoolManager(...)`` from the namespace of
``clm.infrastructure.workers.lifecycle_manager``, then calls
``start_pools()``, with 1.35 ``start_monitoring()``, reads ``.workers`` and
``.executors``, and after the build calls ``stop_pools()``; every call is
synchronous, from the thread of the build's asyncio loop.  :func:`install`
puts :func:`pool_manager` in that name's place (in memory: no file of CLM's
changes); it makes a :class:`ClmPoolManager` for a pool of direct workers and
leaves a pool with Docker workers to CLM's own class, whose Docker setup
(source mount, worker API server) is CLM's.

A :class:`ClmPoolManager` runs one Trio run in a daemon thread for the pool's
whole life (:func:`clm_workers.pool.run_worker_pool`: start, monitor,
stop).  ``start_pools()`` returns as soon as one worker of every type the
build needs has registered (or every worker of a type has failed); the
others keep starting while the build runs, and each step is logged as it
happens, failures with their phase and reason, in CLM's log (``clm.log``).
``stop_pools()`` ends the run: every worker is stopped, kernels included,
and nothing is left.  Its rows carry the build's session (CLM 1.35's job gate
hands the build's jobs only to those), owned (see :mod:`.ownership`).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from trio_util import AsyncValue

from ..config import WorkerConfig
from ..executors.base import WorkerHandle
from ..manager import WorkerPoolManager
from ..modules import module_runnable
from ..monitor import MonitorSettings
from ..pool import run_worker_pool
from ..report import ProgressEvent
from .installed import installed_clm
from .profile import fork_server_types, resolve_configs

log = logging.getLogger(__name__)

#: The module whose ``WorkerPoolManager`` :func:`install` replaces.
LIFECYCLE_MODULE = "clm.infrastructure.workers.lifecycle_manager"

#: How the drop-in starts CLM's direct workers of the types that preload and
#: fork safely (:func:`fork_server_types`); the others are spawned.
START_METHOD = "forkserver"

#: How often the startup looks for registrations (``CLM_REGISTRATION_POLL_INTERVAL`` wins).  CLM's
#: job submission polls every 0.5 s; the engine's own 10 ms costs CPU that the booting workers
#: compete for on a small machine, 50 ms a fifth of it.
POLL_INTERVAL = 0.05

#: How often the build's pool is checked.  Each check reads the process table (a few ms of CPU
#: on a busy machine); CLM 1.35's own monitor checks every 10 s, CLM 1.9.2's build never.
MONITOR_INTERVAL = 2.0

#: CLM's own class, while :func:`install` has put ours in its place.
_clm_class: Any = None

#: The running drop-ins, stopped at interpreter exit if the build did not stop them.
_running: weakref.WeakSet[ClmPoolManager] = weakref.WeakSet()


def install() -> None:
    """Make every pool CLM's lifecycle manager starts from now on a clm-workers pool.

    In this process only, in memory; idempotent.  Raises :class:`ImportError`
    when CLM is not installed.
    """
    global _clm_class
    lifecycle: Any = importlib.import_module(LIFECYCLE_MODULE)
    if lifecycle.WorkerPoolManager is not pool_manager:
        _clm_class = lifecycle.WorkerPoolManager
        lifecycle.WorkerPoolManager = pool_manager


def uninstall() -> None:
    """Give CLM its own pool manager back (pools already made keep theirs)."""
    global _clm_class
    if _clm_class is not None:
        lifecycle: Any = importlib.import_module(LIFECYCLE_MODULE)
        lifecycle.WorkerPoolManager = _clm_class
        _clm_class = None


def pool_manager(*args: Any, **kwargs: Any) -> Any:
    """What :func:`install` puts in place of CLM's class: called with CLM's own arguments."""
    configs = kwargs["worker_configs"] if "worker_configs" in kwargs else args[2] if len(args) > 2 else ()
    if any(getattr(c, "execution_mode", "direct") != "direct" and c.count for c in configs):
        clm_pool: Any = importlib.import_module("clm.infrastructure.workers.pool_manager")
        clm_class = _clm_class or clm_pool.WorkerPoolManager
        log.info("the pool has Docker workers: CLM's own pool manager starts it")
        return clm_class(*args, **kwargs)
    return ClmPoolManager(*args, **kwargs)


class ClmPoolManager:
    """A pool of CLM's direct workers with the interface of CLM 1.9.2's and 1.35's ``WorkerPoolManager``.

    Takes what either CLM passes, CLM's own ``WorkerConfig`` objects as they
    are.  Checks everything and starts nothing (a type whose worker module
    cannot run here is logged, as CLM does, and left out).  Raises
    :class:`ConfigError` for a value clm-workers refuses.
    """

    def __init__(
        self,
        db_path: Path | str,
        workspace_path: Path | str,
        worker_configs: Sequence[Any],
        network_name: str | None = None,
        log_level: str = "INFO",
        max_startup_concurrency: int | None = None,
        cache_db_path: Path | str | None = None,
        data_dir: Path | str | None = None,
        notebook_kernel_python: str = "",
        session_id: str | None = None,
        workers_shareable: bool = False,
        **newer: Any,
    ) -> None:
        for name, value in newer.items():
            log.warning("CLM passed %s=%r to its pool manager; clm-workers does not know it and ignores it",
                        name, value)
        if workers_shareable:
            log.warning("CLM asked for workers that outlive the build (auto_stop is off); clm-workers "
                        "stops its workers with the build: for a pool that serves many builds run "
                        "`clm-workers start` on the jobs database")
        self.db_path = Path(db_path)
        # CLM makes the output folder during the build; the workers run in it from the start.
        self.workspace_path = Path(workspace_path)
        self.workspace_path.mkdir(parents=True, exist_ok=True)
        self.worker_configs = list(worker_configs)
        self.log_level = log_level
        self.cache_db_path = None if cache_db_path is None else Path(cache_db_path)
        self.data_dir = data_dir
        self.network_name = network_name
        self._clm_configs: dict[str, Any] = {c.worker_type: c for c in self.worker_configs if c.count > 0}
        configs = _runnable(
            [_our_config(c, notebook_kernel_python) for c in self._clm_configs.values()], self.workspace_path
        )
        self.executors: dict[str, _Executor] = {"direct": _Executor(self)}
        self._manager: WorkerPoolManager | None = None
        if configs:
            self._manager = WorkerPoolManager(
                self.db_path, self.workspace_path, configs,
                max_startup_concurrency=max_startup_concurrency, log_level=log_level,
                cache_db_path=self.cache_db_path, session_id=session_id,
                poll_interval=None if os.environ.get("CLM_REGISTRATION_POLL_INTERVAL") else POLL_INTERVAL,
            )
        self.session_id = self._manager.session_id if self._manager else session_id
        self.needed = {c.worker_type: c.count for c in configs}
        self.monitor_settings = MonitorSettings(interval=MONITOR_INTERVAL, max_job_time=float(max(
            (getattr(c, "max_job_time", 600) for c in self._clm_configs.values()), default=600
        )))
        self._thread: _PoolThread | None = None

    @property
    def running(self) -> bool:
        """Whether the pool runs (between :meth:`start_pools` and :meth:`stop_pools`)."""
        return self._thread is not None and self._thread.alive

    # -- CLM's calls -------------------------------------------------------------

    def start_pools(self) -> None:
        """Start every worker at once; return once each needed type has one registered worker.

        A type whose every worker failed counts as ready too: CLM's build then
        reports its jobs as it reports a pool that never started.  Raises
        :class:`PoolStartupError` for a fatal error (nothing is left running);
        an interruption (Ctrl-C) while waiting stops every worker and propagates.
        """
        if self._thread is not None:
            raise RuntimeError("start_pools() was already called; call stop_pools() first")
        if self._manager is None:
            log.info("No workers to start")
            return
        log.info("Starting %d worker(s) (%s) with clm-workers, session %s",
                 sum(self.needed.values()), _counts(self.needed), self.session_id)
        self._thread = _PoolThread(self._manager, self.monitor_settings, self.needed)
        clock = time.monotonic()
        try:
            self._thread.start()
        except BaseException:
            self._thread.stop()
            self._thread = None
            raise
        _running.add(self)
        still = "; the others keep starting" if self._thread.pending else ""
        log.info("Workers ready for the build after %.1fs: %s registered%s",
                 time.monotonic() - clock, _counts(self._thread.registered), still)

    def start_monitoring(self, check_interval: int = 10) -> None:
        """Nothing to start: the pool is monitored from the end of its startup (``MONITOR_INTERVAL``)."""
        log.debug("the clm-workers pool is monitored since its startup; check_interval=%s is not used",
                  check_interval)

    def stop_pools(self) -> None:
        """Stop every worker in parallel (SIGTERM, grace, SIGKILL; kernels too).  Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        log.info("Stopping worker pools")
        clock = time.monotonic()
        thread.stop()
        _running.discard(self)
        log.info("Stopped the clm-workers pool in %.1fs", time.monotonic() - clock)

    def close(self) -> None:
        """Stop the pool if it still runs: nothing of it outlives its manager."""
        self.stop_pools()

    @property
    def workers(self) -> dict[str, list[dict[str, Any]]]:
        """Started, not yet stopped workers by type, as CLM's own manager lists them."""
        result: dict[str, list[dict[str, Any]]] = {t: [] for t in self._clm_configs}
        for handle in self._live():
            spec = handle.spec
            if spec.db_worker_id is None:
                continue
            result.setdefault(spec.worker_type, []).append({
                "executor_id": handle.executor_id,
                "db_worker_id": spec.db_worker_id,
                "config": self._clm_configs.get(spec.worker_type),
                "executor": self.executors["direct"],
                "started_at": _started_at(handle),
            })
        return result

    def get_worker_stats(self) -> dict[str, dict[str, Any]]:
        """Workers by type and status, as CLM's own manager counts them."""
        stats: dict[str, dict[str, Any]] = {}
        for worker_type, infos in self.workers.items():
            if infos:
                stats[worker_type] = {"running": len(infos)}
        return stats

    def _live(self) -> list[WorkerHandle]:
        return self._manager.live_workers() if self._manager is not None else []


class _Executor:
    """What CLM asks of ``pool_manager.executors["direct"]``: is a worker of this pool running."""

    def __init__(self, owner: ClmPoolManager) -> None:
        self._owner = owner

    def _handle(self, worker_id: str) -> WorkerHandle | None:
        return next((h for h in self._owner._live() if h.executor_id == worker_id), None)

    def is_worker_running(self, worker_id: str) -> bool:
        handle = self._handle(worker_id)
        if handle is None:
            return False
        poll = getattr(handle.native, "poll", None)
        return not callable(poll) or poll() is None

    def get_worker_stats(self, worker_id: str) -> dict[str, Any] | None:
        handle = self._handle(worker_id)
        if handle is None:
            return None
        return {"pid": handle.pid, "is_alive": self.is_worker_running(worker_id)}

    def get_container_logs(self, worker_id: str, tail: int = 100) -> str | None:
        return None

    def cleanup(self) -> None:
        """Nothing: :meth:`ClmPoolManager.stop_pools` stops the workers."""


class _PoolThread:
    """One Trio run, in a daemon thread, for a pool's whole life: start, monitor, stop.

    :meth:`start` blocks until every needed type is settled (one worker
    registered, or all of its workers failed) and raises the run's error if it
    ended before that.  :meth:`stop` cancels the run, whose cleanup stops
    every worker (shielded, bounded), and waits for it.
    """

    def __init__(
        self, manager: WorkerPoolManager, monitor: MonitorSettings, needed: Mapping[str, int]
    ) -> None:
        self.manager = manager
        self.monitor = monitor
        self.needed = dict(needed)
        self._registered = dict.fromkeys(needed, 0)
        self._failed = dict.fromkeys(needed, 0)
        self._settled: AsyncValue[bool] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._main, name="clm-workers-pool", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def registered(self) -> dict[str, int]:
        """Workers registered so far, by type."""
        return dict(self._registered)

    @property
    def pending(self) -> int:
        """Workers neither registered nor failed yet."""
        return sum(n - self._registered[t] - self._failed[t] for t, n in self.needed.items())

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._scope.cancel)
        if self._thread.ident is not None:
            self._thread.join()

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:
            if self._ready.is_set():
                log.error("the clm-workers pool stopped: %s", exc)
            self._error = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._settled = AsyncValue(self._all_settled())
        with trio.CancelScope() as self._scope:
            pool_run = run_worker_pool(self.manager, monitor=self.monitor, on_progress=self._on_progress)
            async with pool_run as pool:
                await self._settled.wait_value(True)
                self._ready.set()
                report = await pool.wait_started()
                log.info("Started %d/%d worker(s) in %.1fs", len(report.started),
                         len(report.started) + len(report.failed), report.duration)
                if report.failed:
                    log.error("Failed to start %d worker(s): %s", len(report.failed),
                              [(f.worker_type, f.index) for f in report.failed])
                if not self.manager.running:
                    return  # nothing to supervise: stop at once rather than at exit
                await trio.sleep_forever()

    def _all_settled(self) -> bool:
        return all(self._registered[t] or self._failed[t] >= n for t, n in self.needed.items())

    def _on_progress(self, event: ProgressEvent) -> None:
        """Every step into CLM's log as it happens (called in the Trio thread, never blocks)."""
        label = f"{event.worker_type}-{event.index}"
        if event.kind == "registered":
            self._registered[event.worker_type] = self._registered.get(event.worker_type, 0) + 1
            log.info("✓ Started %s: registered after %.1fs", label, event.elapsed)
        elif event.kind == "failed":
            self._failed[event.worker_type] = self._failed.get(event.worker_type, 0) + 1
            log.error("✗ Failed to start %s (%s): %s", label, event.phase, event.detail)
        else:
            log.debug("%s spawned after %.2fs", label, event.elapsed)
        if self._settled is not None:
            self._settled.value = self._all_settled()


def _our_config(clm_config: Any, kernel_python: str) -> WorkerConfig:
    """Our :class:`WorkerConfig` for one of CLM's: its type, count and memory limit; CLM's module."""
    env: dict[str, str] = {}
    if clm_config.worker_type == "notebook" and kernel_python:
        env = installed_clm().notebook_kernel_environment(kernel_python)
    options: dict[str, Any] = {}
    if clm_config.worker_type in fork_server_types():
        options["start_method"] = START_METHOD
    return WorkerConfig(
        worker_type=clm_config.worker_type, count=clm_config.count, execution_mode="direct",
        memory_limit=getattr(clm_config, "memory_limit", None) or "1g", env=env, **options,
    )


def _runnable(configs: list[WorkerConfig], workspace: Path) -> list[WorkerConfig]:
    """The configs whose module (CLM's, for its type) this interpreter can run; the others logged."""
    modules = installed_clm().modules
    runnable = []
    for config in configs:
        module = modules.get(config.worker_type)
        if module is None:
            log.error("Unknown worker type: %s (CLM's types: %s)", config.worker_type, ", ".join(modules))
        elif not module_runnable(module, [str(workspace)]):
            log.error("Worker '%s' not available in direct mode: this Python cannot run %s "
                      "(pip install clm[%s], or clm[all-workers])",
                      config.worker_type, module, config.worker_type)
        else:
            runnable.append(config)
    return resolve_configs(runnable)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {t}" for t, n in counts.items()) or "none"


def _started_at(handle: WorkerHandle) -> datetime:
    """When the worker's process started (CLM lists it), else now."""
    if handle.pid is not None:
        with contextlib.suppress(Exception):
            import psutil

            return datetime.fromtimestamp(psutil.Process(handle.pid).create_time())
    return datetime.now()


@atexit.register
def _stop_at_exit() -> None:
    """A build that ended without stopping its pool (an error before CLM's ``finally``) leaves nothing."""
    for manager in list(_running):
        with contextlib.suppress(Exception):
            manager.stop_pools()


__all__ = ["START_METHOD", "ClmPoolManager", "install", "pool_manager", "uninstall"]
