"""ForkServerExecutor with real processes: a forked worker behaves as a spawned one.

The same tiny workers as tests/test_direct_executor.py (``workers_for_tests``),
forked from a real template (``python -m clm_workers.forktemplate``).  Every
wait polls a condition against a deadline; every process a test starts is
killed by the fixture, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

import clm_workers
from clm_workers import MonitorSettings, RestartPolicy, WorkerConfig, open_worker_pool
from clm_workers.errors import FatalExecutorError
from clm_workers.executors.base import WorkerHandle
from clm_workers.executors.direct import DirectExecutor
from clm_workers.executors.forkserver import ForkServerExecutor
from clm_workers.launch import ORPHANED_EXIT_CODE
from clm_workers.plan import WorkerSpec
from procs import alive, session_processes, wait_until
from test_direct_executor import CRASHER, SLEEPER, TESTS_DIR, Dirs, make_spec

ENVWORKER = "workers_for_tests.envworker"
FAST_MONITOR = MonitorSettings(
    interval=0.05, heartbeat_timeout=2.0, hung_timeout=3.5,
    restart=RestartPolicy(backoff_initial=0.1, backoff_max=1.0, flap_limit=3, flap_window=30),
)
#: Where this interpreter's clm_workers comes from (an installed package or a source tree).
SOURCE_DIR = str(Path(clm_workers.__file__).resolve().parent.parent)


def forked_spec(module: str, index: int = 0, *, preload: tuple[str, ...] = (), **kwargs: Any) -> WorkerSpec:
    return replace(make_spec(module, index, **kwargs), start_method="forkserver", preload=preload)


class Tracking(ForkServerExecutor):
    """Remembers every handle it started, so the fixture can kill them all."""

    def __init__(self, direct: DirectExecutor, **kwargs: Any) -> None:
        super().__init__(direct, **kwargs)
        self.handles: list[WorkerHandle] = []

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        handle = super().start(spec)
        self.handles.append(handle)
        return handle


def executor_kwargs(dirs: Dirs) -> dict[str, Any]:
    kwargs = dirs.executor_kwargs()
    # The template runs this interpreter's clm_workers, wherever the tests import it from.
    kwargs["extra_env"]["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), SOURCE_DIR])
    return kwargs


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


@pytest.fixture
def make_executor(dirs: Dirs) -> Iterator[Callable[..., Tracking]]:
    made: list[Tracking] = []

    def make(**overrides: Any) -> Tracking:
        kwargs = executor_kwargs(dirs)
        kwargs["extra_env"].update(overrides.pop("extra_env", {}))
        executor = Tracking(DirectExecutor(**{**kwargs, **overrides}))
        made.append(executor)
        return executor

    yield make
    for executor in made:
        for handle in executor.handles:
            executor.kill(handle)
        executor.close()
        executor.direct.close()


@pytest.fixture
def executor(make_executor: Callable[..., Tracking]) -> Tracking:
    return make_executor()


def template_pid(executor: ForkServerExecutor) -> int:
    [info] = [t for t in executor.templates() if t.state == "ready"]
    return info.pid


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


# -- start -----------------------------------------------------------------------------


def test_a_forked_worker_leads_its_own_group_with_its_own_environment_cwd_and_descriptors(
    executor: Tracking, dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLM_TEST_INHERITED", "from-manager")
    specs = [forked_spec(SLEEPER, i, env={"CLM_TEST_CONFIG": "from-config"}) for i in range(3)]
    handles = [executor.start(spec) for spec in specs]
    template = template_pid(executor)

    for spec, handle in zip(specs, handles, strict=True):
        assert handle.start_method == "forkserver" and handle.note == ""
        assert parent_of(handle.pid) == template != os.getpid()  # forked, not spawned
        report = dirs.report(handle)
        assert report["pid"] == report["pgid"] == handle.pid == os.getsid(handle.pid)  # a session of its own
        assert report["cwd"] == str(dirs.workspace)
        env = report["env"]
        assert env == {**executor.direct.environment(spec), "CLM_LIFELINE_FD": env["CLM_LIFELINE_FD"]}
        assert env["WORKER_ID"] == spec.executor_id and env["CLM_WORKER_ID"] == str(spec.db_worker_id)
        assert env["CLM_TEST_INHERITED"] == "from-manager" and env["CLM_TEST_CONFIG"] == "from-config"
        fds = report["fds"]
        # stdin, stdout, stderr, the manager's lifeline, the template's lifeline,
        # and the launcher's inner lifeline (both ends): nothing else of the template.
        inner = fds[env["CLM_LIFELINE_FD"]]["target"]
        inner_pipe = {n for n, fd in fds.items() if fd["target"] == inner}
        others = {n: fd for n, fd in fds.items() if n not in inner_pipe and int(n) > 2}
        assert len(inner_pipe) == 2 and len(others) == 2, fds
        lifeline_target = f"pipe:[{os.fstat(executor.direct.lifeline_fd).st_ino}]"
        assert fds[str(executor.direct.lifeline_fd)] == {"target": lifeline_target, "accmode": os.O_RDONLY}
        assert all(fd["target"].startswith("pipe:") and fd["accmode"] == os.O_RDONLY
                   for fd in others.values())
        assert not any(fd["target"].startswith("socket:") for fd in fds.values())
        assert fds["1"]["target"] == fds["2"]["target"] == str(executor.direct.log_path(spec))
        assert fds["0"]["target"] == os.devnull
    assert "sleeper ready" in executor.output_tail(handles[0])


def test_the_worker_module_and_readers_of_a_worker_s_own_variables_run_afresh_the_rest_stays_preloaded(
    executor: Tracking, dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that reads its settings at import time (as CLM's do) sees each worker's own values.

    The pool's variables the template has too; a worker's own (its id) the
    template does not, so the module that looked one up is imported again in
    each worker.  Nothing else is: the heavy module of the worker's own
    package stays the template's.
    """
    monkeypatch.setenv("CLM_TEST_SHARED", "the pool's")
    package = f"{ENVWORKER}.settings", f"{ENVWORKER}.heavy"
    specs = [forked_spec(ENVWORKER, i, preload=(*package, "workers_for_tests.preloaded")) for i in range(3)]
    handles = [executor.start(spec) for spec in specs]
    template = template_pid(executor)
    reports = []
    for spec, handle in zip(specs, handles, strict=True):
        path = dirs.reports / f"{spec.executor_id}.import.json"
        wait_until(path.exists, 5, f"the import report of {spec.label}")
        report = json.loads(path.read_text())
        reports.append(report)
        assert report["pid"] == handle.pid and parent_of(handle.pid) == template
        assert report["shared_at_import"] == "the pool's"
        assert report["worker_id_at_import"] == spec.executor_id  # not the template's (none)
        assert report["settings_imported_by"] == handle.pid  # it looked up WORKER_ID: afresh
        assert report["heavy_imported_by"] == report["preloaded_by"] == template  # imported once
    assert len({r["random"] for r in reports}) == 3, "random must be reseeded in each worker"


