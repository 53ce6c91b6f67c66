"""``clm-workers start`` as a real subprocess whose stderr is not a terminal.

Synchronisation is by polling (files, the database, /proc) with deadlines,
never by sleeping.
"""

from __future__ import annotations

import json
import re
import signal

import pytest

from clitools import (
    SIM,
    StartProcess,
    clm_workers,
    db_rows,
    no_worker_left,
    session_of,
    sim_pools,
    statuses,
    write_config,
)
from procs import session_processes, wait_until
from terminal import TerminalProcess


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_start_plain_output_then_signal_stops_everything_exit_0(tmp_path, signum):
    write_config(tmp_path, "[startup]\nconcurrency = 2\n" + sim_pools(notebook=2, plantuml=1))
    start = StartProcess(tmp_path, "--config", "workers.toml",
                         env={"CLM_MAX_WORKER_STARTUP_CONCURRENCY": "3"})
    try:
        start.wait_for_output("clm-workers: running")
        db = tmp_path / "jobs.db"
        session = session_of(db)
        assert statuses(db) == ["idle"] * 3
        start.popen.send_signal(signum)
        assert start.wait() == 0, start.stderr
        no_worker_left(session)
    finally:
        start.kill()
    err = start.stderr
    assert "\x1b[" not in err, "colour or cursor codes on a non-terminal"
    # The environment (3) beats the file (2).
    assert err.startswith("clm-workers: starting 3 workers (notebook 2, plantuml 1), concurrency 3, "
                          "database jobs.db\n")
    registered = [line for line in err.splitlines() if " registered, pid " in line]
    assert len(registered) == 3 and all(line.startswith("[") for line in registered)
    assert "(notebook 2/2)" in err and "(plantuml 1/1)" in err
    assert "✓ 3/3 workers registered in " in err
    assert f"clm-workers: {signal.Signals(signum).name}: stopping every worker" in err
    assert "Stopped every worker in " in err
    assert start.stdout == ""
    assert statuses(db) == ["dead"] * 3
    [(expired,)] = db_rows(db, "SELECT lease_expires_at <= julianday('now') FROM clm_worker_sessions")
    assert expired == 1


def test_signal_during_startup_cancels_pending_starts_exit_0(tmp_path):
    write_config(tmp_path, sim_pools(notebook=3, plantuml=1, boot_delay=30))
    start = StartProcess(tmp_path)  # ./workers.toml
    try:
        db = tmp_path / "jobs.db"
        session = session_of(db)
        wait_until(lambda: len(session_processes(session)) == 4, 30)
        start.popen.send_signal(signal.SIGINT)
        assert start.wait() == 0, start.stderr
        no_worker_left(session)
    finally:
        start.kill()
    assert statuses(db) == ["dead"] * 4
    assert "registered" not in start.stderr.replace("0 workers registered", "")


def test_json_prints_the_startup_report_on_stdout(tmp_path):
    write_config(tmp_path, sim_pools(notebook=1, plantuml=1))
    with StartProcess(tmp_path, "--json") as start:
        start.wait_for_output("clm-workers: running")
        start.popen.send_signal(signal.SIGTERM)
        assert start.wait() == 0
    report = json.loads(start.stdout)
    assert report["session_id"] == session_of(tmp_path / "jobs.db")
    assert {w["worker_type"] for w in report["started"]} == {"notebook", "plantuml"}
    assert all(isinstance(w["pid"], int) and w["db_worker_id"] for w in report["started"])
    assert report["failed"] == [] and report["duration"] > 0


def test_failures_are_reported_as_they_happen_and_the_rest_runs(tmp_path):
    write_config(tmp_path, sim_pools(notebook=2, plantuml=0) + f"""
        [[pools]]
        type = "drawio"
        count = 1
        module = "{SIM}"
        env = {{ CLM_SIM_FAIL = "crash" }}
    """)
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        err = start.stderr
        assert "drawio#0 failed (exit): exited with code 3 before registering; last output: " \
               "clm_workers.sim: simulated crash" in err
        assert "! 2/3 workers registered in " in err and "1 failed; the others keep running" in err
        start.popen.send_signal(signal.SIGINT)
        assert start.wait() == 0


def test_no_worker_registered_exits_1_with_the_reason(tmp_path):
    write_config(tmp_path, f"""
        [[pools]]
        type = "notebook"
        count = 2
        module = "{SIM}"
        env = {{ CLM_SIM_FAIL = "crash" }}
    """)
    result = clm_workers("start", cwd=tmp_path, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "✗ 0/2 workers registered" in result.stderr
    assert "clm-workers: no worker registered; stopping" in result.stderr
    assert statuses(tmp_path / "jobs.db") == ["dead", "dead"]


def test_a_fatal_startup_error_exits_1_with_the_reason(tmp_path):
    # A missing image is fatal before any container exists (and an unreachable
    # engine is too): either way the pool cannot start.
    write_config(tmp_path, """
        [[pools]]
        type = "notebook"
        count = 2
        mode = "docker"
        image = "clm-workers-no-such-image:never"
    """)
    result = clm_workers("start", cwd=tmp_path, timeout=60)
    assert result.returncode == 1, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "could not start" in line]
    assert line.startswith("clm-workers: the pool could not start: ")
    assert "no worker was started" in line or "Docker" in line
    assert not [s for s in statuses(tmp_path / "jobs.db") if s != "dead"]


