"""Re-measure the pool's hardening figures with real processes, real SQLite and real containers.

    python tests/hardening/measure.py [--trials N] [FIGURE ...]

Each figure runs its trials one after another (the machine may be small and
shared: nothing here runs two trials at once) and prints one markdown table
row: the figure, what was counted in each trial, the worst case, and the
1-minute load average before and after.  Figures with containers are left
out, saying so, when the docker engine or the worker image is missing
(``CLM_TEST_DOCKER_IMAGE``, default ``clm-workers-sim:latest``).  The whole
run takes about ten minutes; every process and container it starts is
removed when a trial ends, however it ends.

The tests assert the same promises once each (``tests/test_cli_stop.py``,
``test_database_faults.py``, ``test_chaos.py``, ``test_docker*.py``); this
script counts how often they hold, and how long they take.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers

import trio  # noqa: E402

from clitools import StartProcess, clm_workers, sim_pools, write_config  # noqa: E402
from clm_workers import MonitorSettings, WorkerConfig, WorkerPoolManager, schema  # noqa: E402
from clm_workers.ownership import start_stamp  # noqa: E402
from procs import alive, give_to_data_owner, killed_at_exit, session_processes, wait_until  # noqa: E402

IMAGE = os.environ.get("CLM_TEST_DOCKER_IMAGE", "clm-workers-sim:latest")
SIM = "clm_workers.sim"


@dataclass
class Figure:
    """One measured figure: a line per trial, and the summary the table shows."""

    name: str
    trials: list[str] = field(default_factory=list)
    summary: str = ""
    load_before: float = 0.0
    load_after: float = 0.0


def load() -> float:
    return os.getloadavg()[0]


@contextlib.contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A folder for one trial, removed afterwards (a user's, when containers need one)."""
    with tempfile.TemporaryDirectory(prefix=f"measure-{name}-") as folder:
        yield give_to_data_owner(Path(folder))


