"""Docker workers against the real engine (no mocks): the executor, the image, the manager.

The image is ``clm-workers-sim:latest`` (``nox -s image``).  Without an engine
or without the image every test here skips with one reason; with
``CLM_REQUIRE_DOCKER_TESTS=1`` (set by ``.ci/run``) they fail instead, so
that CI cannot pass without running them.

Every test checks, pass or fail, that no container of its database is left
(the ``clm.db`` label), and removes any it finds.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import trio

from clm_workers import ConfigError, PoolStartupError, WorkerConfig, WorkerPoolManager, schema
from clm_workers.errors import FatalExecutorError
from clm_workers.executors.base import WorkerHandle
from clm_workers.executors.docker import (
    EXIT_CODE_GONE,
    LABEL_DB,
    LABEL_SESSION,
    DockerExecutor,
    database_identity,
)
from clm_workers.plan import WorkerSpec, new_executor_id
from clm_workers.report import ProgressEvent
from procs import DATA_OWNER, give_to_data_owner, killed_at_exit, session_processes, wait_until

IMAGE = os.environ.get("CLM_TEST_DOCKER_IMAGE", "clm-workers-sim:latest")
REQUIRED = os.environ.get("CLM_REQUIRE_DOCKER_TESTS") == "1"
SIM = "clm_workers.sim"


def _engine_problem() -> str | None:
    try:
        client = docker.from_env(version="auto", timeout=10)
    except docker.errors.DockerException as exc:
        return f"no Docker engine is reachable ({exc}); start one to run the docker tests"
    try:
        client.api.inspect_image(IMAGE)
    except docker.errors.ImageNotFound:
        return f"the worker image {IMAGE} is missing; build it with `nox -s image`"
    finally:
        client.close()
    return None


_PROBLEM = _engine_problem()
if _PROBLEM is not None:
    if REQUIRED:
        pytest.fail(f"{_PROBLEM} (CLM_REQUIRE_DOCKER_TESTS=1: these tests must run, not skip)",
                    pytrace=False)
    pytest.skip(_PROBLEM, allow_module_level=True)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    engine = docker.from_env(version="auto")
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
def data_of_a_user(tmp_path: Path) -> None:
    give_to_data_owner(tmp_path)


@pytest.fixture(autouse=True)
def nothing_left_behind(client: Any, tmp_path: Path) -> Iterator[None]:
    """Fail a test that leaves a container of its database; remove it either way."""
    yield
    identity = database_identity(tmp_path / "jobs.db")
    found = client.api.containers(all=True, filters={"label": f"{LABEL_DB}={identity}"})
    for info in found:
        client.api.remove_container(info["Id"], force=True)
    assert [c["Names"][0] for c in found] == [], "containers were left behind"


# -- helpers -------------------------------------------------------------------


def dsim(worker_type: str = "notebook", count: int = 1, *, boot: float = 0.0, fail: str = "",
         env: dict[str, str] | None = None, **kwargs: Any) -> WorkerConfig:
    """A docker pool of simulated workers."""
    full_env = {"CLM_SIM_BOOT_DELAY": str(boot), **(env or {})}
    if fail:
        full_env["CLM_SIM_FAIL"] = fail
    return WorkerConfig(worker_type, count, execution_mode="docker", image=IMAGE, module=SIM,
                        env=full_env, **kwargs)


def session_containers(client: Any, session: str, *, running_only: bool = False) -> list[dict[str, Any]]:
    found = client.api.containers(all=not running_only, filters={"label": f"{LABEL_SESSION}={session}"})
    return list(found)


def rows(db: Path) -> list[tuple[int, str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, container_id, status, session_id FROM workers ORDER BY id").fetchall()


def live_rows(db: Path) -> list[tuple[int, str, str, str]]:
    return [r for r in rows(db) if r[2] in ("created", "idle", "busy")]


# -- the manager ---------------------------------------------------------------------


async def test_eight_containers_register_work_and_stop_leaving_none(client: Any, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, tmp_path, [dsim(count=5), dsim("plantuml", 3, memory_limit="256m")])
    report = await manager.start_pools()
    try:
        assert report.failed == []
        assert sorted((w.worker_type, w.index) for w in report.started) == sorted(
            [("notebook", i) for i in range(5)] + [("plantuml", i) for i in range(3)]
        )
        running = session_containers(client, manager.session_id, running_only=True)
        assert {c["Id"] for c in running} == {w.executor_id for w in report.started}
        by_row = {r[0]: r for r in rows(db)}
        for worker in report.started:
            info = client.api.inspect_container(worker.executor_id)
            name = info["Name"].lstrip("/")
            # The pre-registered row names the container; the handle has the real id.
            assert by_row[worker.db_worker_id][1:] == (name, "idle", manager.session_id)
            assert name.startswith(f"docker-{worker.worker_type}-{worker.index}-")
            labels = info["Config"]["Labels"]
            assert labels["clm.session"] == manager.session_id
            assert labels["clm.worker-type"] == worker.worker_type
            assert labels["clm.worker-index"] == str(worker.index)
            assert labels["clm.db-worker-id"] == str(worker.db_worker_id)
            assert labels[LABEL_DB] == database_identity(db)
            host = info["HostConfig"]
            assert host["Init"] is True
            assert host["Memory"] == (256 if worker.worker_type == "plantuml" else 1024) * 2**20
            mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in info["Mounts"]}
            # The database's three files, not its folder; the workspace.
            files = {f"/db/jobs.db{end}": (f"{db}{end}", True) for end in ("", "-wal", "-shm")}
            assert mounts == files | {"/workspace": (str(tmp_path), True)}
            assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
            assert host["PidsLimit"] > 0 and host["ReadonlyRootfs"] is True
            assert info["Config"]["User"] != "0" and not info["Config"]["User"].startswith("0:")
            env = dict(e.split("=", 1) for e in info["Config"]["Env"])
            assert env["DB_PATH"] == env["CLM_JOBS_DB_PATH"] == "/db/jobs.db"
            assert env["CLM_WORKER_ID"] == str(worker.db_worker_id)
            assert env["WORKSPACE_PATH"] == "/workspace"
            assert env["CLM_SESSION_ID"] == manager.session_id
        # A job goes through SQLite in WAL mode across the bind mount and back.
        (tmp_path / "in.txt").write_text("hello from the host")
        job = manager.registry.submit_job("plantuml", "in.txt", "out/copy.txt")
        wait_until(lambda: manager.registry.job_statuses([job])[job][0] == "completed", 10)
        assert (tmp_path / "out" / "copy.txt").read_text() == "hello from the host"
    finally:
        await manager.stop_pools()
    assert session_containers(client, manager.session_id) == []
    assert live_rows(db) == []


CONFINEMENT_PROBE = r"""
import json, os
facts = {"uid": os.getuid(), "db": sorted(os.listdir("/db"))}
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
facts["caps"] = status["CapEff"].strip()
facts["no_new_privs"] = status["NoNewPrivs"].strip()
for name, path in [("beside_db", "/db/planted"), ("root_fs", "/etc/planted"), ("tmp", "/tmp/planted")]:
    try:
        open(path, "w").close()
        facts[name] = "written"
    except OSError as exc:
        facts[name] = exc.strerror
