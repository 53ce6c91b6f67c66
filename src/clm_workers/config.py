"""Validated configuration: :class:`WorkerConfig` and the pool-wide settings.

Every check raises :class:`~clm_workers.errors.ConfigError` naming the
setting, the value and what is allowed, so that bad input is refused before
anything starts.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from .clm.generations import JOBS_DB_VARIABLES
from .errors import ConfigError
from .plan import ExecutionMode, Registration, StartMethod

EXECUTION_MODES = ("direct", "docker")
START_METHODS = ("spawn", "forkserver")
REGISTRATION_PROTOCOLS = ("pre", "self")
SLOT_MODES = ("spawn", "registration")

MAX_WORKERS_PER_CONFIG = 1000
#: A worker type is part of every executor id, log file and container name: keep those well
#: inside the file system's 255 bytes (CLM's types are 6 to 8 characters).
MAX_WORKER_TYPE_LENGTH = 64

_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_WORKER_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MEMORY_LIMIT = re.compile(r"[0-9]+[bkmgBKMG]?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Docker's image reference grammar (distribution/reference): [host[:port]/]path[:tag][@digest],
# or an image id.  Checked here so that a typo is bad input, not a failed start.
_IMAGE_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_IMAGE_HOST = rf"(?:{_IMAGE_HOST_PART}(?:\.{_IMAGE_HOST_PART})*(?::[0-9]+)?/)"
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    rf"{_IMAGE_HOST}?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
    r"|sha256:[0-9a-f]{64}"
)
MAX_IMAGE_NAME_LENGTH = 255

#: What the manager sets for each worker itself: which session, row, database and
#: lifeline it belongs to.  A config's ``env`` may not override them (it would undo
#: the isolation of sessions: a worker claiming another session's jobs or row).
RESERVED_ENV = frozenset({
    "CLM_SESSION_ID", "CLM_WORKER_ID", "WORKER_ID", "WORKER_TYPE", "WORKSPACE_PATH", "CLM_LIFELINE_FD",
    "CLM_WORKER_MODULE", *JOBS_DB_VARIABLES,
})

SlotMode = Literal["spawn", "registration"]


@dataclass(frozen=True)
class WorkerConfig:
    """One pool: ``count`` workers of one type, started one way.

    ``module`` (run as ``python -m``) and ``registration`` (``"pre"``: the
    manager inserts the row first, CLM 1.x; ``"self"``: the worker inserts its
    own, CLM 0.3) default to what the CLM in use does for ``worker_type``
    (see :mod:`clm_workers.clm`); the manager fills them in.

    ``start_method`` (direct workers only): ``"spawn"``, a fresh interpreter
    per worker, or ``"forkserver"``, one template process per module that
    imports ``preload`` once and forks each worker from it (see
    :mod:`clm_workers.executors.forkserver`).  ``preload`` defaults, for
    CLM's own worker modules, to the imports of CLM's worker; else to none.
    """

    worker_type: str
    count: int
    execution_mode: ExecutionMode = "direct"
    image: str | None = None
    memory_limit: str = "1g"
    module: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    registration: Registration | None = None
    start_method: StartMethod = "spawn"
    preload: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_worker_type("worker_type", self.worker_type)
        where = f"worker {self.worker_type!r}"
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not (
            0 <= self.count <= MAX_WORKERS_PER_CONFIG
        ):
            raise ConfigError(
                f"count ({where})", self.count,
                f"a whole number from 0 to {MAX_WORKERS_PER_CONFIG}",
            )
        require_choice(f"execution_mode ({where})", self.execution_mode, EXECUTION_MODES)
        if self.registration is not None:
            require_choice(f"registration ({where})", self.registration, REGISTRATION_PROTOCOLS)
        if self.execution_mode == "docker" and not self.image:
            raise ConfigError(
                f"image ({where})", self.image,
                "an image name such as 'clm-workers-sim:latest' when execution_mode is 'docker'",
            )
        if self.image is not None and not (
            isinstance(self.image, str) and len(self.image) <= MAX_IMAGE_NAME_LENGTH
            and _IMAGE_REFERENCE.fullmatch(self.image)
        ):
            raise ConfigError(
                f"image ({where})", self.image,
                "a Docker image reference such as 'clm-workers-sim:latest' or "
                "'registry.example.com/team/worker:1.2' (lowercase name, optional :tag)",
            )
        if not isinstance(self.memory_limit, str) or not _MEMORY_LIMIT.fullmatch(self.memory_limit):
            raise ConfigError(
                f"memory_limit ({where})", self.memory_limit,
                "a size such as '512m' or '1g'",
            )
        if self.module is not None and (
            not isinstance(self.module, str) or not _DOTTED_NAME.fullmatch(self.module)
        ):
            raise ConfigError(
                f"module ({where})", self.module,
                "a dotted Python module name such as 'clm_workers.sim'",
            )
        require_choice(f"start_method ({where})", self.start_method, START_METHODS)
        if self.start_method == "forkserver" and self.execution_mode != "direct":
            raise ConfigError(
                f"start_method ({where})", self.start_method,
                "'spawn' when execution_mode is 'docker' (a container is created and started, never forked)",
            )
        if self.preload is not None:
            if isinstance(self.preload, str) or not isinstance(self.preload, tuple | list) or not all(
                isinstance(name, str) and _DOTTED_NAME.fullmatch(name) for name in self.preload
            ):
                raise ConfigError(
                    f"preload ({where})", self.preload,
                    "a list of dotted Python module names such as ['clm.workers.notebook.notebook_worker']",
                )
            object.__setattr__(self, "preload", tuple(self.preload))  # frozen: normalise lists once
        for key, value in self.env.items():
            if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
                raise ConfigError(f"env ({where})", key, "variable names like 'LOG_LEVEL'")
            if key in RESERVED_ENV:
                raise ConfigError(
                    f"env ({where})", key,
                    "a variable the manager does not set itself (not one of "
                    f"{', '.join(sorted(RESERVED_ENV))}: they tie a worker to its session, row and "
                    "database)")
            if not isinstance(value, str):
                raise ConfigError(f"env[{key}] ({where})", value, "a string value")


def check_worker_type(setting: str, value: object) -> None:
    """Refuse a worker type that is not a short name of letters, digits, ``_``, ``.``, ``-``."""
    allowed = (f"a name of up to {MAX_WORKER_TYPE_LENGTH} letters, digits, '_', '.', '-' "
               "such as 'notebook'")
    if not isinstance(value, str) or not _WORKER_TYPE.fullmatch(value) or len(value) > MAX_WORKER_TYPE_LENGTH:
        raise ConfigError(setting, value, allowed)


def require_choice(setting: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(setting, value, "one of " + ", ".join(repr(c) for c in choices))


Number = TypeVar("Number", int, float)


def resolve_number(
    setting: str,
    value: object,
    *,
    env_var: str,
    default: Number,
    kind: type[Number],
    minimum: Number,
    maximum: Number,
    environ: Mapping[str, str] | None = None,
) -> Number:
    """An explicit value, else the environment variable, else the default; then checked.

    ``kind`` is ``int`` (a whole number) or ``float`` (any finite number).
    """
    source = setting
    if value is None:
        raw = (os.environ if environ is None else environ).get(env_var)
        if raw is None or raw.strip() == "":
            return default
        source = f"{setting} (env {env_var})"
        value = _parse_number(raw.strip(), kind)
    allowed = (
        f"a whole number from {minimum} to {maximum}"
        if kind is int
        else f"a number of seconds from {minimum:g} to {maximum:g}"
    )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, value, allowed)
    if kind is int and (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(source, value, allowed)
    if not math.isfinite(value) or not (minimum <= value <= maximum):
        raise ConfigError(source, value, allowed)
    return kind(value)


def _parse_number(raw: str, kind: type) -> object:
    try:
        return kind(raw)
    except ValueError:
        return raw  # rejected by the caller with the full message


@dataclass(frozen=True)
class StartupSettings:
    """Pool-wide knobs of the startup engine (already validated)."""

    #: How many spawns run at once (or, in ``registration`` slot mode, how many
    #: workers may be between spawn and registration at once).
    concurrency: int = 10
    registration_timeout: float = 10.0
    #: ``spawn``: the limiter bounds the blocking spawn calls only.
    #: ``registration``: a worker holds its slot until it registered or failed.
    slot_mode: SlotMode = "spawn"
    #: Make the first per-worker failure fatal for the whole pool.
    fail_fast: bool = False
    #: SIGTERM-to-SIGKILL grace when stopping workers.
    stop_grace: float = 5.0
    #: How often the registration watcher polls SQLite.
    poll_interval: float = 0.01

    @property
    def stop_bound(self) -> float:
        """The overall bound on one stop of many workers: grace, then the kills."""
        return self.stop_grace + 10.0


def build_settings(
    *,
    max_startup_concurrency: int | None,
    registration_timeout: float | None,
    slot_mode: str,
    fail_fast: bool,
    stop_timeout: float | None,
    poll_interval: float | None,
    environ: Mapping[str, str] | None = None,
) -> StartupSettings:
    """Resolve explicit arguments > environment > defaults, and validate them."""
    require_choice("slot_mode", slot_mode, SLOT_MODES)
    return StartupSettings(
        concurrency=resolve_number(
            "max_startup_concurrency", max_startup_concurrency,
            env_var="CLM_MAX_WORKER_STARTUP_CONCURRENCY", default=10, kind=int,
            minimum=1, maximum=1000, environ=environ,
        ),
        registration_timeout=resolve_number(
            "registration_timeout", registration_timeout,
            env_var="CLM_WORKER_REGISTRATION_TIMEOUT", default=10.0, kind=float,
            minimum=0.1, maximum=3600.0, environ=environ,
        ),
        slot_mode=slot_mode,  # type: ignore[arg-type]  # checked above
        fail_fast=bool(fail_fast),
        stop_grace=resolve_number(
            "stop_timeout", stop_timeout,
            env_var="CLM_WORKER_STOP_TIMEOUT", default=5.0, kind=float,
            minimum=0.0, maximum=600.0, environ=environ,
        ),
        poll_interval=resolve_number(
            "poll_interval", poll_interval, env_var="CLM_REGISTRATION_POLL_INTERVAL",
            default=0.01, kind=float, minimum=0.001, maximum=5.0, environ=environ,
        ),
    )


_DOCKER_NETWORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def resolve_docker_network(value: str | None) -> str | None:
    """The explicit network, else ``CLM_DOCKER_NETWORK``, else none; checked."""
    setting = "docker_network"
    if value is None:
        value = os.environ.get("CLM_DOCKER_NETWORK", "").strip() or None
        setting = "docker_network (env CLM_DOCKER_NETWORK)"
    if value is not None and (not isinstance(value, str) or not _DOCKER_NETWORK.fullmatch(value)):
        raise ConfigError(setting, value, "a Docker network name of letters, digits, '_', '.', '-'")
    return value
