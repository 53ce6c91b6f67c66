"""Terminal output with rich: live startup progress, the live worker table, status and job tables.

Progress goes to stderr, data to stdout.  When stderr is not a terminal the
live views become one plain line per event, so logs and CI output stay
readable (and greppable: a message is never wrapped there).  On a terminal a
long message wraps at word boundaries with an indent, never inside
``concurrency 10`` or an executor id.  Colour follows rich's rules per
stream (none when the stream is not a terminal, none with ``NO_COLOR``).

Order is stable everywhere: workers by type name, then index (then row id);
jobs by id.
"""

from __future__ import annotations

import logging
import re
import statistics
import textwrap
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .inventory import EventRow, JobRow, SessionRow, Snapshot, WorkerRow
from .report import StartupReport

stdout = Console()
stderr = Console(stderr=True)

#: Every table has the same look: a rule under the header, no outer border.
TABLE_BOX = box.SIMPLE_HEAD
#: Wrapped lines of a message are indented by this much.
WRAP_INDENT = "  "
#: From this width on, a container is shown by its whole name (else by its unique suffix).
WIDE_COLUMNS = 120

_NBSP = "\u00a0"
# Glue that a wrap must not split: "concurrency 10", "code 3", "1.22 s", "5 s".
_GLUE = re.compile(r"(?<=[A-Za-z]) (?=\d)|(?<=\d) (?=(?:s|ms|%)\b)")


def fit(message: str, width: int) -> str:
    """``message`` wrapped to ``width`` at word boundaries, later lines indented."""
    glued = _GLUE.sub(_NBSP, message)
    wrapper = textwrap.TextWrapper(width=max(20, width), subsequent_indent=WRAP_INDENT,
                                   break_on_hyphens=False, break_long_words=True)
    return "\n".join(wrapper.wrap(glued) or [""]).replace(_NBSP, " ")


def message_text(message: str, style: str = "", console: Console = stderr) -> Text:
    """One message as rich text: wrapped with an indent on a terminal, one line elsewhere."""
    if console.is_terminal:
        message = fit(message, console.width)
    return Text(message, style=style)


def note(message: str, style: str = "") -> None:
    """One message of progress on stderr (markup-free; styled only on a terminal)."""
    stderr.print(message_text(message, style), highlight=False, soft_wrap=True)


# -- logging -------------------------------------------------------------------------------

#: Loggers whose ERROR records the live display of ``start`` already shows as events or as its
#: last line: the engine's fatal reason (``clm_workers.startup``) and the monitor's notice that
#: a type flaps (``clm_workers.monitor``).
SHOWN_BY_THE_DISPLAY = ("clm_workers.startup", "clm_workers.monitor")


class ConsoleLogHandler(logging.Handler):
    """Log records as plain lines through the stderr console.

    Written through rich, a log line goes above a live display instead of
    into it (a plain ``StreamHandler`` would shift the live area and leave
    stale lines behind).
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stderr.print(message_text(self.format(record)), highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


class _NotRepeated(logging.Filter):
    """Drops the records that only repeat what the display shows (unless a level was asked for)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name in SHOWN_BY_THE_DISPLAY)


def configure_logging(level: str, *, repeat_display: bool = True) -> None:
    """clm-workers' own log on stderr at ``level``; ``repeat_display=False`` drops what the display shows."""
    handler = ConsoleLogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not repeat_display:
        handler.addFilter(_NotRepeated())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# -- starting -------------------------------------------------------------------------------

STATUS_STYLES = {
    "created": "yellow",
    "idle": "green",
    "busy": "cyan",
    "hung": "bold magenta",
    "gone": "bold red",
    "dead": "red",
}

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