for path in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"):
    if os.path.exists(path):
        facts["pids_max"] = open(path).read().strip()
print(json.dumps(facts))
"""


async def test_a_container_is_unprivileged_and_sees_only_the_database_files(
    client: Any, tmp_path: Path
) -> None:
    """Not root, no capabilities, no new privileges, a pids limit, a read-only root file system, and of
    the database's folder only the database: not the secret beside it."""
    data = tmp_path / "data"  # the database's folder, not the workspace
    data.mkdir()
    give_to_data_owner(data)
    (data / "secret.txt").write_text("the database's neighbour")
    (data / ".ssh").mkdir()
    db = data / "jobs.db"
    manager = WorkerPoolManager(db, tmp_path, [dsim(count=1)])
    report = await manager.start_pools()
    try:
        [worker] = report.started
        done = client.api.exec_start(client.api.exec_create(worker.executor_id, ["python3", "-c",
                                                                                 CONFINEMENT_PROBE]))
        facts = json.loads(done.decode().strip().splitlines()[-1])
    finally:
        await manager.stop_pools()
    assert facts["uid"] == (DATA_OWNER[0] if os.getuid() == 0 else os.getuid()), facts
    assert facts["db"] == ["jobs.db", "jobs.db-shm", "jobs.db-wal"], facts  # no secret, no .ssh
    assert facts["caps"] == "0000000000000000" and facts["no_new_privs"] == "1", facts
    assert facts["beside_db"] == facts["root_fs"] == "Read-only file system", facts
    assert facts["tmp"] == "written" and facts["pids_max"] == "512", facts
    assert not (data / "planted").exists()
    neighbours = sorted(p.name for p in data.iterdir() if not p.name.startswith("jobs.db"))
    assert neighbours == [".ssh", "secret.txt"]


