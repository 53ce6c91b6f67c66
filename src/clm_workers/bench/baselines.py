"""The designs clm-workers replaces, written from their description, as yardsticks.

* ``sequential`` is CLM 0.3's ``start_pools``: for each worker, start it, then
  poll its row every 0.5 s until it registered, then the next worker.
* ``threadpool`` is the original proposal (proposal-parallel-worker-startup.md):
  the same ``_start_worker`` (start + 0.5 s polling) submitted to a
  ``ThreadPoolExecutor(max_workers=10)``, results collected with
  ``as_completed``.

Both use what clm-workers uses, so only the strategy differs: the real
:class:`DirectExecutor` (its blocking ``start``), rows pre-registered with
:meth:`Registry.pre_register`, and the same simulated workers.  Each polling
thread asks SQLite about its own worker's row through its own connection, as
CLM's per-worker wait did.  Not product code: no cancellation, no cleanup
beyond stopping what was started.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ..executors.base import WorkerHandle
from ..executors.direct import DirectExecutor
from ..plan import WorkerSpec, plan_workers
from ..registry import Registry
from .model import REGISTRATION_TIMEOUT, Cell, RunResult, Stopwatch, registration_times

#: CLM 0.3's registration poll interval.
POLL_INTERVAL = 0.5
#: How long stopped workers get to exit after SIGTERM before SIGKILL.
STOP_GRACE = 5.0


class _BaselineRun:
    """One baseline start of one cell: its database, executor, handles and counters."""

    def __init__(self, cell: Cell, workdir: Path) -> None:
        self.db_path = workdir / "jobs.db"
        self.session_id = uuid.uuid4().hex
        self.registry = Registry(self.db_path, session_id=self.session_id)
        self.executor = DirectExecutor(
            db_path=self.db_path.resolve(), workspace_path=workdir.resolve(), log_dir=workdir / "logs",
        )
        self.cell = cell
        self.handles: list[WorkerHandle] = []
        self.spawned: list[float] = []
        #: ``{row id: time.time()}`` when a poll saw the row registered.
        self.noticed: dict[int, float] = {}
        self.queries = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []

    def prepare(self) -> list[WorkerSpec]:
        self.registry.open()
        specs = plan_workers(self.cell.worker_configs(), self.session_id)
        return self.registry.pre_register(specs)

    def start_worker(self, spec: WorkerSpec) -> None:
        """CLM's ``_start_worker``: start the worker, then poll its row until it registered."""
        handle = self.executor.start(spec)
        with self._lock:
            self.handles.append(handle)
            self.spawned.append(time.time())
        conn = self._connection()
        deadline = time.monotonic() + REGISTRATION_TIMEOUT
        while True:
            with self._lock:
                self.queries += 1
            row = conn.execute("SELECT status FROM workers WHERE id = ?", (spec.db_worker_id,)).fetchone()
            if row is not None and row[0] != "created":
                assert spec.db_worker_id is not None
                with self._lock:
                    self.noticed[spec.db_worker_id] = time.time()
                return
            if self.executor.exit_codes([handle]) or time.monotonic() > deadline:
                return  # failed: the bench reports fewer registered workers
            time.sleep(POLL_INTERVAL)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = sqlite3.connect(
                str(self.db_path), timeout=30, check_same_thread=False
            )
            with self._lock:
                self._connections.append(conn)
        return conn

    def finish(self) -> None:
        """Stop every started worker (SIGTERM, grace, SIGKILL) and release everything."""
        try:
            for handle in self.handles:
                self.executor.request_stop(handle)
            deadline = time.monotonic() + STOP_GRACE
            while len(self.executor.exit_codes(self.handles)) < len(self.handles):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            for handle in self.handles:
                self.executor.kill(handle)
        finally:
            self.executor.close()
            for conn in self._connections:
                conn.close()
            self.registry.close()

    def result(self, strategy: str, repeat: int, watch: Stopwatch) -> RunResult:
        return watch.result(
            strategy, self.cell, repeat, noticed=self.noticed,
            registered=registration_times(self.db_path, self.session_id), spawned=self.spawned,
            queries=self.queries, poll_interval=POLL_INTERVAL,
        )


def run_sequential(cell: Cell, workdir: Path, repeat: int = 0) -> RunResult:
    """CLM 0.3: one worker after another, each polled until it registered."""
    run = _BaselineRun(cell, workdir)
    watch = Stopwatch.start()
    try:
        for spec in run.prepare():
            run.start_worker(spec)
        watch.stop(h.pid for h in run.handles)
    finally:
        run.finish()
    return run.result("sequential", repeat, watch)


def run_threadpool(cell: Cell, workdir: Path, repeat: int = 0) -> RunResult:
    """The proposal: ``ThreadPoolExecutor(max_workers=concurrency)`` of start + poll."""
    run = _BaselineRun(cell, workdir)
    watch = Stopwatch.start()
    try:
        specs = run.prepare()
        with ThreadPoolExecutor(max_workers=cell.concurrency) as pool:
            futures = [pool.submit(run.start_worker, spec) for spec in specs]
            for future in as_completed(futures):
                future.result()
        watch.stop(h.pid for h in run.handles)
    finally:
        run.finish()
    return run.result("threadpool", repeat, watch)
