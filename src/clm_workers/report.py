"""What ``start_pools`` hands back: which workers started, which failed and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: ``spawn``: the executor raised. ``exit``: the process ended before registering.
#: ``timeout``: not registered within ``registration_timeout`` (it has been stopped).
FailurePhase = Literal["spawn", "exit", "timeout"]


@dataclass(frozen=True)
class StartedWorker:
    """A worker that registered.  Times are seconds since ``start_pools`` began."""

    worker_type: str
    index: int
    executor_id: str
    db_worker_id: int
    spawned_at: float
    registered_at: float
    pid: int | None = None
    #: ``spawn`` or ``forkserver``: how its process was made (docker workers: ``spawn``).
    start_method: str = "spawn"
    #: Why it was started otherwise than its pool asked ("" when it was not).
    note: str = ""

    @property
    def registration_seconds(self) -> float:
        """From the end of its spawn to its registration being noticed."""
        return self.registered_at - self.spawned_at


@dataclass(frozen=True)
class FailedWorker:
    """A worker that did not start; nothing of it is left running."""

    worker_type: str
    index: int
    phase: FailurePhase
    reason: str
    executor_id: str | None = None
    exit_code: int | None = None
    #: The last lines of the worker's stderr, when there was a process.
    output_tail: str = ""
    start_method: str = "spawn"
    note: str = ""


@dataclass
class StartupReport:
    started: list[StartedWorker] = field(default_factory=list)
    failed: list[FailedWorker] = field(default_factory=list)
    #: Seconds from the start of ``start_pools`` until every worker was accounted for.
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def notes(self) -> list[str]:
        """Each distinct note of the workers (a fork server that fell back to spawn, and why), by type."""
        seen: dict[str, None] = {}
        for worker_type, note in [*((w.worker_type, w.note) for w in self.started),
                                  *((f.worker_type, f.note) for f in self.failed)]:
            if note:
                seen.setdefault(f"{worker_type}: {note}")
        return list(seen)

    def summary(self) -> str:
        total = len(self.started) + len(self.failed)
        text = f"{len(self.started)}/{total} workers registered in {self.duration:.2f} s"
        if self.failed:
            text += f"; {len(self.failed)} failed"
        return text


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one worker's start, for live displays.

    ``kind`` is ``spawned``, ``registered`` or ``failed``; ``elapsed`` is
    seconds since ``start_pools`` began.  A ``failed`` event has the phase
    and, as ``detail``, the reason of its :class:`FailedWorker`.
    """

    kind: Literal["spawned", "registered", "failed"]
    worker_type: str
    index: int
    elapsed: float
    detail: str = ""
    phase: FailurePhase | None = None
