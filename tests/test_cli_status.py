"""``clm-workers status``: a database's sessions, workers and events, as tables or JSON."""

from __future__ import annotations

import json
import os
import re
import signal

from clitools import StartProcess, clm_workers, session_of, sim_pools, write_config
from procs import wait_until

WORKER_KEYS = {
    "id", "worker_type", "status", "execution_mode", "container_id", "session_id", "pid",
    "jobs_processed", "jobs_failed", "started_at", "last_heartbeat", "heartbeat_age", "age",
    "label", "index", "process_running",
}
EVENT_KEYS = {"id", "created_at", "event_type", "worker_type", "worker_id", "execution_mode", "message",
              "session_id", "metadata"}
SESSION_KEYS = {"session_id", "pid", "host", "started_at", "lease_left", "alive", "state", "manager_running"}


def test_status_json_of_a_running_pool_then_of_the_stopped_one(tmp_path):
    write_config(tmp_path, sim_pools(notebook=2, plantuml=1))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        db = tmp_path / "jobs.db"
        session = session_of(db)

        result = clm_workers("status", "--db", str(db), "--json", "--events", "3")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert set(data) == {"database", "sessions", "workers", "events", "jobs", "dead_hidden"}
        assert data["database"] == str(db)
        [running] = data["sessions"]
        assert set(running) == SESSION_KEYS
        assert running["session_id"] == session and running["alive"] is True
        assert running["state"] == "running" and running["manager_running"] is True
        assert running["pid"] == start.popen.pid and running["lease_left"] > 0
        assert len(data["workers"]) == 3
        for worker in data["workers"]:
            assert set(worker) == WORKER_KEYS
            assert worker["status"] == "idle" and worker["session_id"] == session
            assert worker["process_running"] is True
            assert isinstance(worker["pid"], int) and worker["execution_mode"] == "direct"
            assert worker["last_heartbeat"].endswith("Z") and worker["heartbeat_age"] >= 0
        assert sorted(w["label"] for w in data["workers"]) == ["notebook#0", "notebook#1", "plantuml#0"]
        assert len(data["events"]) == 3 and all(set(e) == EVENT_KEYS for e in data["events"])
        assert data["events"][-1]["event_type"] == "pool_started"
        assert data["jobs"] == {} and data["dead_hidden"] == 0

        start.popen.send_signal(signal.SIGINT)
        assert start.wait() == 0

    after = json.loads(clm_workers("status", "--db", str(db), "--json").stdout)
    assert after["sessions"][0]["alive"] is False and after["sessions"][0]["state"] == "stopped"
    assert after["workers"] == [] and after["dead_hidden"] == 3
    every = json.loads(clm_workers("status", "--db", str(db), "--json", "--all").stdout)
    assert [w["status"] for w in every["workers"]] == ["dead"] * 3


def test_status_tables_for_people(tmp_path):
    write_config(tmp_path, sim_pools(notebook=1, plantuml=1))
    start = StartProcess(tmp_path)
    try:
        start.wait_for_output("clm-workers: running")
        # No --db: ./workers.toml names the database.
        result = clm_workers("status", cwd=tmp_path)
    finally:
        start.popen.send_signal(signal.SIGTERM)
        start.wait()
        start.kill()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out
    for heading in ("Sessions", "Workers", "Recent events", "jobs: 0 pending"):
        assert heading in out
    assert "notebook#0" in out and "plantuml#0" in out and "running (lease" in out
    assert "pid / container" in out and "heartbeat" in out


def test_status_of_a_missing_or_foreign_file_is_bad_input(tmp_path):
    missing = clm_workers("status", "--db", str(tmp_path / "nope.db"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"clm-workers: error: --db: '{tmp_path / 'nope.db'}' is not allowed; "
        "expected the path of an existing CLM jobs database (no file there)")
    assert not (tmp_path / "nope.db").exists()
    (tmp_path / "notes.txt").write_text("hello\n")
    foreign = clm_workers("status", "--db", str(tmp_path / "notes.txt"))
    assert foreign.returncode == 2 and "expected a CLM jobs database" in foreign.stderr
    nothing = clm_workers("status", cwd=tmp_path)
    assert nothing.returncode == 2
    assert "--db: missing; expected the jobs database: pass --db PATH" in nothing.stderr
    from_env = clm_workers("status", env={"CLM_JOBS_DB_PATH": str(tmp_path / "env.db")})
    assert from_env.returncode == 2
    assert "database (env CLM_JOBS_DB_PATH): " in from_env.stderr


def test_a_killed_manager_is_gone_at_once_not_running_until_its_lease_ends(tmp_path):
    write_config(tmp_path, sim_pools(notebook=2, plantuml=0))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        db = tmp_path / "jobs.db"
        session = session_of(db)
        os.kill(start.popen.pid, signal.SIGKILL)
        start.wait()
    data = json.loads(clm_workers("status", "--db", str(db), "--json", "--all").stdout)
    [gone] = data["sessions"]
    assert gone["session_id"] == session and gone["state"] == "gone" and gone["manager_running"] is False
    table = clm_workers("status", "--db", str(db)).stdout
    assert re.search(rf"gone \((manager pid {start.popen.pid} not running; lease ends in \d+ s|its lease "
                     r"ran out)\)", table), table
    assert "running (lease" not in table
    # Its workers end by their lifeline; until their rows say so, no row claims a live process.
    wait_until(lambda: all(w["status"] == "dead" or w["process_running"] is False for w in json.loads(
        clm_workers("status", "--db", str(db), "--json", "--all").stdout)["workers"]), 30)