def test_concurrent_starts_fork_one_template_once(executor: Tracking, dirs: Dirs) -> None:
    specs = [forked_spec(SLEEPER, i) for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        handles = list(pool.map(executor.start, specs))
    assert len({h.pid for h in handles}) == 12
    assert len(executor.templates()) == 1
    template = template_pid(executor)
    assert {parent_of(h.pid) for h in handles} == {template}
    for handle in handles:
        dirs.report(handle)


# -- exit codes and diagnostics --------------------------------------------------------


def test_a_crashed_forked_worker_reports_its_exit_code_and_output(executor: Tracking) -> None:
    crasher = executor.start(forked_spec(CRASHER, 0))
    sleeper = executor.start(forked_spec(SLEEPER, 1))
    codes = wait_until(lambda: executor.exit_codes([crasher, sleeper]), 5, "the crasher to exit")
    assert codes == {crasher: 3}
    assert "crasher: boom, cannot reach the database" in executor.output_tail(crasher)


def test_a_missing_module_exits_1_with_python_s_message(executor: Tracking) -> None:
    handle = executor.start(forked_spec("workers_for_tests.no_such_worker"))
    codes = wait_until(lambda: executor.exit_codes([handle]), 5, "the worker to exit")
    assert codes == {handle: 1}
    assert "No module named workers_for_tests.no_such_worker" in executor.output_tail(handle)


# -- stop and kill ---------------------------------------------------------------------


def test_request_stop_and_kill(executor: Tracking, dirs: Dirs) -> None:
    stopped = executor.start(forked_spec(SLEEPER, 0))
    killed = executor.start(forked_spec(SLEEPER, 1))
    dirs.report(stopped), dirs.report(killed)

    executor.request_stop(stopped)
    assert wait_until(lambda: executor.exit_codes([stopped]), 5, "SIGTERM") == {stopped: -signal.SIGTERM}
    executor.request_stop(stopped)  # ended: a no-op

    executor.kill(killed)
    assert not Path(f"/proc/{killed.pid}").exists()  # reaped (by the template) before kill returned
    assert executor.exit_codes([killed]) == {killed: -signal.SIGKILL}
    executor.kill(killed)


def test_kill_takes_children_in_the_group_and_in_a_session_of_their_own(
    executor: Tracking, dirs: Dirs
) -> None:
    in_group = executor.start(forked_spec(SLEEPER, 0, env={"SLEEPER_GRANDCHILD": "1"}))
    in_session = executor.start(forked_spec(SLEEPER, 1, env={"SLEEPER_GRANDCHILD": "session"}))
    children = [dirs.report(h)["grandchild_pid"] for h in (in_group, in_session)]
    assert os.getpgid(children[0]) == in_group.pid and os.getsid(children[1]) == children[1]
    executor.request_stop(in_session)
    wait_until(lambda: executor.exit_codes([in_session]), 2, "the worker to end on SIGTERM")
    for handle in (in_group, in_session):
        executor.kill(handle)
    wait_until(lambda: not any(alive(pid) for pid in children), 2, "the workers' children to die with them")


def test_closing_the_lifeline_ends_templates_workers_and_their_children(
    executor: Tracking, dirs: Dirs
) -> None:
    handle = executor.start(forked_spec(SLEEPER, env={"SLEEPER_GRANDCHILD": "session"}))
    grandchild = dirs.report(handle)["grandchild_pid"]
    template = template_pid(executor)
    executor.direct.close()  # what the manager's death does
    wait_until(lambda: not alive(grandchild) and not alive(handle.pid) and not alive(template), 3,
               "the template, the worker and its child in another session to end with the lifeline")


# -- the template's death --------------------------------------------------------------


def test_a_killed_template_takes_its_workers_and_the_next_start_forks_from_a_new_one(
    executor: Tracking, dirs: Dirs
) -> None:
    with_child = {"SLEEPER_GRANDCHILD": "session"}
    handles = [executor.start(forked_spec(SLEEPER, i, env=with_child)) for i in range(3)]
    children = [dirs.report(h)["grandchild_pid"] for h in handles]
    template = template_pid(executor)

    os.kill(template, signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in [*(h.pid for h in handles), *children]), 3,
               "the workers of a SIGKILLed template, and their children, to end")
    codes = wait_until(lambda: len(c := executor.exit_codes(handles)) == 3 and c, 3, "their exit codes")
    assert set(codes.values()) == {ORPHANED_EXIT_CODE}
    assert f"its fork server (pid {template}) ended" in executor.output_tail(handles[0])

    replacement = executor.start(forked_spec(SLEEPER, 3))
    assert replacement.start_method == "forkserver"
    assert parent_of(replacement.pid) == template_pid(executor) != template
    dirs.report(replacement)


