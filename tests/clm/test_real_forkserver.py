"""CLM's real workers forked from a fork server: the same jobs, the same outputs, nothing left.

Each pool is ``WorkerConfig(type, count, start_method="forkserver")`` with
nothing else: the template preloads CLM's own worker module of the type.
Outputs are compared byte for byte with those of spawned workers building the
same course (each pool with its own executed-notebook cache, so that both
really execute the notebook).
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import trio
from clmtools import Course, diagram_job, make_course, notebook_job, run_build

from clm_workers import WorkerConfig, WorkerPoolManager
from procs import session_processes


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def build_with(start_method: str, root: Path, sessions: list[str]) -> tuple[Course, dict[str, bytes]]:
    course = make_course(root / "course")
    db = root / "jobs.db"
    manager = WorkerPoolManager(
        db, course.output,
        [WorkerConfig("notebook", 2, start_method=start_method),
         WorkerConfig("plantuml", 1, start_method=start_method)],
        cache_db_path=root / "cache.db",
    )
    sessions.append(manager.session_id)
    report = await manager.start_pools()
    try:
        assert [(f.worker_type, f.phase, f.reason, f.output_tail) for f in report.failed] == []
        assert {w.start_method for w in report.started} == {start_method}
        assert report.notes == []
        if start_method == "forkserver":
            # Forked from a template per type, not spawned by the manager.
            parents = {w.worker_type: set() for w in report.started}
            for w in report.started:
                assert w.pid is not None
                parents[w.worker_type].add(parent_of(w.pid))
            assert all(len(p) == 1 for p in parents.values()) and len(set.union(*parents.values())) == 2
        build = await trio.to_thread.run_sync(functools.partial(
            run_build, db, course.output, [notebook_job(course), diagram_job(course)],
            session_id=manager.session_id, timeout=180, build_dir=root / "build"))
        assert build.succeeded, build.describe()
    finally:
        await manager.stop_pools()
    assert session_processes(manager.session_id) == []
    return course, {"html": course.notebook_output.read_bytes(), "png": course.diagram_output.read_bytes()}


async def test_forked_clm_workers_build_the_same_outputs_as_spawned_ones(
    cwd: Path, tmp_path: Path, sessions: list[str]
):
    _, spawned = await build_with("spawn", tmp_path / "spawn", sessions)
    course, forked = await build_with("forkserver", tmp_path / "fork", sessions)
    assert b"answer: 42" in forked["html"]
    assert forked["png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert forked == spawned
    shutil.rmtree(course.root)
