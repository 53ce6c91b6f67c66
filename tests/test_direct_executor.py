"""DirectExecutor with real processes (no mocks).

The workers are the tiny modules in ``tests/workers_for_tests`` (found through
``PYTHONPATH`` set in the executor's ``extra_env``), so these tests do not
depend on ``clm_workers.sim``.  Nothing waits by sleeping a fixed time: every
wait polls a condition against a deadline.  Every process a test starts is
killed by the fixture, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from clm_workers.errors import FatalExecutorError
from clm_workers.executors.base import WorkerHandle
from clm_workers.executors.direct import DirectExecutor
from clm_workers.plan import WorkerSpec, new_executor_id
from procs import alive, wait_until

TESTS_DIR = Path(__file__).resolve().parent
SLEEPER = "workers_for_tests.sleeper"
CRASHER = "workers_for_tests.crasher"


# -- helpers -------------------------------------------------------------------


def make_spec(
    module: str, index: int = 0, *, env: dict[str, str] | None = None, worker_type: str = "notebook"
) -> WorkerSpec:
    return WorkerSpec(
        worker_type=worker_type,
        index=index,
        execution_mode="direct",
        module=module,
        registration="pre",
        executor_id=new_executor_id("direct", worker_type, index),
        session_id="session-test",
        env=env or {},
        db_worker_id=7 + index,
    )


class TrackingExecutor(DirectExecutor):
    """Remembers every handle it started, so the fixture can kill them all."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handles: list[WorkerHandle] = []

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        handle = super().start(spec)
        self.handles.append(handle)  # list.append is atomic
        return handle


class Dirs:
    def __init__(self, root: Path) -> None:
        self.db_path = root / "jobs.db"
        self.workspace = root / "workspace"
        self.logs = root / "logs"
        self.reports = root / "reports"
        self.workspace.mkdir()
        self.reports.mkdir()

    def report(self, handle: WorkerHandle, timeout: float = 5.0) -> dict[str, Any]:
        path = self.reports / f"{handle.executor_id}.json"
        wait_until(path.exists, timeout, f"the report of {handle.spec.label}")
        return json.loads(path.read_text())

    def executor_kwargs(self) -> dict[str, Any]:
        return {
            "db_path": self.db_path,
            "workspace_path": self.workspace,
            "log_dir": self.logs,
            "extra_env": {"PYTHONPATH": str(TESTS_DIR), "TEST_REPORT_DIR": str(self.reports)},
        }


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