class StartupView:
    """Per-type progress while the pool starts: ``notebook ━━━━ 3/4 registered``.

    Fed with the session's events as they appear in the database
    (``worker_registered`` from the workers, ``worker_failed`` from the
    engine).  On a terminal a rich progress bar per type (by name), with each
    failure printed above it once, as it happens; elsewhere one plain line
    per event.
    """

    def __init__(self, totals: Mapping[str, int], clock: Clock, live: bool) -> None:
        self.totals = dict(sorted(totals.items()))
        self.clock = clock
        self.live = live
        self.registered = dict.fromkeys(self.totals, 0)
        self.failed = dict.fromkeys(self.totals, 0)
        #: Labels counted registered: one the engine fails after all (it registered too late)
        #: is taken off again, so that the counts end as the report's.
        self._registered_labels: set[str] = set()
        #: Labels whose failure has been printed.
        self.reported: set[str] = set()
        #: Failure reasons printed, so that a fatal error that quotes one can point up instead.
        self.reasons: set[str] = set()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> StartupView:
        if self.live:
            width = max(len(t) for t in self.totals) if self.totals else 8
            self._progress = Progress(
                TextColumn(f"  {{task.description:<{width}}}"),
                BarColumn(bar_width=None if stderr.width < 100 else 32),
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
            self._progress = None

    def on_events(self, events: Sequence[EventRow]) -> None:
        for event in events:
            if event.event_type == "worker_registered" and event.worker_type in self.registered:
                self.registered[event.worker_type] += 1
                self._registered_labels.add(event.label)
                self._update(event.worker_type)
                if not self.live:
                    pid = (event.metadata or {}).get("pid")
                    where = f", pid {pid}" if pid and event.execution_mode != "docker" else ""
                    note(f"{self.clock.stamp()} {event.label} registered{where} "
                         f"({event.worker_type} {self.registered[event.worker_type]}/"
                         f"{self.totals[event.worker_type]})")
            elif event.event_type == "worker_failed" and "phase" in (event.metadata or {}):
                self.failed[event.worker_type] = self.failed.get(event.worker_type, 0) + 1
                message = event.message or f"{event.label} failed"
                if event.label in self._registered_labels:
                    # Shown registered a moment ago, but too late for the engine: taken back.
                    self._registered_labels.discard(event.label)
                    self.registered[event.worker_type] -= 1
                    message += (f" ({event.worker_type} {self.registered[event.worker_type]}/"
                                f"{self.totals.get(event.worker_type, 0)} registered)")
                self._update(event.worker_type)
                self._print_failure(event.label, message, str((event.metadata or {}).get("reason") or ""))

    def missed_failures(self, report: StartupReport) -> None:
        """Print the report's failures whose event never showed up (an audit write failed)."""
        for failure in report.failed:
            label = f"{failure.worker_type}#{failure.index}"
            if label not in self.reported:
                self._print_failure(label, f"{label} failed ({failure.phase}): {failure.reason}",
                                    failure.reason)

    def _print_failure(self, label: str, message: str, reason: str) -> None:
        if label in self.reported:
            return
        self.reported.add(label)
        self.reasons.add(reason or message.split(": ", 1)[-1])
        if self._progress is not None:
            self._progress.console.print(message_text("✗ " + message, "red"), highlight=False,
                                         soft_wrap=True)
        else:
            note(f"{self.clock.stamp()} ✗ {message}")

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


def print_startup_summary(report: StartupReport) -> None:
    """The demo's table of startup figures (stdout)."""
    times = sorted(w.registered_at for w in report.started)
    table = Table(title="Startup", show_header=False, title_justify="left", box=TABLE_BOX, pad_edge=False)
    table.add_row("started", str(len(report.started)))
    table.add_row("failed", str(len(report.failed)))
    table.add_row("total time", f"{report.duration:.2f} s")
    if times:
        table.add_row(
            "registered at (p50 / p95 / max)",
            f"{statistics.median(times):.2f} / {_percentile(times, 95):.2f} / {times[-1]:.2f} s",
        )
    stdout.print(table)


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil
    return sorted_values[int(rank) - 1]


# -- running ----------------------------------------------------------------------------------


def latest_per_worker(workers: Sequence[WorkerRow]) -> tuple[list[WorkerRow], int]:
    """Each worker's newest row (a replacement's, not those of the incarnations it replaced),
    by name; and how many older rows were left out."""
    newest: dict[tuple[str, int], WorkerRow] = {}
    unnamed: list[WorkerRow] = []
    for w in workers:
        if w.index is None:
            unnamed.append(w)
        elif (key := (w.worker_type, w.index)) not in newest or newest[key].id < w.id:
            newest[key] = w
    rows = sorted([*newest.values(), *unnamed], key=by_name)
    return rows, len(workers) - len(rows)


def by_name(worker: WorkerRow) -> tuple[str, int, int]:
    """Type name, then index, then row id: the one order of workers in every table."""
    index = worker.index
    return (worker.worker_type, -1 if index is None else index, worker.id)


def state_counts(workers: Sequence[WorkerRow]) -> str:
    """``6 running · 1 dead`` over the rows shown."""
    counts: dict[str, int] = {}
    for w in workers:
        status = w.shown_status
        key = "running" if status in ("idle", "busy") else "starting" if status == "created" else status
        counts[key] = counts.get(key, 0) + 1
    order = ("running", "starting", "hung", "gone", "dead")
    return " · ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


class RunningView:
    """The running pool: a table of its workers read from the database, refreshed ~1/s.

    One row per worker (its newest row, so a replacement takes its
    predecessor's place and a worker that failed to start stays, ``dead``),
    by name.  The title says what the pool is doing: running, ``stopping``
    (the table keeps being refreshed while the workers stop) and, as the last
    frame, ``stopped`` with every row as the database has it then.

    On a terminal a rich live table below the log of events (deaths,
    replacements); elsewhere only the events, one plain line each.
    """

    def __init__(self, db_path: str, session_id: str, clock: Clock, live: bool) -> None:
        self.db_path = db_path
        self.session_id = session_id
        self.clock = clock
        self.live = live
        #: ``running``, ``stopping`` or ``stopped``.
        self.phase = "running"
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
        self.close()

    def stopping(self) -> None:
        """The stop has begun: say so at once (the rows follow with the next update)."""
        if self.phase == "running":
            self.phase = "stopping"
            self._redraw()

    def stopped(self, workers: Sequence[WorkerRow] | None, jobs: Mapping[str, int] | None) -> None:
        """The last frame: the pool has stopped; ``workers``/``jobs`` as read after the stop."""
        self.phase = "stopped"
        if workers is not None and jobs is not None:
            self._last = (workers, jobs)
        self._redraw()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, workers: Sequence[WorkerRow], jobs: Mapping[str, int]) -> None:
        self._last = (workers, jobs)
        self._redraw()

    def _redraw(self) -> None:
        if self._live is not None:
            self._live.update(self.render(*self._last), refresh=True)

    def on_events(self, events: Sequence[EventRow]) -> None:
        for event in events:
            line = running_event_line(event)
            if line is None:
                continue
            text, style = line
            if self._live is not None:
                self._live.console.print(message_text(f"{time.strftime('%H:%M:%S')} {text}", style),
                                         highlight=False, soft_wrap=True)
            else:
                note(f"{self.clock.stamp()} {text}")

    def render(self, workers: Sequence[WorkerRow], jobs: Mapping[str, int]) -> RenderableType:
        rows, replaced = latest_per_worker(workers)
        phase = {"running": "", "stopping": ("stopping", "bold yellow"),
                 "stopped": ("stopped", "bold")}[self.phase]
        counts = state_counts(rows)
        title = Text.assemble(
            ("clm-workers", "bold"), *((" · ", phase) if phase else ()),
            *((f" · {counts}",) if counts else ()),
            f" · session {self.session_id[:8]} · {self.db_path}",
        )
        # Keep the title and footer on screen: rows that do not fit become one summary row.
        room = max(3, stderr.height - TABLE_CHROME_LINES)
        hidden: list[WorkerRow] = []
        if len(rows) > room:
            rows, hidden = rows[:room - 1], rows[room - 1:]
        table = worker_table(rows, title=title, width=stderr.width)
        if hidden:
            summary = state_counts(hidden).replace(" · ", ", ")
            table.add_row("", Text(f"… {len(hidden)} more", style="dim"), Text(summary, style="dim"))
        now = time.strftime("%H:%M:%S")
        if self.phase == "stopped":
            hint: tuple[str, str] = (f" · stopped · {now}", "bold")
        elif self.phase == "stopping":
            hint = (" · stopping every worker…", "bold yellow")
        else:
            hint = (" · Ctrl-C to stop" + (f" · {now}" if stderr.width >= 90 else ""), "dim")
        extra = f" · {replaced} replaced" if replaced else ""
        footer = Text.assemble(("jobs: ", "dim"), jobs_line(jobs), (extra, "dim"), hint)
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


