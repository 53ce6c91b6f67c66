"""Terminal output with rich: live startup progress, summaries, tables.

Progress goes to stderr, data to stdout.  When stderr is not a terminal the
live bar becomes one plain line per event, so logs and CI output stay readable.
Colour follows rich's rules per stream (none when the stream is not a
terminal, none with ``NO_COLOR``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .inventory import EventRow, SessionRow, Snapshot, WorkerRow
from .report import ProgressEvent, StartupReport

stdout = Console()
stderr = Console(stderr=True)


@contextmanager
def startup_progress(total: int) -> Iterator[callable]:  # type: ignore[valid-type]
    """Yield an ``on_progress`` callback that shows ``registered n/total``."""
    counts = {"registered": 0, "failed": 0}

    if not stderr.is_terminal:
        def plain(event: ProgressEvent) -> None:
            if event.kind == "spawned":
                return
            counts[event.kind] += 1
            line = f"[{event.elapsed:6.2f}s] {event.worker_type}#{event.index} {event.kind}"
            line += f" (registered {counts['registered']}/{total})"
            if event.detail:
                line += f": {event.detail}"
            stderr.print(line, markup=False, highlight=False)
        yield plain
        return

    progress = Progress(
        TextColumn("[bold]starting workers"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("registered"),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    )
    task = progress.add_task("start", total=total, failed="")

    def live(event: ProgressEvent) -> None:
        if event.kind == "spawned":
            return
        counts[event.kind] += 1
        if event.kind == "failed":
            progress.console.print(
                f"[red]✗ {event.worker_type}#{event.index}[/red] {event.detail}", highlight=False
            )
        progress.update(
            task,
            completed=counts["registered"],
            failed=f"[red]{counts['failed']} failed[/red]" if counts["failed"] else "",
        )

    with progress:
        yield live


def print_startup_summary(report: StartupReport) -> None:
    times = sorted(w.registered_at for w in report.started)
    table = Table(title="Startup", show_header=False, title_justify="left")
    table.add_row("started", str(len(report.started)))
    table.add_row("failed", str(len(report.failed)))
    table.add_row("total time", f"{report.duration:.2f} s")
    if times:
        table.add_row(
            "registered at (p50 / p95 / max)",
            f"{statistics.median(times):.2f} / {_percentile(times, 95):.2f} / {times[-1]:.2f} s",
        )
    stdout.print(table)
    if report.failed:
        failures = Table(title="Failed workers", title_justify="left")
        for column in ("worker", "phase", "reason"):
            failures.add_column(column)
        for f in report.failed:
            failures.add_row(f"{f.worker_type}#{f.index}", f.phase, f.reason)
        stdout.print(failures)


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil
    return sorted_values[int(rank) - 1]


class ConsoleLogHandler(logging.Handler):
    """Log records as plain lines through the stderr console.

    Written through rich, a log line goes above a live display instead of
    into it (a plain ``StreamHandler`` would shift the live area and leave
    stale lines behind).
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stderr.print(Text(self.format(record)), highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def configure_logging(level: str) -> None:
    handler = ConsoleLogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


# -- clm-workers start ------------------------------------------------------------------

STATUS_STYLES = {
    "created": "yellow",
    "idle": "green",
    "busy": "cyan",
    "hung": "bold magenta",
    "dead": "red",
}

#: Dead rows the live table keeps showing (the most recent), below the live ones.
DEAD_ROWS_SHOWN = 5
#: Lines of the live view that are not worker rows: title, borders, header, footer, events margin.
TABLE_CHROME_LINES = 9


def live_terminal() -> bool:
    """Whether stderr gets a live display (a real, non-dumb terminal)."""
    return stderr.is_terminal and not stderr.is_dumb_terminal


class Clock:
    """Seconds since the command began, for the ``[  1.23s]`` prefix of plain lines."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.t0:7.2f}s]"


def note(message: str, style: str = "") -> None:
    """One line of progress on stderr (markup-free; styled only on a terminal)."""
    stderr.print(Text(message, style=style), highlight=False, soft_wrap=True)


class StartupView:
    """Per-type progress while the pool starts: ``notebook ━━━━ 3/4 registered``.

    Fed with the session's events as they appear in the database
    (``worker_registered`` from the workers, ``worker_failed`` from the
    engine).  On a terminal a rich progress bar per type, with each failure
    printed above it as it happens; elsewhere one plain line per event.
    """

    def __init__(self, totals: Mapping[str, int], clock: Clock, live: bool) -> None:
        self.totals = dict(totals)
        self.clock = clock
        self.live = live
        self.registered = dict.fromkeys(totals, 0)
        self.failed = dict.fromkeys(totals, 0)
        self.reported: set[str] = set()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> StartupView:
        if self.live:
            width = max(len(t) for t in self.totals) if self.totals else 8
            self._progress = Progress(
                TextColumn(f"  {{task.description:<{width}}}"),
                BarColumn(bar_width=32),
                MofNCompleteColumn(),
                TextColumn("registered"),
                TextColumn("{task.fields[failed]}"),
                TimeElapsedColumn(),
                console=stderr,
                transient=False,
            )
            for worker_type, total in self.totals.items():
                self._tasks[worker_type] = self._progress.add_task(worker_type, total=total, failed="")
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_events(self, events: Sequence[EventRow]) -> None:
        for event in events:
            if event.event_type == "worker_registered" and event.worker_type in self.registered:
                self.registered[event.worker_type] += 1
                self._update(event.worker_type)
                if not self.live:
                    pid = (event.metadata or {}).get("pid")
                    where = f", pid {pid}" if pid and event.execution_mode != "docker" else ""
                    note(f"{self.clock.stamp()} {event.label} registered{where} "
                         f"({event.worker_type} {self.registered[event.worker_type]}/"
                         f"{self.totals[event.worker_type]})")
            elif event.event_type == "worker_failed" and "phase" in (event.metadata or {}):
                self.failed[event.worker_type] = self.failed.get(event.worker_type, 0) + 1
                self._update(event.worker_type)
                message = event.message or f"{event.label} failed"
                self.reported.add(message.split(" ", 1)[0])
                self._print_failure(message)

    def missed_failures(self, report: StartupReport) -> None:
        """Print the report's failures whose event never showed up (an audit write failed)."""
        for failure in report.failed:
            label = f"{failure.worker_type}#{failure.index}"
            if label not in self.reported:
                self.reported.add(label)
                self._print_failure(f"{label} failed ({failure.phase}): {failure.reason}")

    def _print_failure(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(Text("✗ " + message, style="red"), highlight=False)
        else:
            note(f"{self.clock.stamp()} {message}")

    def _update(self, worker_type: str) -> None:
        if self._progress is None or worker_type not in self._tasks:
            return
        failed = self.failed.get(worker_type, 0)
        self._progress.update(
            self._tasks[worker_type],
            completed=self.registered.get(worker_type, 0),
            failed=f"[red]{failed} failed[/red]" if failed else "",
        )


def startup_outcome(report: StartupReport) -> None:
    """The one line after startup: ``✓ 6/6 workers registered in 1.21 s``."""
    if report.ok:
        note(f"✓ {report.summary()}", "bold green")
    elif report.started:
        note(f"! {report.summary()}; the others keep running", "bold yellow")
    else:
        note(f"✗ {report.summary()}", "bold red")


class RunningView:
    """The running pool: a table of its workers read from the database, refreshed ~1/s.

    On a terminal a rich live table below the log of events (deaths,
    replacements); elsewhere only the events, one plain line each.
    """

    def __init__(self, db_path: str, session_id: str, clock: Clock, live: bool) -> None:
        self.db_path = db_path
        self.session_id = session_id
        self.clock = clock
        self.live = live
        self._live: Live | None = None
        self._last: tuple[Sequence[WorkerRow], Mapping[str, int]] = ((), {})

    def __enter__(self) -> RunningView:
        if self.live:
            self._live = Live(Text("reading the database…", style="dim"), console=stderr,
                              auto_refresh=False, transient=False, redirect_stdout=False,
                              redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            # The last table stays on screen, marked as the state the stop began from.
            self._live.update(self.render(*self._last, stopping=True), refresh=True)
            self._live.stop()
            self._live = None

    def update(self, workers: Sequence[WorkerRow], jobs: Mapping[str, int]) -> None:
        self._last = (workers, jobs)
        if self._live is not None:
            self._live.update(self.render(workers, jobs), refresh=True)

    def on_events(self, events: Sequence[EventRow]) -> None:
        for event in events:
            line = running_event_line(event)
            if line is None:
                continue
            text, style = line
            if self._live is not None:
                self._live.console.print(Text(f"{time.strftime('%H:%M:%S')} {text}", style=style),
                                         highlight=False)
            else:
                note(f"{self.clock.stamp()} {text}")

    def render(
        self, workers: Sequence[WorkerRow], jobs: Mapping[str, int], stopping: bool = False
    ) -> RenderableType:
        active = [w for w in workers if w.status != "dead"]
        dead = sorted((w for w in workers if w.status == "dead"), key=lambda w: w.id)[-DEAD_ROWS_SHOWN:]
        running = sum(1 for w in active if w.status in ("idle", "busy"))
        title = Text.assemble(
            ("clm-workers", "bold"), f" · stopping {running}" if stopping else f" · {running} running",
            (f" · {len(active) - running} other" if len(active) > running else ""),
            f" · session {self.session_id[:8]} · {self.db_path}",
        )
        rows = sorted(active, key=_by_type_index) + dead
        # Keep the title and footer on screen: rows that do not fit become one summary row.
        room = max(3, stderr.height - TABLE_CHROME_LINES)
        hidden: list[WorkerRow] = []
        if len(rows) > room:
            rows, hidden = rows[:room - 1], rows[room - 1:]
        table = worker_table(rows, title=title)
        if hidden:
            counts: dict[str, int] = {}
            for w in hidden:
                counts[w.status] = counts.get(w.status, 0) + 1
            summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            table.add_row("", Text(f"… {len(hidden)} more", style="dim"), Text(summary, style="dim"))
        now = time.strftime("%H:%M:%S")
        footer = Text.assemble(
            ("jobs: ", "dim"), jobs_line(jobs),
            (f"  ·  stopping since {now}", "bold") if stopping
            else (f"  ·  Ctrl-C to stop  ·  updated {now}", "dim"),
        )
        return Group(table, footer)


def running_event_line(event: EventRow) -> tuple[str, str] | None:
    """The log line for an event while the pool runs, or ``None`` for routine ones."""
    if event.event_type == "worker_failed":
        return (f"✗ {event.message or event.label + ' failed'}", "red")
    if event.event_type == "worker_registered":
        pid = (event.metadata or {}).get("pid")
        where = f", pid {pid}" if pid and event.execution_mode != "docker" else ""
        return (f"✓ {event.label} registered{where}", "green")
    if event.event_type == "worker_starting":
        return (f"… {event.message or event.label + ' starting'}", "dim")
    return None


def _by_type_index(worker: WorkerRow) -> tuple[str, int, int]:
    index = worker.index
    return (worker.worker_type, -1 if index is None else index, worker.id)


def worker_table(workers: Sequence[WorkerRow], *, title: str | Text | None = None,
                 show_session: bool = False) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", justify="right", style="dim")
    table.add_column("worker")
    table.add_column("status")
    table.add_column("pid / container")
    table.add_column("jobs done", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("heartbeat", justify="right")
    table.add_column("up", justify="right")
    if show_session:
        table.add_column("session", style="dim")
    for w in workers:
        style = STATUS_STYLES.get(w.status, "")
        row: list[RenderableType] = [
            str(w.id), w.label, Text(w.status, style=style), w.where,
            str(w.jobs_processed), str(w.jobs_failed) if w.jobs_failed else "",
            "" if w.heartbeat_age is None or w.status == "dead" else f"{_duration(w.heartbeat_age)} ago",
            "" if w.age is None or w.status == "dead" else _duration(w.age),
        ]
        if show_session:
            row.append((w.session_id or "")[:8])
        table.add_row(*row, style="dim" if w.status == "dead" else None)
    if not workers:
        table.add_row("", Text("no workers", style="dim"), *[""] * (len(table.columns) - 2))
    return table


def jobs_line(jobs: Mapping[str, int]) -> str:
    order = ("pending", "processing", "completed", "failed", "cancelled")
    shown = [status for status in order if jobs.get(status) or status != "cancelled"]
    return ", ".join(f"{jobs.get(status, 0)} {status}" for status in shown)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


# -- clm-workers status ------------------------------------------------------------------


def print_status(snap: Snapshot, *, console: Console | None = None) -> None:
    """Sessions, workers, recent events and job counts of a database, as tables (stdout).

    Into a file or a pipe the tables are drawn 140 columns wide instead of
    rich's 80, so that ids and messages are not cut (scripts use ``--json``).
    """
    out = console or (stdout if stdout.is_terminal else Console(width=140))
    out.print(Text.assemble(("database ", "dim"), snap.database), highlight=False)
    if snap.sessions:
        sessions = Table(title="Sessions", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("session", "manager pid", "host", "started (UTC)", "state"):
            sessions.add_column(column)
        for s in snap.sessions:
            sessions.add_row(s.session_id[:8], str(s.pid or ""), s.host or "", s.started_at or "",
                             _session_state(s))
        out.print(sessions)
    workers = sorted(snap.workers, key=lambda w: (w.status == "dead", *_by_type_index(w)))
    title = "Workers" + (f" (and {snap.dead_hidden} dead: --all shows them)" if snap.dead_hidden else "")
    out.print(worker_table(workers, title=title, show_session=len(snap.sessions) > 1))
    if snap.events:
        events = Table(title="Recent events", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("time (UTC)", "event", "worker", "message"):
            events.add_column(column)
        for e in snap.events:
            style = "red" if e.event_type == "worker_failed" else ""
            events.add_row(e.created_at or "", Text(e.event_type, style=style),
                           e.label if e.worker_id is not None else "", Text(event_summary(e)))
        out.print(events)
    out.print(Text.assemble(("jobs: ", "dim"), jobs_line(snap.jobs)), highlight=False)


def event_summary(event: EventRow) -> str:
    """The event's message, else its metadata as ``key=value`` pairs."""
    if event.message:
        return event.message
    return ", ".join(f"{k}={v}" for k, v in (event.metadata or {}).items())


def _session_state(session: SessionRow) -> Text:
    if session.alive:
        return Text(f"running (lease {session.lease_left:.0f} s)", style="green")
    return Text("ended", style="dim")
