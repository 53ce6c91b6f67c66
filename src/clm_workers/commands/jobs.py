"""``clm-workers jobs`` (list, ``show ID``) and ``clm-workers submit``: CLM's ``jobs`` table.

``jobs`` reads only; ``submit`` inserts one ``pending`` row, the way CLM
queues a job, for smoke tests of a running pool (CLM queues its own jobs).
Data on stdout (tables, or ``--json``: times in UTC, ISO 8601), messages on
stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .. import display, inventory
from ..errors import ConfigError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_JOB_FAILED = 1

#: How often ``submit --wait`` looks at its job.
WAIT_POLL_SECONDS = 0.1
_ENDED = ("completed", "failed", "cancelled")


def run_list(db_path: Path, *, status: str | None, job_type: str | None, limit: int, json_output: bool,
             setting: str = "--db") -> int:
    conn = inventory.open_database(db_path, setting)
    try:
        jobs = inventory.read_jobs(conn, status=status, job_type=job_type, last=limit)
        counts = inventory.job_counts(conn)
    finally:
        conn.close()
    log.info("%s: %d jobs shown of %d", db_path, len(jobs), sum(counts.values()))
    if json_output:
        print(json.dumps([j.to_json() for j in jobs], indent=2), flush=True)
    else:
        display.print_jobs(jobs, counts, filtered=status is not None or job_type is not None)
    return EXIT_OK


def run_show(db_path: Path, job_id: int, *, json_output: bool, setting: str = "--db") -> int:
    conn = inventory.open_database(db_path, setting)
    try:
        job = inventory.read_job(conn, job_id)
        last = conn.execute("SELECT max(id) FROM jobs").fetchone()[0]
    finally:
        conn.close()
    if job is None:
        raise ConfigError("ID", job_id, f"the id of a job of {db_path}"
                          + (f" (1 to {last})" if last else " (it has no jobs)"))
    if json_output:
        print(json.dumps(job.to_json(), indent=2), flush=True)
    else:
        display.print_job(job)
    return EXIT_OK


def run_submit(
    db_path: Path,
    job_type: str,
    input_file: str,
    output_file: str,
    payload: dict[str, Any],
    *,
    priority: int,
    wait: float | None,
    json_output: bool,
    setting: str = "--db",
) -> int:
    """Queue the job; with ``wait``, poll (bounded) until it ended.  0, or 1 for a failed/unfinished job."""
    conn = inventory.open_database(db_path, setting)
    queued = time.monotonic()
    try:
        job_id = inventory.submit_job(conn, job_type, input_file, output_file, payload, priority=priority)
        serving = conn.execute(
            "SELECT count(*) FROM workers WHERE worker_type = ? AND status IN ('idle', 'busy')", (job_type,)
        ).fetchone()[0]
        display.note(f"clm-workers: job {job_id} queued ({job_type}: {input_file} -> {output_file})")
        if not serving:
            display.note(f"clm-workers: note: no {job_type} worker runs on {db_path} right now; the job "
                         "waits for one", "yellow")
        job = inventory.read_job(conn, job_id)
        if wait is not None:
            deadline = time.monotonic() + wait
            while job is not None and job.status not in _ENDED and time.monotonic() < deadline:
                time.sleep(WAIT_POLL_SECONDS)  # polling another process's progress, bounded
                job = inventory.read_job(conn, job_id)
    finally:
        conn.close()
    assert job is not None
    if json_output:
        print(json.dumps(job.to_json(), indent=2), flush=True)
    if wait is None:
        return EXIT_OK
    if job.status == "completed":
        display.note(f"✓ job {job_id} completed by {job.worker}, {time.monotonic() - queued:.2f} s after it "
                     "was queued", "green")
        return EXIT_OK
    if job.status in _ENDED:
        display.note(f"✗ job {job_id} {job.status}" + (f" ({job.worker})" if job.worker else "")
                     + (f": {job.error_line}" if job.error_line else "")
                     + f"; details: clm-workers jobs show {job_id}", "red")
    else:
        display.note(f"✗ job {job_id} still {job.status} after {wait:g} s", "red")
    sys.stderr.flush()
    return EXIT_JOB_FAILED
