"""CLM's own code, as the tests under tests/clm drive it: a tiny course, CLM's job submission.

Everything CLM-specific is imported inside the functions, so that this module
imports without CLM (the conftest then skips, or fails, every test here).
Jobs are submitted and awaited by CLM's own ``SqliteBackend`` (what ``clm
build`` uses), in a process of its own as ``clm build`` is: its
``execute_operation`` inserts the job through CLM's ``JobQueue``, its
``wait_for_completion`` polls CLM's ``jobs`` table.  The payloads are CLM's
own pydantic models, filled in as CLM's operations fill them for a course
file.  Run as a script, this module is that process (see :func:`run_build`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DISTRIBUTION = "coding-academy-lecture-manager"

#: Set by CI: the CLM tests must run, so what would skip them fails them instead.
REQUIRED = os.environ.get("CLM_REQUIRE_CLM_TESTS") == "1"

#: Debian's PlantUML (apt-get install plantuml); CLM's PlantUML workers read ``PLANTUML_JAR``.
DEBIAN_PLANTUML_JAR = Path("/usr/share/plantuml/plantuml.jar")


def clm_version() -> tuple[int, ...] | None:
    """The installed CLM release as a tuple, or None when CLM is not installed."""
    try:
        text = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def version_text() -> str:
    return ".".join(map(str, clm_version() or ())) or "none"


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when the CLM tests are required."""
    import pytest

    if REQUIRED:
        pytest.fail(f"{reason} (CLM_REQUIRE_CLM_TESTS=1: these tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def clm_name(name: str, *modules: str) -> Any:
    """``name`` from the first of CLM's ``modules`` that exists (CLM 1.35 moved some modules)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"{name} is in none of {modules}")


# -- a tiny course ---------------------------------------------------------------------


@dataclass(frozen=True)
class Course:
    """A course folder with one slide notebook and one PlantUML diagram, and its output folder."""

    root: Path
    notebook: Path
    diagram: Path
    output: Path

    @property
    def notebook_output(self) -> Path:
        return self.html_of(self.notebook)

    def html_of(self, notebook: Path) -> Path:
        """Where the completed English HTML of a notebook of this course goes."""
        return self.output / "en" / "html" / "completed" / f"{notebook.stem}.html"

    def add_notebook(self, name: str, *, cell_seconds: float) -> Path:
        """Another slide file beside the first, whose code cell runs ``cell_seconds`` long."""
        notebook = self.notebook.with_name(f"slides_{name}.py")
        notebook.write_text(notebook_source(cell_seconds=cell_seconds), encoding="utf-8")
        return notebook

    @property
    def diagram_output(self) -> Path:
        return self.notebook.parent / "img" / "hello.png"


def notebook_source(*, cell_seconds: float = 0.0) -> str:
    """A CLM slide file: jupytext percent format with CLM's Jinja header and ``lang`` cells.

    The code cell prints a marker the tests look for in the output; with
    ``cell_seconds`` it first sleeps that long (a long-running cell).
    """
    sleep = f"import time\ntime.sleep({cell_seconds})\n" if cell_seconds else ""
    return textwrap.dedent('''\
        # j2 from 'macros.j2' import header
        # {{ header("Hello", "Hallo") }}

        # %% [markdown] lang="en" tags=["slide"]
        # ## A tiny notebook
        #
        # One code cell, executed by the kernel.

        # %% [markdown] lang="de" tags=["slide"]
        # ## Ein kleines Notebook

        # %%
        ''') + sleep + 'print("answer:", 6 * 7)\n'


DIAGRAM_SOURCE = textwrap.dedent("""\
    @startuml hello
    actor User
    User -> CLM : build
    CLM --> User : slides
    @enduml
    """)


def make_course(root: Path, *, cell_seconds: float = 0.0) -> Course:
    """Write the course under ``root``: ``slides/module_100_basics/topic_100_hello/``."""
    topic = root / "slides" / "module_100_basics" / "topic_100_hello"
    (topic / "pu").mkdir(parents=True)
    notebook = topic / "slides_hello.py"
    notebook.write_text(notebook_source(cell_seconds=cell_seconds), encoding="utf-8")
    diagram = topic / "pu" / "hello.pu"
    diagram.write_text(DIAGRAM_SOURCE, encoding="utf-8")
    output = root / "output"
    output.mkdir()
    return Course(root=root, notebook=notebook, diagram=diagram, output=output)


# -- CLM's job submission ------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """One job for CLM's backend: a source file of the course and where its output goes."""

    job_type: str  # "notebook" or "plantuml"
    source: Path
    output: Path


def notebook_job(course: Course, notebook: Path | None = None) -> Submission:
    """The completed English HTML of a notebook (its code cells are executed by a kernel)."""
    notebook = notebook or course.notebook
    return Submission("notebook", notebook, course.html_of(notebook))


def diagram_job(course: Course) -> Submission:
    return Submission("plantuml", course.diagram, course.diagram_output)


@dataclass
class Build:
    """What CLM's backend said (None when not waited for), and each job's row in CLM's ``jobs`` table."""

    succeeded: bool | None
    rows: dict[str, dict[str, Any]]  # the source file's name -> its job's row

    def status(self, source: Path) -> str:
        return str(self.rows[source.name]["status"])

    def describe(self) -> dict[str, tuple[str, str]]:
        return {name: (row["status"], job_error(row)) for name, row in self.rows.items()}


def run_build(
    db: Path, workspace: Path, jobs: list[Submission], *, session_id: str | None, timeout: float,
    build_dir: Path, wait: bool = True,
) -> Build:
    """Submit the jobs through CLM's ``SqliteBackend``, in a process of its own, and wait for them.

    Blocking: call it from a thread.  The backend runs in a child process whose
    working folder is ``build_dir``, as ``clm build`` would run (CLM 1.9's
    backend leaves a ``clm_cache.db`` of its own in its working folder; it
    belongs to the build, not to the pool).  ``session_id`` is the pool's
    session: CLM 1.35 stamps it on each job, and its workers claim only their
    own session's jobs (as in ``clm build``, whose lifecycle manager owns the
    workers); None submits unowned jobs, which any worker may claim.  With
    ``wait=False`` it returns once the jobs are in the queue.
    """
    request = {
        "db": str(db), "workspace": str(workspace), "session_id": session_id, "timeout": timeout,
        "wait": wait, "jobs": [[job.job_type, str(job.source), str(job.output)] for job in jobs],
    }
    build_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, __file__, json.dumps(request)],
        cwd=build_dir, capture_output=True, text=True, timeout=timeout + 60,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT):
            result = json.loads(line[len(_RESULT):])
            return Build(result["succeeded"], {Path(source).name: job_row(db, job_id)
                                               for source, job_id in result["ids"]})
    raise AssertionError(f"CLM's backend failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-6000:]}")


