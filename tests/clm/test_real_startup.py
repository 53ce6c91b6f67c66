"""Many real CLM notebook workers at once, with default settings: every one registers.

Each boot of a CLM notebook worker costs about 0.5 s (CLM 1.9) to 1 s (CLM
1.35) of CPU, so on a machine with few cores most of them wait for a core; a
registration deadline must not count that waiting against them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from clmtools import Course, clm_version

from clm_workers import WorkerConfig, WorkerPoolManager
from procs import session_processes

#: As many workers as CLM users start on a build machine: 40 of CLM 1.9's, 24 of CLM 1.35's.
COUNT = 40 if (clm_version() or ()) < (1, 35) else 24


async def test_many_real_notebook_workers_all_register_with_default_settings(
    course: Course, cwd: Path, tmp_path: Path, sessions: list[str]
):
    db = tmp_path / "jobs.db"
    manager = WorkerPoolManager(db, course.output, [WorkerConfig("notebook", COUNT)])
    sessions.append(manager.session_id)
    began = time.monotonic()
    try:
        report = await manager.start_pools()
        took = time.monotonic() - began
        registered = sorted(w.registered_at for w in report.started)
    finally:
        await manager.stop_pools()
    print(f"{len(report.started)}/{COUNT} real notebook workers registered on {os.cpu_count()} cores in "
          f"{took:.1f} s (first {registered[0] if registered else float('nan'):.1f} s, "
          f"last {registered[-1] if registered else float('nan'):.1f} s)")
    assert [(f.index, f.phase, f.reason) for f in report.failed] == []
    assert len(report.started) == COUNT
    assert session_processes(manager.session_id) == []