def kill_session(session: str) -> None:
    for pid in session_processes(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


def job_counts(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT status, count(*) FROM jobs GROUP BY status"))


MANAGER_PRELUDE = """
import json, signal, sys, trio
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)
from clm_workers import WorkerConfig, WorkerPoolManager
tmp = Path(sys.argv[1])
IMAGE = sys.argv[2]
def say(**message):
    print(json.dumps(message), flush=True)
def sim(worker_type, count, **env):
    return WorkerConfig(worker_type, count, module="clm_workers.sim", env=env)
def dsim(worker_type, count, **env):
    return WorkerConfig(worker_type, count, execution_mode="docker", image=IMAGE,
                        module="clm_workers.sim", env=env)
def run_saying_what_raised(async_fn):
    try:
        trio.run(async_fn)
        say(raised=None)
    except BaseException as exc:
        say(raised=type(exc).__name__)
"""


class Manager:
    """A manager in its own process (so it can be killed or interrupted), saying JSON lines."""

    def __init__(self, folder: Path, body: str) -> None:
        script = folder / "manager.py"
        script.write_text(MANAGER_PRELUDE + textwrap.dedent(body))
        self.proc = subprocess.Popen([sys.executable, str(script), str(folder), IMAGE],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def said(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the manager exited with {self.proc.wait()} before saying anything")
        return dict(json.loads(line))

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def busy_manager(folder: Path, workers: int, jobs: int, payload: dict[str, Any]) -> Manager:
    """A manager of ``workers`` simulated notebook workers, given ``jobs`` jobs of ``payload``.

    It says its session once they are submitted, then runs until killed.
    """
    return Manager(folder, f"""
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [sim("notebook", {workers})], log_dir=tmp / "logs")
        trio.run(manager.start_pools)
        for i in range({jobs}):
            (tmp / f"in{{i}}").write_text("x")
            manager.registry.submit_job("notebook", f"in{{i}}", f"out{{i}}", {payload!r})
        say(session=manager.session_id)
        trio.run(trio.sleep_forever)
    """)


# -- stop and strangers --------------------------------------------------------------------


def forged_row(db: Path, pid: int, proc_start: str | None) -> None:
    """A live session row naming ``pid``: what anyone who can write the database can put there."""
    with closing(schema.connect(db)) as conn:
        schema.ensure_schema(conn)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO clm_worker_sessions (session_id, pid, host, lease_expires_at, proc_start)"
                     " VALUES (?, ?, ?, julianday('now') + 1, ?)",
                     (uuid.uuid4().hex, pid, socket.gethostname(), proc_start))


STRANGERS: dict[str, dict[str, Any]] = {
    "a root sleep": dict(args=["sleep", "600"]),
    "a process of nobody": dict(args=["sleep", "600"], user=65534),
    "a python ignoring SIGINT": dict(args=[sys.executable, "-c", (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True);"
        " time.sleep(600)")], stdout=subprocess.PIPE),
}


def stop_hits(name: str, exact: bool) -> bool:
    """Whether ``clm-workers stop`` on a row forged for this stranger ends it."""
    options = STRANGERS[name]
    victim = subprocess.Popen(options["args"], user=options.get("user"), stdout=options.get("stdout"),
                              text=True)
    with killed_at_exit(victim):
        if victim.stdout is not None:
            victim.stdout.readline()
        with scratch("stop") as folder:
            db = folder / "jobs.db"
            forged_row(db, victim.pid, start_stamp(victim.pid) if exact else None)
            clm_workers("stop", "--db", str(db), "--timeout", "2")
        return victim.poll() is not None


def stop_strangers(trials: int) -> Figure:
    """``clm-workers stop`` on forged rows naming unrelated processes (with and without their true start)."""
    figure = Figure("stop on forged rows naming strangers: killed")
    kills = runs = 0
    names = [n for n in STRANGERS if STRANGERS[n].get("user") is None or os.getuid() == 0]
    for trial in range(trials):
        killed = [f"{name}{' (its start time)' if exact else ''}"
                  for name in names for exact in (False, True) if stop_hits(name, exact)]
        runs += 2 * len(names)
        kills += len(killed)
        figure.trials.append(f"trial {trial + 1}: {len(killed)} of {2 * len(names)} killed {killed or ''}")
    figure.summary = f"{kills} killed in {runs} stops"
    return figure


def reused_pid_hit() -> tuple[bool, int]:
    """A real manager SIGKILLed; its row then names a later process: does ``stop`` end that one?"""
    with scratch("reuse") as folder:
        write_config(folder, sim_pools(notebook=1, plantuml=1))
        start = StartProcess(folder)
        successor = None
        try:
            start.wait_for_output("clm-workers: running")
            start.kill()
            successor = subprocess.Popen(["sleep", "600"])  # as if it got the manager's pid
            with closing(sqlite3.connect(folder / "jobs.db")) as conn, conn:
                conn.execute("UPDATE clm_worker_sessions SET pid = ?", (successor.pid,))
            result = clm_workers("stop", "--db", str(folder / "jobs.db"))
            return successor.poll() is not None, result.returncode
        finally:
            start.kill()
            if successor is not None:
                successor.kill()
                successor.wait()


def stop_reused_pid(trials: int) -> Figure:
    figure = Figure("stop once the dead manager's pid names another process: that one killed")
    kills = 0
    for trial in range(trials):
        hit, code = reused_pid_hit()
        kills += hit
        figure.trials.append(f"trial {trial + 1}: {'killed' if hit else 'spared'} (stop exit {code})")
    figure.summary = f"{kills} of {trials} killed"
    return figure


# -- a database locked for longer than the lease ---------------------------------------------

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))   # the fault: the write lock held this long
conn.execute("ROLLBACK")
"""


def fresh_idle(db: Path, count: int) -> bool:
    return query(db, "SELECT count(*) FROM workers WHERE status = 'idle' AND"
                     " (julianday('now') - julianday(last_heartbeat)) * 86400 < 2") == [(count,)]


def locked_trial(seconds: float) -> tuple[int, str]:
    """8 direct workers, the default lease (10 s) and monitor; the write lock held ``seconds``."""
    with scratch("locked") as folder:
        db = folder / "jobs.db"
        manager = WorkerPoolManager(db, folder, [WorkerConfig("notebook", 8, module=SIM)],
                                    log_dir=folder / "logs")
        try:
            report = trio.run(manager.start_pools)
            monitor = manager.start_monitoring(MonitorSettings())
            pids = [w.pid for w in report.started]
            locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)],
                                      stdout=subprocess.PIPE, text=True)
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            locker.wait(seconds + 30)
            # Every check (heartbeats, lease, hung) gets a few rounds after the lock.
            with contextlib.suppress(AssertionError):
                wait_until(lambda: fresh_idle(db, 8), 15)
            deadline = time.monotonic() + 3  # a late death would come by now
            while time.monotonic() < deadline and all(alive(p) for p in pids):
                time.sleep(0.2)
            surviving = sum(alive(p) for p in pids)
            return surviving, f"{surviving}/8 survived, {monitor.deaths} deaths, running {manager.running}/8"
        finally:
            trio.run(manager.stop_pools)


def locked_database(trials: int, seconds: float = 15.0) -> Figure:
    figure = Figure(f"database locked {seconds:g} s (lease 10 s): workers surviving of 8")
    worst = 8
    for trial in range(trials):
        surviving, line = locked_trial(seconds)
        worst = min(worst, surviving)
        figure.trials.append(f"trial {trial + 1}: {line}")
    figure.summary = f"at worst {worst}/8 survived"
    return figure


# -- a manager killed with SIGKILL -------------------------------------------------------------


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def killed_trial() -> tuple[float, int, int, str]:
    """32 direct workers, 8 running a job with a child (as a kernel): the manager is SIGKILLed.

    Returns the seconds until every process of the session was gone (or 10),
    the children left then, the jobs not back in the queue, and a line.
    """
    with scratch("sigkill") as folder:
        manager = busy_manager(folder, 32, 8, {"child_seconds": 120})
        session = ""
        try:
            session = manager.said()["session"]
            wait_until(lambda: len(session_processes(session)) == 40, 60, "32 workers and 8 children")
            children = [p for p in session_processes(session) if "time.sleep(120" in cmdline(p)]
            manager.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not session_processes(session), 10, interval=0.02)
            gone = time.monotonic() - killed_at
            left = sum(alive(p) for p in children)
            jobs = job_counts(folder / "jobs.db")
            return (gone, left, 8 - jobs.get("pending", 0),
                    f"all gone after {gone:.2f} s, {left}/8 children left, jobs {jobs}")
        finally:
            manager.end()
            kill_session(session)


def killed_manager(trials: int) -> Figure:
    figure = Figure("manager SIGKILLed: 32 direct workers (8 with a job's child) gone; children left")
    slowest, children_left, jobs_lost = 0.0, 0, 0
    for trial in range(trials):
        gone, left, lost, line = killed_trial()
        slowest, children_left, jobs_lost = max(slowest, gone), children_left + left, jobs_lost + lost
        figure.trials.append(f"trial {trial + 1}: {line}")
    figure.summary = (f"slowest {slowest:.2f} s; {children_left} children left, {jobs_lost} jobs not back,"
                      f" in {trials} trials")
    return figure


def release_trial(with_workers: bool) -> float | None:
    """Manager B runs (default monitor); manager A's 24 workers are busy when A is SIGKILLed,
    alone (its workers give their jobs back) or with its workers (B's sweep must).

    Returns the seconds until all 24 jobs were pending again, or ``None`` after 60 s.
    """
    with scratch("release") as folder:
        db = folder / "jobs.db"
        other = WorkerPoolManager(db, folder, [WorkerConfig("plantuml", 1, module=SIM)],
                                  log_dir=folder / "logs-b")
        trio.run(other.start_pools)
        other.start_monitoring(MonitorSettings())
        a = busy_manager(folder, 24, 24, {"seconds": 120})
        session = ""
        try:
            session = a.said()["session"]
            wait_until(lambda: job_counts(db) == {"processing": 24}, 60, "24 jobs running")
            # Frozen first, then killed: no one of them sees another go.
            victims = [a.proc.pid, *(session_processes(session) if with_workers else [])]
            for pid in victims:
                os.kill(pid, signal.SIGSTOP)
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            try:
                wait_until(lambda: job_counts(db) == {"pending": 24}, 60, interval=0.05)
            except AssertionError:
                return None
            return time.monotonic() - killed_at
        finally:
            a.end()
            kill_session(session)
            trio.run(other.stop_pools)


def dead_manager_jobs(trials: int) -> Figure:
    figure = Figure("dead manager's 24 busy jobs back in the queue while another manager runs")
    times: dict[str, list[float | None]] = {"A alone": [], "A with its workers": []}
    for trial in range(trials):
        for how, took in times.items():
            seconds = release_trial(with_workers=how != "A alone")
            took.append(seconds)
            outcome = "not back after 60 s" if seconds is None else f"back after {seconds:.2f} s"
            figure.trials.append(f"trial {trial + 1}, {how} SIGKILLed: {outcome}")
    figure.summary = "; ".join(
        f"{how}: {sum(t is not None for t in took)}/{len(took)} released,"
        f" max {max((t for t in took if t is not None), default=float('nan')):.2f} s"
        for how, took in times.items())
    return figure


# -- Ctrl-C in the library path ----------------------------------------------------------------


def two_ctrl_c_trial() -> tuple[str, int]:
    """``trio.run(start_pools)`` of 16 slow-booting workers; two SIGINTs 10 ms apart while they boot.

    Returns what ``trio.run`` raised and the rows left ``created``.
    """
    with scratch("ctrlc") as folder:
        manager = Manager(folder, """
            manager = WorkerPoolManager(tmp / "jobs.db", tmp, [sim("notebook", 16, CLM_SIM_BOOT_DELAY="5")],
                                        registration_timeout=60, log_dir=tmp / "logs")
            say(session=manager.session_id)
            run_saying_what_raised(manager.start_pools)
        """)
        session = ""
        try:
            session = manager.said()["session"]
            db = folder / "jobs.db"
            wait_until(lambda: db.exists() and len(session_processes(session)) == 16, 30, "16 booting")
            manager.proc.send_signal(signal.SIGINT)
            time.sleep(0.01)  # the chaos: the second Ctrl-C comes 10 ms after the first
            manager.proc.send_signal(signal.SIGINT)
            raised = str(manager.said()["raised"])
            manager.proc.wait(30)
            return raised, query(db, "SELECT count(*) FROM workers WHERE status = 'created'")[0][0]
        finally:
            manager.end()
            kill_session(session)


def two_ctrl_c_during_start(trials: int) -> Figure:
    figure = Figure("two Ctrl-C during trio.run(start_pools): exception; rows left `created`")
    wrong = rows_left = 0
    for trial in range(trials):
        raised, created = two_ctrl_c_trial()
        wrong += raised != "KeyboardInterrupt"
        rows_left += created
        figure.trials.append(f"trial {trial + 1}: {raised}, {created} rows `created`")
    figure.summary = f"{wrong} of {trials} not KeyboardInterrupt; {rows_left} rows left `created`"
    return figure


def ctrl_c_stop_trial(docker: bool) -> tuple[str, int]:
    """``trio.run(stop_pools)`` of two busy workers; a SIGINT 0.3 s into their 3 s grace.

    Returns what ``trio.run`` raised and the workers (containers or processes) left.
    """
    pool = 'dsim("notebook", 2)' if docker else 'sim("notebook", 2)'
    with scratch("stopint") as folder:
        manager = Manager(folder, f"""
            manager = WorkerPoolManager(tmp / "jobs.db", tmp, [{pool}], stop_timeout=3,
                                        log_dir=tmp / "logs")
            trio.run(manager.start_pools)
            for i in range(2):
                (tmp / f"in{{i}}").write_text("x")
                manager.registry.submit_job("notebook", f"in{{i}}", f"out{{i}}", {{"seconds": 60}})
            say(session=manager.session_id)
            sys.stdin.readline()
            run_saying_what_raised(manager.stop_pools)
        """)
        session = ""
        try:
            session = manager.said()["session"]
            db = folder / "jobs.db"
            wait_until(lambda: job_counts(db) == {"processing": 2}, 60, "two jobs running")
            manager.tell("stop")
            time.sleep(0.3)  # the chaos: the Ctrl-C comes while the workers have their grace
            manager.proc.send_signal(signal.SIGINT)
            raised = str(manager.said()["raised"])
            manager.proc.wait(30)
            return raised, len(containers_of(session)) if docker else len(session_processes(session))
        finally:
            manager.end()
            kill_session(session)
            remove_containers(session)


def ctrl_c_during_stop(trials: int, docker: bool) -> Figure:
    kind = "containers" if docker else "direct workers"
    figure = Figure(f"Ctrl-C during trio.run(stop_pools) of 2 busy {kind}: left behind")
    left_total = 0
    for trial in range(trials):
        raised, left = ctrl_c_stop_trial(docker)
        left_total += left
        figure.trials.append(f"trial {trial + 1}: {raised}, {left} {kind} left")
    figure.summary = f"{left_total} {kind} left in {trials} trials"
    return figure


# -- the registration race ----------------------------------------------------------------------

REGISTERED = re.compile(r"(notebook#\d+) registered")
FAILED = re.compile(r"(notebook#\d+) failed \((\w+)\)")
TOO_LATE = re.compile(r"(notebook#\d+) failed \(timeout\).*registered only after its deadline")
COUNTER = re.compile(r"\(notebook (\d+)/20")
SUMMARY = re.compile(r"(\d+)/20 workers registered")


def race_run() -> tuple[list[str], bool, str]:
    """``clm-workers start`` of 20 workers booting in 0.98 s, ``--registration-timeout 1``: at the deadline.

    Returns the workers shown registered and then failed without being said to
    have registered too late, whether the last counter shown agrees with the
    summary line, and a line.
    """
    with scratch("race") as folder:
        write_config(folder, sim_pools(notebook=20, plantuml=0, boot_delay=0.98))
        start = StartProcess(folder, "--registration-timeout", "1")
        try:
            with contextlib.suppress(AssertionError):
                wait_until(lambda: "clm-workers: running" in start.stderr or start.popen.poll() is not None,
                           60)
            text = start.stderr
        finally:
            if start.popen.poll() is None:
                start.popen.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    start.wait(30)
            start.kill()
    registered = set(REGISTERED.findall(text))
    failed = {name for name, _ in FAILED.findall(text)}
    both = sorted(registered & failed)
    too_late = set(TOO_LATE.findall(text))
    unexplained = sorted(set(both) - too_late)
    counters = COUNTER.findall(text)
    summary = SUMMARY.search(text)
    last = counters[-1] if counters else "none"
    agrees = summary is not None and last == summary.group(1)
    return unexplained, agrees, (
        f"{len(registered)} shown registered, {len(failed)} failed; {len(both)} shown registered then"
        f" failed, {len(both) - len(unexplained)} of them said to have registered after the deadline;"
        f" last counter {last}, summary {summary.group(0) if summary else 'missing'}")


def registration_race(runs: int) -> Figure:
    figure = Figure("20 workers, --registration-timeout 1: registered then failed, unexplained; counters")
    contradictions = disagreements = 0
    for run in range(runs):
        both, agrees, line = race_run()
        contradictions += len(both)
        disagreements += not agrees
        figure.trials.append(f"run {run + 1}: {line}")
    figure.summary = (f"{contradictions} shown registered then failed, not said to be too late;"
                      f" {disagreements} of {runs} runs whose last counter disagrees with the summary")
    return figure


# -- containers ------------------------------------------------------------------------------------


def docker_problem() -> str | None:
    try:
        import docker

        client = docker.from_env(version="auto")
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine means: no figures
        return f"no docker engine ({exc})"
    try:
        client.api.inspect_image(IMAGE)
    except Exception:  # noqa: BLE001
        return f"no image {IMAGE}"
    finally:
        client.close()
    return None


@contextlib.contextmanager
def engine() -> Iterator[Any]:
    import docker

    client = docker.from_env(version="auto")
    try:
        yield client
    finally:
        client.close()


def containers_of(session: str, *, running: bool = False) -> list[dict[str, Any]]:
    with engine() as client:
        return list(client.api.containers(all=not running, filters={"label": f"clm.session={session}"}))


def remove_containers(session: str) -> None:
    if not session or docker_problem() is not None:
        return
    with engine() as client:
        for info in client.api.containers(all=True, filters={"label": f"clm.session={session}"}):
            client.api.remove_container(info["Id"], force=True)


def killed_containers_trial() -> float:
    """4 containers, the default 10 s lease: seconds from the manager's SIGKILL until none runs."""
    with scratch("dkill") as folder:
        manager = Manager(folder, """
            manager = WorkerPoolManager(tmp / "jobs.db", tmp, [dsim("notebook", 4)])
            trio.run(manager.start_pools)
            say(session=manager.session_id, running=manager.running)
            trio.run(trio.sleep_forever)
        """)
        session = ""
        try:
            session = manager.said()["session"]
            wait_until(lambda: len(containers_of(session, running=True)) == 4, 30, "4 containers")
            manager.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not containers_of(session, running=True), 40, interval=0.2)
            return time.monotonic() - killed_at
        finally:
            manager.end()
            remove_containers(session)