def test_a_symlink_beside_the_database_is_never_mounted(client: Any, tmp_path: Path) -> None:
    """A ``-wal`` that is a symlink would make Docker mount what it points to: refused, nothing created."""
    db = tmp_path / "jobs.db"
    conn = schema.connect(db)
    schema.ensure_schema(conn)
    conn.close()  # the last connection: -wal and -shm are gone
    (tmp_path / "elsewhere").write_text("anything")
    (tmp_path / "jobs.db-wal").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "jobs.db-shm").write_bytes(b"")
    executor = DockerExecutor(db_path=db, workspace_path=tmp_path)
    session = uuid.uuid4().hex
    try:
        with pytest.raises(FatalExecutorError, match="jobs.db-wal is not a plain file"):
            executor.start(spec_for(tmp_path, session))
        assert session_containers(client, session) == []
    finally:
        executor.close()


async def test_clm03_container_registering_with_its_hostname_is_found(client: Any, tmp_path: Path) -> None:
    # As a CLM 0.3 container: it registers with HOSTNAME, the container's 12-character id.
    manager = WorkerPoolManager(tmp_path / "jobs.db", tmp_path,
                                [dsim(count=2, registration="self", env={"CLM_REGISTER_AS": "hostname"})])
    report = await manager.start_pools()
    try:
        assert len(report.started) == 2
        by_row = {r[0]: r for r in rows(tmp_path / "jobs.db")}
        for worker in report.started:
            assert by_row[worker.db_worker_id][1] == worker.executor_id[:12]
    finally:
        await manager.stop_pools()
    assert live_rows(tmp_path / "jobs.db") == []


async def test_mixed_pool_of_four_docker_and_four_direct_workers(client: Any, tmp_path: Path) -> None:
    direct = WorkerConfig("notebook", 4, module=SIM, env={"CLM_SIM_BOOT_DELAY": "0.2"})
    manager = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [direct, dsim("plantuml", 4, boot=0.2)])
    report = await manager.start_pools()
    try:
        assert report.failed == []
        modes = {(w.worker_type, w.pid is None) for w in report.started}
        assert modes == {("notebook", False), ("plantuml", True)}
        assert len(report.started) == 8
        pids = {w.pid for w in report.started if w.pid is not None}
        assert len(pids) == 4 and pids <= set(session_processes(manager.session_id))
        assert len(session_containers(client, manager.session_id, running_only=True)) == 4
    finally:
        await manager.stop_pools()
    # Containers' processes run on this kernel too: none of either kind is left.
    assert session_processes(manager.session_id) == []
    assert session_containers(client, manager.session_id) == []
    assert live_rows(tmp_path / "jobs.db") == []


async def test_missing_image_is_fatal_before_anything_starts(client: Any, tmp_path: Path) -> None:
    missing = f"clm-workers-no-such-image:{uuid.uuid4().hex[:8]}"
    configs = [
        WorkerConfig("notebook", 3, module=SIM),
        WorkerConfig("plantuml", 3, execution_mode="docker", image=missing, module=SIM),
    ]
    manager = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, configs)
    with pytest.raises(PoolStartupError) as caught:
        await manager.start_pools()
    message = str(caught.value)
    assert f"the worker image {missing!r} is not present" in message
    assert "nox -s image" in message and f"docker pull {missing}" in message
    assert session_containers(client, manager.session_id) == []
    assert session_processes(manager.session_id) == []  # not even the direct workers
    with pytest.raises(docker.errors.ImageNotFound):
        client.api.inspect_image(missing)  # and nothing was pulled
    assert live_rows(tmp_path / "jobs.db") == []


