"""Terminal output with rich: live startup progress, summaries, tables.

Progress goes to stderr, data to stdout.  When stderr is not a terminal the
live bar becomes one plain line per event, so logs and CI output stay readable.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
