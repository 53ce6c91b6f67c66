"""One start of real CLM notebook workers, in a process of its own.

``python -m clm_workers.bench.clm_driver``

``STRATEGY DB WORKSPACE N CONCURRENCY``: ``STRATEGY`` is ``clm`` (CLM's own
``WorkerPoolManager.start_pools()``), ``spawn`` or ``forkserver``
(clm-workers' ``WorkerPoolManager`` with that start method).  It prints JSON
lines: ``{"t0": time.time()}`` just before the manager is made (everything the
strategy imports is imported before), ``{"returned": ..., ...}`` when the
start call returned, then waits for a line on stdin, stops the pool and
prints ``{"stopped": ...}``.  Whether the workers are idle is judged by the
bench's observer, not here: every strategy is timed the same way.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def say(**message: object) -> None:
    print(json.dumps(message), flush=True)


def main(argv: list[str]) -> None:
    strategy, db, workspace = argv[0], Path(argv[1]), Path(argv[2])
    count, concurrency = int(argv[3]), int(argv[4])
    cache = db.with_name("cache.db")
    if strategy == "clm":
        from clm.infrastructure.workers.pool_manager import WorkerPoolManager as ClmManager
        from clm.infrastructure.workers.worker_executor import WorkerConfig as ClmConfig

        say(t0=time.time())
        clm = ClmManager(db, workspace, [ClmConfig("notebook", count, execution_mode="direct")],
                         log_level="WARNING", max_startup_concurrency=concurrency, cache_db_path=cache)
        clm.start_pools()  # type: ignore[no-untyped-call]  # CLM's own, untyped
        say(returned=time.time())
        sys.stdin.readline()
        clm.stop_pools()  # type: ignore[no-untyped-call]
    else:
        import trio

        from ..clm.installed import installed_clm
        from ..config import WorkerConfig
        from ..manager import WorkerPoolManager

        # What CLM's own process has imported already when it calls clm-workers.
        installed = installed_clm()
        _ = installed.modules, installed.worker_settings
        # What CLM's worker imports before it registers, as CLM's start and a spawn
        # do: the same work for all three (a pool's default adds imports of the
        # first job, which none of them has done when its workers are idle).
        preload = installed.generation.preload.get("notebook") if strategy == "forkserver" else None
        say(t0=time.time())
        manager = WorkerPoolManager(
            db, workspace, [WorkerConfig("notebook", count, start_method=strategy,  # type: ignore[arg-type]
                                         preload=preload)],
            max_startup_concurrency=concurrency, registration_timeout=120.0, log_level="WARNING",
            cache_db_path=cache, log_dir=db.parent / "logs",
        )
        report = trio.run(manager.start_pools)
        say(returned=time.time(), started=len(report.started), notes=report.notes,
            failed=[f"{f.worker_type}#{f.index} {f.phase}: {f.reason}" for f in report.failed])
        sys.stdin.readline()
        trio.run(manager.stop_pools)
    say(stopped=time.time())


if __name__ == "__main__":
    main(sys.argv[1:])
