"""A manager killed with SIGKILL leaves no CLM worker and no Jupyter kernel behind.

CLM's workers know nothing of clm-workers' lifeline; left alone they notice a
dead parent only by polling it every ~5 s, and a busy one only after its job.
Here the pool is busy (a kernel runs a long cell) when its manager dies.  The
same holds for workers forked from a fork server's templates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from clmtools import Course, is_kernel, notebook_job, run_build

from procs import JsonLines, alive, session_processes, wait_until

#: Every worker and kernel of a SIGKILLed manager must be gone within this long.
ORPHAN_BOUND_SECONDS = 2.0

MANAGER = textwrap.dedent("""
    import json, sys, trio
    from pathlib import Path
    from clm_workers import WorkerConfig, WorkerPoolManager
    method = sys.argv[3]
    manager = WorkerPoolManager(Path(sys.argv[1]), Path(sys.argv[2]),
                                [WorkerConfig("notebook", 4, start_method=method),
                                 WorkerConfig("plantuml", 1, start_method=method)])
    print(json.dumps({"session": manager.session_id}), flush=True)
    report = trio.run(manager.start_pools)
    print(json.dumps({"started": len(report.started), "failed": [f.reason for f in report.failed]}),
          flush=True)
    trio.run(trio.sleep_forever)
""")


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_sigkill_of_the_manager_leaves_no_clm_worker_or_kernel_after_2_s(
    course: Course, cwd: Path, tmp_path: Path, sessions: list[str], start_method: str
):
    db = tmp_path / "jobs.db"
    script = tmp_path / "manager.py"
    script.write_text(MANAGER)
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(course.output), start_method],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = JsonLines(proc)
        session = lines.next(30)["session"]
        sessions.append(session)
        assert lines.next(120) == {"started": 5, "failed": []}
        busy = notebook_job(course, course.add_notebook("busy", cell_seconds=300))
        run_build(db, course.output, [busy], session_id=session, timeout=60, build_dir=tmp_path / "build",
                  wait=False)
        wait_until(lambda: any(is_kernel(pid) for pid in session_processes(session)), 60, "a kernel")
        seen = session_processes(session)
        # Five workers and the kernel (and the fork servers' two templates).
        assert len(seen) == 6 + (2 if start_method == "forkserver" else 0), seen

        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(5)
        # Measured to the end (up to 15 s) so that a failure says how long they did take.
        wait_until(lambda: not session_processes(session), 15, "the orphans to go", interval=0.02)
        gone_after = time.monotonic() - killed_at
        print(f"after the manager's SIGKILL all {len(seen)} processes were gone in {gone_after:.2f} s")
        assert gone_after <= ORPHAN_BOUND_SECONDS
        assert not any(alive(pid) for pid in seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
