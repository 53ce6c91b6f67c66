"""The default monitor and a real CLM notebook worker running a 40 s cell.

CLM's workers write no ``last_heartbeat`` during a job, and a cell that
sleeps uses no CPU and writes no output: the monitor must leave it alone.
Skipped when CLM is not installed; with ``CLM_REQUIRE_CLM_TESTS=1`` (CI) it
fails instead.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import textwrap
from pathlib import Path

import pytest
import trio

from clm_workers import MonitorSettings, WorkerConfig, open_worker_pool
from procs import session_processes

if importlib.util.find_spec("clm") is None:
    if os.environ.get("CLM_REQUIRE_CLM_TESTS") == "1":
        pytest.fail("CLM is not installed (CLM_REQUIRE_CLM_TESTS=1: these tests must run)", pytrace=False)
    pytest.skip("CLM (coding-academy-lecture-manager) is not installed", allow_module_level=True)

CELL_SECONDS = 40

NOTEBOOK = textwrap.dedent(f"""\
    # %% [markdown] lang="en" tags=["slide"]
    # # A long cell

    # %%
    import time
    time.sleep({CELL_SECONDS})
    print("slept")
    """)


def submit_notebook(db: Path, workspace: Path) -> int:
    """One notebook job through CLM's own ``JobQueue`` and payload model (the completed HTML)."""
    from clm.infrastructure.database.job_queue import JobQueue
    from clm.infrastructure.messaging.notebook_classes import NotebookPayload

    source = workspace / "slides_long.py"
    source.write_text(NOTEBOOK, encoding="utf-8")
    payload = NotebookPayload(
        data=NOTEBOOK, correlation_id="long-cell", input_file=str(source), input_file_name=source.name,
        output_file=str(workspace / "out" / "slides_long.html"), kind="completed", prog_lang="python",
        language="en", format="html",
    )
    queue = JobQueue(db)
    try:
        return int(queue.add_job("notebook", payload.input_file, payload.output_file, payload.content_hash(),
                                 payload.model_dump(mode="json")))
    finally:
        queue.close()


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


async def test_a_40_s_cell_completes_under_the_default_monitor(tmp_path):
    from clm.infrastructure.database.schema import init_database

    db, workspace = tmp_path / "jobs.db", tmp_path / "course"
    workspace.mkdir()
    init_database(db)  # CLM's schema, with worker_heartbeats
    cache = str(tmp_path / "cache.db")
    config = WorkerConfig("notebook", 1, module="clm.workers.notebook",
                          env={"CACHE_DB_PATH": cache, "CLM_CACHE_DB_PATH": cache})
    settings = MonitorSettings()
    async with open_worker_pool(db, workspace, [config], monitor=settings, log_dir=tmp_path / "logs") as pool:
        await pool.wait_ready("notebook", 1)
        job = submit_notebook(db, workspace)
        silence, statuses = 0.0, set()
        with trio.fail_after(CELL_SECONDS + 60):
            while (state := query(db, "SELECT status FROM jobs WHERE id = ?", job)[0][0]) in (
                    "pending", "processing"):
                if state == "processing":
                    [(status, age)] = query(
                        db, "SELECT w.status, (julianday('now') - julianday(w.last_heartbeat)) * 86400"
                            " FROM workers w JOIN jobs j ON j.worker_id = w.id WHERE j.id = ?", job)
                    statuses.add(status)
                    silence = max(silence, age)
                await trio.sleep(0.5)
        [(status, attempts, error)] = query(db, "SELECT status, attempts, error FROM jobs WHERE id = ?", job)
        assert (status, attempts) == ("completed", 1), error
        assert "slept" in (workspace / "out" / "slides_long.html").read_text(encoding="utf-8")
        # Silent in last_heartbeat for longer than the old rule's kill; never called hung.
        assert silence > settings.hung_timeout
        assert statuses == {"busy"}
        assert pool.monitor.deaths == 0
        assert query(db, "SELECT message FROM worker_events WHERE event_type = 'worker_failed'") == []
    assert session_processes(pool.manager.session_id) == []
    assert not (workspace / "clm_cache.db").exists()
