"""``clm build`` as a CLM user runs it: a course spec, CLM's command line in a process of its own.

A build runs either plainly (CLM's own ``clm``) or on clm-workers
(``python -m clm_workers.cli clm ...``: what ``clm-workers clm`` runs), each
in its own folder: its working directory, jobs and cache databases, output
and CLM's log (``CLM_LOG_DIR``).  ``-O json`` makes CLM print its build
summary as one JSON document, which is what the tests read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clmtools import Course, clm_command

#: The spec of the tests' course: one section whose topic is ``topic_100_hello`` (every deck in it).
SPEC = textwrap.dedent("""\
    <?xml version="1.0" encoding="UTF-8"?>
    <course>
        <name><de>Kurs</de><en>Course</en></name>
        <prog-lang>python</prog-lang>
        <description><de>Beschreibung</de><en>Description</en></description>
        <certificate><de>Zertifikat</de><en>Certificate</en></certificate>
        <sections>
            <section>
                <name><de>Woche 1</de><en>Week 1</en></name>
                <topics>
                    <topic>hello</topic>
                </topics>
            </section>
        </sections>
    </course>
    """)

#: CLM writes this into each output root: a timestamp and, per output file, its content hash.
MANIFEST = ".clm-manifest.json"


def write_spec(course: Course) -> Path:
    """``course-specs/course.xml`` beside ``slides/`` (CLM's data folder is the spec's grandparent)."""
    spec = course.root / "course-specs" / "course.xml"
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(SPEC, encoding="utf-8")
    return spec


def drop_in_command(prelude: str = "") -> list[str]:
    """``clm-workers clm``, as its console script runs it (after ``prelude``, Python code, if any)."""
    if not prelude:
        return [sys.executable, "-m", "clm_workers.cli", "clm"]
    return [sys.executable, "-c",
            f"{prelude}\nimport sys\nfrom clm_workers.cli import main\n"
            "sys.exit(main(['clm', *sys.argv[1:]]))"]


def plain_command(prelude: str = "") -> list[str]:
    """CLM's own ``clm`` (after ``prelude``, Python code, if any)."""
    if not prelude:
        return clm_command()
    return [sys.executable, "-c",
            f"{prelude}\nimport sys\nfrom clm.cli.main import cli\ncli(sys.argv[1:], prog_name='clm')"]


@dataclass
class CliBuild:
    """One ``clm build`` run and what it left in its folder."""

    folder: Path
    db: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> Path:
        return self.folder / "output"

    @property
    def summary(self) -> dict[str, Any]:
        """CLM's JSON build summary (``-O json``)."""
        start = self.stdout.find("{\n")
        if start < 0:
            raise AssertionError(f"no JSON summary (exit {self.returncode}):\n{self.describe()}")
        summary: dict[str, Any] = json.JSONDecoder().raw_decode(self.stdout[start:])[0]
        return summary

    @property
    def log(self) -> str:
        """CLM's log of the build (``clm.log``)."""
        path = self.folder / "logs" / "clm.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def describe(self) -> str:
        return f"stdout:\n{self.stdout[-4000:]}\nstderr:\n{self.stderr[-6000:]}"

    def errors(self) -> list[str]:
        return [str(e.get("message") or e) for e in self.summary.get("errors", [])]


def run_cli_build(
    command: list[str], spec: Path, folder: Path, *, db: Path | None = None, notebook_workers: int = 1,
    plantuml_workers: int = 1, extra: tuple[str, ...] = (), timeout: float = 600,
    env: dict[str, str] | None = None,
) -> CliBuild:
    """``clm --jobs-db-path DB build SPEC`` in ``folder``, English only, direct workers; blocking.

    ``db``: the jobs database (default: ``jobs.db`` in ``folder``).

    By default one notebook and one PlantUML worker (``--notebook-workers``,
    ``--plantuml-workers``: CLM caps each type at half the machine's cores
    anyway), no Draw.io worker: the course has no Draw.io file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    db = db or folder / "jobs.db"
    args = [
        "--jobs-db-path", str(db), "--cache-db-path", str(folder / "cache.db"),
        "build", str(spec), "--output-dir", str(folder / "output"), "--language", "en",
        "--workers", "direct", "--notebook-workers", str(notebook_workers),
        "--plantuml-workers", str(plantuml_workers),
        "--drawio-workers", "0", "--output-mode", "json", "--no-progress", "--no-color", *extra,
    ]
    environment = {**os.environ, "CLM_LOG_DIR": str(folder / "logs"), "NO_COLOR": "1", **(env or {})}
    started = time.monotonic()
    done = subprocess.run([*command, *args], cwd=folder, capture_output=True, text=True, timeout=timeout,
                          env=environment)
    return CliBuild(folder, db, done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def output_hashes(output: Path) -> dict[str, str]:
    """``{path relative to output: sha256}`` of every output file but CLM's manifest."""
    return {
        str(path.relative_to(output)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(output.rglob("*")) if path.is_file() and path.name != MANIFEST
    }


def manifest_hashes(output: Path) -> dict[str, str]:
    """``{path: content hash}`` as CLM's manifests (one per output root) record them."""
    hashes: dict[str, str] = {}
    for manifest in output.rglob(MANIFEST):
        for entry in json.loads(manifest.read_text(encoding="utf-8"))["files"]:
            hashes[str((manifest.parent / entry["path"]).relative_to(output))] = entry["content_hash"]
    return hashes


def rows(db: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(query, params).fetchall()