def test_deaths_and_replacements_after_startup_are_plain_lines(tmp_path):
    write_config(tmp_path, f"""
        [monitor]
        interval = 0.2
        heartbeat_timeout = 5
        [monitor.restart]
        backoff_initial = 0.1
        [[pools]]
        type = "notebook"
        count = 1
        module = "{SIM}"
        env = {{ CLM_SIM_LIFETIME = "1.0" }}
    """)
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        start.wait_for_output("notebook#0 exited with code 4")
        start.wait_for_output("notebook#0 starting as direct-notebook-0-")
        start.wait_for_output("✓ notebook#0 registered, pid ")  # the replacement
        start.popen.send_signal(signal.SIGINT)
        assert start.wait() == 0
        no_worker_left(session_of(tmp_path / "jobs.db"))
    running = start.stderr.split("clm-workers: running", 1)[1]
    assert "✗ notebook#0 exited with code 4" in running and "✓ notebook#0 registered, pid " in running


# -- on a terminal: what the screen says, at 80 columns as at 200 --------------------------------

ROW = re.compile(r"^\s*(\d+)\s+(\S+#\d+)\s+(\w+)\s+(\S+)\s+(\d+)\s+(\d+)\b")


def _rows(screen: str, after: str) -> list[tuple[str, ...]]:
    """The worker rows of the last table on the screen that follows the line containing ``after``."""
    lines = screen.splitlines()
    start = max(i for i, line in enumerate(lines) if after in line)
    return [m.groups() for line in lines[start:] if (m := ROW.match(line))]


@pytest.mark.parametrize("columns", [80, 200])
def test_the_live_screen_tells_the_truth(tmp_path, columns):
    write_config(tmp_path, "[startup]\nconcurrency = 10\n" + sim_pools(notebook=2, plantuml=1) + f"""
        [[pools]]
        type = "drawio"
        count = 1
        module = "{SIM}"
        env = {{ CLM_SIM_FAIL = "crash" }}
    """)
    # An earlier session's job: not this pool's, so never counted in its footer.
    with StartProcess(tmp_path) as earlier:
        earlier.wait_for_output("clm-workers: running")
        (tmp_path / "in.txt").write_text("x\n")
        first = clm_workers("submit", "notebook", "in.txt", "o.txt", "--wait", "30", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        earlier.popen.send_signal(signal.SIGTERM)
        assert earlier.wait() == 0

    terminal = TerminalProcess(tmp_path, "start", columns=columns, lines=40)
    try:
        screen = terminal.wait_for("Ctrl-C to stop")
        lines = screen.splitlines()
        # Wrapped at word boundaries with an indent, never inside "concurrency 10".
        announce = next(i for i, line in enumerate(lines) if line.startswith("clm-workers: starting"))
        assert "concurrency 10" in lines[announce] or lines[announce + 1].startswith("  concurrency 10")
        failures = [line for line in lines if "drawio#0 failed" in line]
        assert len(failures) == 1 and failures[0].startswith("✗ drawio#0 failed (exit): exited with code 3")
        assert not any(line.startswith(("ERROR", "WARNING")) for line in lines), screen
        rows = _rows(screen, "clm-workers · ")
        # One row per worker, by name; the one that failed to start stays, dead; failed is 0, not blank.
        assert [(r[1], r[2]) for r in rows] == [
            ("drawio#0", "dead"), ("notebook#0", "idle"), ("notebook#1", "idle"), ("plantuml#0", "idle")]
        assert all(r[5] == "0" for r in rows)
        assert "3 running · 1 dead" in screen
        assert "jobs: 0 pending, 0 processing, 0 completed, 0 failed" in screen   # this session's jobs only

        ok = clm_workers("submit", "notebook", "in.txt", "o2.txt", "--wait", "30", cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        bad = clm_workers("submit", "plantuml", "missing.txt", "o3.txt", "--wait", "30", cwd=tmp_path)
        assert bad.returncode == 1
        screen = terminal.wait_for("0 pending, 0 processing, 1 completed, 1 failed")
        rows = _rows(screen, "clm-workers · ")
        assert ("plantuml#0", "1") in [(r[1], r[5]) for r in rows]

        terminal.ctrl_c()
        assert terminal.wait() == 0
    finally:
        terminal.close()
    screen = terminal.text()
    assert "Traceback" not in screen
    # The last frame is read after the stop: every worker as the database has it then.
    final = _rows(screen, "clm-workers · stopped")
    assert [r[1] for r in final] == ["drawio#0", "notebook#0", "notebook#1", "plantuml#0"]
    assert {r[2] for r in final} == {"dead"}, screen
    assert "clm-workers · stopped · 4 dead" in screen
    assert screen.splitlines()[-1].startswith("Stopped every worker in ")
    if columns == 80:
        assert "SIGINT: stopping every worker (SIGTERM, up to 5 s grace, then\n  SIGKILL)…" in screen


def test_fail_fast_says_the_reason_once(tmp_path):
    write_config(tmp_path, "[startup]\nfail_fast = true\n" + sim_pools(notebook=1, plantuml=0) + f"""
        [[pools]]
        type = "drawio"
        count = 1
        module = "{SIM}"
        env = {{ CLM_SIM_FAIL = "crash" }}
    """)
    result = clm_workers("start", cwd=tmp_path, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("simulated crash") == 1, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("ERROR ")]
    fatal = "clm-workers: the pool could not start: drawio#0 failed (exit) and fail_fast is set"
    if "✗ drawio#0 failed (exit)" in result.stderr:  # the failure was on screen before the pool gave up
        assert f"{fatal} (its reason is above); every worker was stopped" in result.stderr
    else:                                              # the fatal error came first: its line has the reason
        assert f"{fatal}: exited with code 3 before registering" in result.stderr
    # Asked for, the engine's own log line is there too.
    loud = clm_workers("start", "--log-level", "ERROR", cwd=tmp_path, timeout=60)
    assert loud.returncode == 1
    assert [line for line in loud.stderr.splitlines()
            if line.startswith("ERROR clm_workers.startup: pool startup failed: drawio#0")]
