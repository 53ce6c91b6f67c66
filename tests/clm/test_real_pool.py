"""A pool of CLM's real workers with default settings: register, build, show in ``clm status``, stop clean.

Every pool here is ``WorkerConfig(type, count)`` with nothing else: the
modules, the environment and the registration protocol must follow the
installed CLM.  Jobs go in through CLM's own backend (what ``clm build``
runs) and are judged by CLM's ``jobs`` table.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import trio
from clmtools import Course, clm_status, diagram_job, is_kernel, notebook_job, run_build, worker_events

from clm_workers import WorkerConfig, WorkerPoolManager
from procs import session_processes, wait_until

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def stray_caches(*folders: Path) -> list[Path]:
    """CLM's executed-notebook caches (``clm_cache.db``) under these folders."""
    return [path for folder in folders for path in folder.rglob("clm_cache.db*")]


def describe_failures(report) -> str:
    return "\n".join(f"{f.worker_type}#{f.index} {f.phase}: {f.reason}\n{getattr(f, 'output_tail', '')}"
                     for f in report.failed)


async def test_four_notebook_and_one_plantuml_worker_build_show_in_clm_status_and_stop_leaving_nothing(
    course: Course, cwd: Path, tmp_path: Path, sessions: list[str]
):
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, course.output, [WorkerConfig("notebook", 4), WorkerConfig("plantuml", 1)])
    session = manager.session_id
    sessions.append(session)
    report = await manager.start_pools()
    try:
        assert report.failed == [], describe_failures(report)
        assert sorted(w.worker_type for w in report.started) == ["notebook"] * 4 + ["plantuml"]

        # CLM's own status command sees the pool: every worker registered and idle.
        status = await trio.to_thread.run_sync(clm_status, db)
        workers = status["workers"]
        assert (workers["notebook"]["total"], workers["notebook"]["idle"]) == (4, 4), status
        assert (workers["plantuml"]["total"], workers["plantuml"]["idle"]) == (1, 1), status

        # One notebook (executed by a kernel) and one diagram, through CLM's backend.
        build = await trio.to_thread.run_sync(functools.partial(
            run_build, db, course.output, [notebook_job(course), diagram_job(course)],
            session_id=session, timeout=120, build_dir=tmp_path / "build"))
        assert build.succeeded, build.describe()
        assert build.status(course.notebook) == build.status(course.diagram) == "completed"
        assert "answer: 42" in course.notebook_output.read_text(encoding="utf-8")
        assert course.diagram_output.read_bytes().startswith(PNG_SIGNATURE)

        # A notebook still running when the pool stops: its kernel must go too.
        running = notebook_job(course, course.add_notebook("running_at_stop", cell_seconds=300))
        await trio.to_thread.run_sync(functools.partial(
            run_build, db, course.output, [running], session_id=session, timeout=60,
            build_dir=tmp_path / "build", wait=False))
        def kernels_of_the_pool() -> list[int]:
            return [pid for pid in session_processes(session) if is_kernel(pid)]

        kernels = await trio.to_thread.run_sync(wait_until, kernels_of_the_pool, 60, "a kernel")
    finally:
        stop_began = time.monotonic()
        await manager.stop_pools()
        stop_seconds = time.monotonic() - stop_began

    print(f"stop_pools took {stop_seconds:.2f} s with a kernel running ({kernels})")
    assert session_processes(session) == [], "stop_pools left processes of the pool (a kernel?)"
    assert stray_caches(course.root, cwd) == []
    events = worker_events(db, session)
    stopped = {worker_id for event, worker_id in events if event == "worker_stopped"}
    assert stopped == {w.db_worker_id for w in report.started}, events
    assert [event for event, _ in events].count("pool_stopped") == 1, events


async def test_a_notebook_with_a_40_s_cell_completes_under_the_default_monitor(
    course: Course, cwd: Path, tmp_path: Path, sessions: list[str]
):
    """CLM's workers do not heartbeat during a job: a busy worker must not be taken for hung."""
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, course.output, [WorkerConfig("notebook", 1)])
    sessions.append(manager.session_id)
    report = await manager.start_pools()
    try:
        assert report.failed == [], describe_failures(report)
        monitor = manager.start_monitoring()  # default MonitorSettings
        long_cell = notebook_job(course, course.add_notebook("long_cell", cell_seconds=40))
        began = time.monotonic()
        build = await trio.to_thread.run_sync(functools.partial(
            run_build, db, course.output, [long_cell], session_id=manager.session_id, timeout=180,
            build_dir=tmp_path / "build"))
        took = time.monotonic() - began
        assert build.succeeded, build.describe()
        assert build.status(long_cell.source) == "completed"
        assert build.rows[long_cell.source.name]["attempts"] == 1  # never requeued
        assert "answer: 42" in long_cell.output.read_text(encoding="utf-8")
        assert took >= 40  # the cell really ran
        assert (monitor.deaths, monitor.replacements) == (0, 0)
    finally:
        await manager.stop_pools()
    print(f"the 40 s cell's job took {took:.1f} s")
    events = [event for event, _ in worker_events(db, manager.session_id)]
    assert "worker_failed" not in events, events
    assert session_processes(manager.session_id) == []
