"""The CLM installed beside clm-workers, asked rather than assumed.

Direct workers run ``sys.executable -m <module>``, so the CLM that this
interpreter can import is the CLM the workers are.  Everything here asks it:
its version (package metadata, cheap), and only when needed its module map,
its schema version and the settings its own executor hands a worker (those
import parts of CLM: ~0.2-0.4 s once per process, nothing when CLM's own
process already imported them).  Without CLM every answer falls back to
:mod:`.generations`.

Blocking; call from a thread when inside Trio.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .generations import TOOL_VARIABLES, Generation, generation_of

log = logging.getLogger(__name__)

#: CLM's distribution on PyPI.
DISTRIBUTION = "coding-academy-lecture-manager"


@dataclass(frozen=True)
class InstalledClm:
    """The CLM release this interpreter can import (``version`` ``None``: none)."""

    version: str | None

    @property
    def generation(self) -> Generation:
        return generation_of(self.version)

    @functools.cached_property
    def modules(self) -> Mapping[str, str]:
        """Worker type -> module, as CLM's own direct executor maps them."""
        executor = _clm_module("clm.infrastructure.workers.worker_executor") if self.version else None
        own = getattr(getattr(executor, "DirectWorkerExecutor", None), "MODULE_MAP", None)
        if isinstance(own, Mapping) and all(isinstance(v, str) for v in own.values()):
            return dict(own)
        return dict(self.generation.modules)

    @functools.cached_property
    def schema_version(self) -> int | None:
        """CLM's ``DATABASE_VERSION``: the schema its ``init_database`` makes."""
        schema = _clm_module("clm.infrastructure.database.schema") if self.version else None
        version = getattr(schema, "DATABASE_VERSION", None)
        return version if isinstance(version, int) else None

    def init_database(self, db_path: Path) -> bool:
        """Create or migrate ``db_path`` with CLM's own ``init_database``; False without CLM."""
        schema = _clm_module("clm.infrastructure.database.schema") if self.version else None
        init = getattr(schema, "init_database", None)
        if not callable(init):
            return False
        init(db_path)
        return True

    @functools.cached_property
    def worker_settings(self) -> Mapping[str, str]:
        """What CLM's own executor adds to a worker's environment from CLM's configuration.

        The PlantUML jar and Draw.io executable, and (CLM 1.35) the notebook
        worker's Jupyter settings; empty without CLM.  A CLM whose configuration
        cannot be read contributes nothing here: its workers then read the
        same settings from the environment themselves, as CLM's do.
        """
        if self.version is None:
            return {}
        settings: dict[str, str] = {}
        try:
            config = _clm_module("clm.infrastructure.config")
            tools = config.get_config().external_tools if config is not None else None
            for variable in TOOL_VARIABLES:
                value = getattr(tools, variable.lower(), None) if tools is not None else None
                if isinstance(value, str) and value:
                    settings[variable] = value
            executor = _clm_module("clm.infrastructure.workers.worker_executor")
            jupyter = getattr(executor, "_notebook_worker_jupyter_env", None)
            if callable(jupyter):
                settings.update({str(k): str(v) for k, v in jupyter().items()})
        except Exception as exc:  # CLM's configuration is CLM's to report
            log.debug("CLM's worker settings could not be read: %s", exc)
        return settings


    def console_script(self, name: str = "clm") -> Callable[..., Any] | None:
        """CLM's command line (its ``clm`` console script's function), or ``None`` without CLM."""
        if self.version is None:
            return None
        for entry in importlib.metadata.distribution(DISTRIBUTION).entry_points:
            if entry.group == "console_scripts" and entry.name == name:
                loaded = entry.load()
                return loaded if callable(loaded) else None
        return None

    def notebook_kernel_environment(self, python: str) -> dict[str, str]:
        """What CLM 1.35's executor gives a notebook worker whose kernel runs ``python``.

        CLM writes a kernelspec for that interpreter once (raising, with CLM's
        own message, for one that cannot host a kernel) and puts its folder
        first on ``JUPYTER_PATH``.  Empty for a CLM without course kernels.
        """
        kernel_env = _clm_module("clm.infrastructure.workers.kernel_env") if self.version else None
        provision = getattr(kernel_env, "provision_course_kernel", None)
        with_kernel = getattr(kernel_env, "jupyter_path_with_kernel", None)
        if not (python and callable(provision) and callable(with_kernel)):
            return {}
        root = provision(Path(python))
        return {"JUPYTER_PATH": str(with_kernel(root, os.environ.get("JUPYTER_PATH")))}


@functools.cache
def installed_clm() -> InstalledClm:
    """The CLM this interpreter has (cached for the process)."""
    try:
        return InstalledClm(importlib.metadata.version(DISTRIBUTION))
    except importlib.metadata.PackageNotFoundError:
        return InstalledClm(None)


def _clm_module(name: str) -> Any:
    """Import one of CLM's modules, or ``None`` when this CLM has no such module."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        return None
