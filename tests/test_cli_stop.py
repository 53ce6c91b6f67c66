"""``clm-workers stop --db``: stop a pool that another process started.

Each case names the failure mode it guards against: a manager that must stop
its own workers cleanly, a manager that died (SIGKILL) and left rows claiming
live workers, a manager that ignores signals, and a manager on another host
(whose pid means nothing here).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from contextlib import closing
from pathlib import Path

import docker
import docker.errors
import pytest

from clitools import (
    DOCKER_IMAGE,
    StartProcess,
    alive,
    clm_workers,
    db_rows,
    no_worker_left,
    require_docker,
    session_of,
    sim_pools,
    statuses,
    write_config,
)
from clm_workers import schema
from procs import killed_at_exit, session_processes, wait_until


def start_stamp(pid: int) -> str:
    """``<boot id>:<start tick>``: how a manager records itself (clm_workers.ownership), read here."""
    ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}:{ticks}"


def test_stop_asks_a_running_start_to_stop_its_workers(tmp_path):
    write_config(tmp_path, sim_pools(notebook=2, plantuml=1))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        db = tmp_path / "jobs.db"
        session = session_of(db)
        assert len(session_processes(session)) == 3

        result = clm_workers("stop", "--db", str(db), "--json")  # another process
        assert result.returncode == 0, result.stderr
        assert start.wait(timeout=30) == 0, start.stderr   # it stopped itself, cleanly
    no_worker_left(session)
    [stopped] = json.loads(result.stdout)["sessions"]
    assert stopped["session_id"] == session and stopped["outcome"] == "stopped" and stopped["ok"]
    assert stopped["signals"] == ["SIGTERM"] and stopped["manager_pid"] == start.popen.pid
    assert stopped["rows_marked_dead"] == 0  # the manager did that itself
    assert statuses(db) == ["dead"] * 3
    assert "clm-workers: SIGTERM: stopping every worker" in start.stderr
    assert f"session {session[:8]}: stopped by its manager in " in result.stderr

    again = clm_workers("stop", "--db", str(db))
    assert again.returncode == 0
    assert "nothing to stop" in again.stderr


def test_stop_cleans_up_after_a_manager_that_was_killed(tmp_path):
    write_config(tmp_path, sim_pools(notebook=2, plantuml=1, boot_delay=0))
    start = StartProcess(tmp_path)
    start.wait_for_output("clm-workers: running")
    db = tmp_path / "jobs.db"
    session = session_of(db)
    start.kill()  # SIGKILL: no cleanup at all; the rows still claim 3 live workers

    result = clm_workers("stop", "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    [cleaned] = json.loads(result.stdout)["sessions"]
    assert cleaned["outcome"] == "cleaned" and cleaned["ok"] and cleaned["signals"] == []
    assert "its manager is gone" in result.stderr
    assert "exit by themselves within about a second (lifeline)" in result.stderr
    no_worker_left(session)
    assert statuses(db) == ["dead"] * 3
    [(expired,)] = db_rows(db, "SELECT lease_expires_at <= julianday('now') FROM clm_worker_sessions")
    assert expired == 1


FAKE_MANAGER = textwrap.dedent("""
    import os, signal, sys, time
    from clm_workers import schema
    from clm_workers.ownership import ManagerToken, start_stamp
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    conn = schema.connect(sys.argv[1])
    schema.ensure_schema(conn)
    token = ManagerToken(sys.argv[2])  # what a real manager holds: stop signals only it
    token.create()
    conn.execute("INSERT INTO clm_worker_sessions (session_id, pid, host, lease_expires_at, proc_start)"
                 " VALUES (?, ?, ?, julianday('now') + 1, ?)",
                 (sys.argv[2], os.getpid(), sys.argv[3], start_stamp()))
    conn.execute("INSERT INTO workers (worker_type, container_id, status, session_id)"
                 " VALUES ('notebook', 'direct-notebook-0-0000abcd', 'idle', ?)", (sys.argv[2],))
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
""")


def fake_manager(db, session: str, host: str) -> subprocess.Popen[str]:
    """A manager that holds a live session and ignores SIGINT and SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-c", FAKE_MANAGER, str(db), session, host],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_manager_that_ignores_signals_is_killed_after_the_timeout(tmp_path):
    db = tmp_path / "jobs.db"
    session = uuid.uuid4().hex
    manager = fake_manager(db, session, socket.gethostname())
    with killed_at_exit(manager):
        result = clm_workers("stop", "--db", str(db), "--timeout", "1", "--json")
        assert result.returncode == 0, result.stderr
        wait_until(lambda: manager.poll() is not None, 10)
        assert manager.returncode == -signal.SIGKILL
    [killed] = json.loads(result.stdout)["sessions"]
    # Not clm-workers start: SIGINT first (Python's KeyboardInterrupt), then SIGTERM, then SIGKILL.
    assert killed["signals"] == ["SIGINT", "SIGTERM", "SIGKILL"] and killed["manager_killed"] is True
    assert killed["outcome"] == "cleaned" and killed["rows_marked_dead"] == 1
    assert statuses(db) == ["dead"]
    [(message,)] = db_rows(db, "SELECT message FROM worker_events WHERE event_type = 'pool_stopped'")
    assert "stopped by clm-workers stop" in str(message)


