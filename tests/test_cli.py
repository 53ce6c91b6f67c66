"""The ``clm-workers`` command as a user runs it: a real subprocess.

The demo, and the conventions every command follows: ``--version``,
``python -m clm_workers``, ``--log-level`` in every help and doing what it
says, consistent metavars and listed choices, Ctrl-C at any moment.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from clitools import StartProcess, clm_workers, db_rows, sim_pools, write_config
from procs import wait_until
from terminal import TerminalProcess

ROOT = Path(__file__).resolve().parents[1]


def test_demo_starts_runs_jobs_and_stops():
    result = clm_workers("demo", "--workers", "6", "--boot-delay", "0.2", "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    err, out = result.stderr, result.stdout
    # The same lines as `clm-workers start` (one view for both), not "registered (registered 1/6)".
    assert err.startswith("clm-workers: starting 6 workers (notebook 3, plantuml 2, drawio 1), "
                          "concurrency 3, database ")
    assert "(notebook 3/3)" in err and "(plantuml 2/2)" in err and "(drawio 1/1)" in err
    assert "(registered" not in err
    assert "✓ 6/6 workers registered in " in err and "Stopped every worker in " in err
    assert re.search(r"^ started\s+6 *$", out, re.MULTILINE), out
    # Two jobs for each of the three types, all completed, each by a named worker.
    jobs = [line for line in out.splitlines() if re.match(r"\s+\d+\s+(notebook|plantuml|drawio)\s", line)]
    assert len(jobs) == 6 and all("completed" in line for line in jobs), out
    assert all(re.search(r"\s(notebook|plantuml|drawio)#\d\s", line) for line in jobs), out
    # One table style throughout: a rule under the header, no boxes.
    assert not set("┏┃┌│┗└") & set(out), out


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--workers", "-3"], {}, "--workers: -3 is not allowed; expected a whole number from 1 to 1000"),
        (["--workers", "many"], {}, "--workers: 'many' is not allowed"),
        (["--boot-delay", "soon"], {}, "--boot-delay: 'soon' is not allowed"),
        (["--concurrency", "0"], {}, "--concurrency: 0 is not allowed"),
        ([], {"CLM_MAX_WORKER_STARTUP_CONCURRENCY": "abc"},
         "max_startup_concurrency (env CLM_MAX_WORKER_STARTUP_CONCURRENCY): 'abc' is not allowed"),
        ([], {"CLM_WORKER_REGISTRATION_TIMEOUT": "-1"},
         "registration_timeout (env CLM_WORKER_REGISTRATION_TIMEOUT): -1.0 is not allowed"),
    ],
)
def test_bad_setting_is_one_line_exit_2_nothing_started(args, env, message):
    result = clm_workers("demo", *args, env=env)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"clm-workers: error: {message}")
    assert "starting" not in result.stderr and result.stdout == ""


def test_version_and_python_m_clm_workers():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    package = subprocess.run([sys.executable, "-m", "clm_workers", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert package.returncode == 0 and package.stdout.strip() == f"clm-workers {version}"
    assert clm_workers("--version").stdout == package.stdout
    # The whole command, not only --version.
    help_text = subprocess.run([sys.executable, "-m", "clm_workers", "jobs", "--help"],
                               capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: clm-workers jobs")


COMMANDS = ["start", "status", "jobs", "jobs show", "logs", "submit", "stop", "demo", "bench"]
#: Every value a flag takes is named the same way in every command.
METAVARS = {"N", "SECONDS", "PATH", "FILE", "DIR", "ID", "TYPE", "JSON", "N[,N...]", "{io,cpu}[,...]"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_shows_log_level_and_names_values_the_same_way(command):
    result = clm_workers(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "--log-level {DEBUG,INFO,WARNING,ERROR,CRITICAL}" in text
    options = result.stdout.split("options:")[1]
    flags = re.findall(r"^\s+(?:-\w \S+, )?(--[a-z-]+) (\S+)", options, re.MULTILINE)
    assert flags, result.stdout
    for flag, shown in flags:
        metavar = shown.removesuffix(",")  # "--config FILE, -c FILE"
        if flag == "--log-level":
            continue
        choices = re.fullmatch(r"\{[a-z,]+\}(\[,\.\.\.\])?", metavar)
        assert metavar in METAVARS or choices, (command, flag, metavar)
    if command == "start":
        assert "--slot-mode {spawn,registration}" in text
    if command == "jobs":
        assert "--status {pending,processing,completed,failed,cancelled}" in text


def _database(tmp_path: Path) -> Path:
    """A CLM database with a finished session in it (a real, short `start`)."""
    write_config(tmp_path, sim_pools(notebook=1, plantuml=0))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        start.popen.send_signal(2)
        assert start.wait() == 0
    return tmp_path / "jobs.db"


def test_log_level_does_what_it_says(tmp_path):
    db = _database(tmp_path)
    quiet = clm_workers("status", "--db", str(db))
    assert quiet.returncode == 0 and quiet.stderr == ""
    for args in (["--log-level", "DEBUG", "status"], ["status", "--log-level", "debug"]):
        loud = clm_workers(*args, "--db", str(db))
        assert loud.returncode == 0, loud.stderr
        lines = loud.stderr.splitlines()
        assert any(line.startswith("INFO clm_workers.commands.status: database ") for line in lines), lines
        assert any(line.startswith("DEBUG clm_workers.commands.status: session ") for line in lines), lines
        assert loud.stdout.splitlines()[:2] == quiet.stdout.splitlines()[:2]  # the data stays on stdout
    jobs = clm_workers("jobs", "--db", str(db), "--log-level", "INFO")
    assert "INFO clm_workers.commands.jobs: " in jobs.stderr


def test_start_log_level_debug_shows_where_each_setting_came_from(tmp_path):
    write_config(tmp_path, "[startup]\nconcurrency = 2\n" + sim_pools(notebook=1, plantuml=0))
    with StartProcess(tmp_path, "--log-level", "DEBUG") as start:
        start.wait_for_output("clm-workers: running")
        start.popen.send_signal(15)
        assert start.wait() == 0
    err = start.stderr
    assert ("DEBUG clm_workers.commands.start: setting startup.concurrency from file workers.toml, line 2"
            in err)
    assert "INFO clm_workers.commands.start: session " in err


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_while_the_command_is_still_importing_is_one_line(tmp_path):
    # Pressed once the command's own code runs (it has loaded SQLite's extension, which
    # Python's start does not), while the rest is still being imported and parsed.
    write_config(tmp_path, sim_pools(notebook=2, plantuml=1, boot_delay=30))
    terminal = TerminalProcess(tmp_path, "start")
    try:
        wait_until(lambda: _loaded(terminal.popen.pid, "_sqlite3"), 30, interval=0.001)
        terminal.ctrl_c()
        code = terminal.wait()
    finally:
        terminal.close()
    screen = terminal.text()
    assert "Traceback" not in screen, screen
    assert code in (0, 130), (code, screen)
    if code == 130:
        assert screen.rstrip().endswith("clm-workers: interrupted; nothing it started is left running")
    assert not (tmp_path / "jobs.db").exists() or code == 0


@pytest.mark.parametrize("moment", ["announced", "rows written", "registering", "running"])
def test_ctrl_c_at_any_moment_of_start_stops_cleanly(tmp_path, moment):
    write_config(tmp_path, sim_pools(notebook=2, plantuml=1, boot_delay=0 if moment == "running" else 2))
    db = tmp_path / "jobs.db"
    terminal = TerminalProcess(tmp_path, "start")
    try:
        if moment == "announced":
            terminal.wait_for("clm-workers: starting 3 workers")
        elif moment == "rows written":
            wait_until(lambda: db_rows(db, "SELECT count(*) FROM workers") == [(3,)], 30)
        elif moment == "registering":
            wait_until(lambda: db_rows(db, "SELECT count(*) FROM worker_events"
                                          " WHERE event_type = 'worker_starting'") == [(3,)], 30)
        else:
            terminal.wait_for("Ctrl-C to stop")
        terminal.ctrl_c()
        code = terminal.wait()
    finally:
        terminal.close()
    screen = terminal.text()
    assert "Traceback" not in screen and code == 0, (code, screen)
    assert "Stopped every worker in " in screen
    assert not [s for (s,) in db_rows(db, "SELECT status FROM workers") if s != "dead"]


def test_ctrl_c_stops_the_demo_cleanly_exit_130(tmp_path):
    terminal = TerminalProcess(tmp_path, "demo", "--workers", "4", "--boot-delay", "30")
    try:
        terminal.wait_for("registered")
        terminal.ctrl_c()
        code = terminal.wait()
    finally:
        terminal.close()
    screen = terminal.text()
    assert code == 130 and "Traceback" not in screen, (code, screen)
    assert "clm-workers: SIGINT: stopping every worker" in screen
    assert screen.rstrip().splitlines()[-1].startswith("Stopped every worker in ")
