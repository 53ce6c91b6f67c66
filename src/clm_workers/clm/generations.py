"""What differs between CLM's generations, as data.

| | CLM 0.3 | CLM 1.9.2 | CLM 1.35 |
|---|---|---|---|
| worker modules | ``nb``, ``plantuml_converter``, ``drawio_converter`` | ``clm.workers.<type>`` | same |
| registration | the worker inserts its row | the manager pre-registers it | same |
| jobs database variable | ``DB_PATH`` | ``DB_PATH`` | ``CLM_JOBS_DB_PATH`` |
| notebook cache variable | none | ``CACHE_DB_PATH`` | ``CLM_CACHE_DB_PATH`` |
| schema version | 3 | 8 | 11 |
| fork server preload | none | ``clm.workers.<type>.<type>_worker`` (+ ``IPython.lib.lexers``) | same |

Where a variable's spelling changed, a worker gets every spelling: each
generation reads its own and ignores the others, so nothing here depends on
telling 1.9.2 from 1.35.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..plan import Registration

#: The variables that name the jobs database, oldest spelling first.
JOBS_DB_VARIABLES = ("DB_PATH", "CLM_JOBS_DB_PATH")
#: The variables that name the executed-notebook cache (unset, CLM puts
#: ``clm_cache.db`` in the worker's working folder: the course output).
CACHE_DB_VARIABLES = ("CACHE_DB_PATH", "CLM_CACHE_DB_PATH")
#: Host tool paths CLM's own executor hands its PlantUML and Draw.io workers.
TOOL_VARIABLES = ("PLANTUML_JAR", "DRAWIO_EXECUTABLE")


@dataclass(frozen=True)
class Generation:
    """How one generation of CLM's workers is started."""

    name: str
    #: Worker type -> the module a direct worker runs as ``python -m``.
    modules: Mapping[str, str]
    #: ``self``: the worker inserts its own row; ``pre``: the manager does, first.
    registration: Registration
    #: Worker type -> what a fork server's template imports for it (``start_method="forkserver"``).
    preload: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Worker type -> what its worker imports only in its first job; the template imports these
    #: too, each where its top-level package is installed.
    job_preload: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def module_for(self, worker_type: str) -> str | None:
        return self.modules.get(worker_type)


CLM_0_3 = Generation(
    name="0.3",
    modules=MappingProxyType(
        {"notebook": "nb", "plantuml": "plantuml_converter", "drawio": "drawio_converter"}
    ),
    registration="self",
)

CLM_1 = Generation(
    name="1.x",
    modules=MappingProxyType({
        "notebook": "clm.workers.notebook",
        "plantuml": "clm.workers.plantuml",
        "drawio": "clm.workers.drawio",
        "jupyterlite": "clm.workers.jupyterlite",
    }),
    registration="pre",
    # The module that holds each worker's class: importing it imports all that
    # the worker needs to boot (jupytext, nbconvert, pydantic, httpx, CLM's
    # infrastructure: about 0.5 s of CPU in 1.9.2, 1 s in 1.35).  It reads its
    # settings from the environment when imported (DB_PATH, LOG_LEVEL): the
    # pool's, which the template has too; a worker's own id it reads later.
    preload=MappingProxyType({
        worker_type: (f"clm.workers.{worker_type}.{worker_type}_worker",)
        for worker_type in ("notebook", "plantuml", "drawio", "jupyterlite")
    }),
    # nbconvert's HTML export highlights code with IPython's lexer, whose import is most of
    # IPython: 0.25-0.35 s of CPU in each notebook worker's first job, once in the template.
    job_preload=MappingProxyType({"notebook": ("IPython.lib.lexers",)}),
)

#: ``clm_profile`` values: ``auto`` follows the installed CLM.
PROFILES: Mapping[str, Generation] = MappingProxyType({"0.3": CLM_0_3, "1.x": CLM_1})
PROFILE_CHOICES = ("auto", *PROFILES)


def generation_of(version: str | None) -> Generation:
    """The generation of an installed CLM release (``None``: none installed: today's, 1.x)."""
    if version is not None and version.split(".", 1)[0] == "0":
        return CLM_0_3
    return CLM_1
