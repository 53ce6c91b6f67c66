"""The ``workers.toml`` file, resolved against flags and the environment.

``clm-workers start`` reads its pools and settings from one TOML file.  Each
setting is resolved **flags > environment (``CLM_*``) > file > defaults** and
checked before anything starts; every refusal is one
:class:`~clm_workers.errors.ConfigError` that names the setting, where it
came from (flag, variable, or file and line), the value and what is allowed::

    startup.concurrency (workers.toml, line 4): 0 is not allowed; expected a whole number from 1 to 1000

:data:`SETTINGS` is the single list of settings: the loader, the error
messages and docs/configuration.md's table all follow it (a test checks that
the table lists every one).  The result, :class:`StartSettings`, holds plain
arguments for :func:`clm_workers.open_worker_pool` /
:class:`~clm_workers.WorkerPoolManager`; nothing here starts anything.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .clm.database import check_database
from .clm.generations import PROFILE_CHOICES
from .clm.profile import resolve_configs
from .config import (
    EXECUTION_MODES,
    MAX_WORKERS_PER_CONFIG,
    REGISTRATION_PROTOCOLS,
    SLOT_MODES,
    START_METHODS,
    WorkerConfig,
)
from .errors import ConfigError
from .modules import unrunnable_pool, unrunnable_reason

if TYPE_CHECKING:  # the monitor imports trio: only load_settings needs it
    from .monitor import MonitorSettings

#: The file ``start`` (and ``status``/``stop``) read when no ``--config`` is given.
DEFAULT_CONFIG_NAME = "workers.toml"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

Kind = Literal["int", "seconds", "number", "bool", "choice", "path", "name"]


@dataclass(frozen=True)
class Setting:
    """One pool-wide setting: its key in the file, variable, flag, default and range."""

    key: str
    kind: Kind
    default: object
    allowed: str
    doc: str
    env: str | None = None
    flag: str | None = None
    minimum: float = -math.inf
    maximum: float = math.inf
    choices: tuple[str, ...] = ()


SETTINGS: tuple[Setting, ...] = (
    Setting("database", "path", "jobs.db",
            "a file in an existing, writable folder", "the CLM jobs database; created with CLM's "
            "schema if missing", env="CLM_JOBS_DB_PATH", flag="--db"),
    Setting("workspace", "path", ".", "an existing folder",
            "the workers' working folder (`WORKSPACE_PATH`)", flag="--workspace"),
    Setting("log_dir", "path", None, "a folder (created if missing)",
            "keep each direct worker's output in `<executor id>.log` here (default: "
            "`<database>.logs/<session id>/`, kept for the last 10 sessions)"),
    Setting("worker_log_level", "choice", "INFO", "one of " + ", ".join(LOG_LEVELS),
            "`LOG_LEVEL` given to the workers", choices=LOG_LEVELS),
    Setting("clm_profile", "choice", "auto", "one of " + ", ".join(repr(c) for c in PROFILE_CHOICES),
            "which CLM's worker modules and registration protocol a pool without `module` gets "
            "(`auto`: the CLM installed here)", choices=PROFILE_CHOICES),
    Setting("cache_db", "path", None, "a file in an existing folder",
            "CLM's executed-notebook cache, given to direct workers (default: `clm_cache.db` "
            "beside the database)"),
    Setting("lease_ttl", "seconds", 10.0, "1-3600 s",
            "how long containers outlive a manager that died without stopping them",
            env="CLM_SESSION_LEASE_TTL", minimum=1.0, maximum=3600.0),
    Setting("serve_builds", "bool", False, "true or false",
            "every CLM build on the database may use the pool (`clm build` reuses its workers), not only "
            "jobs of its own session"),
    Setting("startup.concurrency", "int", 10, "a whole number from 1 to 1000",
            "how many workers are spawned at once", env="CLM_MAX_WORKER_STARTUP_CONCURRENCY",
            flag="--concurrency", minimum=1, maximum=1000),
    Setting("startup.registration_timeout", "seconds", 10.0, "0.1-3600 s",
            "a worker not registered by then is stopped and reported (`timeout`)",
            env="CLM_WORKER_REGISTRATION_TIMEOUT", flag="--registration-timeout",
            minimum=0.1, maximum=3600.0),
    Setting("startup.slot_mode", "choice", "spawn", "one of 'spawn', 'registration'",
            "`spawn`: the concurrency bounds spawns; `registration`: a worker holds its slot until "
            "it registered", flag="--slot-mode", choices=SLOT_MODES),
    Setting("startup.fail_fast", "bool", False, "true or false",
            "make the first failed worker fatal for the whole pool", flag="--fail-fast"),
    Setting("startup.poll_interval", "seconds", 0.01, "0.001-5 s",
            "how often registrations are polled", env="CLM_REGISTRATION_POLL_INTERVAL",
            minimum=0.001, maximum=5.0),
    Setting("stop.grace", "seconds", 5.0, "0-600 s",
            "SIGTERM-to-SIGKILL grace when stopping workers", env="CLM_WORKER_STOP_TIMEOUT",
            flag="--stop-grace", minimum=0.0, maximum=600.0),
    Setting("docker.network", "name", None, "a Docker network name of letters, digits, '_', '.', '-'",
            "the network every container joins, created if missing (default: Docker's bridge)",
            env="CLM_DOCKER_NETWORK"),
    Setting("monitor.interval", "seconds", 1.0, "0.05-3600 s", "time between health checks",
            minimum=0.05, maximum=3600.0),
    Setting("monitor.heartbeat_timeout", "seconds", 10.0, "1-86400 s, at least interval + 1 s",
            "no heartbeat for this long makes a worker `hung`", minimum=1.0, maximum=86400.0),
    Setting("monitor.hung_timeout", "seconds", 30.0, "1-86400 s, at least heartbeat_timeout",
            "a worker silent for this long is killed and replaced", minimum=1.0, maximum=86400.0),
    Setting("monitor.progress_timeout", "seconds", 300.0, "1-86400 s, at least heartbeat_timeout",
            "a busy worker without CPU time or any heartbeat for this long is killed and replaced",
            minimum=1.0, maximum=86400.0),
    Setting("monitor.max_job_time", "seconds", 600.0, "1-86400 s",
            "a job running for longer is given up: its worker is killed and replaced, the job "
            "requeued (or failed after its attempts)", minimum=1.0, maximum=86400.0),
    Setting("monitor.restart.enabled", "bool", True, "true or false",
            "replace workers that die after registering"),
    Setting("monitor.restart.backoff_initial", "seconds", 0.5, "0-3600 s",
            "wait before the first replacement of a type", minimum=0.0, maximum=3600.0),
    Setting("monitor.restart.backoff_factor", "number", 2.0, "a number from 1 to 100",
            "each further death within the window multiplies the wait", minimum=1.0, maximum=100.0),
    Setting("monitor.restart.backoff_max", "seconds", 30.0, "0-86400 s, at least backoff_initial",
            "cap of the wait", minimum=0.0, maximum=86400.0),
    Setting("monitor.restart.flap_limit", "int", 5, "a whole number from 1 to 1000",
            "this many deaths of one type within the window stop its restarts",
            minimum=1, maximum=1000),
    Setting("monitor.restart.flap_window", "seconds", 60.0, "1-86400 s",
            "the window for backoff and flap counting", minimum=1.0, maximum=86400.0),
)

SETTINGS_BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class PoolKey:
    """One key of a ``[[pools]]`` entry."""

    key: str
    field: str  # the WorkerConfig field
    default: str
    allowed: str
    doc: str


POOL_KEYS: tuple[PoolKey, ...] = (
    PoolKey("type", "worker_type", "(required)", "a name of letters, digits, '_', '.', '-'",
            "the worker type, e.g. `notebook`, `plantuml`, `drawio`"),
    PoolKey("count", "count", "(required)", f"a whole number from 0 to {MAX_WORKERS_PER_CONFIG}",
            "how many workers of this pool"),
    PoolKey("mode", "execution_mode", "`direct`", "one of " + ", ".join(repr(m) for m in EXECUTION_MODES),
            "`direct`: a subprocess; `docker`: a container"),
    PoolKey("image", "image", "none", "an image name; required when mode is 'docker'",
            "the worker image (docker only)"),
    PoolKey("memory", "memory_limit", "`1g`", "a size such as '512m' or '1g'",
            "the container's memory limit (docker only)"),
    PoolKey("module", "module", "CLM's: notebook `nb`, plantuml `plantuml_converter`, drawio "
            "`drawio_converter`", "a dotted module name; for direct workers one that "
            "`python -m` can run", "the module the worker runs"),
    PoolKey("env", "env", "`{}`", "a table of variable names to strings (numbers are converted)",
            "extra environment for the workers"),
    PoolKey("start_method", "start_method", "`spawn`",
            "one of " + ", ".join(repr(m) for m in START_METHODS) + "; 'spawn' for docker pools",
            "`spawn`: a fresh interpreter per worker; `forkserver`: fork each worker from a template "
            "that imported `preload` once (direct pools only)"),
    PoolKey("preload", "preload", "for CLM's own modules, their worker's imports (e.g. "
            "`clm.workers.notebook.notebook_worker`); else none", "a list of dotted module names",
            "what a `forkserver` pool's template imports once for all its workers"),
    PoolKey("registration", "registration", "`pre`",
            "one of " + ", ".join(repr(r) for r in REGISTRATION_PROTOCOLS),
            "`pre`: the manager inserts the row (CLM 1.x); `self`: the worker does (CLM 0.3)"),
)

_POOL_FIELD_TO_KEY = {k.field: k.key for k in POOL_KEYS}
_POOL_KEY_NAMES = tuple(k.key for k in POOL_KEYS)
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class StartSettings:
    """Everything ``clm-workers start`` needs, resolved and checked."""

    config_file: Path | None
    db_path: Path
    workspace_path: Path
    worker_configs: tuple[WorkerConfig, ...]
    monitor: MonitorSettings
    #: Keyword arguments of :class:`~clm_workers.WorkerPoolManager` (and ``open_worker_pool``).
    manager_options: Mapping[str, Any] = field(default_factory=dict)
    #: Where each value came from: ``{"startup.concurrency": "env CLM_..."}``.
    sources: Mapping[str, str] = field(default_factory=dict)
    #: For messages that point into the file: (pool index, key) -> "workers.toml, line 7".
    pool_locations: Mapping[tuple[int, str], str] = field(default_factory=dict)

    @property
    def total_workers(self) -> int:
        return sum(c.count for c in self.worker_configs)


class ConfigFileError(ConfigError):
    """A :class:`ConfigError` about the file itself (syntax, unknown key), with its own wording."""

    def __init__(self, setting: str, value: object, allowed: str, message: str) -> None:
        super().__init__(setting, value, allowed)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


# -- the file ---------------------------------------------------------------------


def default_config_path(cwd: Path | None = None) -> Path | None:
    """``./workers.toml`` when it exists, else ``None``."""
    candidate = (cwd or Path.cwd()) / DEFAULT_CONFIG_NAME
    return candidate if candidate.is_file() else None


def read_config_file(path: Path, shown_as: str | None = None) -> tuple[dict[str, Any], _Locator]:
    """Parse the TOML file; a syntax error becomes a one-line :class:`ConfigFileError` with its line."""
    name = shown_as or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("--config", name, "an existing TOML file such as 'workers.toml'") from None
    except IsADirectoryError:
        raise ConfigError("--config", name, "a TOML file, not a folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", name, f"a readable UTF-8 TOML file ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc)
        match = re.search(r"line (\d+)", detail)
        where = f"{name}, line {match.group(1)}" if match else name
        raise ConfigFileError(
            name, detail, "valid TOML",
            f"{where}: not valid TOML: {detail}",
        ) from None
    return data, _Locator(name, text)


def load_settings(
    config_path: Path | None,
    *,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    shown_as: str | None = None,
    cwd: Path | None = None,
) -> StartSettings:
    """Resolve every setting (flags > environment > file > defaults) and check it.

    ``flags`` maps setting keys (``"startup.concurrency"``) to values given on
    the command line (strings, or ``bool`` for switches); ``None`` values are
    ignored.  Relative paths in the file are relative to the file's folder;
    from flags and the environment, to ``cwd``.  Raises :class:`ConfigError`.
    Starts nothing and imports no worker module (see :func:`check_modules`).
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    if config_path is None:
        data: dict[str, Any] = {}
        locator = _Locator("(no config file)", "")
        base = cwd
    else:
        data, locator = read_config_file(config_path, shown_as)
        base = config_path.resolve().parent
    _check_keys(data, locator)

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        value, source, relative_to = _resolve(setting, data, flags, environ, locator, base, cwd)
        values[setting.key] = _check_value(setting, value, source, relative_to)
        sources[setting.key] = source

    def where(key: str) -> str:
        return _describe(key, sources[key])

    monitor_interval = float(values["monitor.interval"])  # type: ignore[arg-type]
    heartbeat = float(values["monitor.heartbeat_timeout"])  # type: ignore[arg-type]
    if heartbeat < monitor_interval + 1.0:
        raise ConfigError(
            where("monitor.heartbeat_timeout"), heartbeat,
            f"at least monitor.interval + 1 s ({monitor_interval + 1.0:g} s): heartbeats are "
            "compared with 1 s resolution",
        )
    hung = float(values["monitor.hung_timeout"])  # type: ignore[arg-type]
    if hung < heartbeat:
        raise ConfigError(where("monitor.hung_timeout"), hung,
                          f"at least monitor.heartbeat_timeout ({heartbeat:g} s)")
    progress = float(values["monitor.progress_timeout"])  # type: ignore[arg-type]
    if progress < heartbeat:
        raise ConfigError(where("monitor.progress_timeout"), progress,
                          f"at least monitor.heartbeat_timeout ({heartbeat:g} s)")
    backoff_initial = float(values["monitor.restart.backoff_initial"])  # type: ignore[arg-type]
    backoff_max = float(values["monitor.restart.backoff_max"])  # type: ignore[arg-type]
    if backoff_max < backoff_initial:
        raise ConfigError(where("monitor.restart.backoff_max"), backoff_max,
                          f"at least monitor.restart.backoff_initial ({backoff_initial:g} s)")

    db_path = values["database"]
    workspace = values["workspace"]
    assert isinstance(db_path, Path) and isinstance(workspace, Path)
    _check_database_path(db_path, where("database"))
    if not workspace.is_dir():
        raise ConfigError(where("workspace"), str(workspace), "an existing folder")
    log_dir = values["log_dir"]
    if log_dir is not None:
        assert isinstance(log_dir, Path)
        if log_dir.exists() and not log_dir.is_dir():
            raise ConfigError(where("log_dir"), str(log_dir), "a folder (created if missing)")

    configs, pool_locations = _pools(data, locator)

    from .monitor import MonitorSettings
    from .restart import RestartPolicy

    monitor = MonitorSettings(
        interval=monitor_interval,
        heartbeat_timeout=heartbeat,
        hung_timeout=hung,
        progress_timeout=progress,
        max_job_time=float(values["monitor.max_job_time"]),  # type: ignore[arg-type]
        restart=RestartPolicy(
            enabled=bool(values["monitor.restart.enabled"]),
            backoff_initial=backoff_initial,
            backoff_factor=float(values["monitor.restart.backoff_factor"]),  # type: ignore[arg-type]
            backoff_max=backoff_max,
            flap_limit=int(values["monitor.restart.flap_limit"]),  # type: ignore[call-overload]
            flap_window=float(values["monitor.restart.flap_window"]),  # type: ignore[arg-type]
        ),
    )
    manager_options: dict[str, Any] = {
        "max_startup_concurrency": values["startup.concurrency"],
        "registration_timeout": values["startup.registration_timeout"],
        "slot_mode": values["startup.slot_mode"],
        "fail_fast": values["startup.fail_fast"],
        "stop_timeout": values["stop.grace"],
        "poll_interval": values["startup.poll_interval"],
        "log_level": values["worker_log_level"],
        "log_dir": log_dir,
        "lease_ttl": values["lease_ttl"],
        "clm_profile": values["clm_profile"],
        "cache_db_path": values["cache_db"],
        "docker_network": values["docker.network"],
        "serve_builds": values["serve_builds"],
    }
    return StartSettings(
        config_file=config_path,
        db_path=db_path,
        workspace_path=workspace,
        worker_configs=tuple(configs),
        monitor=monitor,
        manager_options=manager_options,
        sources=sources,
        pool_locations=pool_locations,
    )