@pytest.fixture
def make_executor(dirs: Dirs) -> Iterator[Callable[..., TrackingExecutor]]:
    made: list[TrackingExecutor] = []

    def make(**overrides: Any) -> TrackingExecutor:
        kwargs = dirs.executor_kwargs()
        kwargs["extra_env"].update(overrides.pop("extra_env", {}))
        kwargs.update(overrides)
        executor = TrackingExecutor(**kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        for handle in executor.handles:
            executor.kill(handle)
        executor.close()


@pytest.fixture
def executor(make_executor: Callable[..., TrackingExecutor]) -> TrackingExecutor:
    return make_executor()


# -- start ---------------------------------------------------------------------


def test_start_returns_a_live_worker_leading_its_own_process_group(
    executor: TrackingExecutor, dirs: Dirs
) -> None:
    spec = make_spec(SLEEPER)
    handle = executor.start(spec)

    assert handle.spec is spec
    assert handle.executor_id == spec.executor_id
    assert isinstance(handle.native, subprocess.Popen)
    assert handle.pid == handle.native.pid
    assert os.getpgid(handle.pid) == handle.pid != os.getpgid(0)
    assert os.getsid(handle.pid) == handle.pid  # a session of its own: its own CPU share, as CLM's setsid
    assert executor.exit_codes([handle]) == {}
    report = dirs.report(handle)
    assert report["pid"] == report["pgid"] == handle.pid
    assert executor.exit_codes([handle]) == {}


def test_worker_gets_the_protocol_environment_and_config_overrides(
    make_executor: Callable[..., TrackingExecutor], dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLM_TEST_INHERITED", "from-manager")
    executor = make_executor(
        log_level="WARNING",
        # extra_env sits under the protocol variables: it cannot fake the worker id.
        extra_env={"CLM_TEST_EXTRA": "from-extra-env", "WORKER_ID": "wrong"},
    )
    spec = make_spec(SLEEPER, env={"LOG_LEVEL": "DEBUG", "CLM_TEST_CONFIG": "from-config"})
    handle = executor.start(spec)

    report = dirs.report(handle)
    env = report["env"]
    assert env["WORKER_TYPE"] == "notebook"
    assert env["WORKER_ID"] == spec.executor_id
    assert env["DB_PATH"] == env["CLM_JOBS_DB_PATH"] == str(dirs.db_path)
    assert env["CLM_WORKER_ID"] == "7"
    assert env["WORKSPACE_PATH"] == str(dirs.workspace)
    assert env["USE_SQLITE_QUEUE"] == "true"
    assert env["CLM_SESSION_ID"] == "session-test"
    # The module is given the launcher's inner lifeline, a pipe of its own.
    inner = report["fds"][env["CLM_LIFELINE_FD"]]
    assert inner["accmode"] == os.O_RDONLY and inner["target"].startswith("pipe:")
    assert env["CLM_LIFELINE_FD"] != str(executor.lifeline_fd)
    assert env["LOG_LEVEL"] == "DEBUG"  # the config's env overrides log_level
    assert env["CLM_TEST_CONFIG"] == "from-config"
    assert env["CLM_TEST_EXTRA"] == "from-extra-env"
    assert env["CLM_TEST_INHERITED"] == "from-manager"
    assert report["cwd"] == str(dirs.workspace)


# -- exit codes and diagnostics -----------------------------------------------


def test_crashed_worker_reports_its_exit_code_and_stderr(executor: TrackingExecutor) -> None:
    crasher = executor.start(make_spec(CRASHER, 0))
    sleeper = executor.start(make_spec(SLEEPER, 1))

    codes = wait_until(lambda: executor.exit_codes([crasher, sleeper]), 5, "the crasher to exit")
    assert codes == {crasher: 3}  # one call for many; the live sleeper is left out
    assert "crasher: boom, cannot reach the database" in executor.output_tail(crasher)
    assert executor.log_path(crasher.spec).parent == executor.log_dir


def test_missing_module_exits_1_with_python_s_message(executor: TrackingExecutor) -> None:
    handle = executor.start(make_spec("workers_for_tests.no_such_worker"))

    codes = wait_until(lambda: executor.exit_codes([handle]), 5, "the worker to exit")
    assert codes == {handle: 1}
    assert "No module named workers_for_tests.no_such_worker" in executor.output_tail(handle)


def test_output_tail_returns_the_last_lines_of_a_large_log(
    executor: TrackingExecutor,
) -> None:
    spec = make_spec(SLEEPER)
    handle = WorkerHandle(spec=spec, executor_id=spec.executor_id, native=None)
    assert executor.output_tail(handle) == ""  # no log file (never started)

    executor.log_dir.mkdir(parents=True, exist_ok=True)
    path = executor.log_path(spec)
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(200_000)) + b"last, unterminated")
    assert executor.output_tail(handle, 3) == "line 199998\nline 199999\nlast, unterminated"
    assert executor.output_tail(handle, 0) == ""

    path.write_bytes(b"only\r\nlines\r\n\n")
    assert executor.output_tail(handle, 20) == "only\nlines"


# -- stop and kill -------------------------------------------------------------


def test_request_stop_sends_sigterm_to_the_worker(executor: TrackingExecutor, dirs: Dirs) -> None:
    handle = executor.start(make_spec(SLEEPER))
    dirs.report(handle)  # booted, so SIGTERM meets the default handler

    executor.request_stop(handle)
    codes = wait_until(lambda: executor.exit_codes([handle]), 5, "the worker to stop")
    assert codes == {handle: -signal.SIGTERM}
    executor.request_stop(handle)  # already reaped: a no-op


def test_kill_reaps_and_is_idempotent(executor: TrackingExecutor, dirs: Dirs) -> None:
    handle = executor.start(make_spec(SLEEPER))
    dirs.report(handle)

    executor.kill(handle)
    # Reaped by kill itself: no zombie left, not even for a moment.
    assert not Path(f"/proc/{handle.pid}").exists()
    assert executor.exit_codes([handle]) == {handle: -signal.SIGKILL}
    executor.kill(handle)
    executor.request_stop(handle)
    assert executor.exit_codes([handle]) == {handle: -signal.SIGKILL}


