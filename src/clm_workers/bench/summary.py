"""From runs to figures: per-cell statistics, lower bounds, ratios and the startup targets."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from .machine import StartCosts
from .model import STRATEGIES, RunResult, Scenario

#: The startup targets clm-workers is held to, checked on medians.
TARGET_IO_WORKERS = 32
TARGET_IO_WALL = 1.3
TARGET_VS_THREADPOOL = 3.0
TARGET_VS_SEQUENTIAL = 20.0
TARGET_CPU_RATIO = 1.15
TARGET_DETECTION_P50 = 0.020
#: One query per watcher tick, whatever N; some slack for the ticks before waiting began.
TARGET_QUERIES_PER_TICK = 1.1

OURS = ("clm-workers", "clm-workers/reg")


@dataclass(frozen=True)
class Bounds:
    """Lower bounds of one cell's wall time.

    ``ideal``: what no strategy can beat (I/O: boot delay + one process spawn;
    CPU: total boot CPU / cores).  ``machine``: also counting what every
    worker's interpreter and imports cost on the shared cores (``N x worker
    start CPU / cores``), which no startup strategy can avoid.
    """

    ideal: float
    machine: float


def bounds(scenario: Scenario, workers: int, cores: int, costs: StartCosts) -> Bounds:
    delay, cpu = scenario.boot_delay, scenario.boot_cpu
    # I/O: one worker's boot plus one process spawn; CPU: all boot CPU spread on all cores.
    ideal = max(delay + cpu + costs.spawn_wall, workers * cpu / cores)
    # Every worker's interpreter and imports (worker_cpu) share the cores too:
    # the last worker to finish them does so no earlier than N x worker_cpu /
    # cores, and still has its whole boot ahead of it.
    start_cpu = workers * costs.worker_cpu / cores
    machine = max(ideal, delay + cpu + start_cpu, workers * (cpu + costs.worker_cpu) / cores)
    return Bounds(ideal=ideal, machine=machine)


@dataclass(frozen=True)
class StrategyStats:
    strategy: str
    runs: int
    wall_median: float
    wall_min: float
    wall_max: float
    first_median: float
    detection_p50: float
    detection_p95: float
    cpu_median: float
    queries_median: float
    #: Queries per poll interval of waiting (``queries x interval / wall``).
    queries_per_tick: float
    #: Median over every worker of every run of its CPU when the startup returned.
    worker_cpu_median: float
    foreign_cpu_median: float
    load_median: float
    #: Fewest workers registered in any run (a strategy that lost workers shows here).
    registered_min: int
    #: Runs in which other processes took at most QUIET_SHARE of the machine, and their median wall.
    quiet_runs: int
    quiet_wall_median: float
    #: Medians of the run's timeline: the last spawn returned; the first and
    #: the last worker registered, by the workers' own clocks.
    spawn_done_median: float
    own_first_median: float
    own_last_median: float


@dataclass(frozen=True)
class CellStats:
    scenario: str
    workers: int
    bounds: Bounds
    strategies: dict[str, StrategyStats]

    def ratio_to_bound(self, strategy: str) -> float:
        return self.strategies[strategy].wall_median / self.bounds.ideal

    def speedup(self, strategy: str, baseline: str) -> float:
        """How many times faster than ``baseline`` (NaN when either is missing)."""
        if strategy not in self.strategies or baseline not in self.strategies:
            return math.nan
        return self.strategies[baseline].wall_median / self.strategies[strategy].wall_median

    def as_dict(self) -> dict[str, object]:
        return {
            "scenario": self.scenario, "workers": self.workers,
            "bound": self.bounds.ideal, "bound_with_worker_start": self.bounds.machine,
            "strategies": {
                name: {**asdict(stats), "ratio_to_bound": self.ratio_to_bound(name),
                       "speedup_vs_threadpool": self.speedup(name, "threadpool"),
                       "speedup_vs_sequential": self.speedup(name, "sequential")}
                for name, stats in self.strategies.items()
            },
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _median(values: Iterable[float]) -> float:
    data = [v for v in values if not math.isnan(v)]
    return statistics.median(data) if data else math.nan


def strategy_stats(strategy: str, runs: Sequence[RunResult], cores: int) -> StrategyStats:
    detection = [d for r in runs for d in r.detection]
    quiet = [r for r in runs if r.quiet(cores)]
    return StrategyStats(
        strategy=strategy,
        runs=len(runs),
        wall_median=_median(r.wall for r in runs),
        wall_min=min(r.wall for r in runs),
        wall_max=max(r.wall for r in runs),
        first_median=_median(r.first for r in runs),
        detection_p50=percentile(detection, 50),
        detection_p95=percentile(detection, 95),
        cpu_median=_median(r.cpu for r in runs),
        queries_median=_median(float(r.queries) for r in runs),
        queries_per_tick=_median(r.queries * r.poll_interval / r.wall for r in runs),
        worker_cpu_median=_median(c for r in runs for c in r.worker_cpu),
        foreign_cpu_median=_median(r.foreign_cpu for r in runs),
        load_median=_median(r.load for r in runs),
        registered_min=min(r.registered for r in runs),
        quiet_runs=len(quiet),
        quiet_wall_median=_median(r.wall for r in quiet),
        spawn_done_median=_median(r.spawn_done for r in runs),
        own_first_median=_median(r.own_first for r in runs),
        own_last_median=_median(r.own_last for r in runs),
    )


def summarise(
    runs: Sequence[RunResult], scenarios: Sequence[Scenario], cores: int, costs: StartCosts
) -> list[CellStats]:
    cells: list[CellStats] = []
    for scenario in scenarios:
        sizes = sorted({r.workers for r in runs if r.scenario == scenario.name})
        for workers in sizes:
            mine = [r for r in runs if r.scenario == scenario.name and r.workers == workers]
            cells.append(CellStats(
                scenario=scenario.name, workers=workers,
                bounds=bounds(scenario, workers, cores, costs),
                strategies={
                    name: strategy_stats(name, [r for r in mine if r.strategy == name], cores)
                    for name in STRATEGIES if any(r.strategy == name for r in mine)
                },
            ))
    return cells


@dataclass(frozen=True)
class TargetCheck:
    target: str
    measured: str
    met: bool | None  # None: the run did not include the cell the target needs


def check_targets(cells: Sequence[CellStats], io: str = "io", cpu: str = "cpu") -> list[TargetCheck]:
    """The startup targets against the default mode, ``clm-workers`` (slot held for the spawn only)."""
    ours = "clm-workers"
    checks: list[TargetCheck] = []
    io32 = next((c for c in cells if c.scenario == io and c.workers == TARGET_IO_WORKERS
                 and ours in c.strategies), None)
    if io32 is None:
        checks.append(TargetCheck(f"I/O N={TARGET_IO_WORKERS}: wall <= {TARGET_IO_WALL} s, "
                                  f">= {TARGET_VS_THREADPOOL:g}x threadpool, >= {TARGET_VS_SEQUENTIAL:g}x "
                                  "sequential", "cell not run", None))
    else:
        stats = io32.strategies[ours]
        wall = stats.wall_median
        checks.append(TargetCheck(f"I/O N={TARGET_IO_WORKERS}: wall <= {TARGET_IO_WALL} s",
                                  f"{wall:.2f} s{_quiet(stats, stats.quiet_wall_median, 's')}",
                                  wall <= TARGET_IO_WALL))
        for baseline, target in (("threadpool", TARGET_VS_THREADPOOL), ("sequential", TARGET_VS_SEQUENTIAL)):
            speedup = io32.speedup(ours, baseline)
            checks.append(TargetCheck(
                f"I/O N={TARGET_IO_WORKERS}: >= {target:g}x faster than {baseline}",
                "not run" if math.isnan(speedup) else f"{speedup:.1f}x",
                None if math.isnan(speedup) else speedup >= target,
            ))
    for cell in cells:
        if cell.scenario == cpu and ours in cell.strategies:
            ratio = cell.ratio_to_bound(ours)
            stats = cell.strategies[ours]
            checks.append(TargetCheck(
                f"CPU N={cell.workers}: within {TARGET_CPU_RATIO}x of N x boot CPU / cores "
                f"({cell.bounds.ideal:.2f} s)",
                f"{ratio:.2f}x{_quiet(stats, stats.quiet_wall_median / cell.bounds.ideal, 'x')}",
                ratio <= TARGET_CPU_RATIO,
            ))
    ours_stats = [(c, c.strategies[name]) for c in cells for name in OURS if name in c.strategies]
    if ours_stats:
        worst = max(ours_stats, key=lambda cs: cs[1].detection_p50)
        checks.append(TargetCheck(
            f"detection delay p50 <= {TARGET_DETECTION_P50 * 1000:g} ms (worst cell of both modes)",
            f"{worst[1].detection_p50 * 1000:.1f} ms ({worst[0].scenario} N={worst[0].workers}, "
            f"{worst[1].strategy})", worst[1].detection_p50 <= TARGET_DETECTION_P50,
        ))
        per_tick = max(s.queries_per_tick for _, s in ours_stats)
        checks.append(TargetCheck(
            "queries per watcher tick do not grow with N",
            f"at most {per_tick:.2f} per tick for N = "
            + ", ".join(str(n) for n in sorted({c.workers for c, _ in ours_stats})),
            per_tick <= TARGET_QUERIES_PER_TICK,
        ))
    return checks


def _quiet(stats: StrategyStats, value: float, unit: str) -> str:
    """The same figure over the quiet runs only, when some runs were not quiet."""
    if stats.quiet_runs == stats.runs:
        return ""
    if not stats.quiet_runs:
        return f" (no quiet run of {stats.runs})"
    return f" (quiet runs: {value:.2f}{' ' if unit == 's' else ''}{unit}, {stats.quiet_runs} of {stats.runs})"
