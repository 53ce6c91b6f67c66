"""WorkerPoolManager with real simulated worker processes and a real SQLite file."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from clm_workers import ConfigError, PoolStartupError, WorkerConfig, WorkerPoolManager
from procs import alive, killed_at_exit, session_processes, wait_until

SIM = "clm_workers.sim"


def sim(worker_type="notebook", count=1, *, boot=0.0, fail="", **kwargs) -> WorkerConfig:
    env = {"CLM_SIM_BOOT_DELAY": str(boot)}
    if fail:
        env["CLM_SIM_FAIL"] = fail
    return WorkerConfig(worker_type, count, module=SIM, env=env, **kwargs)


def rows(db: Path) -> list[tuple[int, str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, container_id, status, session_id FROM workers ORDER BY id").fetchall()


def live_rows(db: Path) -> list:
    return [r for r in rows(db) if r[2] in ("created", "idle", "busy")]


async def test_eight_workers_start_register_and_stop(tmp_path):
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, tmp_path, [sim(count=5, boot=0.2), sim("plantuml", 3, boot=0.2)])
    report = await manager.start_pools()
    try:
        assert report.failed == []
        assert sorted((w.worker_type, w.index) for w in report.started) == sorted(
            [("notebook", i) for i in range(5)] + [("plantuml", i) for i in range(3)]
        )
        pids = [w.pid for w in report.started]
        assert all(alive(pid) for pid in pids)
        by_id = {r[0]: r for r in rows(db)}
        for worker in report.started:
            _, container_id, status, session = by_id[worker.db_worker_id]
            assert (container_id, status, session) == (worker.executor_id, "idle", manager.session_id)
            assert 0 < worker.spawned_at <= worker.registered_at <= report.duration
    finally:
        await manager.stop_pools()
    assert not any(alive(pid) for pid in pids)
    assert live_rows(db) == []
    assert session_processes(manager.session_id) == []


async def test_good_crashing_and_hanging_workers_are_reported(tmp_path):
    db = tmp_path / "jobs.db"
    configs = [sim(count=3), sim("plantuml", 1, fail="crash"), sim("drawio", 1, fail="hang")]
    manager = WorkerPoolManager(db, tmp_path, configs, registration_timeout=1.5)
    report = await manager.start_pools()
    try:
        assert len(report.started) == 3
        failed = {f.worker_type: f for f in report.failed}
        assert set(failed) == {"plantuml", "drawio"}
        crash, hang = failed["plantuml"], failed["drawio"]
        assert (crash.phase, crash.exit_code) == ("exit", 3)
        assert "exited with code 3 before registering" in crash.reason
        assert "simulated crash" in crash.reason and "simulated crash" in crash.output_tail
        # An exit is noticed at once, not after the registration timeout.
        assert hang.phase == "timeout" and "did not register within 1.5 s" in hang.reason
        assert report.duration >= 1.5
        assert len(session_processes(manager.session_id)) == 3  # only the good ones run
    finally:
        await manager.stop_pools()
    assert session_processes(manager.session_id) == []
    assert live_rows(db) == []


async def test_crash_is_reported_before_the_timeout(tmp_path):
    manager = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [sim(fail="crash")],
                                registration_timeout=30)
    with trio.fail_after(10):
        report = await manager.start_pools()
    await manager.stop_pools()
    assert [f.phase for f in report.failed] == ["exit"]
    assert report.duration < 10


async def test_clm03_self_registration_is_found_by_container_id(tmp_path):
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, tmp_path, [sim(count=2, registration="self")])
    report = await manager.start_pools()
    try:
        assert len(report.started) == 2
        by_id = {r[0]: r for r in rows(db)}
        for worker in report.started:
            # The worker inserted this row itself, under its WORKER_ID.
            assert by_id[worker.db_worker_id][1] == worker.executor_id
            assert by_id[worker.db_worker_id][2] == "idle"
    finally:
        await manager.stop_pools()
    assert live_rows(db) == []


@pytest.mark.parametrize(("where", "allowed"), [("missing folder", "does not exist"),
                                               ("a directory", "a file, not a folder")])
def test_an_unusable_database_path_is_refused_at_construction(tmp_path, where, allowed):
    db = tmp_path / "nope" / "jobs.db" if where == "missing folder" else tmp_path
    with pytest.raises(ConfigError, match=allowed):
        WorkerPoolManager(db, tmp_path, [sim(count=3)])


async def test_a_database_that_became_unusable_is_fatal_and_starts_nothing(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    manager = WorkerPoolManager(folder / "jobs.db", tmp_path, [sim(count=3)])
    folder.rmdir()
    with pytest.raises(PoolStartupError, match="cannot use the database"):
        await manager.start_pools()
    assert session_processes(manager.session_id) == []


@pytest.mark.parametrize("cancel_after", [0.0, 0.05, 0.3, 0.9])
async def test_cancellation_mid_start_leaves_nothing(tmp_path, cancel_after):
    db = tmp_path / "jobs.db"
    # Quick workers register before the later cancellation points, slow ones never do.
    configs = [sim(count=6, boot=0.2), sim("plantuml", 6, boot=30)]
    manager = WorkerPoolManager(db, tmp_path, configs, max_startup_concurrency=4)
    with trio.move_on_after(cancel_after) as scope:
        await manager.start_pools()
    assert scope.cancelled_caught
    assert session_processes(manager.session_id) == []
    assert live_rows(db) == [] if db.exists() else True
    await manager.stop_pools()  # idempotent after a cancelled start


def run_manager_script(tmp_path: Path, body: str) -> subprocess.Popen:
    script = tmp_path / "manager_script.py"
    script.write_text(textwrap.dedent("""
        import json, sys, trio
        from pathlib import Path
        from clm_workers import WorkerConfig, WorkerPoolManager
        tmp = Path(sys.argv[1])
        def sim(count, boot):
            return WorkerConfig("notebook", count, module="clm_workers.sim",
                                env={"CLM_SIM_BOOT_DELAY": str(boot)})
    """) + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("moment", ["during startup", "after startup"])
def test_manager_killed_with_sigkill_leaves_no_worker(tmp_path, moment):
    boot = 30 if moment == "during startup" else 0.1
    proc = run_manager_script(tmp_path, f"""
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [sim(6, {boot})])
        print(json.dumps({{"session": manager.session_id}}), flush=True)
        trio.run(manager.start_pools)
        print(json.dumps({{"started": manager.running}}), flush=True)
        trio.run(trio.sleep_forever)
    """)
    with killed_at_exit(proc):
        session = json.loads(proc.stdout.readline())["session"]
        if moment == "after startup":
            assert json.loads(proc.stdout.readline()) == {"started": 6}
        workers = wait_until(lambda: len(session_processes(session)) == 6 and session_processes(session), 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        wait_until(lambda: not any(alive(pid) for pid in workers), 2.0)


def test_sigint_during_start_stops_every_worker(tmp_path):
    proc = run_manager_script(tmp_path, """
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [sim(8, 30)])
        print(json.dumps({"session": manager.session_id}), flush=True)
        try:
            trio.run(manager.start_pools)
        except KeyboardInterrupt:
            print(json.dumps({"interrupted": True, "running": manager.running}), flush=True)
    """)
    with killed_at_exit(proc):
        session = json.loads(proc.stdout.readline())["session"]
        wait_until(lambda: len(session_processes(session)) == 8, 10)
        proc.send_signal(signal.SIGINT)
        assert json.loads(proc.stdout.readline()) == {"interrupted": True, "running": 0}
        assert proc.wait(10) == 0
        # Stopped by the manager itself, not by the lifeline: none is left even now.
        assert session_processes(session) == []
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("SELECT count(*) FROM workers WHERE status != 'dead'").fetchone() == (0,)