def test_kill_is_safe_on_a_worker_that_already_exited(executor: TrackingExecutor) -> None:
    handle = executor.start(make_spec(CRASHER))
    executor.kill(handle)  # may or may not have exited yet: either way it ends reaped
    assert handle.native.returncode in (3, -signal.SIGKILL)
    assert not Path(f"/proc/{handle.pid}").exists()


def test_kill_takes_the_worker_s_own_children(executor: TrackingExecutor, dirs: Dirs) -> None:
    handle = executor.start(make_spec(SLEEPER, env={"SLEEPER_GRANDCHILD": "1"}))
    grandchild = dirs.report(handle)["grandchild_pid"]
    assert alive(grandchild)
    assert os.getpgid(grandchild) == handle.pid

    executor.kill(handle)
    wait_until(lambda: not alive(grandchild), 2, "the worker's child to die with it")


def test_stop_reaches_a_child_in_a_session_of_its_own_within_the_grace(
    executor: TrackingExecutor, dirs: Dirs
) -> None:
    """A Jupyter kernel runs in its own session: the group signal misses it, the tree does not."""
    handle = executor.start(make_spec(SLEEPER, env={"SLEEPER_GRANDCHILD": "session"}))
    grandchild = dirs.report(handle)["grandchild_pid"]
    assert os.getpgid(grandchild) != handle.pid and os.getsid(grandchild) == grandchild
    started = time.monotonic()
    executor.request_stop(handle)  # the worker dies of SIGTERM; its child ignores it
    wait_until(lambda: executor.exit_codes([handle]), 2, "the worker to end on SIGTERM")
    assert alive(grandchild)
    executor.kill(handle)  # after the grace: what is left of the tree
    assert not alive(grandchild)
    assert time.monotonic() - started < 1.0 + 2  # the grace (here: none) + 1 s, with slack for the machine


def test_a_closed_lifeline_takes_a_child_in_a_session_of_its_own(
    executor: TrackingExecutor, dirs: Dirs
) -> None:
    handle = executor.start(make_spec(SLEEPER, env={"SLEEPER_GRANDCHILD": "session"}))
    grandchild = dirs.report(handle)["grandchild_pid"]
    executor.close()  # what the manager's death does
    wait_until(lambda: not alive(grandchild) and executor.exit_codes([handle]), 2,
               "the worker and its child in another session to end with the lifeline")


# -- spawning errors and close -------------------------------------------------


def test_missing_interpreter_raises_naming_the_command_and_leaves_nothing(
    make_executor: Callable[..., TrackingExecutor],
) -> None:
    executor = make_executor(python="/nonexistent/bin/python3")
    spec = make_spec(SLEEPER)

    command = "/nonexistent/bin/python3 -m clm_workers.launch workers_for_tests"
    with pytest.raises(FatalExecutorError, match=command):
        executor.start(spec)
    assert executor.handles == []
    assert not executor.log_path(spec).exists()


def test_missing_workspace_is_fatal(
    make_executor: Callable[..., TrackingExecutor], dirs: Dirs
) -> None:
    executor = make_executor(workspace_path=dirs.workspace / "missing")
    with pytest.raises(FatalExecutorError, match="missing"):
        executor.start(make_spec(SLEEPER))


def test_close_is_idempotent_and_start_after_close_raises(executor: TrackingExecutor) -> None:
    executor.close()
    executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        executor.start(make_spec(SLEEPER))


# -- concurrency and the lifeline ----------------------------------------------


