"""``clm-workers start``: run a pool in the foreground until Ctrl-C (or SIGTERM).

The pool is :func:`clm_workers.open_worker_pool` with the settings of
``workers.toml``; this module only watches it and draws.  Everything shown
is read from the database (the session's events and rows), the same source
``clm-workers status`` reads, so the two views always agree.

Signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP all mean "stop": the pool stops
every worker (SIGTERM to all, ``stop.grace``, then SIGKILL) and the command
exits 0.  A second signal while stopping only says that the stop is bounded.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from .. import display, inventory
from ..errors import PoolStartupError, unwrap_lone_exception
from ..pool import PoolNotReadyError, open_worker_pool
from ..report import StartupReport
from ..settings_file import StartSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOT_STARTED = 1

#: How often the startup view polls the session's events, and the live table the rows.
STARTUP_POLL_SECONDS = 0.1
RUNNING_REFRESH_SECONDS = 1.0

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_start(settings: StartSettings, *, json_output: bool = False) -> int:
    """Start the pool, show it until a stop signal, stop it; the exit code."""
    _announce(settings)  # blocking reads: before the Trio loop runs
    return trio.run(_main, settings, json_output)


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
        """The session's rows and the job counts; ``None`` when they cannot be read right now."""
        conn = self._db()
        if conn is None:
            return None
        try:
            return (inventory.read_workers(conn, session=self.session_id, pids=self.pids),
                    inventory.job_counts(conn))
        except sqlite3.Error as exc:  # the display shows the last table until the next tick
            log.debug("reading workers: %s", exc)
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Stop:
    """What the signal watcher learned: whether, and when, a stop was asked for."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.at = 0.0


async def _main(settings: StartSettings, json_output: bool) -> int:
    clock = display.Clock()
    live = display.live_terminal()
    stop = _Stop()
    code = EXIT_OK
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            run_scope = trio.CancelScope()
            nursery.start_soon(_watch_signals, signals, run_scope, stop, settings)
            try:
                with run_scope, unwrap_lone_exception():
                    code = await _run_pool(settings, clock, live, json_output)
            except PoolStartupError as exc:
                display.note(f"clm-workers: the pool could not start: {exc}", "bold red")
                code = EXIT_NOT_STARTED
            finally:
                nursery.cancel_scope.cancel()
    if stop.signal is not None:
        display.note(f"Stopped every worker in {time.monotonic() - stop.at:.2f} s.", "bold")
    return code


def _announce(settings: StartSettings) -> None:
    counts = ", ".join(f"{c.worker_type} {c.count}" + (" (docker)" if c.execution_mode == "docker" else "")
                       for c in settings.worker_configs if c.count)
    options = settings.manager_options
    display.note(
        f"clm-workers: starting {settings.total_workers} workers ({counts}), "
        f"concurrency {options['max_startup_concurrency']}, database {_short(settings.db_path)}"
    )
    try:
        conn = inventory.open_database(settings.db_path)
    except Exception:
        return  # no database yet, or not one we can read: the pool reports it
    try:
        others = [s for s in inventory.read_sessions(conn) if s.alive]
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


async def _watch_signals(
    signals: Any, run_scope: trio.CancelScope, stop: _Stop, settings: StartSettings
) -> None:
    async for signum in signals:
        if stop.signal is None:
            stop.signal = signal.Signals(signum).name
            stop.at = time.monotonic()
            grace = settings.manager_options["stop_timeout"]
            display.note(f"clm-workers: {stop.signal}: stopping every worker "
                         f"(SIGTERM, up to {grace:g} s grace, then SIGKILL)…", "bold")
            run_scope.cancel()
        else:
            display.note("clm-workers: still stopping; the stop is bounded and ends by itself", "yellow")


async def _run_pool(settings: StartSettings, clock: display.Clock, live: bool, json_output: bool) -> int:
    totals: dict[str, int] = {}
    for config in settings.worker_configs:
        if config.count:
            totals[config.worker_type] = totals.get(config.worker_type, 0) + config.count
    async with open_worker_pool(
        settings.db_path, settings.workspace_path, settings.worker_configs,
        monitor=settings.monitor, **settings.manager_options,
    ) as pool:
        feed = _Feed(settings.db_path, pool.manager.session_id)
        try:
            with display.StartupView(totals, clock, live) as startup:
                async with trio.open_nursery() as watchers:
                    watchers.start_soon(_follow_startup, feed, startup)
                    try:
                        report = await pool.wait_started()
                    except PoolNotReadyError:
                        # Startup failed fatally: the pool's PoolStartupError is on
                        # its way and cancels this body; it is what the user sees.
                        await trio.sleep_forever()
                    watchers.cancel_scope.cancel()
                startup.on_events(await trio.to_thread.run_sync(feed.events))
                startup.missed_failures(report)
            display.startup_outcome(report)
            if json_output:
                print(json.dumps(_report_json(report, pool.manager.session_id, settings)), flush=True)
            if not report.started:
                display.note("clm-workers: no worker registered; stopping", "bold red")
                return EXIT_NOT_STARTED
            if not live:
                display.note(f"clm-workers: running (session {pool.manager.session_id[:8]}); stop with "
                             f"Ctrl-C, SIGTERM or `clm-workers stop --db {settings.db_path}`")
            with display.RunningView(_short(settings.db_path), pool.manager.session_id, clock,
                                     live) as view:
                while True:
                    events = await trio.to_thread.run_sync(feed.events)
                    view.on_events(events)
                    if live:
                        rows = await trio.to_thread.run_sync(feed.rows)
                        if rows is not None:
                            view.update(*rows)
                    await trio.sleep(RUNNING_REFRESH_SECONDS)
        finally:
            feed.close()


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

