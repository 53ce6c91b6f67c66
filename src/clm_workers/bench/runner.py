"""The bench's plan and loop: every strategy on every cell, interleaved, repeated."""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from ..errors import ConfigError
from .machine import (
    Machine,
    StartCosts,
    cores,
    describe_machine,
    measure_start_costs,
    refresh_bytecode,
    worker_sources,
)
from .model import STRATEGIES, Cell, RunResult, Scenario
from .strategies import RUNNERS
from .summary import CellStats, TargetCheck, check_targets, summarise

IO = Scenario("io", boot_delay=1.0)
CPU = Scenario("cpu", boot_cpu=0.2)

SCENARIOS = {s.name: s for s in (IO, CPU)}

#: When the whole plan is estimated to take longer than this (seconds),
#: sequential runs only in the first repeat of the cells where one of its runs
#: takes over SEQUENTIAL_RUN_BUDGET: it is N identical steps of boot + poll
#: lag, so its spread is small, and 3 x 64 x 1.5 s alone are 5 minutes.
BENCH_BUDGET = 20 * 60.0
SEQUENTIAL_RUN_BUDGET = 30.0


@dataclass(frozen=True)
class BenchOptions:
    scenarios: tuple[Scenario, ...] = (IO, CPU)
    sizes: tuple[int, ...] = (8, 16, 32, 64)
    concurrency: int = 10
    repeats: int = 3
    #: Seconds the whole bench may take before sequential is capped; ``None``: never cap.
    budget: float | None = BENCH_BUDGET
    strategies: tuple[str, ...] = STRATEGIES
    #: Where benchmarks.md/.json/.png go; ``None``: stdout only.
    out: Path | None = Path("docs")
    #: The command line, as written into the outputs.
    command: str = "clm-workers bench"
    quick: bool = False
    #: The real-CLM scenario (:mod:`.realclm`), where CLM is installed; its sizes.
    clm: bool = True
    clm_sizes: tuple[int, ...] = (4, 8, 16, 24)

    @classmethod
    def quick_run(cls, **overrides: object) -> BenchOptions:
        """A smoke run for CI: every strategy, both scenarios, one small cell, one repeat."""
        settings: dict[str, object] = {
            "scenarios": (Scenario("io", boot_delay=0.2), Scenario("cpu", boot_cpu=0.05)),
            "sizes": (4,), "concurrency": 2, "repeats": 1, "out": None, "quick": True, "clm": False,
            "command": "clm-workers bench --quick",
        }
        settings.update(overrides)
        return cls(**settings)  # type: ignore[arg-type]


def with_scenarios(options: BenchOptions, names: str) -> BenchOptions:
    """Keep only the scenarios named in the comma-separated ``names`` (``--scenarios``).

    ``clm`` is the real-CLM scenario; given alone, ``--sizes`` applies to it.
    """
    known = [s.name for s in options.scenarios] + ["clm"]
    wanted = [name.strip() for name in names.split(",")]
    if not wanted or any(name not in known for name in wanted):
        raise ConfigError("--scenarios", names, "a comma-separated list of " + ", ".join(known))
    kept = tuple(s for s in options.scenarios if s.name in wanted)
    sizes = options.clm_sizes
    if not kept and options.sizes != BenchOptions.sizes:
        sizes = options.sizes
    return replace(options, scenarios=kept, clm="clm" in wanted, clm_sizes=sizes)


@dataclass(frozen=True)
class PlannedRun:
    repeat: int
    cell: Cell
    strategy: str
    estimate: float


