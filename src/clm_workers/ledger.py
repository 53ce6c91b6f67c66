"""Who owns the started workers: the single list cleanup reads from."""

from __future__ import annotations

import threading

from .executors.base import WorkerHandle


class LiveWorkers:
    """The set of workers that are started and not yet stopped.

    :meth:`own` is called in the spawning thread, the moment the executor
    returns a handle and before control goes back to Trio, so no checkpoint
    (and so no cancellation) can fall between a worker existing and cleanup
    knowing about it.  Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[WorkerHandle, None] = {}  # insertion-ordered set

    def own(self, handle: WorkerHandle) -> WorkerHandle:
        with self._lock:
            self._handles[handle] = None
        return handle

    def disown(self, handle: WorkerHandle) -> None:
        with self._lock:
            self._handles.pop(handle, None)

    def snapshot(self) -> list[WorkerHandle]:
        with self._lock:
            return list(self._handles)

    def __len__(self) -> int:
        with self._lock:
            return len(self._handles)

    def __contains__(self, handle: object) -> bool:
        with self._lock:
            return handle in self._handles
