"""``clm-workers logs``: a worker's log while the pool runs (followed), after it stopped, after its
manager was killed; and how long the logs are kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from clitools import (
    DOCKER_IMAGE,
    StartProcess,
    _env,
    clm_workers,
    require_docker,
    session_of,
    sim_pools,
    write_config,
)
from clm_workers import logfiles, schema
from procs import wait_until


def _follow(folder: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = folder / f"follow-{len(list(folder.glob('follow-*')))}.out"
    with open(out, "wb") as sink:
        popen = subprocess.Popen([sys.executable, "-m", "clm_workers", "logs", *args], stdout=sink,
                                 stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=folder,
                                 env=_env(None))
    return popen, out


def test_follow_a_running_pool_then_read_it_after_it_stopped(tmp_path):
    write_config(tmp_path, sim_pools(notebook=1, plantuml=1))
    start = StartProcess(tmp_path)
    follow = None
    try:
        start.wait_for_output("clm-workers: running")
        db = tmp_path / "jobs.db"
        session = session_of(db)
        folder = tmp_path / "jobs.db.logs" / session
        assert sorted(p.name.split("-")[1] for p in folder.glob("*.log")) == ["notebook", "plantuml"]

        follow, out = _follow(tmp_path, "notebook#0", "-f")
        wait_until(lambda: "activated pre-registered row" in out.read_text(), 30)
        (tmp_path / "in.txt").write_text("x\n")
        submitted = clm_workers("submit", "notebook", "in.txt", "out.txt", "--wait", "30", cwd=tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        wait_until(lambda: "job 1 done in" in out.read_text(), 30)   # a new line, as it is written

        start.popen.send_signal(signal.SIGINT)
        assert start.wait() == 0
        assert follow.wait(timeout=30) == 0                         # it ends once the pool has stopped
        followed = out.read_text()
        assert "stopping (signal 15)" in followed and "plantuml" not in followed
    finally:
        start.kill()
        if follow is not None and follow.poll() is None:
            follow.kill()

    after = clm_workers("logs", "notebook#0", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert after.stdout == followed                                 # the same file, kept after the stop
    every = clm_workers("logs", cwd=tmp_path).stdout.splitlines()
    assert every and all(line.startswith(("notebook#0 | ", "plantuml#0 | ")) for line in every), every
    assert any(line.startswith("plantuml#0 | ") for line in every)
    last = clm_workers("logs", "notebook#0", "--tail", "1", cwd=tmp_path).stdout
    assert last == followed.splitlines(keepends=True)[-1]

    unknown = clm_workers("logs", "drawio#3", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        f"clm-workers: error: TYPE#INDEX: 'drawio#3' is not allowed; expected a worker of session "
        f"{session[:8]}: notebook#0, plantuml#0")


def test_logs_survive_a_killed_manager_and_a_chosen_log_dir(tmp_path):
    write_config(tmp_path, 'log_dir = "worker-logs"\n' + sim_pools(notebook=1, plantuml=0))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        os.kill(start.popen.pid, signal.SIGKILL)
        start.wait()
    assert list((tmp_path / "worker-logs").glob("direct-notebook-0-*.log"))
    assert not (tmp_path / "jobs.db.logs").exists()
    result = clm_workers("logs", "notebook#0", cwd=tmp_path)  # log_dir from ./workers.toml
    assert result.returncode == 0, result.stderr
    assert "activated pre-registered row" in result.stdout
    elsewhere = clm_workers("logs", "notebook#0", "--log-dir", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert elsewhere.returncode == 1
    assert "clm-workers: no log for notebook#0 (row 1): " in elsewhere.stderr


def test_a_killed_manager_leaves_no_log_folder_in_the_temp_folder(tmp_path):
    """The default log folder is beside the database, where the next manager prunes it: a manager
    killed with SIGKILL, which cleans up nothing, leaves no ``clm-workers-*`` folder in /tmp."""
    temp = Path(tempfile.gettempdir())
    write_config(tmp_path, sim_pools(notebook=1, plantuml=0))
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        session = session_of(tmp_path / "jobs.db")
        os.kill(start.popen.pid, signal.SIGKILL)
        start.wait()
    left = list(temp.glob(f"clm-workers-{session[:8]}*"))
    for folder in left:
        shutil.rmtree(folder)
    assert left == [], "a killed manager left its log folder in the temp folder"
    assert list((tmp_path / "jobs.db.logs" / session).glob("direct-notebook-0-*.log"))


def test_a_stopping_manager_keeps_the_newest_sessions_logs_and_every_live_ones(tmp_path):
    db = tmp_path / "jobs.db"
    with closing(schema.connect(db)) as conn:
        schema.ensure_schema(conn)
        conn.execute("INSERT INTO clm_worker_sessions (session_id, pid, host, lease_expires_at) VALUES"
                     " ('live', 1, 'h', julianday('now') + 1), ('ended', 1, 'h', julianday('now') - 1)")
    root = logfiles.log_root(db)
    now = time.time()
    names = ["live", "ended", *(f"old{n:02d}" for n in range(12))]
    for age, name in enumerate(names):  # "live" is the oldest folder of all
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "direct-notebook-0-00000000.log").write_text("x\n")
        os.utime(folder, (now - 1000 + age, now - 1000 + age))
    removed = logfiles.prune(db)
    assert sorted(removed) == ["ended", "old00", "old01"]   # 13 not live, 10 kept: the oldest 3 go
    assert sorted(p.name for p in root.iterdir()) == sorted(["live", *(f"old{n:02d}" for n in range(2, 12))])
    assert logfiles.prune(db) == []
    # A database that cannot tell which sessions run: nothing is pruned.
    (tmp_path / "other.db").write_text("not sqlite\n")
    (logfiles.log_root(tmp_path / "other.db") / "x").mkdir(parents=True)
    assert logfiles.prune(tmp_path / "other.db", keep=0) == []


def test_a_containers_log_comes_from_the_engine_while_it_exists(tmp_path):
    require_docker(tmp_path)
    write_config(tmp_path, f"""
        [[pools]]
        type = "notebook"
        count = 1
        mode = "docker"
        image = "{DOCKER_IMAGE}"
        module = "clm_workers.sim"
    """)
    with StartProcess(tmp_path) as start:
        start.wait_for_output("clm-workers: running")
        running = clm_workers("logs", "notebook#0", cwd=tmp_path)
        assert running.returncode == 0, running.stderr
        assert "activated pre-registered row 1: type=notebook container_id=docker-notebook-0-" \
            in running.stdout
        every = clm_workers("logs", cwd=tmp_path)
        assert "clm-workers: notebook#0 runs in a container; its log: clm-workers logs notebook#0" \
            in every.stderr
        start.popen.send_signal(signal.SIGTERM)
        assert start.wait() == 0
    gone = clm_workers("logs", "notebook#0", cwd=tmp_path)
    assert gone.returncode == 1
    assert "its container docker-notebook-0-" in gone.stderr and "is gone" in gone.stderr
