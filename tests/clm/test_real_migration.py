"""A CLM 1.9 database that clm-workers used still migrates under CLM 1.35.

CLM migrates a database only when its stored ``schema_version`` is below its
own ``DATABASE_VERSION`` (1.9: 8, 1.35: 11).  clm-workers sharing the file
must therefore leave CLM 1.9's version as it found it.

The two halves need both releases, which never share a Python (1.35 needs
3.12 or later): the first runs with CLM 1.9 (Python 3.11, the host's run in
CI) and leaves its database in ``$CLM_TEST_HANDOFF``; the second runs with
CLM 1.35 (Python 3.13, the container's run) on a copy of that very file.  A
database written by CLM 1.9's own ``init_database`` and its own workers is
the honest input; a schema rebuilt from vendored SQL would only test our copy.
"""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import trio
from clmtools import (
    Course,
    clm_version,
    columns,
    diagram_job,
    init_clm_database,
    notebook_job,
    run_build,
    schema_version,
    skip_or_fail,
    version_text,
)

from clm_workers import WorkerConfig, WorkerPoolManager
from procs import session_processes

#: The file the CLM 1.9 half leaves in $CLM_TEST_HANDOFF for the CLM 1.35 half.
HANDOFF_NAME = "clm-1.9-database-used-by-clm-workers.db"

CLM_1_9 = (1, 9) <= (clm_version() or ()) < (1, 10)
CLM_1_35_OR_LATER = (clm_version() or ()) >= (1, 35)


async def build_on_a_pool(db: Path, course: Course, tmp_path: Path, sessions: list[str]) -> None:
    """One notebook and one PlantUML worker (defaults) on ``db``; a notebook and a diagram built."""
    manager = WorkerPoolManager(db, course.output, [WorkerConfig("notebook", 1), WorkerConfig("plantuml", 1)])
    sessions.append(manager.session_id)
    report = await manager.start_pools()
    try:
        assert [(f.worker_type, f.phase, f.reason) for f in report.failed] == []
        build = await trio.to_thread.run_sync(functools.partial(
            run_build, db, course.output, [notebook_job(course), diagram_job(course)],
            session_id=manager.session_id, timeout=120, build_dir=tmp_path / "build"))
        assert build.succeeded, build.describe()
    finally:
        await manager.stop_pools()
    assert session_processes(manager.session_id) == []


def completed_jobs(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'completed'").fetchone()[0])


@pytest.mark.skipif(not CLM_1_9, reason=f"makes a CLM 1.9 database: needs CLM 1.9, this is {version_text()}")
async def test_a_clm_1_9_database_used_by_clm_workers_keeps_clm_1_9s_schema_version(
    course: Course, cwd: Path, tmp_path: Path, sessions: list[str]
):
    db = tmp_path / "jobs.db"
    assert init_clm_database(db) == 8  # CLM 1.9's own schema
    await build_on_a_pool(db, course, tmp_path, sessions)
    assert schema_version(db) == 8  # nothing stamped a version CLM 1.9 did not migrate to
    assert completed_jobs(db) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        handoff = os.environ.get("CLM_TEST_HANDOFF")
        if handoff:  # one consistent file, WAL included, for the CLM 1.35 half
            with sqlite3.connect(Path(handoff) / HANDOFF_NAME) as copy:
                conn.backup(copy)


@pytest.mark.skipif(not CLM_1_35_OR_LATER,
                    reason=f"migrates with CLM 1.35: needs CLM 1.35 or later, this is {version_text()}")
async def test_a_clm_1_9_database_used_by_clm_workers_migrates_under_clm_1_35(
    course: Course, cwd: Path, tmp_path: Path, sessions: list[str]
):
    source = Path(os.environ.get("CLM_TEST_HANDOFF", "")) / HANDOFF_NAME
    if "CLM_TEST_HANDOFF" not in os.environ or not source.is_file():
        skip_or_fail(f"needs {HANDOFF_NAME} in $CLM_TEST_HANDOFF, left by this suite's run with CLM 1.9")
    db = tmp_path / "jobs.db"
    shutil.copyfile(source, db)
    assert schema_version(db) == 8
    before = completed_jobs(db)

    # clm-workers opens it, CLM 1.35's workers and backend work on it: CLM migrates it.
    await build_on_a_pool(db, course, tmp_path, sessions)
    assert schema_version(db) == 11
    assert {"execution_mode", "session_id"} <= columns(db, "jobs")
    assert completed_jobs(db) == before + 2  # the old jobs are kept
