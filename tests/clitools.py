"""Helpers for the CLI tests: run ``clm-workers`` as a user does, in a real subprocess."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

from procs import alive, give_to_data_owner, session_processes, wait_until

SIM = "clm_workers.sim"
DOCKER_IMAGE = os.environ.get("CLM_TEST_DOCKER_IMAGE", "clm-workers-sim:latest")


def clm_workers(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the command to completion (stdout and stderr are pipes: not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "clm_workers.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_env(env),
    )


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLM_")}
    return {**env, **(extra or {})}


def write_config(folder: Path, body: str, name: str = "workers.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def sim_pools(notebook: int = 2, plantuml: int = 1, boot_delay: float = 0.0, **extra_env: str) -> str:
    env = ", ".join(f'{k} = "{v}"' for k, v in {"CLM_SIM_BOOT_DELAY": str(boot_delay), **extra_env}.items())
    return textwrap.dedent(f"""
        [[pools]]
        type = "notebook"
        count = {notebook}
        module = "{SIM}"
        env = {{ {env} }}

        [[pools]]
        type = "plantuml"
        count = {plantuml}
        module = "{SIM}"
        env = {{ {env} }}
    """)


class StartProcess:
    """``clm-workers start`` running in the background; its stderr and stdout go to files.

    As a context manager it is SIGKILLed at the end of the block if still running.
    """

    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.stderr_path = folder / "start.stderr"
        self.stdout_path = folder / "start.stdout"
        with open(self.stderr_path, "w") as err, open(self.stdout_path, "w") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "clm_workers.cli", "start", *args],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=folder, env=_env(env),
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None and text not in self.stderr:
                raise AssertionError(f"start exited with {self.popen.returncode}:\n{self.stderr}")
            return text in self.stderr
        wait_until(seen, timeout)

    def wait(self, timeout: float = 30) -> int:
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def __enter__(self) -> StartProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def db_rows(db: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(db, timeout=30)) as conn:
            return conn.execute(query, params).fetchall()
    except sqlite3.OperationalError:  # the schema is being created
        return []


def session_of(db: Path) -> str:
    """The only session of the database (waits until the manager has written it)."""
    rows = wait_until(lambda: db_rows(db, "SELECT session_id FROM clm_worker_sessions"), 30)
    assert len(rows) == 1, rows
    return str(rows[0][0])


def statuses(db: Path) -> list[str]:
    return [str(r[0]) for r in db_rows(db, "SELECT status FROM workers ORDER BY id")]


def wait_registered(db: Path, n: int, timeout: float = 30) -> None:
    wait_until(lambda: statuses(db).count("idle") + statuses(db).count("busy") >= n, timeout)


def no_worker_left(session: str, timeout: float = 10) -> None:
    """Every process of the session is gone (polled with a deadline)."""
    wait_until(lambda: not session_processes(session), timeout)


def require_docker(folder: Path, image: str = DOCKER_IMAGE) -> None:
    """Skip without an engine or the worker image; fail instead with ``CLM_REQUIRE_DOCKER_TESTS=1`` (CI).

    ``folder`` (the database's and workspace's) is given to a user other than
    root: containers never run as root.
    """
    give_to_data_owner(folder)
    import docker
    import docker.errors
    import pytest

    problem = None
    try:
        client = docker.from_env(version="auto", timeout=10)
    except docker.errors.DockerException as exc:
        problem = f"no Docker engine is reachable ({exc})"
    else:
        try:
            client.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            problem = f"the worker image {image} is missing; build it with `nox -s image`"
        finally:
            client.close()
    if problem is not None:
        if os.environ.get("CLM_REQUIRE_DOCKER_TESTS") == "1":
            raise AssertionError(f"{problem} (CLM_REQUIRE_DOCKER_TESTS=1)")
        pytest.skip(problem)


__all__ = ["DOCKER_IMAGE", "SIM", "StartProcess", "alive", "clm_workers", "db_rows", "no_worker_left",
           "require_docker", "session_of", "sim_pools", "statuses", "wait_registered", "write_config"]