def resolve_database(
    config_path: Path | None,
    *,
    flag: str | None,
    environ: Mapping[str, str] | None = None,
    shown_as: str | None = None,
    cwd: Path | None = None,
) -> tuple[Path, str] | None:
    """The database for ``status``/``stop``/``jobs``/``logs``/``submit``:
    ``--db`` > ``CLM_JOBS_DB_PATH`` > the file's ``database``.

    Returns the path and where it came from (for messages), or ``None`` when
    nothing names one.  Of the file only ``database`` is read (and the file
    must be valid TOML): a mistake elsewhere in it must not keep anyone from
    looking at, or stopping, a pool.
    """
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    if flag:
        return _absolute(Path(flag), cwd), "--db"
    env_value = environ.get("CLM_JOBS_DB_PATH", "").strip()
    if env_value:
        return _absolute(Path(env_value), cwd), "database (env CLM_JOBS_DB_PATH)"
    if config_path is None:
        return None
    found = _file_path(config_path, "database", shown_as)
    assert found is not None  # database has a default
    return found


def resolve_log_dir(
    config_path: Path | None, *, flag: str | None, shown_as: str | None = None, cwd: Path | None = None
) -> Path | None:
    """Where a pool wrote its workers' logs: ``--log-dir`` > the file's ``log_dir``; ``None``: the default
    beside the database (:mod:`clm_workers.logfiles`).  Of the file only ``log_dir`` is read."""
    if flag:
        return _absolute(Path(os.path.expanduser(flag)), cwd or Path.cwd())
    if config_path is None:
        return None
    found = _file_path(config_path, "log_dir", shown_as)
    return None if found is None else found[0]