@dataclass
class BenchResult:
    options: BenchOptions
    machine: Machine
    costs: StartCosts
    date: str
    runs: list[RunResult] = field(default_factory=list)
    cells: list[CellStats] = field(default_factory=list)
    targets: list[TargetCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0


def estimate_seconds(cell: Cell, strategy: str, machine_cores: int, worker_cpu: float = 0.03) -> float:
    """A rough duration of one run (start and stop), to plan and to cap the bench."""
    scenario, n, c = cell.scenario, cell.workers, cell.concurrency
    one = scenario.boot_delay + scenario.boot_cpu + worker_cpu + 0.02  # one worker, alone
    all_cpu = n * (scenario.boot_cpu + worker_cpu) / machine_cores
    polled = 0.5 * math.ceil(one / 0.5)  # the first 0.5 s poll that sees it
    if strategy == "sequential":
        wall = n * polled
    elif strategy == "threadpool":
        wall = max(math.ceil(n / c) * polled, all_cpu + 0.25)
    elif strategy == "clm-workers/reg":
        wall = max(math.ceil(n / c) * one, all_cpu)
    else:
        wall = max(one + n * worker_cpu / machine_cores, all_cpu)
    return wall + 0.4  # opening, pre-registration, stopping


def plan_runs(options: BenchOptions, machine_cores: int) -> tuple[list[PlannedRun], list[str]]:
    """Every run in order: per repeat, per cell, every strategy, the order rotating per repeat.

    Interleaving makes drift of the machine (other load, thermal) hit every
    strategy alike; rotating keeps any one strategy from always going first.
    Over ``options.budget``, long sequential runs are kept in the first repeat only.
    """
    runs: list[PlannedRun] = []
    for repeat in range(options.repeats):
        order = [options.strategies[(i + repeat) % len(options.strategies)]
                 for i in range(len(options.strategies))]
        for scenario in options.scenarios:
            for workers in options.sizes:
                cell = Cell(scenario, workers, options.concurrency)
                runs += [PlannedRun(repeat, cell, strategy, estimate_seconds(cell, strategy, machine_cores))
                         for strategy in order]
    full = sum(r.estimate for r in runs)
    if options.budget is None or full <= options.budget:
        return runs, []

    def capped(run: PlannedRun) -> bool:
        return run.strategy == "sequential" and run.repeat > 0 and run.estimate > SEQUENTIAL_RUN_BUDGET

    where = sorted({(r.cell.scenario.name, r.cell.workers) for r in runs if capped(r)})
    runs = [r for r in runs if not capped(r)]
    note = (
        f"the full plan would take about {full / 60:.0f} min, over the {options.budget / 60:.0f} min "
        f"budget, so sequential ran once (not {options.repeats} times) where one of its runs takes "
        f"over {SEQUENTIAL_RUN_BUDGET:g} s: {', '.join(f'{s} N={n}' for s, n in where)} "
        "(min = median = max there). It is N identical steps of boot + 0.5 s poll lag, so one run "
        "shows it. `--full-sequential` runs every repeat."
    )
    return runs, [note] if where else []


Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_bench(options: BenchOptions, progress: Progress = _stderr) -> BenchResult:
    """Run the whole bench and return its figures (writing nothing)."""
    machine = describe_machine()
    planned, notes = plan_runs(options, machine.cores)
    total = sum(p.estimate for p in planned)
    progress(f"clm-workers bench: {len(planned)} runs, about {total / 60:.1f} min "
             f"({machine.cores} cores, {machine.cpu_model})")
    sources = worker_sources()
    stale = refresh_bytecode(sources)
    costs = measure_start_costs(samples=3 if options.quick else 7)
    progress(f"  one process start: python -c pass {costs.spawn_wall * 1000:.1f} ms; "
             f"a simulated worker's interpreter + imports {costs.worker_cpu * 1000:.1f} ms of CPU")
    result = BenchResult(
        options=options, machine=machine, costs=costs, notes=notes,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load_before=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0,
    )
    t0 = time.monotonic()
    _warm_up(options)
    changed: set[str] = set()
    for number, run in enumerate(planned, 1):
        changed.update(refresh_bytecode(sources))  # edited meanwhile: every worker would compile it
        outcome = _run_once(run)
        result.runs.append(outcome)
        flag = "" if outcome.registered == run.cell.workers else f"  ONLY {outcome.registered} registered"
        progress(f"  [{number:>3}/{len(planned)}] {run.cell.scenario.name:<4} N={run.cell.workers:<3} "
                 f"{run.strategy:<16} #{run.repeat + 1}  {outcome.wall:7.3f} s  "
                 f"(first {outcome.first:.3f} s, load {outcome.load:.1f}){flag}")
    result.duration = time.monotonic() - t0
    if options.quick:
        result.notes.append("--quick is a smoke run (tiny cells, one repeat): its figures say nothing "
                            "about the targets; `clm-workers bench` measures them.")
    if stale:
        result.notes.append(
            f"the worker's modules {', '.join(stale)} had no up-to-date cached bytecode and were "
            "compiled before measuring (as pip does for an installed package): with "
            "PYTHONDONTWRITEBYTECODE set every worker would compile them again, about 10 ms of CPU."
        )
    if changed:
        result.notes.append(f"worker modules edited while the bench ran (recompiled before the next "
                            f"run): {', '.join(sorted(changed))}.")
    result.load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    result.cells = summarise(result.runs, options.scenarios, cores(), costs)
    result.targets = check_targets(result.cells)
    return result


def _run_once(run: PlannedRun) -> RunResult:
    workdir = Path(tempfile.mkdtemp(prefix="clm-workers-bench-"))
    try:
        return RUNNERS[run.strategy](run.cell, workdir, run.repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _warm_up(options: BenchOptions) -> None:
    """One small unmeasured run per strategy: imports, byte code and page cache are warm after it."""
    cell = Cell(Scenario("warm-up"), 2, options.concurrency)
    for strategy in options.strategies:
        _run_once(PlannedRun(0, cell, strategy, 0.0))
