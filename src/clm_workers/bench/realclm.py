"""The bench's real-CLM scenario: CLM's own start against clm-workers' spawn and fork server.

Real CLM notebook workers (``clm.workers.notebook``), N = 4, 8, 16, 24,
three strategies, interleaved (the order rotating per repeat), each run in a
fresh process of its own (:mod:`.clm_driver`) on a fresh CLM database:

* ``clm``: CLM's own ``WorkerPoolManager.start_pools()`` (its thread pool,
  pre-registration, ``python -m clm.workers.notebook`` per worker);
* ``spawn``: clm-workers' ``WorkerPoolManager`` (``start_method="spawn"``);
* ``forkserver``: the same with ``start_method="forkserver"`` (its
  template's start and preload included), preloading what CLM's worker
  imports before it registers: at all-idle every strategy's workers have
  imported the same (a pool's default preload may add the first job's).

Every run is timed the same way: from the driver's ``t0`` (just before it
makes its manager) until a separate observer process, polling the
database every 5 ms, sees all N rows ``idle``.  At that moment the bench
reads each worker's CPU time (``/proc/PID/stat``) and proportional set size
(``Pss`` of ``/proc/PID/smaps_rollup``: shared pages divided among their
sharers), and the template's.  The physical bounds: N x a spawned worker's
boot CPU / cores for a spawn; the template's CPU (its preload, one core)
plus N x a forked worker's CPU (fork and its own ``main()``) / cores for
the fork server.  Linux only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .machine import Machine, cores, describe_machine
from .procstat import machine_busy_seconds, process_cpu_seconds

STRATEGIES = ("clm", "spawn", "forkserver")
SIZES = (4, 8, 16, 24)
#: However busy the machine, a run whose workers are not all idle by then is lost.
RUN_TIMEOUT = 300.0

#: Polls the database from a process of its own; prints when the first and when all N rows are idle.
_OBSERVER = """
import json, sqlite3, sys, time
db, n, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
conn = sqlite3.connect(db, timeout=5)
print(json.dumps({"watching": time.time()}), flush=True)
first = None
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        idle = conn.execute("SELECT count(*) FROM workers WHERE status = 'idle'").fetchone()[0]
    except sqlite3.OperationalError:
        idle = 0
    now = time.time()
    if idle and first is None:
        first = now
    if idle >= n:
        print(json.dumps({"first": first, "all": now}), flush=True)
        break
    time.sleep(0.005)
else:
    print(json.dumps({"first": first, "all": None}), flush=True)
