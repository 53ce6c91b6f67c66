"""``clm-workers demo``: a whole pool's life on a throw-away database.

Starts simulated workers across CLM's three worker types with the public
API, runs a few jobs through them, and stops everything.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio
from rich.table import Table

from . import display
from .config import WorkerConfig
from .manager import WorkerPoolManager
from .registry import Registry

SIM_MODULE = "clm_workers.sim"
WORKER_TYPES = ("notebook", "plantuml", "drawio")
JOB_DEADLINE_SECONDS = 30.0


@dataclass(frozen=True)
class DemoOptions:
    workers: int = 16
    boot_delay: float = 1.0
    concurrency: int | None = None
    jobs_per_type: int = 2


def split_workers(total: int) -> dict[str, int]:
    """Half notebook workers, the rest shared by plantuml and drawio: 16 -> 8/4/4."""
    notebook = -(-total // 2)
    plantuml = (total - notebook + 1) // 2
    return {"notebook": notebook, "plantuml": plantuml, "drawio": total - notebook - plantuml}


def run_demo(options: DemoOptions) -> int:
    """Run the demo; returns the exit code.  Raises ConfigError before starting anything."""
    with tempfile.TemporaryDirectory(prefix="clm-workers-demo-") as tmp:
        root = Path(tmp)
        configs = [
            WorkerConfig(worker_type, count, module=SIM_MODULE,
                         env={"CLM_SIM_BOOT_DELAY": str(options.boot_delay)})
            for worker_type, count in split_workers(options.workers).items()
            if count
        ]
        manager = WorkerPoolManager(
            db_path=root / "jobs.db", workspace_path=root, worker_configs=configs,
            max_startup_concurrency=options.concurrency,
        )
        return trio.run(_demo, manager, options)


async def _demo(manager: WorkerPoolManager, options: DemoOptions) -> int:
    display.stderr.print(
        f"Starting {options.workers} simulated workers "
        f"(boot delay {options.boot_delay:g} s, concurrency {manager.settings.concurrency}) "
        f"into {manager.db_path}", highlight=False,
    )
    try:
        with display.startup_progress(options.workers) as on_progress:
            report = await manager.start_pools(on_progress=on_progress)
        display.print_startup_summary(report)
        if report.started:
            await trio.to_thread.run_sync(_run_jobs, manager.registry, manager.workspace_path,
                                          {w.worker_type for w in report.started}, options.jobs_per_type)
    finally:
        with trio.CancelScope(shield=True):
            t0 = time.monotonic()
            await manager.stop_pools()
            display.stderr.print(f"Stopped every worker in {time.monotonic() - t0:.2f} s.")
    return 0 if report.ok else 1


def _run_jobs(registry: Registry, workspace: Path, types: set[str], per_type: int) -> None:
    jobs: dict[int, str] = {}
    for worker_type in sorted(types):
        for n in range(per_type):
            source = workspace / "input" / f"{worker_type}-{n}.txt"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_text(f"slide {n} for {worker_type}\n")
            job_id = registry.submit_job(
                worker_type, str(source.relative_to(workspace)), f"output/{worker_type}-{n}.txt",
                {"seconds": 0.2},
            )
            jobs[job_id] = worker_type
    deadline = time.monotonic() + JOB_DEADLINE_SECONDS
    statuses = registry.job_statuses(jobs)
    while time.monotonic() < deadline and any(s not in ("completed", "failed") for s, _ in statuses.values()):
        time.sleep(0.05)  # a blocking poll in a worker thread, with a deadline
        statuses = registry.job_statuses(jobs)
    table = Table(title="Jobs", title_justify="left")
    for column in ("job", "type", "worker", "status"):
        table.add_column(column)
    for job_id, (status, worker_id) in sorted(statuses.items()):
        colour = "green" if status == "completed" else "red"
        table.add_row(str(job_id), jobs[job_id], str(worker_id), f"[{colour}]{status}[/{colour}]")
    display.stdout.print(table)
