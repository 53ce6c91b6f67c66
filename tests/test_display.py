"""The tables themselves, rendered by rich at a given width: what each cell says."""

from __future__ import annotations

import io

from rich.console import Console

from clm_workers import display
from clm_workers.inventory import WorkerRow


def _row(row_id: int, worker_type: str, index: int, status: str, mode: str = "direct",
         pid: int | None = None, suffix: str = "") -> WorkerRow:
    return WorkerRow(
        id=row_id, worker_type=worker_type, status=status, execution_mode=mode,
        container_id=f"{mode}-{worker_type}-{index}-{suffix or f'{row_id:08x}'}", session_id="s", pid=pid,
        jobs_processed=0, jobs_failed=0, started_at=None, last_heartbeat=None, heartbeat_age=1.0, age=5.0,
        process_running=None,
    )


def _render(table, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_containers_are_told_apart_at_80_columns_and_named_whole_at_200():
    rows = [_row(1, "notebook", 0, "idle", "docker", suffix="1a2b3c4d"),
            _row(2, "notebook", 1, "idle", "docker", suffix="5e6f7a8b")]
    narrow = _render(display.worker_table(rows, width=80), 80)
    assert "…-1a2b3c4d" in narrow and "…-5e6f7a8b" in narrow
    assert all(len(line) <= 80 for line in narrow.splitlines())
    wide = _render(display.worker_table(rows, width=200), 200)
    assert "docker-notebook-0-1a2b3c4d" in wide and "docker-notebook-1-5e6f7a8b" in wide


def test_one_row_per_worker_by_name_a_replacement_in_its_predecessors_place():
    rows = [
        _row(1, "plantuml", 0, "dead"),      # died, replaced by row 5
        _row(2, "drawio", 0, "dead"),        # failed to start: stays, dead
        _row(3, "notebook", 1, "idle", pid=11),
        _row(4, "notebook", 0, "busy", pid=10),
        _row(5, "plantuml", 0, "idle", pid=12),
    ]
    shown, replaced = display.latest_per_worker(rows)
    assert [(w.label, w.id) for w in shown] == [
        ("drawio#0", 2), ("notebook#0", 4), ("notebook#1", 3), ("plantuml#0", 5)]
    assert replaced == 1
    assert display.state_counts(shown) == "3 running · 1 dead"


def test_a_row_no_process_is_behind_shows_as_gone():
    row = _row(1, "notebook", 0, "idle", pid=10)
    gone = WorkerRow(**{**row.__dict__, "process_running": False})
    assert gone.shown_status == "gone" and row.shown_status == "idle"
    text = _render(display.worker_table([gone], width=100), 100)
    assert " gone " in text and "ago" not in text


def test_a_worker_registered_then_failed_as_a_timeout_is_not_counted_twice():
    """Its own event says registered, the engine's says it came too late: the counts end as the report's."""
    from clm_workers.inventory import EventRow

    def event(event_id: int, kind: str, index: int, **metadata: object) -> EventRow:
        return EventRow(event_id, None, kind, "notebook", event_id, "direct", f"notebook#{index} {kind}", "s",
                        metadata or None, container_id=f"direct-notebook-{index}-{event_id:08x}")

    view = display.StartupView({"notebook": 3}, display.Clock(), live=False)
    shown, before = io.StringIO(), display.stderr.file
    display.stderr.file = shown
    try:
        view.on_events([event(1, "worker_registered", 0, pid=10),
                        event(2, "worker_registered", 2, pid=12),
                        event(3, "worker_failed", 2, phase="timeout"),
                        event(4, "worker_registered", 1, pid=11)])
    finally:
        display.stderr.file = before
    assert view.registered == {"notebook": 2} and view.failed == {"notebook": 1}
    lines = shown.getvalue().splitlines()
    assert "notebook#2 registered, pid 12 (notebook 2/3)" in lines[1]
    assert lines[2].endswith("✗ notebook#2 worker_failed (notebook 1/3 registered)"), lines[2]
    assert "notebook#1 registered, pid 11 (notebook 2/3)" in lines[3]