async def test_unreachable_engine_is_fatal_and_says_what_to_do(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    manager = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [dsim(count=2)])
    with pytest.raises(PoolStartupError, match="cannot reach the Docker engine at unix://") as caught:
        await manager.start_pools()
    assert "Start the engine" in str(caught.value)
    assert live_rows(tmp_path / "jobs.db") == []


async def test_crashing_and_hanging_containers_are_reported_and_removed(client: Any, tmp_path: Path) -> None:
    configs = [dsim(count=2), dsim("plantuml", 1, fail="crash"), dsim("drawio", 1, fail="hang")]
    manager = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, configs, registration_timeout=5)
    report = await manager.start_pools()
    try:
        assert len(report.started) == 2
        failed = {f.worker_type: f for f in report.failed}
        crash, hang = failed["plantuml"], failed["drawio"]
        assert (crash.phase, crash.exit_code) == ("exit", 3)
        assert "exited with code 3 before registering" in crash.reason
        assert "simulated crash" in crash.reason and "simulated crash" in crash.output_tail
        assert hang.phase == "timeout" and "did not register within 5 s" in hang.reason
        assert report.duration >= 5
        # The failed ones are gone already; only the good ones remain, running.
        remaining = session_containers(client, manager.session_id)
        assert {c["Id"] for c in remaining} == {w.executor_id for w in report.started}
        assert {crash.executor_id, hang.executor_id}.isdisjoint(c["Id"] for c in remaining)
    finally:
        await manager.stop_pools()
    assert session_containers(client, manager.session_id) == []
    assert live_rows(tmp_path / "jobs.db") == []


@pytest.mark.parametrize(
    "moment", [None, ("spawned", 1), ("spawned", 5), ("registered", 3)],
    ids=["at once", "first container started", "fifth container started", "third registered"],
)
async def test_cancellation_mid_start_leaves_no_container(
    client: Any, tmp_path: Path, moment: tuple[str, int] | None
) -> None:
    # Quick workers register, slow ones never do; with concurrency 2, when the
    # cancellation comes some containers run, some are being created, the rest wait.
    configs = [dsim(count=3, boot=0.1), dsim("plantuml", 5, boot=30)]
    manager = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, configs, max_startup_concurrency=2)
    seen = {"spawned": 0, "registered": 0, "failed": 0}
    with trio.CancelScope() as scope:
        if moment is None:
            scope.cancel()

        def on_progress(event: ProgressEvent) -> None:
            seen[event.kind] += 1
            if (event.kind, seen[event.kind]) == moment:
                scope.cancel()

        await manager.start_pools(on_progress=on_progress)
    assert scope.cancelled_caught
    assert session_containers(client, manager.session_id) == []
    db = tmp_path / "jobs.db"
    assert live_rows(db) == [] if db.exists() else True
    await manager.stop_pools()  # idempotent after a cancelled start


async def test_two_managers_on_one_database_leave_each_other_alone(client: Any, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    first = WorkerPoolManager(db, tmp_path, [dsim(count=2)])
    second = WorkerPoolManager(db, tmp_path, [dsim(count=2)])
    await first.start_pools()
    try:
        # The second start cleans dead sessions' containers: the first session is alive.
        report = await second.start_pools()
        assert len(report.started) == 2
        assert len(session_containers(client, first.session_id, running_only=True)) == 2
        await second.stop_pools()
        assert len(session_containers(client, first.session_id, running_only=True)) == 2
    finally:
        await second.stop_pools()
        await first.stop_pools()


async def test_containers_join_the_configured_network(client: Any, tmp_path: Path) -> None:
    network = f"clm-workers-test-{uuid.uuid4().hex[:8]}"
    manager = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [dsim(count=2)], docker_network=network)
    try:
        report = await manager.start_pools()
        try:
            assert len(report.started) == 2
            for worker in report.started:
                networks = client.api.inspect_container(worker.executor_id)["NetworkSettings"]["Networks"]
                assert list(networks) == [network]
        finally:
            await manager.stop_pools()
    finally:
        client.api.remove_network(network)


def test_docker_network_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="docker_network: 'no spaces' is not allowed"):
        WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [], docker_network="no spaces")


# -- orphans: the manager dies -----------------------------------------------------------


