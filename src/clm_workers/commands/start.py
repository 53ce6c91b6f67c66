"""``clm-workers start``: run a pool in the foreground until Ctrl-C (or SIGTERM).

The pool is :func:`clm_workers.open_worker_pool` with the settings of
``workers.toml``; this module only watches it and draws.  Everything shown
is read from the database (the session's events and rows), the same source
``clm-workers status`` reads, so the two views always agree.

Signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP all mean "stop": the pool stops
every worker (SIGTERM to all, ``stop.grace``, then SIGKILL) and the command
exits 0.  A second signal while stopping only says that the stop is bounded.
The live table keeps being read while the workers stop, and its last frame,
drawn after the pool has stopped, shows the rows as the database has them
then (``dead``), never the state the stop began from.

:func:`run_pool_command` is the same pool life with another body: ``demo``
runs a few jobs through the pool instead of waiting for a signal.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from .. import display, inventory
from ..errors import PoolStartupError, PoolStoppedError, unwrap_lone_exception
from ..pool import PoolNotReadyError, WorkerPool, open_worker_pool
from ..report import StartupReport
from ..settings_file import StartSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOT_STARTED = 1

#: How often the startup view polls the session's events, and the live table the rows
#: (more often while the workers stop, so that the table follows them).
STARTUP_POLL_SECONDS = 0.1
RUNNING_REFRESH_SECONDS = 1.0
STOPPING_REFRESH_SECONDS = 0.25

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: What runs once startup has finished: returns the exit code, or runs until cancelled.
Body = Callable[[WorkerPool, StartupReport, "Screen"], Awaitable[int]]


def run_start(settings: StartSettings, *, json_output: bool = False) -> int:
    """Start the pool, show it until a stop signal, stop it; the exit code."""
    return run_pool_command(settings, _show_until_stopped, json_output=json_output)


def run_pool_command(settings: StartSettings, body: Body, *, json_output: bool = False,
                     if_stopped_by_signal: int = EXIT_OK) -> int:
    """The pool's life on screen: announce, start (live progress), ``body``, stop; the exit code.

    A stop signal ends ``body`` and stops the pool cleanly; the exit code is
    then ``if_stopped_by_signal`` (``start``: 0, the way it is meant to end).
    """
    _announce(settings)  # blocking reads: before the Trio loop runs
    return trio.run(_main, settings, body, json_output, if_stopped_by_signal)


class _Feed:
    """The session's new events and rows, read from the database (blocking; to_thread).

    The database may not exist yet when the pool's body starts (startup runs
    as a task), so until it can be read every call returns nothing.
    """

    def __init__(self, db_path: Path, session_id: str) -> None:
        self.db_path = db_path
        self.session_id = session_id
        self.last_event = 0
        self.pids: dict[int, int | None] = {}
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self._conn is None:
            try:
                self._conn = inventory.connect_existing(self.db_path)
            except sqlite3.Error:
                return None
        return self._conn

    def events(self) -> list[inventory.EventRow]:
        conn = self._db()
        if conn is None:
            return []
        try:
            events = inventory.read_events(conn, session=self.session_id, after_id=self.last_event)
        except sqlite3.Error as exc:  # the schema is being created right now, or a passing lock
            log.debug("reading events: %s", exc)
            return []
        if events:
            self.last_event = events[-1].id
        return events

    def rows(self) -> tuple[list[inventory.WorkerRow], dict[str, int]] | None:
        """The session's rows and its jobs' counts; ``None`` when they cannot be read right now."""
        conn = self._db()
        if conn is None:
            return None
        try:
            return (inventory.read_workers(conn, session=self.session_id, pids=self.pids),
                    inventory.job_counts(conn, self.session_id))
        except sqlite3.Error as exc:  # the display shows the last table until the next tick
            log.debug("reading workers: %s", exc)
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Screen:
    """What the command shows, across the pool's life: startup, the running table, the stop.

    Owned by the command's outer task, so that it outlives the pool: the
    running table is refreshed by a task that keeps going while the pool
    stops, and :meth:`finish` draws its last frame after the pool is gone.
    """

    def __init__(self, settings: StartSettings) -> None:
        self.settings = settings
        self.clock = display.Clock()
        self.live = display.live_terminal()
        self.feed: _Feed | None = None
        self.startup: display.StartupView | None = None
        self.running: display.RunningView | None = None
        self.signal: str | None = None
        #: When the stop began (a signal, or the body's end); ``None`` while it has not.
        self.stop_at: float | None = None
        #: The command's own nursery (outside the pool): the live table's refresher runs there.
        self.nursery: trio.Nursery | None = None
        self._refresh_scope: trio.CancelScope | None = None
        self._refresher_done = trio.Event()

    def stop_asked(self, name: str) -> None:
        """A stop signal arrived (the first one): say so, above the live view."""
        self.signal = name
        self.stop_at = time.monotonic()
        grace = self.settings.manager_options["stop_timeout"]
        display.note(f"clm-workers: {name}: stopping every worker "
                     f"(SIGTERM, up to {grace:g} s grace, then SIGKILL)…", "bold")
        if self.running is not None:
            self.running.stopping()

    def show_running(self, session_id: str) -> None:
        """Start the live table, refreshed by a task in the command's nursery (not the pool's)."""
        assert self.nursery is not None
        self.running = display.RunningView(_short(self.settings.db_path), session_id, self.clock, self.live)
        self.running.__enter__()
        if self.signal is not None:
            self.running.stopping()
        # Made here, not in the task: finish() can cancel it even before the task first runs.
        self._refresh_scope = trio.CancelScope()
        self.nursery.start_soon(self._refresh, self._refresh_scope)

    async def _refresh(self, scope: trio.CancelScope) -> None:
        assert self.feed is not None and self.running is not None
        try:
            with scope:
                while True:
                    await self._read_once()
                    await trio.sleep(RUNNING_REFRESH_SECONDS if self.signal is None
                                     else STOPPING_REFRESH_SECONDS)
        finally:
            self._refresher_done.set()

    async def _read_once(self) -> tuple[list[inventory.WorkerRow], dict[str, int]] | None:
        assert self.feed is not None and self.running is not None
        self.running.on_events(await trio.to_thread.run_sync(self.feed.events))
        rows = await trio.to_thread.run_sync(self.feed.rows) if self.live else None
        if rows is not None:
            self.running.update(*rows)
        return rows

    async def finish(self) -> None:
        """After the pool: the table's last frame, read now, then the time the stop took.

        Cancellation: shielded; reads the database once more (bounded by SQLite's busy timeout).
        """
        with trio.CancelScope(shield=True):
            if self._refresh_scope is not None:
                self._refresh_scope.cancel()
                await self._refresher_done.wait()
            if self.running is not None:
                rows = await self._read_once()
                self.running.stopped(*(rows or (None, None)))
                self.running.close()
            if self.feed is not None:
                self.feed.close()
        if self.stop_at is not None:
            display.note(f"Stopped every worker in {time.monotonic() - self.stop_at:.2f} s.", "bold")


async def _main(settings: StartSettings, body: Body, json_output: bool, if_stopped_by_signal: int) -> int:
    screen = Screen(settings)
    code = EXIT_OK
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            screen.nursery = nursery
            run_scope = trio.CancelScope()
            nursery.start_soon(_watch_signals, signals, run_scope, screen)
            try:
                with run_scope, unwrap_lone_exception():
                    code = await _run_pool(settings, screen, body, json_output)
            except PoolStartupError as exc:
                display.note(f"clm-workers: the pool could not start: {_fatal_reason(exc, screen)}",
                             "bold red")
                code = EXIT_NOT_STARTED
            except PoolStoppedError as exc:  # its database file is gone: every worker is stopped
                display.note(f"clm-workers: {exc}", "bold red")
                code = EXIT_NOT_STARTED
            finally:
                await screen.finish()
                nursery.cancel_scope.cancel()
    return if_stopped_by_signal if screen.signal is not None and code == EXIT_OK else code


def _fatal_reason(exc: PoolStartupError, screen: Screen) -> str:
    """The error's text, without a worker's reason that the screen printed already (once is enough)."""
    text = str(exc)
    if screen.startup is not None:
        for reason in sorted(screen.startup.reasons, key=len, reverse=True):
            if reason and text.endswith(": " + reason):
                return text[: -len(reason) - 2] + " (its reason is above); every worker was stopped"
    return text


def _announce(settings: StartSettings) -> None:
    counts = ", ".join(f"{c.worker_type} {c.count}" + (" (docker)" if c.execution_mode == "docker" else "")
                       for c in settings.worker_configs if c.count)
    options = settings.manager_options
    display.note(
        f"clm-workers: starting {settings.total_workers} workers ({counts}), "
        f"concurrency {options['max_startup_concurrency']}, database {_short(settings.db_path)}"
    )
    log.info("settings from %s", settings.config_file or "flags and the environment")
    for key, source in settings.sources.items():
        log.debug("setting %s from %s", key, source)
    try:
        conn = inventory.open_database(settings.db_path)
    except Exception as exc:
        log.info("no database to read yet (%s): the pool creates it", exc)
        return  # no database yet, or not one we can read: the pool reports it
    try:
        others = [s for s in inventory.read_sessions(conn) if s.state in ("starting", "running", "stopping")]
    finally:
        conn.close()
    for other in others:
        display.note(
            f"clm-workers: note: session {other.session_id[:8]} (pid {other.pid} on {other.host}) "
            "already runs workers on this database; both pools will serve its jobs", "yellow",
        )


def _short(path: Path) -> str:
    """A path relative to the current folder when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


async def _watch_signals(signals: Any, run_scope: trio.CancelScope, screen: Screen) -> None:
    async for signum in signals:
        if screen.signal is None:
            screen.stop_asked(signal.Signals(signum).name)
            run_scope.cancel()
        else:
            display.note("clm-workers: still stopping; the stop is bounded and ends by itself", "yellow")


async def _run_pool(settings: StartSettings, screen: Screen, body: Body, json_output: bool) -> int:
    totals: dict[str, int] = {}
    for config in settings.worker_configs:
        if config.count:
            totals[config.worker_type] = totals.get(config.worker_type, 0) + config.count
    async with open_worker_pool(
        settings.db_path, settings.workspace_path, settings.worker_configs,
        monitor=settings.monitor, **settings.manager_options,
    ) as pool:
        session_id = pool.manager.session_id
        log.info("session %s: database %s, worker logs in %s", session_id, settings.db_path,
                 settings.manager_options.get("log_dir") or "the folder beside the database")
        feed = screen.feed = _Feed(settings.db_path, session_id)
        with display.StartupView(totals, screen.clock, screen.live) as screen.startup:
            async with trio.open_nursery() as watchers:
                watchers.start_soon(_follow_startup, feed, screen.startup)
                try:
                    report = await pool.wait_started()
                except PoolNotReadyError:
                    # Startup failed fatally: the pool's PoolStartupError is on
                    # its way and cancels this body; it is what the user sees.
                    await trio.sleep_forever()
                watchers.cancel_scope.cancel()
            screen.startup.on_events(await trio.to_thread.run_sync(feed.events))
            screen.startup.missed_failures(report)
        display.startup_outcome(report)
        log.info("startup: %s", report.summary())
        if json_output:
            print(json.dumps(_report_json(report, session_id, settings)), flush=True)
        if not report.started:
            display.note("clm-workers: no worker registered; stopping", "bold red")
            return EXIT_NOT_STARTED
        try:
            return await body(pool, report, screen)
        finally:
            if screen.stop_at is None:  # the body ended by itself: the pool stops now
                screen.stop_at = time.monotonic()
    raise AssertionError("unreachable")  # pragma: no cover - mypy: the pool's body always returns or raises


async def _show_until_stopped(pool: WorkerPool, report: StartupReport, screen: Screen) -> int:
    if not screen.live:
        display.note(f"clm-workers: running (session {pool.manager.session_id[:8]}); stop with "
                     f"Ctrl-C, SIGTERM or `clm-workers stop --db {screen.settings.db_path}`")
    screen.show_running(pool.manager.session_id)
    await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def _follow_startup(feed: _Feed, view: display.StartupView) -> None:
    while True:
        view.on_events(await trio.to_thread.run_sync(feed.events))
        await trio.sleep(STARTUP_POLL_SECONDS)


def _report_json(report: StartupReport, session_id: str, settings: StartSettings) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "database": str(settings.db_path),
        "duration": round(report.duration, 3),
        "started": [asdict(w) for w in report.started],
        "failed": [asdict(f) for f in report.failed],
    }