def where_shown(worker: WorkerRow, width: int) -> str:
    """A direct worker's pid; a container's name, or on a narrow screen its unique suffix."""
    if worker.pid is not None and worker.execution_mode != "docker":
        return str(worker.pid)
    name = worker.container_id
    if width < WIDE_COLUMNS and worker.index is not None:
        return "…" + name[-9:]  # the executor id's random part: unique, and type#index is beside it
    return name


def worker_table(workers: Sequence[WorkerRow], *, title: str | Text | None = None, width: int = 200) -> Table:
    table = Table(title=title, title_justify="left", box=TABLE_BOX, pad_edge=False)
    table.add_column("id", justify="right", style="dim", no_wrap=True)
    table.add_column("worker", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("pid / container", no_wrap=True)
    table.add_column("done", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("heartbeat", justify="right", no_wrap=True)
    table.add_column("up", justify="right", no_wrap=True)
    for w in workers:
        status = w.shown_status
        ended = status in ("dead", "gone")
        row: list[RenderableType] = [
            str(w.id), w.label, Text(status, style=STATUS_STYLES.get(status, "")), where_shown(w, width),
            str(w.jobs_processed), str(w.jobs_failed),
            "" if w.heartbeat_age is None or ended else f"{_duration(w.heartbeat_age)} ago",
            "" if w.age is None or ended else _duration(w.age),
        ]
        table.add_row(*row, style="dim" if status == "dead" else None)
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


def data_console() -> Console:
    """stdout for tables: the terminal's width, or 140 columns into a file or a pipe
    (rich's 80 would cut ids and messages; scripts use ``--json``)."""
    return stdout if stdout.is_terminal else Console(width=140)


def print_status(snap: Snapshot, *, console: Console | None = None) -> None:
    """Sessions, workers, recent events and job counts of a database, as tables (stdout)."""
    out = console or data_console()
    out.print(Text.assemble(("database ", "dim"), snap.database), highlight=False)
    if snap.sessions:
        sessions = Table(title="Sessions", title_justify="left", box=TABLE_BOX, pad_edge=False)
        for column in ("session", "manager pid", "host", "started (UTC)", "state"):
            sessions.add_column(column)
        for s in snap.sessions:
            sessions.add_row(s.session_id[:8], str(s.pid or ""), s.host or "", s.started_at or "",
                             session_state(s))
        out.print(sessions)
    hidden = f" (and {snap.dead_hidden} dead: --all shows them)" if snap.dead_hidden else ""
    # One table per session (newest first), so that no column is spent on the session.
    groups: dict[str | None, list[WorkerRow]] = {}
    for w in snap.workers:
        groups.setdefault(w.session_id, []).append(w)
    order = [s.session_id for s in snap.sessions]
    keys = sorted(groups, key=lambda k: order.index(k) if k in order else len(order))
    if len(keys) <= 1:
        out.print(worker_table(sorted(snap.workers, key=by_name), title="Workers" + hidden, width=out.width))
    for n, key in enumerate(keys if len(keys) > 1 else ()):
        name = f"session {key[:8]}" if key else "no session (started by CLM itself)"
        out.print(worker_table(sorted(groups[key], key=by_name), width=out.width,
                               title=f"Workers of {name}" + (hidden if n == 0 else "")))
    if snap.events:
        events = Table(title="Recent events", title_justify="left", box=TABLE_BOX, pad_edge=False)
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


def session_state(session: SessionRow) -> Text:
    """``running (lease 8 s)``, ``stopping``, ``stopped``, ``gone (manager pid 12 not running)``."""
    if session.state == "gone":
        why = ("its lease ran out" if not session.alive
               else f"manager pid {session.pid} not running; lease ends in {session.lease_left:.0f} s")
        return Text(f"gone ({why})", style="bold red")
    if session.state == "stopped":
        return Text("stopped", style="dim")
    lease = f" (lease {session.lease_left:.0f} s)" if session.alive else ""
    where = "" if session.manager_running is not None else f", on {session.host}"
    return Text(f"{session.state}{lease}{where}",
                style="green" if session.state == "running" else "yellow")


# -- clm-workers jobs ---------------------------------------------------------------------

JOB_STYLES = {"pending": "yellow", "processing": "cyan", "completed": "green", "failed": "red",
              "cancelled": "dim"}


def jobs_table(jobs: Sequence[JobRow], *, title: str | Text | None = None, width: int = 200) -> Table:
    """Jobs by id: type, status, the worker that took it, attempts, times, the error's first line.

    Every column but the error keeps its width; the error gets what is left of
    ``width`` (cut with ``…``), so that the table is one line per job at 80
    columns as at 200.
    """
    # Narrow terminals drop the columns that matter least, so that the error keeps some room.
    columns = ["id", "type", "status", "worker", "tries", *(("queued",) if width >= 90 else ()), "took",
               *(("input",) if width >= 100 else ())]
    cells: list[list[str]] = []
    for job in jobs:
        values = {
            "id": str(job.id), "type": job.job_type, "status": job.status, "worker": job.worker or "",
            "tries": f"{job.attempts}/{job.max_attempts}",
            "queued": "" if job.age is None else f"{_duration(job.age)} ago",
            "took": job_duration(job), "input": _cut(job.input_file, 40),
        }
        cells.append([values[c] for c in columns])
    used = sum(max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns))
    # Between two columns: padding, the (blank) rule, padding; and one blank at each edge.
    room = max(10, width - used - 3 * len(columns) - 2)
    table = Table(title=title, title_justify="left", box=TABLE_BOX, pad_edge=False)
    for name in columns:
        table.add_column(name, justify="right" if name in ("id", "tries", "queued", "took") else "left",
                         no_wrap=True, style="dim" if name == "id" else "")
    table.add_column("error", no_wrap=True)
    for job, row in zip(jobs, cells, strict=True):
        styled: list[RenderableType] = list(row)
        styled[2] = Text(job.status, style=JOB_STYLES.get(job.status, ""))
        table.add_row(*styled, Text(_cut(job.error_line, room), style="red"))
    if not jobs:
        table.add_row("", Text("no jobs", style="dim"), *[""] * (len(table.columns) - 2))
    return table


def job_duration(job: JobRow) -> str:
    """How long the job ran, as exactly as its timestamps allow.

    CLM's workers stamp ``started_at`` and ``completed_at`` with SQLite's
    ``CURRENT_TIMESTAMP`` (whole seconds): a difference of 0 or 1 s means
    less than 2 s, not 0 or 1.
    """
    if job.duration is None:
        return ""
    whole = all(t is None or "." not in t for t in (job.started_at, job.completed_at))
    if whole and job.duration < 2:
        return "<2 s"
    if whole and job.duration < 120:
        return f"{job.duration:.0f} s"
    return _duration(job.duration)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def print_jobs(jobs: Sequence[JobRow], counts: Mapping[str, int], *, filtered: bool,
               console: Console | None = None) -> None:
    out = console or data_console()
    total = sum(counts.values())
    title = "Jobs" + (f" (the last {len(jobs)} of {total}" + (", filtered" if filtered else "") + ")"
                      if len(jobs) < total else "")
    out.print(jobs_table(jobs, title=title, width=out.width))
    out.print(Text.assemble(("jobs: ", "dim"), jobs_line(counts)), highlight=False)
    if any(j.status == "failed" for j in jobs):
        out.print(Text("why one failed: clm-workers jobs show ID", style="dim"), highlight=False)


def print_job(job: JobRow, console: Console | None = None) -> None:
    """One job, every column; the whole error and traceback below."""
    out = console or data_console()
    table = Table(title=f"Job {job.id}", show_header=False, title_justify="left", box=TABLE_BOX,
                  pad_edge=False)
    table.add_column("field", style="dim", no_wrap=True)
    table.add_column("value", overflow="fold")
    fields: list[tuple[str, RenderableType]] = [
        ("type", job.job_type),
        ("status", Text(job.status, style=JOB_STYLES.get(job.status, ""))),
        ("worker", f"{job.worker} (row {job.worker_id})" if job.worker else ""),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("input", job.input_file),
        ("output", job.output_file),
        ("queued (UTC)", job.created_at or ""),
        ("started (UTC)", job.started_at or ""),
        ("ended (UTC)", job.completed_at or ""),
        ("took", job_duration(job)),
        ("session", job.session_id or ""),
        ("payload", job.payload or ""),
        ("result", job.result or ""),
    ]
    for name, value in fields:
        if value != "" or name in ("worker", "ended (UTC)"):
            table.add_row(name, value)
    out.print(table)
    if job.error:
        out.print(Text("error", style="bold red"))
        out.print(Text(job.error), highlight=False)
    if job.traceback:
        out.print(Text("traceback", style="bold"))
        out.print(Text(job.traceback.rstrip()), highlight=False)

