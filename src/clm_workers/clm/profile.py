"""Filling in what a :class:`WorkerConfig` leaves to CLM: its module and registration protocol."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..config import WorkerConfig, require_choice
from ..errors import ConfigError
from .generations import CACHE_DB_VARIABLES, PROFILE_CHOICES, PROFILES, Generation
from .installed import installed_clm


def resolve_configs(configs: Sequence[WorkerConfig], profile: str = "auto") -> list[WorkerConfig]:
    """Each config with ``module``, ``registration`` and, for a fork server, ``preload`` set.

    ``profile`` ``"auto"`` follows the CLM this interpreter has installed (its
    own module map; without CLM, the current release's names), ``"1.x"`` or
    ``"0.3"`` pins a generation.  Raises :class:`ConfigError` for a worker type
    the profile has no module for.
    """
    require_choice("clm_profile", profile, PROFILE_CHOICES)
    if all(c.module is not None and c.registration is not None and c.preload is not None for c in configs):
        return list(configs)
    generation, modules = _profile(profile, need_modules=any(c.module is None for c in configs))
    resolved = []
    for config in configs:
        module = config.module or modules.get(config.worker_type)
        if module is None:
            raise ConfigError(
                f"module (worker {config.worker_type!r})", None,
                f"a dotted module name: CLM {generation.name} has no {config.worker_type!r} worker "
                f"(its types: {', '.join(sorted(modules))})",
            )
        preload = config.preload
        if preload is None:
            # CLM's list only for CLM's own module of that type, and only where it is used.
            own = config.start_method == "forkserver" and module in (
                modules.get(config.worker_type), generation.module_for(config.worker_type))
            preload = (*generation.preload.get(config.worker_type, ()),
                       *_installed(generation.job_preload.get(config.worker_type, ()))) if own else ()
        resolved.append(dataclasses.replace(
            config, module=module, registration=config.registration or generation.registration,
            preload=preload,
        ))
    return resolved


def fork_server_types(profile: str = "auto") -> frozenset[str]:
    """CLM's worker types whose own modules are known to preload and fork safely.

    The types with a preload list (for CLM 1.x: notebook, plantuml, drawio,
    jupyterlite; none for CLM 0.3).  A caller that wants the fork server by
    default for CLM's types (``start_method="forkserver"``) asks here; a
    module that turns out unsafe still falls back to spawn, with the reason.
    """
    require_choice("clm_profile", profile, PROFILE_CHOICES)
    generation = PROFILES[profile] if profile != "auto" else installed_clm().generation
    return frozenset(generation.preload)


def _profile(profile: str, *, need_modules: bool) -> tuple[Generation, Mapping[str, str]]:
    if profile != "auto":
        generation = PROFILES[profile]
        return generation, generation.modules
    installed = installed_clm()
    # CLM's own module map costs an import of CLM's executor: only when asked for.
    return installed.generation, installed.modules if need_modules else installed.generation.modules


def _installed(modules: Sequence[str]) -> tuple[str, ...]:
    """The ``modules`` whose top-level package this interpreter has (looked up, not imported)."""
    found = []
    for module in modules:
        try:
            if importlib.util.find_spec(module.split(".", 1)[0]) is not None:
                found.append(module)
        except (ImportError, ValueError):
            continue
    return tuple(found)


def worker_environment(configs: Sequence[WorkerConfig], cache_db_path: Path) -> dict[str, str]:
    """What CLM's own executor adds to a direct worker's environment, for these pools.

    The executed-notebook cache in every spelling (unset, CLM's worker would
    create ``clm_cache.db`` in its working folder, the course output), and
    for pools of CLM's own workers the settings CLM's configuration gives
    them (tool paths, Jupyter settings).
    """
    env = {variable: str(cache_db_path) for variable in CACHE_DB_VARIABLES}
    if any(c.module is not None and c.module.split(".", 1)[0] == "clm" for c in configs):
        env.update(installed_clm().worker_settings)
    return env
