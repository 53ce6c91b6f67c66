"""One run of each strategy: the two clm-workers slot modes here, the baselines in :mod:`.baselines`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import trio

from ..manager import WorkerPoolManager
from ..report import ProgressEvent
from .baselines import run_sequential, run_threadpool
from .model import REGISTRATION_TIMEOUT, Cell, RunResult, Stopwatch, registration_times

RunFunction = Callable[[Cell, Path, int], RunResult]


def run_clm_workers(cell: Cell, workdir: Path, repeat: int = 0, *, slot_mode: str = "spawn") -> RunResult:
    """``WorkerPoolManager.start_pools`` as CLM calls it, then ``stop_pools`` (not timed)."""
    manager = WorkerPoolManager(
        db_path=workdir / "jobs.db", workspace_path=workdir, worker_configs=cell.worker_configs(),
        max_startup_concurrency=cell.concurrency, registration_timeout=REGISTRATION_TIMEOUT,
        slot_mode=slot_mode, log_dir=workdir / "logs",
    )
    strategy = "clm-workers" if slot_mode == "spawn" else "clm-workers/reg"
    return trio.run(_measure, manager, cell, strategy, repeat)


async def _measure(manager: WorkerPoolManager, cell: Cell, strategy: str, repeat: int) -> RunResult:
    # The manager's wall clock when it noticed each registration: the engine's
    # own times are on Trio's clock, the workers' on time.time().
    noticed_by_key: dict[tuple[str, int], float] = {}
    spawned: list[float] = []

    def on_progress(event: ProgressEvent) -> None:
        if event.kind == "registered":
            noticed_by_key[(event.worker_type, event.index)] = time.time()
        elif event.kind == "spawned":
            spawned.append(time.time())

    watch = Stopwatch.start()
    try:
        report = await manager.start_pools(on_progress=on_progress)
        watch.stop(w.pid for w in report.started)
        queries = manager.registry.poll_queries
    finally:
        await manager.stop_pools()
    noticed = {
        w.db_worker_id: noticed_by_key[(w.worker_type, w.index)]
        for w in report.started if (w.worker_type, w.index) in noticed_by_key
    }
    registered = await trio.to_thread.run_sync(registration_times, manager.db_path, manager.session_id)
    return watch.result(
        strategy, cell, repeat, noticed=noticed, registered=registered, spawned=spawned,
        queries=queries, poll_interval=manager.settings.poll_interval,
    )


def _clm_workers_registration_slots(cell: Cell, workdir: Path, repeat: int = 0) -> RunResult:
    return run_clm_workers(cell, workdir, repeat, slot_mode="registration")


RUNNERS: dict[str, RunFunction] = {
    "sequential": run_sequential,
    "threadpool": run_threadpool,
    "clm-workers": run_clm_workers,
    "clm-workers/reg": _clm_workers_registration_slots,
}