def killed_manager_containers(trials: int) -> Figure:
    figure = Figure("manager SIGKILLed: its 4 containers stopped (lease 10 s)")
    slowest = 0.0
    for trial in range(trials):
        took = killed_containers_trial()
        slowest = max(slowest, took)
        figure.trials.append(f"trial {trial + 1}: none running after {took:.1f} s")
    figure.summary = f"slowest {slowest:.1f} s"
    return figure


def job_state(db: Path, job: int) -> tuple[str, int]:
    [(status, attempts)] = query(db, "SELECT status, attempts FROM jobs WHERE id = ?", job)
    return str(status), int(attempts)


def paused_trial() -> tuple[str, int]:
    """4 containers, one busy with a 3 s job, all paused: the job's status and attempts in the end."""
    with scratch("paused") as folder:
        db = folder / "jobs.db"
        config = WorkerConfig("notebook", 4, execution_mode="docker", image=IMAGE, module=SIM,
                              env={"CLM_HEARTBEAT_INTERVAL": "0.2", "CLM_SIM_QUIET_WHILE_BUSY": "1",
                                   "CLM_POLL_INTERVAL": "0.02"})
        manager = WorkerPoolManager(db, folder, [config])
        try:
            trio.run(manager.start_pools)
            monitor = manager.start_monitoring(MonitorSettings(
                interval=0.1, heartbeat_timeout=2.0, hung_timeout=3.5, progress_timeout=60.0,
                max_job_time=60.0))
            (folder / "job.in").write_text("x")
            job = manager.registry.submit_job("notebook", "job.in", "job.out", {"seconds": 3.0})
            wait_until(lambda: job_state(db, job)[0] == "processing", 20)
            with engine() as client:
                for handle in manager._live.snapshot():
                    client.api.pause(handle.executor_id)
            wait_until(lambda: monitor.deaths >= 4, 20, "the 4 paused retired")
            wait_until(lambda: job_state(db, job)[0] in ("completed", "failed"), 40)
            return job_state(db, job)
        finally:
            trio.run(manager.stop_pools)
            remove_containers(manager.session_id)


