"""Whole ``clm build`` wall time: plain ``clm build`` against ``clm-workers clm build``, interleaved.

    python tests/clm/bench_build.py [--runs 3] [--long-cell 40] [--decks 1] [--diagrams 1]
        [--notebook-workers 1] [--plantuml-workers 1] [--cores N] [--out FILE.json]

Makes the tests' course (tests/clm: one deck with a diagram; ``--decks`` and
``--diagrams`` add more of each to its topic; and one deck whose code cell
runs ``--long-cell`` seconds, 0 leaves it out), then builds it ``--runs``
times with each command, alternating which goes first in each round, every
build in a fresh folder (new jobs and cache databases, new output: nothing
is cached between builds).  Both commands get the same CLM options,
``--notebook-workers`` and ``--plantuml-workers`` among them, as a CLM user
passes them.  CLM caps each type at half the machine's cores (and one
worker per 2 GB of RAM); ``--cores N`` makes CLM count N cores in both
commands, as on a machine with N cores.  Each time is the wall time of the
whole command as a user sees it, from the process start to its exit;
CLM's own build duration (its JSON summary), the CPU time of the whole
build (the command and every process under it) and the time CLM's workers
spent in jobs (their own ``jobs_processed`` and ``avg_processing_time`` in
the jobs database, read while the build runs) are recorded beside it.
Prints a markdown table; ``--out`` also writes every figure as JSON.  Needs
CLM with its notebook and PlantUML extras, Java and a PlantUML jar
(``PLANTUML_JAR`` or Debian's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from clmbuild import (  # noqa: E402
    CliBuild,
    drop_in_command,
    output_hashes,
    plain_command,
    run_cli_build,
    write_spec,
)
from clmtools import DEBIAN_PLANTUML_JAR, Course, make_course, notebook_source, version_text  # noqa: E402

from procs import environment_processes, wait_until  # noqa: E402

COMMANDS = {"clm build": plain_command, "clm-workers clm build": drop_in_command}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="builds per command (default 3)")
    parser.add_argument("--long-cell", type=float, default=40.0,
                        help="seconds of the long deck's cell; 0: no long deck (default 40)")
    parser.add_argument("--decks", type=int, default=1, help="decks, the long one aside (default 1)")
    parser.add_argument("--diagrams", type=int, default=1, help="PlantUML diagrams (default 1)")
    for kind in ("notebook", "plantuml"):
        parser.add_argument(f"--{kind}-workers", type=int, default=1,
                            help=f"CLM's --{kind}-workers (default 1)")
    parser.add_argument("--cores", type=int, default=None,
                        help="the cores CLM's worker cap counts (default: the machine's)")
    parser.add_argument("--out", type=Path, default=None, help="write every figure here as JSON")
    options = parser.parse_args()
    os.environ.setdefault("PLANTUML_JAR", str(DEBIAN_PLANTUML_JAR))

    with tempfile.TemporaryDirectory(prefix="clm-build-bench-") as scratch:
        root = Path(scratch)
        course = make_course(root / "course")
        _add_decks_and_diagrams(course, options.decks, options.diagrams)
        if options.long_cell:
            deck = course.notebook.with_name("slides_long.py")
            deck.write_text(notebook_source(cell_seconds=options.long_cell).replace(
                'header("Hello", "Hallo")', 'header("Lang", "Long")'), encoding="utf-8")
        spec = write_spec(course)
        # What CLM's cap reads (pool_size_cap: os.cpu_count() // 2), in the CLM process only.
        prelude = f"import os\nos.cpu_count = lambda: {options.cores}" if options.cores else ""
        load_before = os.getloadavg()[0]
        runs: list[dict[str, object]] = []
        names = list(COMMANDS)
        for round_ in range(options.runs):
            for name in names if round_ % 2 == 0 else reversed(names):
                cpu = _children_cpu()
                folder = root / f"{round_}-{names.index(name)}"
                with job_time_of_workers(folder / "jobs.db") as job_seconds:
                    build = run_cli_build(COMMANDS[name](prelude), spec, folder,
                                          notebook_workers=options.notebook_workers,
                                          plantuml_workers=options.plantuml_workers)
                runs.append(_record(name, round_, build, _children_cpu() - cpu, job_seconds))
                print(f"round {round_ + 1}: {name}: {build.seconds:.1f} s (exit {build.returncode})",
                      file=sys.stderr, flush=True)
        load_after = os.getloadavg()[0]

    machine = {
        "cores": os.cpu_count(), "python": platform.python_version(), "clm": version_text(),
        "cores_counted": options.cores or os.cpu_count(),
        "load_before": round(load_before, 1), "load_after": round(load_after, 1),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(_table(runs, machine, options))
    if options.out is not None:
        options.out.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2) + "\n")
    # Every build made the same output files, as many as the first.
    return 0 if all(r["exit"] == 0 and r["output_files"] == runs[0]["output_files"] for r in runs) else 1


def _add_decks_and_diagrams(course: Course, decks: int, diagrams: int) -> None:
    """Decks 2..``decks`` and diagrams 2..``diagrams`` beside the first ones, each with its own title."""
    for number in range(2, decks + 1):
        course.notebook.with_name(f"slides_deck_{number:02d}.py").write_text(notebook_source().replace(
            'header("Hello", "Hallo")', f'header("Foliensatz {number:02d}", "Deck {number:02d}")'),
            encoding="utf-8")
    diagram = course.diagram.read_text(encoding="utf-8")
    for number in range(2, diagrams + 1):
        course.diagram.with_name(f"diagram_{number:02d}.pu").write_text(
            diagram.replace("@startuml hello", f"@startuml diagram_{number:02d}"), encoding="utf-8")


@contextlib.contextmanager
def job_time_of_workers(db: Path, interval: float = 0.05) -> Iterator[dict[str, float]]:
    """Seconds CLM's workers spent in jobs while the block ran, per worker type (filled in at exit).

    CLM's worker adds each job's processing time to its row (``jobs_processed``,
    ``avg_processing_time``) and deletes the row when it stops, so a thread
    reads the rows every ``interval`` seconds, read-only, and keeps the last
    figures of each.  A job that ends less than ``interval`` before its
    worker's row goes can be missed.
    """
    last: dict[int, tuple[str, float]] = {}
    done = threading.Event()

    def read() -> None:
        while not done.wait(interval):
            with contextlib.suppress(sqlite3.Error):  # not created yet, or busy: the next read
                connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=interval)
                try:
                    for row_id, worker_type, jobs, average in connection.execute(
                            "SELECT id, worker_type, jobs_processed, avg_processing_time FROM workers"):
                        last[row_id] = (worker_type, (jobs or 0) * (average or 0.0))
                finally:
                    connection.close()

    totals: dict[str, float] = {}
    reader = threading.Thread(target=read, name="job time of workers", daemon=True)
    reader.start()
    try:
        yield totals
    finally:
        done.set()
        reader.join()
        for worker_type, seconds in last.values():
            totals[worker_type] = round(totals.get(worker_type, 0.0) + seconds, 2)


def _children_cpu() -> float:
    """CPU seconds of every finished child and its reaped descendants (workers, kernels, JVMs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _record(name: str, round_: int, build: CliBuild, cpu: float,
            job_seconds: dict[str, float]) -> dict[str, object]:
    # The next build starts only once this one's workers (and kernels) are gone.
    wait_until(lambda: not environment_processes(f"DB_PATH={build.db}", f"CLM_JOBS_DB_PATH={build.db}"),
               30, "the build's workers to be gone")
    clm_seconds, outputs = None, 0
    if build.returncode == 0:
        clm_seconds = round(float(build.summary["duration_seconds"]), 2)
        outputs = len(output_hashes(build.output))
    else:
        print(build.describe(), file=sys.stderr)
    return {"command": name, "round": round_ + 1, "wall_seconds": round(build.seconds, 2),
            "clm_seconds": clm_seconds, "cpu_seconds": round(cpu, 2), "exit": build.returncode,
            "output_files": outputs, "job_seconds": job_seconds}


def _table(runs: list[dict[str, object]], machine: dict[str, object], options: argparse.Namespace) -> str:
    course = f"{_count(options.decks, 'deck')} and {_count(options.diagrams, 'PlantUML diagram')}" + (
        f", and a deck with a {options.long_cell:g} s cell" if options.long_cell else "")
    cap = max(1, int(str(machine["cores_counted"])) // 2)
    workers = (f"--notebook-workers {options.notebook_workers} "
               f"--plantuml-workers {options.plantuml_workers}, "
               f"CLM's cap for {machine['cores_counted']} cores: {cap} per type, so "
               f"{min(cap, options.notebook_workers)} notebook and {min(cap, options.plantuml_workers)} "
               "PlantUML worker(s)")
    lines = [
        f"CLM {machine['clm']}, Python {machine['python']}, {machine['cores']} cores, {machine['when']}; "
        f"1-min load average {machine['load_before']} before, {machine['load_after']} after.  "
        f"Course: {course} (English only); {workers}; direct workers.",
        "",
        "| command | wall time per run (s) | median (s) | CLM's build duration, median (s) "
        "| CPU of the whole build, median (s) | notebook workers' job time per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name in COMMANDS:
        mine = [r for r in runs if r["command"] == name]
        walls = [float(r["wall_seconds"]) for r in mine]  # type: ignore[arg-type]
        clm = [float(r["clm_seconds"]) for r in mine if r["clm_seconds"] is not None]  # type: ignore[arg-type]
        cpu = [float(r["cpu_seconds"]) for r in mine]  # type: ignore[arg-type]
        jobs = [r["job_seconds"].get("notebook", 0.0) for r in mine]  # type: ignore[attr-defined]
        lines.append(f"| `{name}` | {', '.join(f'{w:.1f}' for w in walls)} | {statistics.median(walls):.1f} "
                     f"| {statistics.median(clm):.1f} | {statistics.median(cpu):.1f} "
                     f"| {', '.join(f'{j:.1f}' for j in jobs)} |"
                     if clm else f"| `{name}` | failed | | | | |")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("s" if number != 1 else "")


if __name__ == "__main__":
    sys.exit(main())
