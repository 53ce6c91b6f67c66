"""clm-workers: start and supervise CLM worker pools with Trio.

The public names are imported lazily (PEP 562): ``python -m clm_workers.sim``
imports this package first, and a worker must not pay for importing trio
(about 100 ms of CPU per worker, see docs/architecture.md).
"""

from __future__ import annotations

import importlib

# Not ``from typing import TYPE_CHECKING``: typing costs every worker ~2 ms of import.
TYPE_CHECKING = False

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "errors",
    "PoolStartupError": "errors",
    "PoolStoppedError": "errors",
    "WorkerConfig": "config",
    "WorkerPoolManager": "manager",
    "StartupReport": "report",
    "StartedWorker": "report",
    "FailedWorker": "report",
    "open_worker_pool": "pool",
    "WorkerPool": "pool",
    "PoolNotReadyError": "pool",
    "MonitorSettings": "monitor",
    "RestartPolicy": "restart",
}

__all__ = [
    "ConfigError",
    "FailedWorker",
    "PoolStartupError",
    "PoolStoppedError",
    "StartedWorker",
    "StartupReport",
    "WorkerConfig",
    "WorkerPoolManager",
    "open_worker_pool",
    "WorkerPool",
    "PoolNotReadyError",
    "MonitorSettings",
    "RestartPolicy",
]

if TYPE_CHECKING:
    from .config import WorkerConfig
    from .errors import ConfigError, PoolStartupError, PoolStoppedError
    from .manager import WorkerPoolManager
    from .monitor import MonitorSettings
    from .pool import PoolNotReadyError, WorkerPool, open_worker_pool
    from .report import FailedWorker, StartedWorker, StartupReport
    from .restart import RestartPolicy


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clm_workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