def _file_path(config_path: Path, key: str, shown_as: str | None) -> tuple[Path, str] | None:
    """One top-level path setting of the file (its default when absent), relative to the file's folder."""
    data, locator = read_config_file(config_path, shown_as)
    default = SETTINGS_BY_KEY[key].default
    raw = data.get(key, default)
    if raw is None:
        return None
    where = f"{key} ({locator.where((key,))})"
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(where, raw, "a file path" if key == "database" else "a folder path")
    return _absolute(Path(os.path.expanduser(raw)), config_path.resolve().parent), where


# -- checks that need the machine ---------------------------------------------------


def check_modules(settings: StartSettings) -> None:
    """Refuse a direct pool whose module ``python -m`` could not run, before anything starts.

    The same check as :class:`WorkerPoolManager`'s, pointing at the file's line.
    """
    resolved = resolve_configs(settings.worker_configs, settings.manager_options["clm_profile"])
    index = unrunnable_pool(resolved, settings.workspace_path)
    if index is None:
        return
    where = settings.pool_locations.get((index, "module")) or settings.pool_locations.get((index, ""), "")
    raise ConfigError(
        f"pools[{index}].module" + (f" ({where})" if where else ""), resolved[index].module,
        unrunnable_reason(settings.workspace_path, defaulted=settings.worker_configs[index].module is None),
    )


