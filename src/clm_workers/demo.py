"""``clm-workers demo``: a whole pool's life on a throw-away database.

Starts simulated workers across CLM's three worker types, shown exactly as
``clm-workers start`` shows a pool (the same views), runs a few jobs through
them, prints the jobs as ``clm-workers jobs`` does, and stops everything.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import trio

from . import display, inventory
from .commands.start import Screen, run_pool_command
from .config import WorkerConfig, build_settings
from .monitor import MonitorSettings
from .pool import WorkerPool
from .registry import Registry
from .report import StartupReport
from .settings_file import StartSettings

SIM_MODULE = "clm_workers.sim"
WORKER_TYPES = ("notebook", "plantuml", "drawio")
JOB_DEADLINE_SECONDS = 30.0
#: A demo stopped by Ctrl-C (cleanly: every worker stopped) did not show what it is for.
EXIT_INTERRUPTED = 130


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
    # The same resolution as the manager's (argument > environment > default), checked up front.
    startup = build_settings(max_startup_concurrency=options.concurrency, registration_timeout=None,
                             slot_mode="spawn", fail_fast=False, stop_timeout=None, poll_interval=None)
    with tempfile.TemporaryDirectory(prefix="clm-workers-demo-") as tmp:
        root = Path(tmp)
        configs = tuple(
            WorkerConfig(worker_type, count, module=SIM_MODULE,
                         env={"CLM_SIM_BOOT_DELAY": str(options.boot_delay)})
            for worker_type, count in split_workers(options.workers).items()
            if count
        )
        settings = StartSettings(
            config_file=None, db_path=root / "jobs.db", workspace_path=root, worker_configs=configs,
            monitor=MonitorSettings(),
            manager_options={"max_startup_concurrency": startup.concurrency,
                             "stop_timeout": startup.stop_grace},
        )

        async def body(pool: WorkerPool, report: StartupReport, screen: Screen) -> int:
            display.print_startup_summary(report)
            types = {w.worker_type for w in report.started}
            jobs = await trio.to_thread.run_sync(_run_jobs, pool.manager.registry, settings.db_path,
                                                 root, types, options.jobs_per_type)
            counts: dict[str, int] = {}
            for job in jobs:
                counts[job.status] = counts.get(job.status, 0) + 1
            display.print_jobs(jobs, counts, filtered=False)
            done = all(j.status == "completed" for j in jobs)
            return 0 if report.ok and done else 1

        return run_pool_command(settings, body, if_stopped_by_signal=EXIT_INTERRUPTED)


def _run_jobs(registry: Registry, db_path: Path, workspace: Path, types: set[str],
              per_type: int) -> list[inventory.JobRow]:
    """Queue ``per_type`` jobs for each type, wait (bounded) until they ended; the jobs' rows."""
    jobs: list[int] = []
    for worker_type in sorted(types):
        for n in range(per_type):
            source = workspace / "input" / f"{worker_type}-{n}.txt"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_text(f"slide {n} for {worker_type}\n")
            jobs.append(registry.submit_job(
                worker_type, str(source.relative_to(workspace)), f"output/{worker_type}-{n}.txt",
                {"seconds": 0.2},
            ))
    deadline = time.monotonic() + JOB_DEADLINE_SECONDS
    statuses = registry.job_statuses(jobs)
    while time.monotonic() < deadline and any(s not in ("completed", "failed") for s, _ in statuses.values()):
        time.sleep(0.05)  # a blocking poll in a worker thread, with a deadline
        statuses = registry.job_statuses(jobs)
    with closing(inventory.connect_existing(db_path)) as conn:
        return inventory.read_jobs(conn, last=len(jobs))