_RESULT = "clm-build-result: "


def _payload(job_type: str, source: Path, output: Path) -> Any:
    """CLM's payload model for a job, filled in as CLM's operations fill it for a course file."""
    if job_type == "notebook":
        payload_class = clm_name("NotebookPayload", "clm.core.messaging.notebook_classes",
                                 "clm.infrastructure.messaging.notebook_classes")
        return payload_class(
            data=source.read_text(encoding="utf-8"), correlation_id=f"clm-workers-test-{source.stem}",
            input_file=str(source), input_file_name=source.name, output_file=str(output),
            kind="completed", prog_lang="python", language="en", format="html",
        )
    payload_class = clm_name("PlantUmlPayload", "clm.core.messaging.plantuml_classes",
                             "clm.infrastructure.messaging.plantuml_classes")
    return payload_class(
        data=source.read_text(encoding="utf-8"), correlation_id=f"clm-workers-test-{source.stem}",
        input_file=str(source), input_file_name=source.name, output_file=str(output),
        output_file_name=output.name,
    )


#: CLM's service names (what an operation's ``service_name`` says), by job type.
SERVICES = {"notebook": "notebook-processor", "plantuml": "plantuml-converter"}


def _operation(service: str) -> Any:
    """A CLM ``Operation`` for ``service``: the backend reads nothing else from an operation."""
    operation_class = clm_name("Operation", "clm.core.operation", "clm.infrastructure.operation")

    class Submit(operation_class):  # type: ignore[misc,valid-type]
        async def execute(self, backend: Any, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError

        @property
        def service_name(self) -> str:
            return service

    return Submit()


def _build_here(request: dict[str, Any]) -> dict[str, Any]:
    """The child's side of :func:`run_build`: CLM's backend set up as ``clm build`` sets it up."""
    import attrs
    from clm.infrastructure.backends.sqlite_backend import SqliteBackend

    jobs = [(job_type, Path(source), Path(output)) for job_type, source, output in request["jobs"]]
    fields = attrs.fields_dict(SqliteBackend)
    options: dict[str, Any] = {
        "db_path": Path(request["db"]), "workspace_path": Path(request["workspace"]),
        "max_wait_for_completion_duration": request["timeout"],
    }
    if request["session_id"] is not None and "worker_session_id" in fields:  # CLM 1.35
        options["worker_session_id"] = request["session_id"]
        options["worker_execution_modes"] = {job_type: "direct" for job_type, _, _ in jobs}

    async def build() -> dict[str, Any]:
        async with SqliteBackend(**options) as backend:
            ids = []
            for job_type, source, output in jobs:
                payload = _payload(job_type, source, output)
                await backend.execute_operation(_operation(SERVICES[job_type]), payload)
                ids.append((str(source), max(backend.active_jobs)))
            succeeded = None
            if request["wait"]:
                succeeded = await backend.wait_for_completion()
            else:
                backend.active_jobs.clear()  # the backend's shutdown would wait for them
        return {"succeeded": succeeded, "ids": ids}

    return asyncio.run(build())


def job_row(db: Path, job_id: int) -> dict[str, Any]:
    with sqlite3.connect(db, timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return dict(row)


def job_error(row: dict[str, Any]) -> str:
    """The error CLM stored for a failed job (a JSON document), shortened for an assertion message."""
    error = row.get("error") or ""
    with contextlib.suppress(ValueError, AttributeError):
        error = json.loads(error).get("error_message", error)
    return str(error)[:2000]


# -- CLM's own tools -----------------------------------------------------------------


def clm_command() -> list[str]:
    """CLM's command line tool, from the environment the tests run in."""
    script = Path(sys.executable).with_name("clm")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from clm.cli.main import cli; cli()"]


def clm_status(db: Path) -> dict[str, Any]:
    """``clm status --jobs-db-path DB --workers --format json``, parsed."""
    done = subprocess.run(
        [*clm_command(), "status", "--jobs-db-path", str(db), "--workers", "--format", "json"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        raise AssertionError(
            f"clm status printed no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        ) from None


def init_clm_database(db: Path) -> int:
    """Make ``db`` with CLM's own ``init_database``; return CLM's ``DATABASE_VERSION``."""
    from clm.infrastructure.database import schema

    schema.init_database(db)
    return int(schema.DATABASE_VERSION)


def worker_events(db: Path, session_id: str) -> list[tuple[str, int | None]]:
    """``(event_type, worker_id)`` of the session's rows in CLM's ``worker_events``, oldest first."""
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(
            "SELECT event_type, worker_id FROM worker_events WHERE session_id = ? ORDER BY id", (session_id,)
        ).fetchall()


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_kernel(pid: int) -> bool:
    """Whether ``pid`` is a Jupyter kernel (``python -m ipykernel_launcher``)."""
    return "ipykernel" in command_line(pid)


def schema_version(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])


def columns(db: Path, table: str) -> set[str]:
    with sqlite3.connect(db, timeout=30) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


if __name__ == "__main__":
    print(_RESULT + json.dumps(_build_here(json.loads(sys.argv[1]))), flush=True)
