"""The startup plan: one :class:`WorkerSpec` per worker to start.

A plain value handed from the configuration to the engine and the executors;
nothing here starts anything.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .config import WorkerConfig

ExecutionMode = Literal["direct", "docker"]
#: How a direct worker's process comes to be: ``spawn``, a fresh interpreter;
#: ``forkserver``, forked from a template that imported its dependencies once.
StartMethod = Literal["spawn", "forkserver"]
#: ``pre``: the manager inserts the row and passes its id (CLM 1.x).
#: ``self``: the worker inserts its own row, found by ``container_id`` (CLM 0.3).
Registration = Literal["pre", "self"]


#: Which executor starts a worker, by (execution mode, start method); any other pair: the mode's.
EXECUTOR_NAMES: Mapping[tuple[str, str], str] = {("direct", "forkserver"): "forkserver"}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything needed to start one worker, decided before any start."""

    worker_type: str
    index: int
    execution_mode: ExecutionMode
    module: str
    registration: Registration
    executor_id: str
    session_id: str
    image: str | None = None
    memory_limit: str = "1g"
    env: Mapping[str, str] = field(default_factory=dict)
    #: The pre-registered row's id; ``None`` until pre-registration (and for ``self``).
    db_worker_id: int | None = None
    start_method: StartMethod = "spawn"
    #: Modules a fork server's template imports once for every worker it forks.
    preload: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        """Identifies the worker within one pool: ``(worker_type, index)``."""
        return (self.worker_type, self.index)

    @property
    def executor_name(self) -> str:
        """The key of the executor that starts this worker (``ThreadedBackend.executors``)."""
        return EXECUTOR_NAMES.get((self.execution_mode, self.start_method), self.execution_mode)

    @property
    def label(self) -> str:
        return f"{self.worker_type}#{self.index}"

    def with_db_id(self, db_worker_id: int) -> WorkerSpec:
        return dataclasses.replace(self, db_worker_id=db_worker_id)

    def respawned(self) -> WorkerSpec:
        """The same worker slot for a replacement: a fresh executor id and row."""
        return dataclasses.replace(
            self,
            executor_id=new_executor_id(self.execution_mode, self.worker_type, self.index),
            db_worker_id=None,
        )


def new_executor_id(mode: ExecutionMode, worker_type: str, index: int) -> str:
    """``direct-<type>-<index>-<hex>``: unique across managers and runs."""
    return f"{mode}-{worker_type}-{index}-{secrets.token_hex(4)}"


def plan_workers(configs: Sequence[WorkerConfig], session_id: str) -> list[WorkerSpec]:
    """Expand configs into specs; indices count per worker type across configs.

    What a config leaves open (``module``, ``registration``) is filled in as
    the installed CLM does it (:func:`clm_workers.clm.profile.resolve_configs`).
    """
    from .clm.profile import resolve_configs  # config -> plan: import at call time

    next_index: dict[str, int] = {}
    specs: list[WorkerSpec] = []
    for config in resolve_configs(configs):
        assert config.module is not None and config.registration is not None
        for _ in range(config.count):
            index = next_index.get(config.worker_type, 0)
            next_index[config.worker_type] = index + 1
            specs.append(
                WorkerSpec(
                    worker_type=config.worker_type,
                    index=index,
                    execution_mode=config.execution_mode,
                    module=config.module,
                    registration=config.registration,
                    executor_id=new_executor_id(config.execution_mode, config.worker_type, index),
                    session_id=session_id,
                    image=config.image,
                    memory_limit=config.memory_limit,
                    env=dict(config.env),
                    start_method=config.start_method,
                    preload=tuple(config.preload or ()),
                )
            )
    return specs