def paused_containers(trials: int) -> Figure:
    figure = Figure("4 containers paused, one busy: its job's attempts")
    worst = failed = 0
    for trial in range(trials):
        status, attempts = paused_trial()
        worst, failed = max(worst, attempts), failed + (status == "failed")
        figure.trials.append(f"trial {trial + 1}: {status} after {attempts} attempts")
    figure.summary = f"{failed} of {trials} failed; at most {worst} attempts"
    return figure


# -- the command line --------------------------------------------------------------------------------


def figures(trials: int, docker: bool) -> dict[str, Callable[[], Figure]]:
    found: dict[str, Callable[[], Figure]] = {
        "stop-strangers": lambda: stop_strangers(trials),
        "stop-reused-pid": lambda: stop_reused_pid(trials),
        "locked-database": lambda: locked_database(trials),
        "killed-manager": lambda: killed_manager(trials),
        "dead-manager-jobs": lambda: dead_manager_jobs(trials),
        "ctrl-c-start": lambda: two_ctrl_c_during_start(trials),
        "ctrl-c-stop": lambda: ctrl_c_during_stop(trials, docker),
        "registration-race": lambda: registration_race(max(4, trials)),
    }
    if docker:
        found["killed-manager-containers"] = lambda: killed_manager_containers(trials)
        found["paused-containers"] = lambda: paused_containers(trials)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per figure (default 5)")
    parser.add_argument("figure", nargs="*", help="figures to measure (default: all)")
    args = parser.parse_args(argv)
    problem = docker_problem()
    if problem is not None:
        print(f"containers: left out ({problem})", file=sys.stderr)
    available = figures(args.trials, problem is None)
    unknown = [name for name in args.figure if name not in available]
    if unknown:
        parser.error(f"unknown figure {', '.join(unknown)}; expected some of {', '.join(available)}")
    print("| figure | result | load before / after | seconds |\n|---|---|---|---|")
    for name in args.figure or available:
        began, before = time.monotonic(), load()
        figure = available[name]()
        print(f"| {figure.name} | {figure.summary} | {before:.2f} / {load():.2f} |"
              f" {time.monotonic() - began:.0f} |", flush=True)
        for line in figure.trials:
            print(f"|   | {line} | | |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