# -- falling back to spawn ---------------------------------------------------------------


@pytest.mark.parametrize(("preload", "reason"), [
    ("workers_for_tests.no_such_module",
     "cannot preload workers_for_tests.no_such_module: ModuleNotFoundError"),
    ("workers_for_tests.hazard_thread", "thread(s) besides the main one are running (import-time-thread)"),
    ("workers_for_tests.hazard_socket", "an open socket"),
    ("workers_for_tests.hazard_sqlite", "an open SQLite database"),
    ("workers_for_tests.hazard_file", f"an open file (fd 3: {os.devnull})"),
])
def test_a_template_that_cannot_preload_or_is_unsafe_to_fork_falls_back_to_spawn_with_the_reason(
    executor: Tracking, dirs: Dirs, caplog: pytest.LogCaptureFixture, preload: str, reason: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="clm_workers.executors.forkserver"):
        handles = [executor.start(forked_spec(SLEEPER, i, preload=(preload,))) for i in range(2)]
    for handle in handles:
        assert isinstance(handle.native, subprocess.Popen)
        assert parent_of(handle.pid) == os.getpid()  # spawned by the manager itself
        assert handle.start_method == "spawn"
        assert "the fork server is unavailable" in handle.note and reason in handle.note, handle.note
        dirs.report(handle)
    warnings = [r for r in caplog.records if "is unavailable, so they are spawned" in r.getMessage()]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()  # once per pool, not per worker
    # The fallback workers are stopped like any spawned worker.
    executor.request_stop(handles[0])
    assert wait_until(lambda: executor.exit_codes(handles), 5, "SIGTERM") == {handles[0]: -signal.SIGTERM}
    assert [t.state for t in executor.templates()] == ["unavailable"]