def test_a_manager_on_another_host_is_not_signalled(tmp_path):
    db = tmp_path / "jobs.db"
    session = uuid.uuid4().hex
    manager = fake_manager(db, session, "some-other-host")
    with killed_at_exit(manager):
        result = clm_workers("stop", "--db", str(db), "--timeout", "1")
        assert result.returncode == 1
        assert f"session {session[:8]}: its manager (pid {manager.pid}) runs on host some-other-host; " \
               "run `clm-workers stop` there" in result.stderr
        assert alive(manager.pid)  # the pid means another process there: never signalled
        assert statuses(db) == ["idle"]  # nor are its rows touched


def test_stop_a_session_by_prefix_and_bad_input(tmp_path):
    db = tmp_path / "jobs.db"
    missing = clm_workers("stop", "--db", str(db))
    assert missing.returncode == 2 and "expected the path of an existing CLM jobs database" in missing.stderr
    session = uuid.uuid4().hex
    manager = fake_manager(db, session, socket.gethostname())
    with killed_at_exit(manager):
        wrong = clm_workers("stop", "--db", str(db), "--session", "zzzz")
        assert wrong.returncode == 2
        assert f"--session: 'zzzz' is not allowed; expected a session id (or its start) of this " \
               f"database; it has: {session[:8]}" in wrong.stderr
        bad_timeout = clm_workers("stop", "--db", str(db), "--timeout", "0")
        assert bad_timeout.returncode == 2 and "--timeout: 0.0 is not allowed" in bad_timeout.stderr
        assert alive(manager.pid)
        result = clm_workers("stop", "--db", str(db), "--session", session[:6], "--timeout", "1")
        assert result.returncode == 0, result.stderr
    assert statuses(db) == ["dead"]