def _check_database_path(path: Path, where: str) -> None:
    folder = path.parent
    allowed = "a file in an existing, writable folder"
    if path.is_dir():
        raise ConfigError(where, str(path), "a database file, not a folder")
    if not folder.exists():
        raise ConfigError(where, str(path), f"{allowed} ({folder} does not exist)")
    if not folder.is_dir():
        raise ConfigError(where, str(path), f"{allowed} ({folder} is not a folder)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(where, str(path), f"{allowed} ({folder} is not writable)")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(where, str(path), "a database file this user can read and write")
    check_database(path, where)  # another application's file: refused, left as it is


# -- resolution ---------------------------------------------------------------------


def _resolve(
    setting: Setting,
    data: Mapping[str, Any],
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    locator: _Locator,
    base: Path,
    cwd: Path,
) -> tuple[object, str, Path]:
    """(raw value, where it came from, folder that relative paths start from)."""
    if setting.key in flags:
        return flags[setting.key], f"flag {setting.flag}", cwd
    if setting.env is not None:
        raw = environ.get(setting.env, "").strip()
        if raw:
            return _from_text(setting, raw), f"env {setting.env}", cwd
    path = tuple(setting.key.split("."))
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return setting.default, "default", base
        node = node[part]
    return node, f"file {locator.where(path)}", base


def _from_text(setting: Setting, raw: str) -> object:
    """A value from a flag or variable (text) as the kind's Python type, if it parses."""
    try:
        if setting.kind == "int":
            return int(raw)
        if setting.kind in ("seconds", "number"):
            return float(raw)
    except ValueError:
        return raw  # refused by _check_value with the full message
    if setting.kind == "bool":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    return raw


def _describe(key: str, source: str) -> str:
    """``startup.concurrency (workers.toml, line 4)``, ``--concurrency``, ``x (env CLM_X)``."""
    if source.startswith("flag "):
        return source.removeprefix("flag ")
    if source.startswith("file "):
        return f"{key} ({source.removeprefix('file ')})"
    if source == "default":
        return key
    return f"{key} ({source})"


def _check_value(setting: Setting, value: object, source: str, relative_to: Path) -> object:
    where = _describe(setting.key, source)
    kind = setting.kind
    if isinstance(value, str) and source.startswith("flag ") and kind in ("int", "seconds", "number"):
        value = _from_text(setting, value)
    if kind in ("int", "seconds", "number"):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok and kind == "int" and isinstance(value, float) and not value.is_integer():
            ok = False
        if not ok or not (setting.minimum <= value <= setting.maximum):  # type: ignore[operator]
            raise ConfigError(where, value, _allowed_number(setting))
        assert isinstance(value, int | float)
        return int(value) if kind == "int" else float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(where, value, "true or false")
        return value
    if kind == "choice":
        text = value.upper() if isinstance(value, str) and setting.choices == LOG_LEVELS else value
        if text not in setting.choices:
            raise ConfigError(where, value, "one of " + ", ".join(repr(c) for c in setting.choices))
        return text
    if kind == "name":
        if value is None:
            return None
        if not isinstance(value, str) or not _NETWORK_NAME.fullmatch(value):
            raise ConfigError(where, value, setting.allowed)
        return value
    # path
    if value is None:
        return None
    if not isinstance(value, str | Path) or not str(value).strip():
        raise ConfigError(where, value, "a path")
    return _absolute(Path(os.path.expanduser(str(value))), relative_to)


def _allowed_number(setting: Setting) -> str:
    if setting.kind == "int":
        return f"a whole number from {setting.minimum:g} to {setting.maximum:g}"
    if setting.kind == "number":
        return f"a number from {setting.minimum:g} to {setting.maximum:g}"
    return f"a number of seconds from {setting.minimum:g} to {setting.maximum:g}"


def _absolute(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


# -- the pools -----------------------------------------------------------------------


def _pools(
    data: Mapping[str, Any], locator: _Locator
) -> tuple[list[WorkerConfig], dict[tuple[int, str], str]]:
    pools = data.get("pools")
    if pools is None:
        raise missing_setting(f"pools ({locator.name})",
                       "at least one [[pools]] table, e.g. type = \"notebook\", count = 4")
    if not isinstance(pools, list) or not all(isinstance(p, dict) for p in pools):
        raise ConfigError(f"pools ({locator.where(('pools',))})", pools, "[[pools]] tables")
    configs: list[WorkerConfig] = []
    locations: dict[tuple[int, str], str] = {}
    for index, pool in enumerate(pools):
        for key in (*_POOL_KEY_NAMES, ""):
            locations[(index, key)] = locator.where(("pools", index, key) if key else ("pools", index))
        for required in ("type", "count"):
            if required not in pool:
                raise missing_setting(f"pools[{index}].{required} ({locations[(index, '')]})",
                               "a value: every [[pools]] table needs type and count")
        env = pool.get("env", {})
        if not isinstance(env, dict):
            raise ConfigError(f"pools[{index}].env ({locations[(index, 'env')]})", env,
                              "a table such as { CLM_SIM_BOOT_DELAY = \"1.0\" }")
        for name, value in env.items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ConfigError(f"pools[{index}].env.{name} ({locations[(index, 'env')]})", value,
                                  "a string, or a number (converted to a string)")
        env = {k: v if isinstance(v, str) else str(v) for k, v in env.items()}
        try:
            configs.append(WorkerConfig(
                worker_type=pool["type"],
                count=pool["count"],
                execution_mode=pool.get("mode", "direct"),
                image=pool.get("image"),
                memory_limit=pool.get("memory", "1g"),
                module=pool.get("module"),
                env=env,
                registration=pool.get("registration"),
                start_method=pool.get("start_method", "spawn"),
                preload=pool.get("preload"),
            ))
        except ConfigError as exc:
            raise _in_file(exc, index, locations) from None
    if pools and sum(c.count for c in configs) == 0:
        raise ConfigError(f"pools ({locator.where(('pools',))})", 0,
                          "at least one worker in total (every count is 0)")
    return configs, locations


def _in_file(exc: ConfigError, index: int, locations: Mapping[tuple[int, str], str]) -> ConfigError:
    """WorkerConfig's error, renamed to the file's keys and pointed at the line."""
    field_name, _, rest = exc.setting.partition(" ")
    base, bracket, inner = field_name.partition("[")
    key = _POOL_FIELD_TO_KEY.get(base, base)
    shown = f"pools[{index}].{key}" + (f".{inner.rstrip(']')}" if bracket else "")
    allowed = exc.allowed.replace("execution_mode", "mode")
    if exc.value is None:
        return missing_setting(f"{shown} ({locations.get((index, key), locations[(index, '')])})", allowed)
    return ConfigError(f"{shown} ({locations.get((index, key), locations[(index, '')])})", exc.value, allowed)


def missing_setting(setting: str, allowed: str) -> ConfigFileError:
    """``setting: missing; expected allowed`` (a :class:`ConfigError` for a value not given)."""
    return ConfigFileError(setting, None, allowed, f"{setting}: missing; expected {allowed}")


# -- unknown keys ---------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    """The tree of allowed keys: tables are dicts, values ``None``; pools a list marker."""
    tree: dict[str, Any] = {}
    for setting in SETTINGS:
        node = tree
        *tables, leaf = setting.key.split(".")
        for table in tables:
            node = node.setdefault(table, {})
        node[leaf] = None
    tree["pools"] = [dict.fromkeys(_POOL_KEY_NAMES)]
    return tree


def _check_keys(data: Mapping[str, Any], locator: _Locator) -> None:
    all_keys = [s.key for s in SETTINGS]
    _check_table(data, _schema(), (), locator, all_keys)


def _check_table(
    data: Mapping[str, Any], schema: Mapping[str, Any], path: tuple[str | int, ...], locator: _Locator,
    all_keys: list[str],
) -> None:
    for key, value in data.items():
        here = (*path, key)
        dotted = _dotted(here)
        if key not in schema:
            raise _unknown_key(key, dotted, schema, path, locator, all_keys)
        expected = schema[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} ({locator.where(here)})", value, f"a table [{dotted}]")
            _check_table(value, expected, here, locator, all_keys)
        elif isinstance(expected, list):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{dotted} ({locator.where(here)})", value,
                                  f"[[{dotted}]] tables (an array of tables)")
            for index, item in enumerate(value):
                _check_table(item, expected[0], (*here, index), locator, all_keys)


def _unknown_key(
    key: str, dotted: str, schema: Mapping[str, Any], path: tuple[str | int, ...], locator: _Locator,
    all_keys: list[str],
) -> ConfigFileError:
    siblings = sorted(schema)
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{close[0]}'?"
    else:
        # The right key in the wrong table: 'concurrency' at the top -> 'startup.concurrency'.
        elsewhere = [k for k in all_keys if k.rsplit(".", 1)[-1] == key]
        elsewhere += difflib.get_close_matches(key, all_keys, n=1, cutoff=0.75)
        hint = f"did you mean '{elsewhere[0]}'?" if elsewhere else ""
    table = f"[{_dotted(path)}]" if path else "the top level"
    if path and isinstance(path[-1], int):
        table = f"[[{_dotted(path[:-1])}]]"
    allowed = ", ".join(siblings)
    message = f"{locator.where((*path, key))}: unknown setting '{dotted}'"
    message += f"; {hint}" if hint else ""
    message += f" (allowed in {table}: {allowed})"
    return ConfigFileError(dotted, key, f"one of {allowed}", message)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Locator:
    """Best-effort line numbers of keys and tables in a TOML text, for messages.

    Follows table headers (``[a.b]``, ``[[pools]]`` with a count per array)
    and ``key = value`` lines (dotted and quoted keys included); a key that is
    not found points at its nearest enclosing table.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.lines: dict[tuple[str | int, ...], int] = {}
        arrays: dict[tuple[str, ...], int] = {}
        table: tuple[str | int, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                names = tuple(self._split(header.group(2)))
                if header.group(1) == "[[":
                    arrays[names] = arrays.get(names, -1) + 1
                    table = (*names, arrays[names])
                else:
                    table = names
                self.lines.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self.lines.setdefault((*table, *self._split(key.group(1))), number)

    @staticmethod
    def _split(dotted: str) -> list[str]:
        return [part.strip().strip("\"'") for part in dotted.split(".")]

    def where(self, path: tuple[str | int, ...]) -> str:
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return f"{self.name}, line {line}"
        return self.name


__all__ = [
    "DEFAULT_CONFIG_NAME",
    "LOG_LEVELS",
    "POOL_KEYS",
    "SETTINGS",
    "ConfigFileError",
    "Setting",
    "StartSettings",
    "check_modules",
    "default_config_path",
    "load_settings",
    "missing_setting",
    "read_config_file",
    "resolve_database",
    "resolve_log_dir",
]
