"""The monitor with docker workers against the real engine: activity and a paused container.

Skipped (or, with ``CLM_REQUIRE_DOCKER_TESTS=1``, failed) exactly as
``test_docker.py``, whose fixtures it shares.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from clm_workers import MonitorSettings, RestartPolicy, open_worker_pool
from procs import wait_for
from test_docker import client, data_of_a_user, dsim, nothing_left_behind  # noqa: F401 - shared fixtures

SETTINGS = MonitorSettings(
    interval=0.1, heartbeat_timeout=2.0, hung_timeout=3.5, progress_timeout=60.0, max_job_time=60.0,
    restart=RestartPolicy(backoff_initial=0.1, backoff_max=0.5),
)


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def test_paused_busy_container_is_found_and_replaced(client: Any, tmp_path: Path) -> None:  # noqa: F811
    db = tmp_path / "jobs.db"
    config = dsim(env={"CLM_HEARTBEAT_INTERVAL": "0.2", "CLM_SIM_QUIET_WHILE_BUSY": "1"})
    async with open_worker_pool(db, tmp_path, [config], monitor=SETTINGS) as pool:
        await pool.wait_started()
        [handle] = pool.manager._live.snapshot()
        executor = pool.manager._backend.executors["docker"]
        running = executor.activity([handle])[handle]
        assert running.cpu_seconds is not None and running.cpu_seconds > 0 and not running.stopped

        (tmp_path / "job.in").write_text("x")
        job = pool.manager.registry.submit_job("notebook", "job.in", "job.out", {"seconds": 2.0})
        job_status = "SELECT status FROM jobs WHERE id = ?"
        await wait_for(lambda: query(db, job_status, job) == [("processing",)], 20)
        client.api.pause(handle.executor_id)
        await wait_for(lambda: executor.activity([handle])[handle].stopped, 2)  # after the listing's cache
        await wait_for(lambda: query(db, "SELECT status FROM workers WHERE id = ?", handle.db_worker_id)
                       == [("hung",)], SETTINGS.heartbeat_timeout + 3)
        await wait_for(lambda: pool.monitor.deaths == 1, SETTINGS.hung_timeout + 3)
        assert query(db, "SELECT status FROM workers WHERE id = ?", handle.db_worker_id) == [("dead",)]
        # Removed, paused or not; the replacement completes the requeued job.
        assert client.api.containers(all=True, filters={"id": handle.executor_id}) == []
        await wait_for(lambda: query(db, job_status, job) == [("completed",)], 30)
        [(message,)] = query(db, "SELECT message FROM worker_events WHERE event_type = 'worker_failed'"
                                 " AND message LIKE '%frozen%'")
        assert "frozen: stopped for" in message and f"job {job}" in message
        assert executor.activity([handle]) == {}  # gone: left out


async def test_paused_containers_retired_together_do_not_burn_a_job_s_attempts(
    client: Any, tmp_path: Path  # noqa: F811
) -> None:
    """Three containers paused while one runs a job: all are retired, and the job, given back, is
    not taken (and lost again) by the next doomed container that Docker unpauses to kill it."""
    db = tmp_path / "jobs.db"
    config = dsim(count=4, env={"CLM_HEARTBEAT_INTERVAL": "0.2", "CLM_SIM_QUIET_WHILE_BUSY": "1",
                                "CLM_POLL_INTERVAL": "0.02"})
    async with open_worker_pool(db, tmp_path, [config], monitor=SETTINGS) as pool:
        await pool.wait_started()
        (tmp_path / "job.in").write_text("x")
        job = pool.manager.registry.submit_job("notebook", "job.in", "job.out", {"seconds": 3.0})
        state = "SELECT status FROM jobs WHERE id = ?"
        await wait_for(lambda: query(db, state, job) == [("processing",)], 20)
        doomed = pool.manager._live.snapshot()
        for handle in doomed:
            client.api.pause(handle.executor_id)
        await wait_for(lambda: pool.monitor.deaths >= 4, SETTINGS.hung_timeout + 10)
        await wait_for(lambda: query(db, state, job) in ([("completed",)], [("failed",)]), 40)
        [(status, attempts, error)] = query(db, "SELECT status, attempts, error FROM jobs WHERE id = ?", job)
        # Its first worker took it once (and may have finished it as Docker unpaused it to kill
        # it); at most one replacement took it again.  None of the doomed two ever did.
        assert status == "completed" and attempts <= 2, (status, attempts, error)