def test_stop_reads_the_database_from_workers_toml(tmp_path):
    write_config(tmp_path, 'database = "pool.db"\n' + sim_pools(notebook=1, plantuml=1))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        session = session_of(tmp_path / "pool.db")
        result = clm_workers("stop", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert start.wait(timeout=30) == 0
    no_worker_left(session)
    assert os.path.exists(tmp_path / "pool.db")


CLM_LIKE_HOST = textwrap.dedent("""
    import sys, time
    import trio
    from clm_workers import WorkerConfig, WorkerPoolManager
    manager = WorkerPoolManager(sys.argv[1], sys.argv[2],
                                [WorkerConfig("notebook", 2, module="clm_workers.sim")])
    trio.run(manager.start_pools)
    manager.start_monitoring()
    print("ready", flush=True)
    try:
        while True:          # CLM building the course between the two calls
            time.sleep(0.05)
    finally:
        trio.run(manager.stop_pools)
        print("stopped", flush=True)
""")


def test_stop_interrupts_a_library_manager_which_stops_its_pool_in_its_finally(tmp_path):
    db = tmp_path / "jobs.db"
    host = subprocess.Popen([sys.executable, "-c", CLM_LIKE_HOST, str(db), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with killed_at_exit(host):
        assert host.stdout is not None and host.stdout.readline().strip() == "ready"
        session = session_of(db)
        assert len(session_processes(session)) == 2
        result = clm_workers("stop", "--db", str(db), "--json")
        assert result.returncode == 0, result.stderr
        out, _ = host.communicate(timeout=30)
    assert "stopped" in out  # its own stop_pools ran
    [stopped] = json.loads(result.stdout)["sessions"]
    assert stopped["signals"] == ["SIGINT"] and stopped["outcome"] == "stopped"
    no_worker_left(session)
    assert statuses(db) == ["dead", "dead"]


@pytest.mark.parametrize("when", ["at once", "after they stopped by themselves"])
def test_stop_removes_the_containers_a_killed_manager_left(tmp_path, when):
    """At once: they still run.  Later: their lease ran out, they exited and marked their rows
    dead, so the session claims nothing any more, but its exited containers are still there."""
    require_docker(tmp_path, DOCKER_IMAGE)
    write_config(tmp_path, f"""
        lease_ttl = 2

        [[pools]]
        type = "notebook"
        count = 2
        mode = "docker"
        image = "{DOCKER_IMAGE}"
        module = "clm_workers.sim"
        env = {{ CLM_HEARTBEAT_INTERVAL = "0.5" }}
    """)
    start = StartProcess(tmp_path)
    client = docker.from_env(version="auto")
    try:
        start.wait_for_output("clm-workers: running")
        session = session_of(tmp_path / "jobs.db")
        label = {"label": f"clm.session={session}"}
        assert len(client.containers.list(filters=label)) == 2
        start.kill()  # SIGKILL: the containers keep running until their lease runs out
        if when != "at once":
            wait_until(lambda: not client.containers.list(filters=label), 20, "the containers to exit")
            wait_until(lambda: statuses(tmp_path / "jobs.db") == ["dead", "dead"], 10, "their rows dead")

        result = clm_workers("stop", "--db", str(tmp_path / "jobs.db"), "--json")
        assert client.containers.list(all=True, filters=label) == [], result.stderr
        assert result.returncode == 0, result.stderr
        [cleaned] = json.loads(result.stdout)["sessions"]
        assert cleaned["outcome"] == "cleaned" and len(cleaned["containers_removed"]) == 2
        assert statuses(tmp_path / "jobs.db") == ["dead", "dead"]
    finally:
        start.kill()
        db_label = f"clm.db-path={(tmp_path / 'jobs.db').resolve()}"
        for container in client.containers.list(all=True, filters={"label": db_label}):
            container.remove(force=True)
        client.close()


# -- stop never hits a stranger --------------------------------------------------------------


def _session_row(db, session: str, pid: int, *, proc_start: str | None = None, lease: float = 60) -> None:
    """What anyone who can write the database (a container, say) can put there."""
    conn = schema.connect(db)
    schema.ensure_schema(conn)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(clm_worker_sessions)")}
    if proc_start is not None and "proc_start" in columns:
        conn.execute("INSERT INTO clm_worker_sessions (session_id, pid, host, lease_expires_at, proc_start)"
                     " VALUES (?, ?, ?, julianday('now') + ?, ?)",
                     (session, pid, socket.gethostname(), lease / 86400, proc_start))
    else:
        conn.execute("INSERT INTO clm_worker_sessions (session_id, pid, host, lease_expires_at)"
                     " VALUES (?, ?, ?, julianday('now') + ?)",
                     (session, pid, socket.gethostname(), lease / 86400))
    conn.execute("INSERT INTO workers (worker_type, container_id, status, session_id)"
                 " VALUES ('notebook', ?, 'idle', ?)", (f"direct-notebook-0-{session[:8]}", session))
    conn.close()


STRANGERS = {
    "a root sleep": dict(args=["sleep", "600"]),
    "a process of nobody": dict(args=["sleep", "600"], user=65534),
    "a python that ignores SIGINT": dict(
        args=[sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                    "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE),
}


@pytest.mark.parametrize("stranger", list(STRANGERS))
@pytest.mark.parametrize("exact_start", [False, True], ids=["no start time", "its exact start time"])
def test_stop_never_signals_a_process_a_session_row_merely_names(tmp_path, stranger, exact_start):
    """A forged row: a live lease on this host naming an unrelated process, even with its true start time."""
    options = STRANGERS[stranger]
    victim = subprocess.Popen(options["args"], user=options.get("user"), stdout=options.get("stdout"),
                              text=True)
    with killed_at_exit(victim):
        if victim.stdout is not None:
            assert victim.stdout.readline().strip() == "ready"
        db = tmp_path / "jobs.db"
        session = uuid.uuid4().hex
        _session_row(db, session, victim.pid, proc_start=start_stamp(victim.pid) if exact_start else None)
        result = clm_workers("stop", "--db", str(db), "--timeout", "2", "--json")
        assert victim.poll() is None, f"stop signalled {stranger} (pid {victim.pid}): {result.stderr}"
        assert result.returncode == 1, result.stderr
        [refused] = json.loads(result.stdout)["sessions"]
        assert refused["signals"] == [] and refused["outcome"] == "not_stopped"
        assert f"cannot prove that pid {victim.pid} is its manager" in result.stderr
        assert f"`kill -INT {victim.pid}` for CLM, `kill -TERM {victim.pid}` for clm-workers start" \
            in result.stderr
        assert statuses(db) == ["idle"]  # and nothing of the session is touched


def test_stop_never_signals_a_pid_reused_after_its_manager_died(tmp_path):
    """The manager's row is real, but its pid now names a process that started later."""
    write_config(tmp_path, sim_pools(notebook=1, plantuml=1))
    start = StartProcess(tmp_path)
    start.wait_for_output("clm-workers: running")
    db = tmp_path / "jobs.db"
    session = session_of(db)
    start.kill()  # SIGKILL: the lease stays alive for up to lease_ttl
    successor = subprocess.Popen(["sleep", "600"])  # it got the manager's pid (as the kernel may do)
    with killed_at_exit(successor):
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("UPDATE clm_worker_sessions SET pid = ? WHERE session_id = ?",
                         (successor.pid, session))
        result = clm_workers("stop", "--db", str(db), "--json")
        assert successor.poll() is None, "stop signalled a process that merely has the manager's old pid"
        assert result.returncode == 0, result.stderr
        [cleaned] = json.loads(result.stdout)["sessions"]
        assert cleaned["signals"] == [] and cleaned["outcome"] == "cleaned"
        assert f"its manager is gone (pid {successor.pid} is another process now" in result.stderr
    no_worker_left(session)
    assert statuses(db) == ["dead", "dead"]


def test_stop_with_an_empty_session_is_bad_input(tmp_path):
    """``--session ""`` names no session: refused, rather than taken as the prefix of every one."""
    write_config(tmp_path, sim_pools(notebook=1, plantuml=1))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        empty = clm_workers("stop", "--db", str(tmp_path / "jobs.db"), "--session", "")
        assert start.popen.poll() is None, f"--session '' stopped a pool: {empty.stderr}"
        assert empty.returncode == 2, empty.stderr
        assert "--session: '' is not allowed; expected a session id or its first characters" in empty.stderr
        assert statuses(tmp_path / "jobs.db") == ["idle", "idle"]
        start.popen.send_signal(signal.SIGTERM)
        assert start.wait() == 0


def test_stop_needs_only_the_database_of_a_workers_toml_with_a_typo(tmp_path):
    write_config(tmp_path, sim_pools(notebook=1, plantuml=1))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        session = session_of(tmp_path / "jobs.db")
        # The file changes under the running pool: a typo that `start` would refuse.
        write_config(tmp_path, "[startup]\nconcurency = 3\n" + sim_pools(notebook=1, plantuml=1))
        result = clm_workers("stop", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert start.wait(timeout=30) == 0
    no_worker_left(session)
