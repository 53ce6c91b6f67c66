"""The worker runtime end to end: real ``python -m clm_workers.sim`` processes, real SQLite.

Nothing is mocked.  Every wait polls a condition against a deadline; every
process a test starts is killed by the ``workers`` fixture's teardown.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

import clm_workers
from clm_workers import schema
from clm_workers.sim import CRASH_MESSAGE
from clm_workers.worker import Job, WorkerContext
from procs import wait_until

T = TypeVar("T")

#: A killed manager must leave no worker alive after this long.
LIFELINE_BOUND = 2.0
#: For workers that import the test modules (workers_for_tests) and this clm_workers.
TESTS_PATH = os.pathsep.join([str(Path(__file__).resolve().parent),
                              str(Path(clm_workers.__file__).resolve().parent.parent)])


# ------------------------------------------------------------------ database helpers


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.db"
    conn = schema.connect(path)
    schema.ensure_schema(conn)
    conn.close()
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def execute(db: Path, sql: str, params: tuple[Any, ...] = ()) -> int:
    conn = sqlite3.connect(db, timeout=10)
    try:
        cursor = conn.execute(sql, params)
        conn.commit()
        return cursor.lastrowid or 0
    finally:
        conn.close()


def pre_register(db: Path, container_id: str = "direct-sim-0-test") -> int:
    return execute(
        db,
        "INSERT INTO workers (worker_type, container_id, status, execution_mode) "
        "VALUES ('sim', ?, 'created', 'direct')",
        (container_id,),
    )


def add_job(
    db: Path,
    input_file: str,
    output_file: str,
    *,
    payload: Mapping[str, Any] | None = None,
    priority: int = 0,
    session_id: str | None = None,
) -> int:
    return execute(
        db,
        "INSERT INTO jobs (job_type, status, priority, input_file, output_file, content_hash,"
        " payload, session_id) VALUES ('sim', 'pending', ?, ?, ?, 'hash', ?, ?)",
        (priority, input_file, output_file, json.dumps(dict(payload or {})), session_id),
    )


def worker_row(db: Path, worker_id: int) -> dict[str, Any] | None:
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM workers WHERE id = ?", (worker_id,)).fetchone()
        return None if row is None else dict(row)
    finally:
        conn.close()


def job_row(db: Path, job_id: int) -> dict[str, Any]:
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
    finally:
        conn.close()


def status_of(db: Path, worker_id: int) -> str | None:
    row = worker_row(db, worker_id)
    return None if row is None else row["status"]


def job_status(db: Path, job_id: int) -> str:
    return str(job_row(db, job_id)["status"])


# ------------------------------------------------------------------ processes


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_started(self) -> None:
        """Until the runtime has its signal handlers (it logs this line right after)."""
        wait_until(lambda: "worker starting" in self.stderr, what="the 'worker starting' line")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker still running after {timeout} s; stderr:\n{self.stderr}"
            ) from None


class Workers:
    """Starts sim workers for one test and kills whatever is left at teardown."""

    def __init__(self, db: Path, workspace: Path, tmp_path: Path) -> None:
        self.db, self.workspace, self.tmp_path = db, workspace, tmp_path
        self.started: list[Worker] = []

    def env(self, **overrides: str) -> dict[str, str]:
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CLM_", "WORKER_"))
            and key not in ("DB_PATH", "WORKSPACE_PATH", "HOSTNAME", "LOG_LEVEL")
        }
        env = {
            **inherited,
            "WORKER_TYPE": "sim",
            "CLM_JOBS_DB_PATH": str(self.db),
            "WORKSPACE_PATH": str(self.workspace),
            "WORKER_ID": "direct-sim-0-test",
            "LOG_LEVEL": "INFO",
            "CLM_POLL_INTERVAL": "0.02",
        }
        env.update(overrides)
        return {key: value for key, value in env.items() if value is not None}

    def spawn(
        self,
        pass_fds: tuple[int, ...] = (),
        argv: tuple[str, ...] = ("-m", "clm_workers.sim"),
        own_group: bool = False,
        **overrides: str,
    ) -> Worker:
        stderr_path = self.tmp_path / f"worker-{len(self.started)}.stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, *argv],
                env=self.env(**overrides),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=pass_fds,
                process_group=0 if own_group else None,  # as the executors start workers
            )
        worker = Worker(proc, stderr_path)
        self.started.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.proc.kill()
            worker.proc.wait()


@pytest.fixture
def workers(db: Path, workspace: Path, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(db, workspace, tmp_path)
    try:
        yield pool
    finally:
        pool.kill_all()


class Lifeline:
    """The manager's side of a lifeline pipe: ``cut()`` is what the manager's death does."""

    def __init__(self) -> None:
        self.read_end, self._write_end = os.pipe()
        self._open = [self.read_end, self._write_end]

    def cut(self) -> None:
        os.close(self._write_end)
        self._open.remove(self._write_end)

    def close(self) -> None:
        for fd in self._open:  # only fds still ours: a closed number may be reused
            os.close(fd)
        self._open.clear()


@pytest.fixture
def lifeline() -> Iterator[Lifeline]:
    pipe = Lifeline()
    try:
        yield pipe
    finally:
        pipe.close()


def registered_self(db: Path, container_id: str = "direct-sim-0-test") -> int | None:
    """The id of the row a self-registering worker inserted, once it is there."""
    rows = query(db, "SELECT id FROM workers WHERE container_id = ?", (container_id,))
    return rows[0][0] if rows else None


# ------------------------------------------------------------------ registration


def test_activation_flips_created_to_idle_and_records_the_event(workers: Workers, db: Path):
    row_id = pre_register(db)
    worker = workers.spawn(CLM_WORKER_ID=str(row_id), CLM_SESSION_ID="s1")

    wait_until(lambda: status_of(db, row_id) == "idle", what="activation")

    events = query(
        db,
        "SELECT worker_id, worker_type, session_id, metadata FROM worker_events"
        " WHERE event_type = 'worker_registered'",
    )
    assert len(events) == 1
    event_worker, event_type, event_session, metadata = events[0]
    assert (event_worker, event_type, event_session) == (row_id, "sim", "s1")
    meta = json.loads(metadata)
    assert meta["pid"] == worker.proc.pid
    assert abs(meta["registered_at_unix"] - time.time()) < 60
    # Activation must not insert a row of its own.
    assert query(db, "SELECT COUNT(*) FROM workers") == [(1,)]


def test_activation_of_a_missing_row_exits_3(workers: Workers, db: Path):
    worker = workers.spawn(CLM_WORKER_ID="999")
    assert worker.wait_exit(5) == 3
    assert "999" in worker.stderr and "no such row" in worker.stderr
    assert query(db, "SELECT COUNT(*) FROM workers") == [(0,)]


def test_activation_of_a_row_that_is_not_created_exits_3(workers: Workers, db: Path):
    row_id = pre_register(db)
    execute(db, "UPDATE workers SET status = 'dead' WHERE id = ?", (row_id,))
    worker = workers.spawn(CLM_WORKER_ID=str(row_id))
    assert worker.wait_exit(5) == 3
    assert "'dead'" in worker.stderr
    assert status_of(db, row_id) == "dead"


def test_self_registration_inserts_a_row_with_worker_id_as_container_id(workers: Workers, db: Path):
    workers.spawn(WORKER_ID="direct-sim-7-cafe", CLM_SESSION_ID="s2")
    row_id = wait_until(lambda: registered_self(db, "direct-sim-7-cafe"), what="registration")
    row = worker_row(db, row_id)
    assert row is not None
    assert (row["worker_type"], row["session_id"], row["execution_mode"]) == (
        "sim",
        "s2",
        "direct",
    )
    assert query(
        db, "SELECT worker_id FROM worker_events WHERE event_type = 'worker_registered'"
    ) == [(row_id,)]


def test_self_registration_falls_back_to_hostname(workers: Workers, db: Path):
    workers.spawn(WORKER_ID="", HOSTNAME="0123456789ab")
    row_id = wait_until(lambda: registered_self(db, "0123456789ab"), what="registration")
    assert worker_row(db, row_id)["execution_mode"] == "docker"  # type: ignore[index]


def test_a_missing_database_file_gets_the_schema(workers: Workers, tmp_path: Path):
    fresh = tmp_path / "fresh" / "jobs.db"
    fresh.parent.mkdir()
    workers.spawn(CLM_JOBS_DB_PATH=str(fresh))

    def registered() -> int | None:
        if not fresh.exists():
            return None  # connecting would create the file: the worker would see it
        try:
            return registered_self(fresh)
        except sqlite3.OperationalError:  # the file is there, the schema not yet
            return None

    wait_until(registered, what="registration")
    assert query(fresh, "SELECT version FROM schema_version") == [(schema.SCHEMA_VERSION,)]


def test_an_existing_database_file_gets_no_ddl(workers: Workers, tmp_path: Path):
    foreign = tmp_path / "foreign.db"
    execute(
        foreign,
        "CREATE TABLE workers (id INTEGER PRIMARY KEY, worker_type TEXT, container_id TEXT,"
        " status TEXT, session_id TEXT, execution_mode TEXT, last_heartbeat TIMESTAMP)",
    )
    worker = workers.spawn(CLM_JOBS_DB_PATH=str(foreign))
    assert worker.wait_exit(5) == 1  # no worker_events table: registration fails
    tables = {name for (name,) in query(foreign, "SELECT name FROM sqlite_master")}
    assert tables == {"workers"}
    assert query(foreign, "SELECT COUNT(*) FROM workers") == [(0,)]  # rolled back


def test_legacy_db_path_spelling_is_honoured(workers: Workers, db: Path):
    workers.spawn(CLM_JOBS_DB_PATH="", DB_PATH=str(db))
    wait_until(lambda: registered_self(db), what="registration via DB_PATH")


# ------------------------------------------------------------------ jobs


def test_a_job_is_claimed_completed_and_counted(workers: Workers, db: Path, workspace: Path):
    (workspace / "in.txt").write_text("hello, world")
    job_id = add_job(db, "in.txt", "out/sub/result.txt")
    workers.spawn()
    row_id = wait_until(lambda: registered_self(db), what="registration")

    wait_until(lambda: job_status(db, job_id) == "completed", what="the job")

    job = job_row(db, job_id)
    assert (job["worker_id"], job["attempts"]) == (row_id, 1)
    assert json.loads(job["result"]) == {"bytes": 12}
    assert job["started_at"] and job["completed_at"]
    assert (workspace / "out" / "sub" / "result.txt").read_text() == "hello, world"
    wait_until(lambda: status_of(db, row_id) == "idle", what="idle again")
    row = worker_row(db, row_id)
    assert row is not None
    assert (row["jobs_processed"], row["jobs_failed"]) == (1, 0)
    assert row["avg_processing_time"] is not None and row["avg_processing_time"] >= 0


def test_a_failing_job_is_marked_failed_and_the_worker_survives(
    workers: Workers, db: Path, workspace: Path
):
    bad = add_job(db, "missing.txt", "out/bad.txt")
    workers.spawn()
    row_id = wait_until(lambda: registered_self(db), what="registration")
    wait_until(lambda: job_status(db, bad) == "failed", what="the failing job")

    (workspace / "in.txt").write_text("ok")
    good = add_job(db, "in.txt", "out/good.txt")
    wait_until(lambda: job_status(db, good) == "completed", what="the next job")

    failed = job_row(db, bad)
    assert "FileNotFoundError" in failed["error"] and "missing.txt" in failed["error"]
    assert "Traceback" in failed["traceback"]
    row = worker_row(db, row_id)
    assert row is not None
    assert (row["jobs_processed"], row["jobs_failed"]) == (1, 1)


def test_higher_priority_is_claimed_first(workers: Workers, db: Path, workspace: Path):
    (workspace / "in.txt").write_text("x")
    low = add_job(db, "in.txt", "low.txt", payload={"seconds": 1.0})
    high = add_job(db, "in.txt", "high.txt", payload={"seconds": 1.0}, priority=5)
    workers.spawn()
    wait_until(lambda: job_status(db, high) != "pending", what="the first claim")
    assert job_status(db, low) == "pending"


def test_jobs_of_other_sessions_are_left_alone(workers: Workers, db: Path, workspace: Path):
    (workspace / "in.txt").write_text("x")
    foreign = add_job(db, "in.txt", "foreign.txt", session_id="other")
    mine = add_job(db, "in.txt", "mine.txt", session_id="mine")
    shared = add_job(db, "in.txt", "shared.txt")
    workers.spawn(CLM_SESSION_ID="mine")
    wait_until(
        lambda: job_status(db, mine) == job_status(db, shared) == "completed", what="both jobs"
    )
    # ``foreign`` is the oldest: had the worker considered it, it would have run first.
    assert job_status(db, foreign) == "pending"


# ------------------------------------------------------------------ signals


def test_sigterm_before_registration_exits_at_once_without_touching_the_row(
    workers: Workers, db: Path
):
    row_id = pre_register(db)
    worker = workers.spawn(CLM_WORKER_ID=str(row_id), CLM_SIM_BOOT_DELAY="30")
    worker.wait_started()
    sent = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(2) == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 2
    assert status_of(db, row_id) == "created"
    assert query(db, "SELECT COUNT(*) FROM worker_events") == [(0,)]


def test_sigterm_while_hanging_exits_at_once(workers: Workers, db: Path):
    worker = workers.spawn(CLM_SIM_FAIL="hang")
    worker.wait_started()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(2) == 128 + signal.SIGTERM
    assert query(db, "SELECT COUNT(*) FROM workers") == [(0,)]


def test_sigterm_after_registration_marks_the_row_dead_and_exits_0(workers: Workers, db: Path):
    row_id = pre_register(db)
    worker = workers.spawn(CLM_WORKER_ID=str(row_id))
    wait_until(lambda: status_of(db, row_id) == "idle", what="activation")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(5) == 0
    assert status_of(db, row_id) == "dead"


def test_sigterm_during_a_job_lets_the_job_finish(workers: Workers, db: Path, workspace: Path):
    (workspace / "in.txt").write_text("slow")
    job_id = add_job(db, "in.txt", "out.txt", payload={"seconds": 0.5})
    worker = workers.spawn()
    row_id = wait_until(lambda: registered_self(db), what="registration")
    wait_until(lambda: job_status(db, job_id) == "processing", what="the claim")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(5) == 0
    assert job_status(db, job_id) == "completed"
    assert (workspace / "out.txt").read_text() == "slow"
    assert status_of(db, row_id) == "dead"


def test_a_job_overrunning_the_stop_grace_is_requeued(workers: Workers, db: Path, workspace: Path):
    (workspace / "in.txt").write_text("too slow")
    job_id = add_job(db, "in.txt", "out.txt", payload={"seconds": 30})
    worker = workers.spawn(CLM_STOP_JOB_GRACE="0.3")
    row_id = wait_until(lambda: registered_self(db), what="registration")
    wait_until(lambda: job_status(db, job_id) == "processing", what="the claim")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(3) == 0
    job = job_row(db, job_id)
    assert (job["status"], job["worker_id"], job["attempts"]) == ("pending", None, 1)
    assert status_of(db, row_id) == "dead"


def test_a_job_on_its_last_attempt_fails_when_given_up(workers: Workers, db: Path, workspace: Path):
    (workspace / "in.txt").write_text("too slow")
    job_id = add_job(db, "in.txt", "out.txt", payload={"seconds": 30})
    execute(db, "UPDATE jobs SET attempts = 2 WHERE id = ?", (job_id,))
    worker = workers.spawn(CLM_STOP_JOB_GRACE="0.2")
    wait_until(lambda: job_status(db, job_id) == "processing", what="the claim")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(3) == 0
    job = job_row(db, job_id)
    assert (job["status"], job["error"], job["attempts"]) == ("failed", "worker stopped", 3)


# ------------------------------------------------------------------ lifeline


def test_lifeline_closed_while_booting_ends_the_worker(
    workers: Workers, db: Path, lifeline: Lifeline
):
    read_end = lifeline.read_end
    row_id = pre_register(db)
    worker = workers.spawn(
        pass_fds=(read_end,),
        CLM_LIFELINE_FD=str(read_end),
        CLM_WORKER_ID=str(row_id),
        CLM_SIM_BOOT_DELAY="30",
    )
    worker.wait_started()
    lifeline.cut()
    assert worker.wait_exit(LIFELINE_BOUND) == 70
    assert status_of(db, row_id) == "created"


def test_lifeline_closed_while_hanging_ends_the_worker(workers: Workers, lifeline: Lifeline):
    read_end = lifeline.read_end
    worker = workers.spawn(pass_fds=(read_end,), CLM_LIFELINE_FD=str(read_end), CLM_SIM_FAIL="hang")
    worker.wait_started()
    lifeline.cut()
    assert worker.wait_exit(LIFELINE_BOUND) == 70


def test_lifeline_ends_a_boot_that_ignores_stopping(workers: Workers, lifeline: Lifeline):
    # A boot stuck in a blocking call: the runtime must not depend on its cooperation.
    code = (
        "import sys, time\n"
        "from clm_workers.worker import run_worker\n"
        "sys.exit(run_worker(lambda job, ctx: None, boot=lambda stopping: time.sleep(30)))\n"
    )
    read_end = lifeline.read_end
    worker = workers.spawn(pass_fds=(read_end,), argv=("-c", code), CLM_LIFELINE_FD=str(read_end))
    worker.wait_started()
    lifeline.cut()
    assert worker.wait_exit(LIFELINE_BOUND) == 70


def test_lifeline_closed_while_idle_ends_the_worker_cleanly(
    workers: Workers, db: Path, lifeline: Lifeline
):
    read_end = lifeline.read_end
    worker = workers.spawn(pass_fds=(read_end,), CLM_LIFELINE_FD=str(read_end))
    row_id = wait_until(lambda: registered_self(db), what="registration")
    lifeline.cut()
    assert worker.wait_exit(LIFELINE_BOUND) == 70
    assert status_of(db, row_id) == "dead"


def test_lifeline_closed_during_a_job_requeues_it(
    workers: Workers, db: Path, workspace: Path, lifeline: Lifeline
):
    read_end = lifeline.read_end
    (workspace / "in.txt").write_text("x")
    job_id = add_job(db, "in.txt", "out.txt", payload={"seconds": 30})
    worker = workers.spawn(pass_fds=(read_end,), CLM_LIFELINE_FD=str(read_end))
    row_id = wait_until(lambda: registered_self(db), what="registration")
    wait_until(lambda: job_status(db, job_id) == "processing", what="the claim")
    lifeline.cut()
    assert worker.wait_exit(LIFELINE_BOUND) == 70
    assert job_status(db, job_id) == "pending"
    assert status_of(db, row_id) == "dead"


def test_every_worker_of_a_dead_manager_gives_its_job_back_through_a_busy_database(
    workers: Workers, db: Path, workspace: Path, lifeline: Lifeline
):
    """24 workers lose their manager at once, in a handler that cannot be interrupted, while
    another process holds the write lock for 2 s: each retries its release until it gets
    through, within its bound, and then exits."""
    count, locked_for = 24, 2.0
    read_end = lifeline.read_end
    (workspace / "in.txt").write_text("x")
    jobs = [add_job(db, "in.txt", f"out{i}.txt", payload={"seconds": 120}) for i in range(count)]
    started = [workers.spawn(pass_fds=(read_end,), CLM_LIFELINE_FD=str(read_end),
                             WORKER_ID=f"direct-sim-{i}-test") for i in range(count)]
    wait_until(lambda: query(db, "SELECT count(*) FROM jobs WHERE status = 'processing'")[0][0] == count,
               30, "every job claimed")
    blocker = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        lifeline.cut()
        time.sleep(locked_for)  # the chaos: the database stays locked this long
        assert [w.proc.poll() for w in started] == [None] * count, "a worker left without its release"
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    assert [w.wait_exit(5) for w in started] == [70] * count
    assert [job_status(db, job) for job in jobs] == ["pending"] * count
    assert query(db, "SELECT DISTINCT status FROM workers") == [("dead",)]


# ------------------------------------------------------------------ heartbeat


def test_heartbeat_stops_the_worker_when_its_row_is_deleted(workers: Workers, db: Path):
    row_id = pre_register(db)
    worker = workers.spawn(CLM_WORKER_ID=str(row_id), CLM_HEARTBEAT_INTERVAL="0.2")
    wait_until(lambda: status_of(db, row_id) == "idle", what="activation")
    execute(db, "UPDATE workers SET last_heartbeat = '2000-01-01 00:00:00' WHERE id = ?", (row_id,))
    wait_until(
        lambda: (worker_row(db, row_id) or {}).get("last_heartbeat") != "2000-01-01 00:00:00",
        what="a heartbeat",
    )
    execute(db, "DELETE FROM workers WHERE id = ?", (row_id,))
    assert worker.wait_exit(3) == 0
    assert worker_row(db, row_id) is None  # not re-created by a "mark dead"


def test_a_worker_without_a_row_claims_no_job(workers: Workers, db: Path, workspace: Path):
    worker = workers.spawn(CLM_HEARTBEAT_INTERVAL="60")
    row_id = wait_until(lambda: registered_self(db), what="registration")
    execute(db, "DELETE FROM workers WHERE id = ?", (row_id,))
    (workspace / "in.txt").write_text("x")
    job_id = add_job(db, "in.txt", "out.txt")
    assert worker.wait_exit(3) == 0
    assert job_status(db, job_id) == "pending"


# ------------------------------------------------------------------ sim configuration


def test_sim_crash_exits_3_with_its_line(workers: Workers, db: Path):
    worker = workers.spawn(CLM_SIM_FAIL="crash")
    assert worker.wait_exit(5) == 3
    assert CRASH_MESSAGE in worker.stderr.splitlines()
    assert CRASH_MESSAGE == "clm_workers.sim: simulated crash (CLM_SIM_FAIL=crash)"
    assert query(db, "SELECT COUNT(*) FROM workers") == [(0,)]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"CLM_SIM_FAIL": "explode"}, "CLM_SIM_FAIL"),
        ({"CLM_SIM_BOOT_DELAY": "soon"}, "CLM_SIM_BOOT_DELAY"),
        ({"CLM_SIM_BOOT_CPU": "-1"}, "CLM_SIM_BOOT_CPU"),
        ({"WORKER_TYPE": ""}, "WORKER_TYPE"),
        ({"CLM_JOBS_DB_PATH": ""}, "CLM_JOBS_DB_PATH"),
        ({"CLM_WORKER_ID": "abc"}, "CLM_WORKER_ID"),
        ({"CLM_HEARTBEAT_INTERVAL": "0"}, "CLM_HEARTBEAT_INTERVAL"),
        ({"CLM_LIFELINE_FD": "987"}, "CLM_LIFELINE_FD"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(
    workers: Workers, db: Path, overrides: dict[str, str], named: str
):
    worker = workers.spawn(**overrides)
    assert worker.wait_exit(5) == 2
    lines = worker.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], worker.stderr
    if named == "CLM_SIM_FAIL":
        assert "crash" in lines[0] and "hang" in lines[0]
    assert query(db, "SELECT COUNT(*) FROM workers") == [(0,)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_boot_cpu_is_burnt_before_registering(workers: Workers, db: Path):
    worker = workers.spawn(CLM_SIM_BOOT_CPU="0.3")
    wait_until(lambda: registered_self(db), what="registration")
    fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    assert cpu_seconds >= 0.3


def test_importing_the_sim_does_not_import_the_manager_side():
    code = (
        "import sys, clm_workers.sim\n"
        "bad = sorted(m for m in ('trio', 'trio_util', 'docker', 'rich') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# ------------------------------------------------------------------ records


def test_job_and_context_are_frozen_records(tmp_path: Path):
    import threading

    job = Job(1, "sim", "a", "b", {"seconds": 0}, 1)
    assert job == Job(
        id=1, job_type="sim", input_file="a", output_file="b", payload={"seconds": 0}, attempts=1
    )
    assert "input_file='a'" in repr(job)
    with pytest.raises(AttributeError):
        job.attempts = 2  # type: ignore[misc]
    ctx = WorkerContext("sim", 3, tmp_path, threading.Event())
    assert (ctx.worker_type, ctx.db_worker_id, ctx.workspace) == ("sim", 3, tmp_path)
    with pytest.raises(AttributeError):
        ctx.db_worker_id = 4  # type: ignore[misc]


# ------------------------------------------------------------------ a worker the monitor gave up on


def test_a_hung_worker_claims_no_job_until_its_row_recovers(workers: Workers, db: Path, workspace: Path):
    """The monitor flags a worker ``hung`` before it retires it: a job claimed then would be lost again."""
    worker = workers.spawn(CLM_HEARTBEAT_INTERVAL="60")
    row_id = wait_until(lambda: registered_self(db), what="registration")
    wait_until(lambda: status_of(db, row_id) == "idle", what="idle")
    execute(db, "UPDATE workers SET status = 'hung' WHERE id = ?", (row_id,))
    (workspace / "in.txt").write_text("x")
    job_id = add_job(db, "in.txt", "out.txt")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # 50 polls of the worker's (0.02 s): it must take none
        assert job_status(db, job_id) == "pending" and job_row(db, job_id)["attempts"] == 0
        time.sleep(0.05)
    assert worker.proc.poll() is None  # still there: it may recover
    execute(db, "UPDATE workers SET status = 'idle' WHERE id = ?", (row_id,))  # what clear_hung does
    wait_until(lambda: job_status(db, job_id) == "completed", what="the job once recovered")
    assert job_row(db, job_id)["attempts"] == 1


def test_a_worker_whose_row_was_marked_dead_takes_no_job_and_stops(
    workers: Workers, db: Path, workspace: Path
):
    worker = workers.spawn(CLM_HEARTBEAT_INTERVAL="60")
    row_id = wait_until(lambda: registered_self(db), what="registration")
    execute(db, "UPDATE workers SET status = 'dead' WHERE id = ?", (row_id,))
    (workspace / "in.txt").write_text("x")
    job_id = add_job(db, "in.txt", "out.txt")
    assert worker.wait_exit(3) == 0
    assert job_status(db, job_id) == "pending" and job_row(db, job_id)["attempts"] == 0
    assert "the worker's row was marked dead" in worker.stderr


def test_lifeline_closed_during_a_job_kills_the_job_s_child_too(
    workers: Workers, db: Path, workspace: Path, lifeline: Lifeline
):
    """Without the launcher (the runtime alone, as in a container): a job's child process must not
    outlive its worker once the manager is gone."""
    read_end = lifeline.read_end
    (workspace / "in.txt").write_text("x")
    job_id = add_job(db, "in.txt", "out.txt", payload={"child_cpu": 60})
    worker = workers.spawn(pass_fds=(read_end,), CLM_LIFELINE_FD=str(read_end), own_group=True)
    wait_until(lambda: job_status(db, job_id) == "processing", what="the claim")
    child = wait_until(lambda: children_of(worker.proc.pid), 10, "the job's child process")[0]
    lifeline.cut()
    assert worker.wait_exit(LIFELINE_BOUND + 2) == 70
    wait_until(lambda: not process_alive(child), LIFELINE_BOUND, "the job's child to go")
    assert job_status(db, job_id) == "pending"


def test_a_job_whose_child_the_launcher_killed_goes_back_though_the_parent_lives(
    workers: Workers, db: Path, workspace: Path, lifeline: Lifeline
):
    """Through the launcher, with the lifeline cut while its parent lives (a manager closing its
    executors; or one that died, before the kernel gave the worker a new parent): the launcher kills
    the job's child before the runtime hears of the lifeline (the launcher stalls there: see
    workers_for_tests.stalling_launcher), and the job is not failed for it."""
    read_end = lifeline.read_end
    (workspace / "in.txt").write_text("x")
    job_id = add_job(db, "in.txt", "out.txt", payload={"child_seconds": 60})
    worker = workers.spawn(
        pass_fds=(read_end,), argv=("-m", "clm_workers.launch", "workers_for_tests.stalling_launcher"),
        own_group=True, CLM_LIFELINE_FD=str(read_end), PYTHONPATH=TESTS_PATH,
    )
    wait_until(lambda: job_status(db, job_id) == "processing", what="the claim")
    child = wait_until(lambda: children_of(worker.proc.pid), 10, "the job's child process")[0]
    lifeline.cut()
    assert worker.wait_exit(LIFELINE_BOUND + 2) == 70
    assert not process_alive(child)
    assert job_status(db, job_id) == "pending"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def process_alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) not in ("Z", "X")
    except OSError:
        return False