def test_concurrent_starts_give_each_worker_only_the_lifeline_read_end(
    executor: TrackingExecutor, dirs: Dirs
) -> None:
    specs = [make_spec(SLEEPER, i) for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        handles = list(pool.map(executor.start, specs))

    assert len({h.pid for h in handles}) == 16
    lifeline_inode = os.fstat(executor.lifeline_fd).st_ino
    lifeline_target = f"pipe:[{lifeline_inode}]"
    for handle in handles:
        report = dirs.report(handle)
        fds = report["fds"]
        # Inherited: stdin, stdout, stderr and the lifeline's read end; besides them
        # only the launcher's inner lifeline, whose read end the module is given.
        inner = fds[report["env"]["CLM_LIFELINE_FD"]]["target"]
        inner_pipe = sorted(n for n, fd in fds.items() if fd["target"] == inner)
        assert inner != lifeline_target and len(inner_pipe) == 2, fds
        assert sorted(map(int, set(fds) - set(inner_pipe))) == sorted({0, 1, 2, executor.lifeline_fd}), fds
        lifeline = fds[str(executor.lifeline_fd)]
        assert lifeline == {"target": lifeline_target, "accmode": os.O_RDONLY}
        assert os.getpgid(handle.pid) == handle.pid

    # Dropping the lifeline ends every worker, which proves none holds the write end.
    executor.close()
    codes = wait_until(
        lambda: len(c := executor.exit_codes(handles)) == len(handles) and c,
        2,
        "every worker to see EOF on its lifeline",
    )
    assert set(codes.values()) == {0}


MANAGER_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    from pathlib import Path
    from clm_workers.executors.direct import DirectExecutor
    from clm_workers.plan import WorkerSpec

    kwargs = json.loads(sys.argv[1])
    executor = DirectExecutor(
        db_path=Path(kwargs["db_path"]), workspace_path=Path(kwargs["workspace"]),
        log_dir=Path(kwargs["logs"]), extra_env=kwargs["extra_env"],
    )
    for i in range(3):
        spec = WorkerSpec(
            worker_type="notebook", index=i, execution_mode="direct",
            module="workers_for_tests.sleeper", registration="pre",
            executor_id=f"direct-notebook-{i}-manager", session_id="s", db_worker_id=i + 1,
        )
        # Start from a short-lived thread: the workers must outlive it
        # (a parent-death signal would have killed them here).
        out = []
        t = threading.Thread(target=lambda: out.append(executor.start(spec)))
        t.start()
        t.join()
        print(out[0].pid, flush=True)
    threading.Event().wait()
    """
)


def test_workers_exit_when_the_manager_is_killed(dirs: Dirs) -> None:
    kwargs = dirs.executor_kwargs()
    args = {
        "db_path": str(kwargs["db_path"]),
        "workspace": str(kwargs["workspace_path"]),
        "logs": str(kwargs["log_dir"]),
        "extra_env": kwargs["extra_env"],
    }
    manager = subprocess.Popen(
        [sys.executable, "-c", MANAGER_SCRIPT, json.dumps(args)],
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(10, manager.kill)  # a hung manager cannot hang the test
    watchdog.start()
    pids: list[int] = []
    try:
        pids = [int(manager.stdout.readline()) for _ in range(3)]  # type: ignore[union-attr]
        for i in range(3):  # every worker booted and watches its lifeline
            path = dirs.reports / f"direct-notebook-{i}-manager.json"
            wait_until(path.exists, 5, f"worker {i} to boot")
        assert not any(not alive(pid) for pid in pids)

        manager.send_signal(signal.SIGKILL)
        manager.wait()
        wait_until(
            lambda: all(not alive(pid) for pid in pids),
            2,
            "every worker to exit after its manager was SIGKILLed",
        )
    finally:
        watchdog.cancel()
        manager.kill()
        manager.wait()
        manager.stdout.close()  # type: ignore[union-attr]
        for pid in pids:  # only if the test failed: do not leak its workers
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)


EMFILE_SCRIPT = """
import errno, os, resource, sys
from pathlib import Path
from clm_workers.errors import FatalExecutorError
from clm_workers.executors.direct import DirectExecutor
from clm_workers.plan import WorkerSpec, new_executor_id
tmp = Path(sys.argv[1])
executor = DirectExecutor(db_path=tmp / "jobs.db", workspace_path=tmp, log_dir=tmp / "logs")
spec = WorkerSpec("notebook", 0, "direct", "clm_workers.sim", "pre", new_executor_id("direct", "notebook", 0),
                  "s")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError as exc:
    assert exc.errno == errno.EMFILE
try:
    executor.start(spec)
except FatalExecutorError as exc:
    print(exc)
"""


def test_too_many_open_files_is_reported_as_such(tmp_path: Path) -> None:
    """Not as an unwritable log folder: the folder is fine, the process has no file left."""
    result = subprocess.run([sys.executable, "-c", EMFILE_SCRIPT, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "this process has too many open files (its limit is 64, `ulimit -n`)" in message, message
    assert "writable" not in message
