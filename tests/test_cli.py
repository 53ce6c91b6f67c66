"""The ``clm-workers`` command as a user runs it: a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def clm_workers(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clm_workers.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


def test_demo_starts_runs_jobs_and_stops():
    result = clm_workers("demo", "--workers", "6", "--boot-delay", "0.2", "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    assert "registered 6/6" in result.stderr
    assert "started" in result.stdout and "│ 6 " in result.stdout
    # Two jobs for each of the three types, all completed by the workers.
    assert result.stdout.count("completed") == 6
    assert "Stopped every worker" in result.stderr


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
    assert "Starting" not in result.stderr and result.stdout == ""
