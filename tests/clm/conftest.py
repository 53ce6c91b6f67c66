"""Integration tests against CLM's real workers (PyPI ``coding-academy-lecture-manager``).

They run CLM's own notebook and PlantUML workers, submit jobs with CLM's own
backend and read CLM's own tables and ``clm status``.  Without CLM (with its
``notebook`` and ``plantuml`` extras), Java or a PlantUML jar every test here
skips with one reason; with ``CLM_REQUIRE_CLM_TESTS=1`` (set by ``.ci/run``)
they fail instead, so that CI cannot pass without running them.

PlantUML: ``PLANTUML_JAR`` if set, else Debian's jar (``apt-get install
plantuml default-jre-headless``); it is put into the environment as a CLM
user would, for CLM's PlantUML workers to read.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The shared helpers of tests/ (procs.py): pytest puts only this folder on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clmtools import DEBIAN_PLANTUML_JAR, Course, clm_version, make_course, skip_or_fail  # noqa: E402

from procs import session_processes  # noqa: E402


def _plantuml_jar() -> Path:
    return Path(os.environ.get("PLANTUML_JAR") or DEBIAN_PLANTUML_JAR)


def _problem() -> str | None:
    """Why CLM's workers cannot run here, or None."""
    if clm_version() is None:
        return ("CLM is not installed; "
                "pip install 'coding-academy-lecture-manager[notebook,plantuml]' to run the CLM tests")
    for module in ("clm.workers.notebook", "clm.workers.plantuml", "nbconvert", "ipykernel"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is missing: install CLM with its notebook and plantuml extras"
    if not _plantuml_jar().is_file():
        return f"no PlantUML jar at {_plantuml_jar()}: apt-get install plantuml, or set PLANTUML_JAR"
    if shutil.which("java") is None:
        return "no java on PATH for CLM's PlantUML workers: apt-get install default-jre-headless"
    return None


PROBLEM = _problem()


@pytest.fixture(autouse=True)
def _clm_workers_available(monkeypatch: pytest.MonkeyPatch) -> None:
    if PROBLEM is not None:
        skip_or_fail(PROBLEM)
    monkeypatch.setenv("PLANTUML_JAR", str(_plantuml_jar()))


@pytest.fixture
def course(tmp_path: Path) -> Course:
    """The tiny course; its output folder is the workspace the workers get."""
    return make_course(tmp_path / "course")


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory for the test (and so for the manager), to see what lands in it."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def sessions() -> Iterator[list[str]]:
    """Session ids a test adds its managers' to: whatever of them a failed test left is SIGKILLed."""
    started: list[str] = []
    yield started
    for session in started:
        for pid in session_processes(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