def run_manager(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "manager_script.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, trio
        from pathlib import Path
        from clm_workers import WorkerConfig, WorkerPoolManager
        tmp = Path(sys.argv[1])
        def dsim(count, **env):
            return WorkerConfig("notebook", count, execution_mode="docker", image={IMAGE!r},
                                module="clm_workers.sim", env=env)
    """) + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)


LEASE_TTL = 3.0
#: The worker checks its lease this often (its heartbeat interval).
LEASE_CHECK = 0.5
#: Expiry (at most one ttl after the last renewal), one check, the second of writable
#: expiry a container waits for (a busy database is not a dead manager), the 1 s stop
#: grace, margin.
ORPHAN_BOUND = LEASE_TTL + LEASE_CHECK + 1.0 + 1.0 + 2.0


@pytest.mark.parametrize("moment", ["during startup", "after startup"])
async def test_manager_killed_with_sigkill_its_containers_stop_and_the_next_manager_removes_them(
    client: Any, tmp_path: Path, moment: str
) -> None:
    fail = "hang" if moment == "during startup" else ""
    proc = run_manager(tmp_path, f"""
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [dsim(4, CLM_SIM_FAIL={fail!r},
                                    CLM_HEARTBEAT_INTERVAL="{LEASE_CHECK}")],
                                    lease_ttl={LEASE_TTL}, registration_timeout=60)
        print(json.dumps({{"session": manager.session_id}}), flush=True)
        trio.run(manager.start_pools)
        print(json.dumps({{"started": manager.running}}), flush=True)
        trio.run(trio.sleep_forever)
    """)
    with killed_at_exit(proc):
        assert proc.stdout is not None
        session = json.loads(proc.stdout.readline())["session"]
        if moment == "after startup":
            assert json.loads(proc.stdout.readline()) == {"started": 4}
        wait_until(lambda: len(session_containers(client, session, running_only=True)) == 4, 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        killed_at = time.monotonic()
    # No manager is left to stop them: their session's lease does.
    wait_until(lambda: session_containers(client, session, running_only=True) == [], ORPHAN_BOUND)
    stopped_after = time.monotonic() - killed_at
    leftovers = session_containers(client, session)
    assert len(leftovers) == 4
    for info in leftovers:
        state = client.api.inspect_container(info["Id"])["State"]
        assert state["ExitCode"] == 70, state  # "the manager is gone"
    assert stopped_after < ORPHAN_BOUND

    # A manager of another database never touches them ...
    other = tmp_path / "other"
    other.mkdir()
    give_to_data_owner(other)
    stranger = WorkerPoolManager(other / "jobs.db", other, [dsim(count=1)])
    await stranger.start_pools()
    await stranger.stop_pools()
    assert len(session_containers(client, session)) == 4
    # ... the next manager of this one removes them as it starts.
    successor = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [dsim(count=1)])
    report = await successor.start_pools()
    try:
        assert len(report.started) == 1
        assert session_containers(client, session) == []
        assert [r for r in live_rows(tmp_path / "jobs.db") if r[3] == session] == []
    finally:
        await successor.stop_pools()


async def test_a_manager_with_only_direct_workers_removes_the_containers_a_dead_manager_left(
    client: Any, tmp_path: Path
) -> None:
    proc = run_manager(tmp_path, f"""
        manager = WorkerPoolManager(tmp / "jobs.db", tmp, [dsim(2)], lease_ttl={LEASE_TTL})
        print(json.dumps({{"session": manager.session_id}}), flush=True)
        trio.run(manager.start_pools)
        print(json.dumps({{"started": manager.running}}), flush=True)
        trio.run(trio.sleep_forever)
    """)
    with killed_at_exit(proc):
        assert proc.stdout is not None
        session = json.loads(proc.stdout.readline())["session"]
        assert json.loads(proc.stdout.readline()) == {"started": 2}
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    def expired() -> bool:
        with sqlite3.connect(tmp_path / "jobs.db") as conn:
            return bool(conn.execute("SELECT lease_expires_at < julianday('now') FROM clm_worker_sessions"
                                     " WHERE session_id = ?", (session,)).fetchone()[0])

    wait_until(expired, LEASE_TTL + 5, "the dead manager's lease to run out")
    assert len(session_containers(client, session)) == 2
    successor = WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [WorkerConfig("plantuml", 1, module=SIM)])
    report = await successor.start_pools()
    try:
        assert len(report.started) == 1
        assert session_containers(client, session) == []
    finally:
        await successor.stop_pools()


# -- the executor on its own ---------------------------------------------------------------


def spec_for(
    tmp_path: Path, session: str, *, index: int = 0, env: dict[str, str] | None = None
) -> WorkerSpec:
    return WorkerSpec(
        worker_type="notebook", index=index, execution_mode="docker", module=SIM, registration="self",
        executor_id=new_executor_id("docker", "notebook", index), session_id=session, image=IMAGE,
        env={"CLM_SIM_BOOT_DELAY": "0", **(env or {})},
    )


def new_database(folder: Path) -> Path:
    """A CLM database in WAL mode, as the manager makes it before any container starts."""
    db = folder / "jobs.db"
    conn = schema.connect(db)
    schema.ensure_schema(conn)
    _open_connections.append(conn)  # open, as the manager's is: -wal and -shm exist meanwhile
    if os.getuid() == 0:
        for path in folder.glob("jobs.db*"):
            os.chown(path, *DATA_OWNER)
    return db


_open_connections: list[sqlite3.Connection] = []


@pytest.fixture
def executor(client: Any, tmp_path: Path) -> Iterator[DockerExecutor]:
    made = DockerExecutor(db_path=new_database(tmp_path), workspace_path=tmp_path)
    yield made
    made.close()


def test_a_failed_start_removes_the_created_container(client: Any, tmp_path: Path) -> None:
    # No check(): the network is not created, so the container is created but cannot start.
    executor = DockerExecutor(db_path=new_database(tmp_path), workspace_path=tmp_path,
                              network=f"clm-workers-missing-{uuid.uuid4().hex[:8]}")
    session = uuid.uuid4().hex
    try:
        with pytest.raises(RuntimeError, match="cannot start container docker-notebook-0-.*not found"):
            executor.start(spec_for(tmp_path, session))
        assert session_containers(client, session) == []
    finally:
        executor.close()


def test_exit_codes_of_many_containers_take_one_listing(executor: DockerExecutor, tmp_path: Path) -> None:
    session = uuid.uuid4().hex
    handles = [
        executor.start(spec_for(tmp_path, session, index=i, env={"CLM_SIM_FAIL": "crash" if i else "hang"}))
        for i in range(3)
    ]
    calls = 0
    api = executor._client().api
    original = api.containers

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    api.containers = counting
    try:
        codes = wait_until(lambda: len(c := executor.exit_codes(handles)) == 2 and c, 20)
        assert sorted(codes.values()) == [3, 3] and handles[0] not in codes
        time.sleep(executor.exit_poll_interval)
        before = calls
        executor.exit_codes(handles)
        assert calls == before + 1  # one engine listing for all three
        assert "simulated crash" in executor.output_tail(handles[1])
    finally:
        api.containers = original
        for handle in handles:
            executor.kill(handle)


def test_stop_then_kill_is_idempotent_and_keeps_the_log(executor: DockerExecutor, tmp_path: Path) -> None:
    session = uuid.uuid4().hex
    handle: WorkerHandle = executor.start(spec_for(tmp_path, session, env={"CLM_SIM_FAIL": "hang"}))
    wait_until(lambda: "worker starting" in executor.output_tail(handle), 10)
    executor.request_stop(handle)
    # SIGTERM before registering: the worker ends at once with 128 + 15 (through the init).
    assert wait_until(lambda: executor.exit_codes([handle]), 10) == {handle: 143}
    executor.request_stop(handle)  # not running any more: no error
    executor.kill(handle)
    executor.kill(handle)  # gone: no error
    executor.request_stop(handle)
    assert session_containers(executor._client(), session) == []
    assert "worker starting" in executor.output_tail(handle)
    assert executor.exit_codes([handle]) == {handle: 143}


def test_a_container_removed_behind_our_back_counts_as_exited(
    executor: DockerExecutor, client: Any, tmp_path: Path
) -> None:
    handle = executor.start(spec_for(tmp_path, uuid.uuid4().hex, env={"CLM_SIM_FAIL": "hang"}))
    client.api.remove_container(handle.executor_id, force=True)
    time.sleep(executor.exit_poll_interval)
    assert executor.exit_codes([handle]) == {handle: EXIT_CODE_GONE}
    executor.kill(handle)
