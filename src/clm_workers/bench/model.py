"""Plain values of the bench: what a cell is, what one run measured."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import WorkerConfig
from .procstat import machine_busy_seconds, workers_cpu_seconds

SIM_MODULE = "clm_workers.sim"
#: All workers of the bench are of one type: the strategies differ, the workers do not.
WORKER_TYPE = "notebook"
#: Generous for every strategy: 64 CPU-bound boots on 2 cores take about 7 s
#: when all boot at once, which must show as slow, not as a timeout.
REGISTRATION_TIMEOUT = 60.0

#: A run is *quiet* when other processes took at most this share of all cores
#: during it: on a shared machine the quiet runs show what the strategy does.
QUIET_SHARE = 0.25

STRATEGIES = ("sequential", "threadpool", "clm-workers", "clm-workers/reg")
BASELINES = ("sequential", "threadpool")


@dataclass(frozen=True)
class Scenario:
    """How every worker boots: ``boot_delay`` seconds asleep, then ``boot_cpu`` seconds of CPU."""

    name: str
    boot_delay: float = 0.0
    boot_cpu: float = 0.0

    @property
    def env(self) -> dict[str, str]:
        return {"CLM_SIM_BOOT_DELAY": repr(self.boot_delay), "CLM_SIM_BOOT_CPU": repr(self.boot_cpu)}

    @property
    def label(self) -> str:
        parts = []
        if self.boot_delay:
            parts.append(f"CLM_SIM_BOOT_DELAY={self.boot_delay:g}")
        if self.boot_cpu:
            parts.append(f"CLM_SIM_BOOT_CPU={self.boot_cpu:g}")
        return " ".join(parts) or "no boot work"


@dataclass(frozen=True)
class Cell:
    """One table row group: a scenario, a pool size and a startup concurrency."""

    scenario: Scenario
    workers: int
    concurrency: int

    def worker_configs(self) -> list[WorkerConfig]:
        return [WorkerConfig(WORKER_TYPE, self.workers, module=SIM_MODULE, env=self.scenario.env)]


@dataclass
class RunResult:
    """One strategy starting one cell's workers once.

    Times are seconds from the strategy's start (before it opens the database)
    to the moment the *manager* noticed a registration.
    """

    strategy: str
    scenario: str
    workers: int
    repeat: int
    #: Until the manager noticed the last registration.
    wall: float
    #: Until the manager noticed the first registration.
    first: float
    registered: int
    #: Per registered worker: manager noticed (``time.time()``) minus the
    #: worker's own ``registered_at_unix``.
    detection: list[float] = field(default_factory=list)
    #: The manager process's CPU seconds (all its threads, not its children)
    #: from its start until the startup call returned.
    cpu: float = 0.0
    #: SQLite queries the manager issued while waiting for registrations.
    queries: int = 0
    #: The manager's registration poll interval (s), for queries per tick.
    poll_interval: float = 0.0
    #: Each running worker's own CPU seconds when the startup call returned
    #: (``/proc``, 10 ms ticks): its boot cost, interpreter and imports included.
    worker_cpu: list[float] = field(default_factory=list)
    #: CPU seconds the whole machine was busy (all cores) during the startup.
    machine_busy: float = 0.0
    #: The 1-minute load average just before the run.
    load: float = 0.0
    #: Until the last spawn (``executor.start``) returned.
    spawn_done: float = math.nan
    #: Until the first and the last worker registered, by the workers' own clocks.
    own_first: float = math.nan
    own_last: float = math.nan

    @property
    def foreign_cpu(self) -> float:
        """Busy CPU seconds of the machine that were neither the manager's nor its workers'."""
        return max(0.0, self.machine_busy - self.cpu - sum(self.worker_cpu))

    def quiet(self, cores: int) -> bool:
        """Whether other processes used less than QUIET_SHARE of the machine during the run."""
        return self.foreign_cpu <= QUIET_SHARE * cores * self.wall


def registration_times(db_path: Path, session_id: str) -> dict[int, float]:
    """``{row id: registered_at_unix}`` from the workers' own ``worker_registered`` events."""
    conn = sqlite3.connect(str(db_path), timeout=30)
    try:
        rows = conn.execute(
            "SELECT worker_id, metadata FROM worker_events"
            " WHERE event_type = 'worker_registered' AND session_id = ?",
            (session_id,),
        ).fetchall()
    finally:
        conn.close()
    times: dict[int, float] = {}
    for worker_id, metadata in rows:
        stamp = json.loads(metadata or "{}").get("registered_at_unix")
        if worker_id is not None and stamp is not None:
            times[int(worker_id)] = float(stamp)
    return times


def detection_delays(noticed: Mapping[int, float], registered: Mapping[int, float]) -> list[float]:
    """Manager's notice minus the worker's registration, for every row both know."""
    return sorted(noticed[row] - registered[row] for row in noticed if row in registered)


@dataclass
class Stopwatch:
    """The clocks of one run, read when the strategy starts and when its startup call returns."""

    t0: float = 0.0
    cpu0: float = 0.0
    busy0: float = 0.0
    load: float = 0.0
    cpu: float = 0.0
    busy: float = 0.0
    worker_cpu: list[float] = field(default_factory=list)

    @classmethod
    def start(cls) -> Stopwatch:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return cls(t0=time.time(), cpu0=time.process_time(), busy0=machine_busy_seconds(), load=load)

    def stop(self, worker_pids: Iterable[int | None]) -> None:
        """Call when the startup call returned, before stopping the workers."""
        self.cpu = time.process_time() - self.cpu0
        self.busy = machine_busy_seconds() - self.busy0
        self.worker_cpu = workers_cpu_seconds(worker_pids)

    def result(
        self,
        strategy: str,
        cell: Cell,
        repeat: int,
        *,
        noticed: Mapping[int, float],
        registered: Mapping[int, float],
        spawned: Iterable[float],
        queries: int,
        poll_interval: float,
    ) -> RunResult:
        """The run's figures: ``noticed`` and ``registered`` map row ids to ``time.time()``
        values, ``spawned`` holds the ``time.time()`` at which each spawn returned."""
        times = sorted(noticed.values())
        own = sorted(registered.values())
        spawn_times = list(spawned)
        return RunResult(
            strategy=strategy, scenario=cell.scenario.name, workers=cell.workers, repeat=repeat,
            wall=times[-1] - self.t0 if times else float("nan"),
            first=times[0] - self.t0 if times else float("nan"),
            registered=len(times), detection=detection_delays(noticed, registered),
            cpu=self.cpu, queries=queries, poll_interval=poll_interval,
            worker_cpu=self.worker_cpu, machine_busy=self.busy, load=self.load,
            spawn_done=max(spawn_times) - self.t0 if spawn_times else math.nan,
            own_first=own[0] - self.t0 if own else math.nan,
            own_last=own[-1] - self.t0 if own else math.nan,
        )