def test_an_unwritable_log_folder_is_fatal(make_executor: Callable[..., Tracking], dirs: Dirs) -> None:
    blocker = dirs.workspace / "not-a-folder"
    blocker.write_text("")
    executor = make_executor(log_dir=blocker / "logs")
    with pytest.raises(FatalExecutorError, match="log"):
        executor.start(forked_spec(SLEEPER))
    assert executor.handles == []


def test_close_stops_the_templates_and_later_starts_raise(executor: Tracking, dirs: Dirs) -> None:
    handle = executor.start(forked_spec(SLEEPER))
    dirs.report(handle)
    template = template_pid(executor)
    executor.kill(handle)
    executor.close()
    assert not alive(template)
    executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        executor.start(forked_spec(SLEEPER, 1))


# -- the manager's death ---------------------------------------------------------------


MANAGER_SCRIPT = textwrap.dedent("""
    import json, sys, threading
    from dataclasses import replace
    from pathlib import Path
    from clm_workers.executors.direct import DirectExecutor
    from clm_workers.executors.forkserver import ForkServerExecutor
    from clm_workers.plan import WorkerSpec

    kwargs = json.loads(sys.argv[1])
    direct = DirectExecutor(
        db_path=Path(kwargs["db_path"]), workspace_path=Path(kwargs["workspace"]),
        log_dir=Path(kwargs["logs"]), extra_env=kwargs["extra_env"],
    )
    executor = ForkServerExecutor(direct)
    for i in range(3):
        spec = WorkerSpec(
            worker_type="notebook", index=i, execution_mode="direct",
            module="workers_for_tests.sleeper", registration="pre", start_method="forkserver",
            executor_id=f"direct-notebook-{i}-manager", session_id="s", db_worker_id=i + 1,
            env={"SLEEPER_GRANDCHILD": "session"},
        )
        print(executor.start(spec).pid, flush=True)
    print(executor.templates()[0].pid, flush=True)
    threading.Event().wait()
""")


def test_templates_workers_and_their_children_end_when_the_manager_is_killed(dirs: Dirs) -> None:
    kwargs = executor_kwargs(dirs)
    args = {"db_path": str(kwargs["db_path"]), "workspace": str(kwargs["workspace_path"]),
            "logs": str(kwargs["log_dir"]), "extra_env": kwargs["extra_env"]}
    manager = subprocess.Popen([sys.executable, "-c", MANAGER_SCRIPT, json.dumps(args)],
                               stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, manager.kill)  # a hung manager cannot hang the test
    watchdog.start()
    pids: list[int] = []
    try:
        pids = [int(manager.stdout.readline()) for _ in range(4)]  # type: ignore[union-attr]
        for i in range(3):
            path = dirs.reports / f"direct-notebook-{i}-manager.json"
            wait_until(path.exists, 5, f"worker {i} to boot")
            pids.append(json.loads(path.read_text())["grandchild_pid"])
        assert all(alive(pid) for pid in pids)
        manager.send_signal(signal.SIGKILL)
        manager.wait()
        killed_at = time.monotonic()
        wait_until(lambda: not any(alive(pid) for pid in pids), 2,
                   "the template, its workers and their children to end after the manager's SIGKILL")
        print(f"all gone {time.monotonic() - killed_at:.2f} s after the manager's SIGKILL")
    finally:
        watchdog.cancel()
        manager.kill()
        manager.wait()
        manager.stdout.close()  # type: ignore[union-attr]
        for pid in pids:  # only if the test failed
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