"""


@dataclass
class ClmRun:
    """One strategy starting N real notebook workers once."""

    strategy: str
    workers: int
    repeat: int
    #: From ``t0`` until the observer saw every row idle (NaN: not all got there).
    wall: float
    first: float
    #: Until the strategy's start call returned (CLM's returns before its workers are idle).
    returned: float
    idle: int
    #: Each worker's CPU seconds and PSS (MiB) when all were idle.
    worker_cpu: list[float] = field(default_factory=list)
    worker_pss: list[float] = field(default_factory=list)
    #: The fork server's template (forkserver only): CPU seconds and PSS (MiB).
    template_cpu: float | None = None
    template_pss: float | None = None
    #: CPU seconds the machine spent on other processes during the run (a shared machine).
    other_cpu: float = 0.0
    load: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class ClmCell:
    """The runs of one strategy at one N, summarised (medians; min and max of the wall time)."""

    strategy: str
    workers: int
    runs: int
    wall_median: float
    wall_min: float
    wall_max: float
    #: The physical bound of the strategy at this N (see the module docstring).
    bound: float
    worker_cpu: float
    worker_pss: float
    template_cpu: float | None
    template_pss: float | None


@dataclass(frozen=True)
class ClmTarget:
    name: str
    value: float
    limit: float

    @property
    def met(self) -> bool:
        return self.value <= self.limit


@dataclass
class ClmBenchResult:
    clm_version: str
    machine: Machine
    date: str
    sizes: tuple[int, ...]
    repeats: int
    concurrency: int
    command: str
    runs: list[ClmRun] = field(default_factory=list)
    cells: list[ClmCell] = field(default_factory=list)
    targets: list[ClmTarget] = field(default_factory=list)
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = [{**asdict(t), "met": t.met} for t in self.targets]
        return data


Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def clm_version() -> str | None:
    from ..clm.installed import installed_clm

    return installed_clm().version


def run_clm_bench(
    *,
    sizes: Sequence[int] = SIZES,
    repeats: int = 3,
    concurrency: int = 10,
    strategies: Sequence[str] = STRATEGIES,
    command: str = "clm-workers bench --scenarios clm",
    progress: Progress = _stderr,
) -> ClmBenchResult:
    """Run every strategy at every N, ``repeats`` times, interleaved; writes nothing."""
    version = clm_version()
    if version is None:
        raise RuntimeError("CLM is not installed")
    result = ClmBenchResult(
        clm_version=version, machine=describe_machine(),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        sizes=tuple(sizes), repeats=repeats, concurrency=concurrency, command=command,
    )
    plan = [(repeat, n, strategies[(i + repeat) % len(strategies)])
            for repeat in range(repeats) for n in sizes for i in range(len(strategies))]
    progress(f"clm-workers bench: real CLM {version} notebook workers, {len(plan)} runs")
    t0 = time.monotonic()
    _run_once("forkserver", 2, 0, concurrency)  # unmeasured: caches, byte code, page cache warm
    _run_once("clm", 2, 0, concurrency)
    for number, (repeat, n, strategy) in enumerate(plan, 1):
        run = _run_once(strategy, n, repeat, concurrency)
        result.runs.append(run)
        flag = "" if run.idle == n else f"  ONLY {run.idle} idle"
        progress(f"  [{number:>3}/{len(plan)}] N={n:<3} {strategy:<11} #{repeat + 1}  {run.wall:7.3f} s  "
                 f"(returned {run.returned:.3f} s, load {run.load:.1f}){flag}")
    result.duration = time.monotonic() - t0
    result.cells = summarise(result.runs, cores())
    result.targets = targets(result.cells)
    return result


def _run_once(strategy: str, n: int, repeat: int, concurrency: int) -> ClmRun:
    folder = Path(tempfile.mkdtemp(prefix="clm-workers-bench-clm-"))
    db, workspace = folder / "jobs.db", folder / "workspace"
    workspace.mkdir()
    try:
        from clm.infrastructure.database.schema import init_database

        init_database(db)
        return _measure(strategy, n, repeat, concurrency, db, workspace)
    finally:
        _kill_leftovers(db)
        shutil.rmtree(folder, ignore_errors=True)


def _measure(strategy: str, n: int, repeat: int, concurrency: int, db: Path, workspace: Path) -> ClmRun:
    observer = subprocess.Popen([sys.executable, "-c", _OBSERVER, str(db), str(n), str(RUN_TIMEOUT)],
                                stdout=subprocess.PIPE, text=True)
    driver: subprocess.Popen[str] | None = None
    try:
        _read_json(observer.stdout, RUN_TIMEOUT)  # watching
        load = os.getloadavg()[0]
        busy0 = machine_busy_seconds()
        driver = subprocess.Popen(
            [sys.executable, "-m", "clm_workers.bench.clm_driver", strategy, str(db), str(workspace), str(n),
             str(concurrency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=workspace,
        )
        messages: list[dict[str, Any]] = []
        reader = threading.Thread(target=_collect, args=(driver.stdout, messages), daemon=True)
        reader.start()
        seen = _read_json(observer.stdout, RUN_TIMEOUT + 30)
        busy = machine_busy_seconds() - busy0
        workers, template = _processes(db)
        worker_cpu = [c for c in (process_cpu_seconds(p) for p in workers) if c is not None]
        worker_pss = [m for m in (_pss_mib(p) for p in workers) if m is not None]
        template_cpu = process_cpu_seconds(template) if template is not None else None
        template_pss = _pss_mib(template) if template is not None else None
        driver_cpu = process_cpu_seconds(driver.pid) or 0.0
        _wait_for(lambda: any("returned" in m for m in messages), 60)
        assert driver.stdin is not None
        driver.stdin.write("stop\n")
        driver.stdin.flush()
        driver.wait(60)
        reader.join(5)
    finally:
        for proc in (observer, driver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    t0 = next(m["t0"] for m in messages if "t0" in m)
    returned = next((m for m in messages if "returned" in m), {})
    wall = seen["all"] - t0 if seen.get("all") else math.nan
    notes = [*returned.get("notes", []), *returned.get("failed", [])]
    return ClmRun(
        strategy=strategy, workers=n, repeat=repeat, wall=wall,
        first=seen["first"] - t0 if seen.get("first") else math.nan,
        returned=returned.get("returned", math.nan) - t0, idle=n if seen.get("all") else 0,
        worker_cpu=worker_cpu, worker_pss=worker_pss, template_cpu=template_cpu, template_pss=template_pss,
        other_cpu=max(0.0, busy - sum(worker_cpu) - (template_cpu or 0.0) - driver_cpu),
        load=load, notes=notes,
    )


def _collect(stream: IO[str] | None, into: list[dict[str, Any]]) -> None:
    assert stream is not None
    for line in stream:
        if line.startswith("{"):
            into.append(json.loads(line))


def _read_json(stream: IO[str] | None, timeout: float) -> dict[str, Any]:
    """The next JSON line of a child (the observer writes nothing else), within ``timeout``."""
    assert stream is not None
    box: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: box.append(json.loads(stream.readline() or "{}")), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else {}


def _wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def _process_facts(pid: int) -> tuple[list[bytes], bytes, int]:
    """(environment as exec'd, command line, parent pid), empty when gone."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return [], b"", 0
    return env, cmdline, parent


def _processes(db: Path) -> tuple[list[int], int | None]:
    """The run's workers and its fork server's template.

    A spawned worker's environment carries the run's database and its row
    id.  ``/proc/PID/environ`` shows the environment a process was exec'd
    with, so a forked worker shows its template's (no row id) and its
    command line: the template is the one whose parent is not a template,
    the forked workers are its children.
    """
    markers = {f"{name}={db}".encode() for name in ("DB_PATH", "CLM_JOBS_DB_PATH")}
    spawned: list[int] = []
    forked: dict[int, int] = {}  # pid -> parent, for processes running the template's command line
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        env, cmdline, parent = _process_facts(int(entry))
        if not markers & set(env):
            continue
        if b"clm_workers.forktemplate" in cmdline:
            forked[int(entry)] = parent
        elif any(v.startswith(b"CLM_WORKER_ID=") for v in env):
            spawned.append(int(entry))
    templates = [pid for pid, parent in forked.items() if parent not in forked]
    template = templates[0] if templates else None
    return spawned + [pid for pid, parent in forked.items() if parent == template], template


def _pss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _kill_leftovers(db: Path) -> None:
    """Whatever a failed run left of its workers (they carry its database in their environment)."""
    workers, template = _processes(db)
    for pid in [*workers, *([template] if template else [])]:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


# -- the figures ------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def summarise(runs: Sequence[ClmRun], machine_cores: int) -> list[ClmCell]:
    cells = []
    for n in sorted({r.workers for r in runs}):
        at_n = [r for r in runs if r.workers == n]
        # A spawned worker's boot CPU, from every spawned worker at this N (CLM's and ours).
        boot = _median([c for r in at_n if r.strategy != "forkserver" for c in r.worker_cpu])
        for strategy in STRATEGIES:
            mine = [r for r in at_n if r.strategy == strategy]
            if not mine:
                continue
            walls = [r.wall for r in mine]
            cpu = _median([c for r in mine for c in r.worker_cpu])
            template_cpu = _median([r.template_cpu for r in mine if r.template_cpu is not None])
            template_pss = _median([r.template_pss for r in mine if r.template_pss is not None])
            bound = (template_cpu + n * cpu / machine_cores if strategy == "forkserver"
                     else n * boot / machine_cores)
            cells.append(ClmCell(
                strategy=strategy, workers=n, runs=len(mine), wall_median=_median(walls),
                wall_min=min(walls), wall_max=max(walls), bound=bound, worker_cpu=cpu,
                worker_pss=_median([m for r in mine for m in r.worker_pss]),
                template_cpu=None if math.isnan(template_cpu) else template_cpu,
                template_pss=None if math.isnan(template_pss) else template_pss,
            ))
    return cells


def targets(cells: Sequence[ClmCell], n: int = 16) -> list[ClmTarget]:
    """The fork server's goals at N = ``n``: against CLM's own start, its bound, and spawn's memory."""
    by = {(c.strategy, c.workers): c for c in cells}
    fork, clm, spawn = by.get(("forkserver", n)), by.get(("clm", n)), by.get(("spawn", n))
    found = []
    if fork and clm:
        found.append(ClmTarget(f"forkserver / CLM start_pools, N={n}",
                               fork.wall_median / clm.wall_median, 0.15))
    if fork:
        found.append(ClmTarget(f"forkserver / its bound, N={n}", fork.wall_median / fork.bound, 1.3))
    if fork and spawn:
        found.append(ClmTarget(f"forkserver PSS / spawn PSS per worker, N={n}",
                               fork.worker_pss / spawn.worker_pss, 0.3))
    return found
