"""What the numbers depend on: the machine, and what one process start costs on it."""

from __future__ import annotations

import os
import platform
import py_compile
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.util import cache_from_source
from pathlib import Path

from .model import SIM_MODULE, WORKER_TYPE


@dataclass(frozen=True)
class Machine:
    cores: int
    cpu_model: str
    python: str
    platform: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def cores() -> int:
    """Cores this process may run on (``nproc``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe_machine() -> Machine:
    return Machine(
        cores=cores(),
        cpu_model=_cpu_model(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        platform=platform.platform(terse=True),
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass(frozen=True)
class StartCosts:
    """Medians of a few lone process starts on an otherwise idle manager.

    ``spawn_wall``: a bare ``python -c pass`` from spawn to exit (the lower
    bound's process cost).  ``worker_cpu`` and ``worker_wall``: a simulated
    worker, interpreter and imports up to the end of an empty boot (it exits
    there, ``CLM_SIM_FAIL=crash``); what every worker pays on the shared cores
    before its boot delay even begins.
    """

    spawn_wall: float
    spawn_cpu: float
    worker_wall: float
    worker_cpu: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def measure_start_costs(samples: int = 5) -> StartCosts:
    with tempfile.TemporaryDirectory(prefix="clm-workers-bench-") as tmp:
        worker_env = {
            **os.environ,
            "WORKER_TYPE": WORKER_TYPE, "DB_PATH": str(Path(tmp) / "jobs.db"), "WORKER_ID": "bench-probe",
            "WORKSPACE_PATH": tmp, "CLM_SIM_FAIL": "crash", "LOG_LEVEL": "WARNING",
        }
        bare = [_timed_child([sys.executable, "-c", "pass"], dict(os.environ)) for _ in range(samples)]
        worker = [_timed_child([sys.executable, "-m", SIM_MODULE], worker_env) for _ in range(samples)]
    return StartCosts(
        spawn_wall=statistics.median(w for w, _ in bare),
        spawn_cpu=statistics.median(c for _, c in bare),
        worker_wall=statistics.median(w for w, _ in worker),
        worker_cpu=statistics.median(c for _, c in worker),
    )


def _timed_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one child, from just before spawning to its reaping."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    child.returncode = 0  # reaped by wait4; keep Popen from waiting again
    return wall, usage.ru_utime + usage.ru_stime


def worker_sources() -> list[Path]:
    """The clm_workers source files a simulated worker imports, as a real interpreter reports them."""
    code = (
        "import sys, clm_workers.sim\n"
        "for name, module in sorted(sys.modules.items()):\n"
        "    if name.split('.')[0] == 'clm_workers' and getattr(module, '__file__', None):\n"
        "        print(module.__file__)\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    files = [Path(line) for line in found.stdout.splitlines() if line.endswith(".py")]
    if found.returncode != 0 or not files:  # fall back to the whole package but the bench
        package = Path(__file__).resolve().parent.parent
        files = [f for f in package.rglob("*.py") if "bench" not in f.relative_to(package).parts]
    return sorted(files)


def refresh_bytecode(sources: list[Path]) -> list[str]:
    """Compile those of ``sources`` whose cached bytecode is missing or stale.

    A worker imports clm_workers from source; with ``PYTHONDONTWRITEBYTECODE``
    set (as on our machines) or a read-only tree, Python cannot save what it
    compiled, so *every* worker would compile every changed module again, about
    10 ms of CPU each, which an installed wheel (compiled by pip) never pays.
    Returns the modules compiled.  Writes only ``__pycache__``, as Python would.
    """
    compiled = []
    for source in sources:
        cached = Path(cache_from_source(str(source)))
        try:
            fresh = cached.stat().st_mtime >= source.stat().st_mtime
        except OSError:
            fresh = False
        if not fresh:
            try:
                py_compile.compile(str(source), cfile=str(cached), doraise=True)
            except (OSError, py_compile.PyCompileError):
                continue  # read-only or broken: the workers will compile it themselves
            compiled.append(source.name)
    return compiled