# -- a pool of forked workers under the monitor -------------------------------------------


def forked_sim(count: int, **env: object) -> WorkerConfig:
    env = {"CLM_HEARTBEAT_INTERVAL": "0.2", **{k: str(v) for k, v in env.items()}}
    return WorkerConfig("notebook", count, module="clm_workers.sim", env=env, start_method="forkserver",
                        preload=("clm_workers.worker",))


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def poll(predicate: Callable[[], Any], deadline: float) -> Any:
    """The condition lives in other processes and the database: poll it, within ``deadline`` s."""
    with trio.fail_after(deadline):
        while not (value := predicate()):  # noqa: ASYNC110
            await trio.sleep(0.05)
    return value


def fork_server(pool: Any) -> ForkServerExecutor:
    executor = pool.manager._backend.executors["forkserver"]
    assert isinstance(executor, ForkServerExecutor)
    return executor


async def test_a_forked_worker_killed_during_a_job_is_replaced_by_a_forked_one(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    async with open_worker_pool(db, tmp_path, [forked_sim(2)], monitor=FAST_MONITOR) as pool:
        await pool.wait_started()
        assert {w.start_method for w in pool.report.started} == {"forkserver"}
        template = template_pid(fork_server(pool))
        (tmp_path / "slow.in").write_text("slow")
        job = pool.manager.registry.submit_job("notebook", "slow.in", "slow.out", {"seconds": 1.0})
        [(victim,)] = await poll(lambda: query(
            db, "SELECT worker_id FROM jobs WHERE id = ? AND status = 'processing'", job), 10)
        [handle] = [h for h in pool.manager._live.snapshot() if h.db_worker_id == victim]
        os.kill(handle.pid, signal.SIGKILL)
        [(worker, attempts)] = await poll(lambda: query(
            db, "SELECT worker_id, attempts FROM jobs WHERE id = ? AND status = 'completed'", job), 15)
        assert worker != victim and attempts == 2
        await pool.wait_ready("notebook", 2)
        handles = pool.manager._live.snapshot()
        assert {h.start_method for h in handles} == {"forkserver"}
        assert {parent_of(h.pid) for h in handles} == {template}  # the same template forked the replacement
        [(message,)] = query(db, "SELECT message FROM worker_events WHERE event_type = 'worker_failed'"
                                 " AND worker_id = ?", victim)
        assert "exited with code -9" in message
    assert session_processes(pool.manager.session_id) == []


async def test_a_killed_template_s_workers_are_replaced_from_a_new_template(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    async with open_worker_pool(db, tmp_path, [forked_sim(2)], monitor=FAST_MONITOR) as pool:
        await pool.wait_started()
        first = [w.pid for w in pool.report.started]
        template = template_pid(fork_server(pool))
        os.kill(template, signal.SIGKILL)
        await poll(lambda: pool.monitor.replacements == 2, 15)
        await pool.wait_ready("notebook", 2)
        assert not any(alive(pid) for pid in first)
        handles = pool.manager._live.snapshot()
        parents = {parent_of(h.pid) for h in handles}
        assert len(parents) == 1 and parents != {template}
        assert {h.start_method for h in handles} == {"forkserver"}
        failed = query(db, "SELECT message FROM worker_events WHERE event_type = 'worker_failed'")
        messages = [message for (message,) in failed]
        assert len(messages) == 2, messages
        assert all(f"exited with code {ORPHANED_EXIT_CODE}" in m for m in messages), messages
    assert session_processes(pool.manager.session_id) == []
