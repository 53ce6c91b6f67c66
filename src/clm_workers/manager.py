"""The public entry point: :class:`WorkerPoolManager`.

CLM calls ``trio.run(manager.start_pools)`` and later
``trio.run(manager.stop_pools)``; both also work as ``await`` inside a Trio
program.  The manager object carries the started workers between the calls.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from . import logfiles
from .backend import ThreadedBackend
from .clm.database import check_database
from .clm.ownership import check_session_id
from .clm.profile import resolve_configs, worker_environment
from .config import WorkerConfig, build_settings, resolve_docker_network, resolve_number
from .errors import (
    ConfigError,
    DatabaseUnusableError,
    FatalExecutorError,
    PoolStartupError,
    PoolStoppedError,
    database_unusable,
    unwrap_lone_exception,
)
from .executors.base import Executor, WorkerHandle
from .executors.direct import DirectExecutor
from .lease import DEFAULT_TTL_SECONDS
from .ledger import LiveWorkers
from .modules import unrunnable_pool, unrunnable_reason
from .monitor import MonitorSettings, PoolMonitor
from .plan import WorkerSpec, plan_workers
from .registry import Event, Registry
from .report import StartupReport
from .startup import ProgressCallback, start_workers
from .stopping import run_to_completion, stop_workers

log = logging.getLogger(__name__)


class WorkerPoolManager:
    """Starts, owns and stops the worker pools of one CLM database.

    Each manager has its own ``session_id`` (a new UUID unless given) written
    on every row it creates; it only ever stops, marks or cleans what carries
    its session.
    """

    def __init__(
        self,
        db_path: Path | str,
        workspace_path: Path | str,
        worker_configs: Sequence[WorkerConfig],
        max_startup_concurrency: int | None = None,
        registration_timeout: float | None = None,
        *,
        slot_mode: str = "spawn",
        fail_fast: bool = False,
        stop_timeout: float | None = None,
        poll_interval: float | None = None,
        log_level: str = "INFO",
        log_dir: Path | str | None = None,
        lease_ttl: float | None = None,
        docker_network: str | None = None,
        clm_profile: str = "auto",
        cache_db_path: Path | str | None = None,
        session_id: str | None = None,
        serve_builds: bool = False,
    ) -> None:
        """Validate everything; start nothing.

        ``max_startup_concurrency`` defaults to ``CLM_MAX_WORKER_STARTUP_CONCURRENCY``
        or 10, ``registration_timeout`` to ``CLM_WORKER_REGISTRATION_TIMEOUT`` or
        10 s, ``stop_timeout`` (SIGTERM-to-SIGKILL grace) to ``CLM_WORKER_STOP_TIMEOUT``
        or 5 s.  ``slot_mode="registration"`` makes each worker hold its startup
        slot until it registered (the original proposal's semantics).  Raises
        :class:`ConfigError` for any value that is not allowed.

        ``lease_ttl`` (``CLM_SESSION_LEASE_TTL``, 10 s): how long workers outlive
        a manager that died without stopping them and cannot reach them by
        its lifeline (containers), see :mod:`clm_workers.lease`.

        ``docker_network`` (``CLM_DOCKER_NETWORK``, none): the network every
        container of this manager joins, created if missing (docs/docker.md).

        ``clm_profile``: ``"auto"`` (the CLM installed here decides the default
        module and registration protocol of each worker type), ``"1.x"`` or
        ``"0.3"``; see :mod:`clm_workers.clm`.  ``cache_db_path``: CLM's
        executed-notebook cache, passed to direct workers (default:
        ``clm_cache.db`` beside the jobs database).

        ``session_id``: the session of every row, event, job and lease of
        this manager (default: a new UUID); give one only to work inside a
        session that exists already, such as a CLM build's (the drop-in,
        :mod:`clm_workers.clm.dropin`).  ``serve_builds``: the workers serve
        every CLM build on the database, not only this session's jobs (shared
        rows, see :mod:`clm_workers.clm.ownership`).

        Checked here, so that nothing starts on bad input: every direct pool's
        module can be run by this interpreter, and ``db_path`` is a new file or
        a CLM database (any other file is refused and left unchanged).
        """
        self.db_path = Path(db_path)
        self.workspace_path = Path(workspace_path)
        if not self.workspace_path.is_dir():
            raise ConfigError("workspace_path", str(workspace_path), "an existing folder")
        for config in worker_configs:
            if not isinstance(config, WorkerConfig):
                raise ConfigError("worker_configs", config, "WorkerConfig instances")
        self.settings = build_settings(
            max_startup_concurrency=max_startup_concurrency,
            registration_timeout=registration_timeout,
            slot_mode=slot_mode,
            fail_fast=fail_fast,
            stop_timeout=stop_timeout,
            poll_interval=poll_interval,
        )
        self.lease_ttl = resolve_number(
            "lease_ttl", lease_ttl, env_var="CLM_SESSION_LEASE_TTL", default=DEFAULT_TTL_SECONDS,
            kind=float, minimum=1.0, maximum=3600.0,
        )
        self.docker_network = resolve_docker_network(docker_network)
        if not any(config.count for config in worker_configs):
            raise ConfigError(
                "worker_configs", list(worker_configs), "at least one WorkerConfig with a count above 0"
            )
        self.worker_configs = resolve_configs(worker_configs, clm_profile)
        unrunnable = unrunnable_pool(self.worker_configs, self.workspace_path)
        if unrunnable is not None:
            config = self.worker_configs[unrunnable]
            raise ConfigError(
                f"module (worker {config.worker_type!r})", config.module,
                unrunnable_reason(self.workspace_path, defaulted=worker_configs[unrunnable].module is None),
            )
        check_database(self.db_path)
        self.cache_db_path = (
            Path(cache_db_path) if cache_db_path is not None else self.db_path.parent / "clm_cache.db"
        )
        self.log_level = log_level
        self.session_id = uuid.uuid4().hex if session_id is None else check_session_id(session_id)
        self.serve_builds = serve_builds
        self.report: StartupReport | None = None
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._live = LiveWorkers()
        self._backend: ThreadedBackend | None = None
        self._own_log_dir: Path | None = None
        self._monitor_thread: _MonitorThread | None = None
        #: Why the background monitor stopped the pool by itself (its database file is gone), if it did.
        self.stopped_reason: str | None = None

    @property
    def registry(self) -> Registry:
        """The database of this manager (open between start_pools and stop_pools)."""
        if self._backend is None:
            raise RuntimeError("the pool is not running: call start_pools() first")
        return self._backend.registry

    @property
    def running(self) -> int:
        """How many workers this manager has started and not stopped."""
        return len(self._live)

    def live_workers(self) -> list[WorkerHandle]:
        """The workers this manager has started and not stopped (registered or not), now."""
        return self._live.snapshot()

    @trio.lowlevel.enable_ki_protection  # a Ctrl-C comes at a checkpoint: see clm_workers.startup
    async def start_pools(self, *, on_progress: ProgressCallback | None = None) -> StartupReport:
        """Start every configured worker at once and wait for their registrations.

        Returns a :class:`StartupReport` in which each worker is either
        started (registered and running) or failed (stopped, with the phase
        and a reason).  Raises :class:`PoolStartupError` for a fatal error;
        then nothing is left running.

        Cancellation and ``KeyboardInterrupt``: pending starts are cancelled,
        started workers are stopped (shielded, bounded), then the exception
        propagates.  A Ctrl-C is taken at a checkpoint, never in the middle of
        this code (:func:`clm_workers.startup.start_workers`).
        """
        if self._backend is not None:
            raise RuntimeError("start_pools() was already called; call stop_pools() first")
        backend = self._backend = self._open_backend()
        try:
            try:
                await trio.to_thread.run_sync(self._open_database, backend)
            except Exception as exc:
                raise database_unusable(exc) from exc
            specs = plan_workers(self.worker_configs, self.session_id)
            self.report = await self._start(specs, on_progress)
        except BaseException:
            self._close()  # every worker is stopped by now
            raise
        return self.report

    async def replace_worker(self, spec: WorkerSpec, on_progress: ProgressCallback | None = None) -> bool:
        """Start a replacement for the worker of ``spec`` (same type and index).

        Returns whether it registered; a failed replacement is stopped and
        reported like any failed start.  Raises :class:`DatabaseUnusableError`
        when the database refuses the new row (no worker was started; the
        monitor tries again later).  Used by the monitor.
        """
        try:
            report = await self._start([spec.respawned()], on_progress, announce=False)
        except DatabaseUnusableError:
            raise
        except PoolStartupError as exc:
            log.error("replacing %s failed: %s", spec.label, exc)
            return False
        return bool(report.started)

    async def _start(
        self, specs: list[WorkerSpec], on_progress: ProgressCallback | None, announce: bool = True
    ) -> StartupReport:
        if self._backend is None:
            raise RuntimeError("the pool is not running: call start_pools() first")
        with unwrap_lone_exception():
            return await start_workers(
                specs, self._backend, self.settings, self._live, on_progress, announce=announce
            )

    def start_monitoring(self, settings: MonitorSettings | None = None) -> PoolMonitor:
        """Monitor the running pool from a background thread until :meth:`stop_pools`.

        For callers that run ``trio.run(manager.start_pools)`` and
        ``trio.run(manager.stop_pools)`` separately: the monitor runs in its
        own Trio loop in a daemon thread in between.  (Inside a Trio program,
        use :func:`clm_workers.open_worker_pool` instead.)
        """
        if self._monitor_thread is not None:
            raise RuntimeError("the pool is already monitored")
        monitor = self.make_monitor(settings)
        self._monitor_thread = _MonitorThread(monitor, self._stopped_by_monitor)
        self._monitor_thread.start()
        return monitor

    def make_monitor(
        self,
        settings: MonitorSettings | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        on_death: Callable[[WorkerSpec], None] = lambda spec: None,
    ) -> PoolMonitor:
        """A :class:`PoolMonitor` for the running pool; run it with ``await monitor.run()``."""
        if self._backend is None:
            raise RuntimeError("the pool is not running: call start_pools() first")
        return PoolMonitor(
            self._backend, self._live, settings or MonitorSettings(),
            replace=lambda spec: self.replace_worker(spec, on_progress), on_death=on_death,
        )

    async def stop_pools(self) -> None:
        """Stop every worker of this manager in parallel and record them dead.

        Stops the background monitor first (so nothing is replaced), then
        SIGTERM to all, ``stop_timeout`` of grace, then SIGKILL, under one
        overall bound.  Idempotent.

        Cancellation and ``KeyboardInterrupt``: neither cuts the stop short
        (it runs to its end, within its bound, however many Ctrl-C arrive);
        a ``KeyboardInterrupt`` that arrived meanwhile is raised afterwards,
        once.
        """
        backend = self._backend
        if backend is None:
            return
        try:
            with unwrap_lone_exception():
                await run_to_completion(lambda: self._stop_everything(backend))
        finally:
            self._close()

    async def _stop_everything(self, backend: ThreadedBackend) -> None:
        with trio.move_on_after(self.settings.stop_bound):
            if self._monitor_thread is not None:
                await trio.to_thread.run_sync(self._monitor_thread.stop)
                self._monitor_thread = None
            await self._stop_workers(backend)

    async def _stop_workers(self, backend: ThreadedBackend) -> None:
        """Stop every worker this manager owns, mark their rows dead, record it (the caller bounds it)."""
        handles = self._live.snapshot()
        clock = trio.current_time()
        await _record_quietly(backend, [Event("pool_stopping", "-", metadata={"workers": len(handles)})])
        failures = await stop_workers(backend, handles, grace=self.settings.stop_grace, owner=self._live)
        try:
            await backend.mark_dead([h.spec for h in handles], handles)
        except Exception as exc:  # what the workers did not mark themselves, the next manager retires
            log.warning("could not mark the stopped workers dead: %s", exc)
        duration = round(trio.current_time() - clock, 3)
        await _record_quietly(backend, [
            *(Event("worker_stopped", h.spec.worker_type, h.db_worker_id, h.spec.execution_mode,
                    metadata={"stop_seconds": duration}) for h in handles),
            Event("pool_stopped", "-", metadata={
                "workers": len(handles), "failures": len(failures), "duration": duration}),
        ])

    # -- internals -------------------------------------------------------------

    def _open_database(self, backend: ThreadedBackend) -> None:
        """Open the database (with this session's lease) and retire what dead sessions left."""
        backend.registry.open()
        for session, rows in backend.registry.clean_dead_sessions().items():
            log.warning("retired %d worker rows left by session %s, whose manager died", rows, session)
        # Containers of managers that died: stopped by their lease, but still there.
        # Removed by whichever manager comes next, one with only direct workers too.
        dead = set(backend.registry.expired_sessions())
        if "docker" not in backend.executors:
            dead &= backend.registry.sessions_with_docker_rows()
        if not dead:
            return
        from .executors.docker import DockerExecutor  # the docker SDK only when there are containers

        existing = backend.executors.get("docker")
        executor = existing if isinstance(existing, DockerExecutor) else DockerExecutor(
            db_path=self.db_path.resolve(), workspace_path=self.workspace_path.resolve(), pool_size=2)
        try:
            executor.remove_containers_of(dead)
        except FatalExecutorError as exc:
            log.debug("no cleanup of dead sessions' containers: %s", exc)  # the preflight reports it
        except Exception as exc:
            log.warning("could not remove the containers of dead sessions: %s", exc)
        finally:
            if executor is not existing:
                executor.close()

    def _open_backend(self) -> ThreadedBackend:
        # Resolved once: the registry, the lease and every executor use the same
        # file, whatever a symlink on the way leads to later (the lease watches it).
        db_file = self.db_path.resolve()
        log_dir = self._log_dir
        if log_dir is None:
            # Beside the database, one folder per session: findable (`clm-workers logs`)
            # while the pool runs and after it stopped; pruned at _close.
            log_dir = self._own_log_dir = logfiles.session_log_dir(db_file, self.session_id)
        direct = DirectExecutor(
            db_path=db_file,
            workspace_path=self.workspace_path.resolve(),
            log_dir=log_dir,
            log_level=self.log_level,
            extra_env=worker_environment(self.worker_configs, self.cache_db_path.resolve()),
        )
        executors: dict[str, Executor] = {}
        if any(config.start_method == "forkserver" for config in self.worker_configs):
            from .executors.forkserver import ForkServerExecutor

            # Before "direct": closing executors in this order stops the templates first.
            executors["forkserver"] = ForkServerExecutor(direct)
        executors["direct"] = direct
        if any(config.execution_mode == "docker" for config in self.worker_configs):
            from .executors.docker import DockerExecutor  # the docker SDK only when used

            executors["docker"] = DockerExecutor(
                db_path=db_file,
                workspace_path=self.workspace_path.resolve(),
                # Every spawn at once, plus the watcher's or monitor's poll.
                pool_size=self.settings.concurrency + 2,
                network=self.docker_network,
                log_level=self.log_level,
            )
        registry = Registry(db_file, session_id=self.session_id, lease_ttl=self.lease_ttl,
                            watch_path=self.db_path, serve_builds=self.serve_builds)
        return ThreadedBackend(registry, executors, fan_out=self.settings.concurrency)

    async def _stopped_by_monitor(self, error: PoolStoppedError) -> None:
        """The background monitor found the database gone: stop every worker now (bounded)."""
        self.stopped_reason = str(error)
        backend = self._backend
        if backend is not None:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.settings.stop_bound
                await self._stop_workers(backend)

    @trio.lowlevel.enable_ki_protection  # a Ctrl-C must not leave the executors or the lease half closed
    def _close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is None:
            return
        if len(self._live):
            # Stop failed for some workers: closing the executors ends their
            # lifeline, so they exit by themselves.
            log.warning("%d workers could not be stopped cleanly", len(self._live))
        for executor in backend.executors.values():
            executor.close()
        backend.registry.close()
        if self._own_log_dir is not None:
            # This session's logs stay; those of sessions long gone do not pile up.
            logfiles.prune(self.db_path.resolve())
            self._own_log_dir = None


async def _record_quietly(backend: ThreadedBackend, events: list[Event]) -> None:
    """Audit events must never stop a shutdown."""
    try:
        await backend.record(events)
    except Exception as exc:
        log.warning("could not record %s: %s", events[-1].event_type, exc)


class _MonitorThread:
    """A :class:`PoolMonitor` in its own Trio loop in a daemon thread.

    When the monitor stops the pool (:class:`PoolStoppedError`: the database
    file is gone), ``on_stopped`` stops the workers in that loop.
    """

    def __init__(
        self, monitor: PoolMonitor, on_stopped: Callable[[PoolStoppedError], Awaitable[None]]
    ) -> None:
        self.monitor = monitor
        self.on_stopped = on_stopped
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._main, name="clm-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        """Cancel the monitor and wait for its loop to end (blocking)."""
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._scope.cancel)
        self._thread.join()

    def _main(self) -> None:
        async def run() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self._scope:
                self._ready.set()
                try:
                    await self.monitor.run()
                except PoolStoppedError as exc:
                    log.error("%s", exc)
                    await self.on_stopped(exc)

        try:
            trio.run(run)
        except Exception:
            log.exception("the pool monitor stopped")
        finally:
            self._ready.set()
