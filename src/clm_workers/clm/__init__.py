"""Everything clm-workers knows about CLM's generations, in one place.

- :mod:`.generations`: what differs between CLM 0.3, 1.9.2 and 1.35
  (worker modules, registration protocol, the variables a worker reads).
- :mod:`.installed`: the CLM that the workers' Python has installed, asked
  rather than assumed (its version, its module map, its worker settings,
  its command line).
- :mod:`.database`: is a file a CLM database, and how it gets CLM's schema
  (CLM's own ``init_database`` where CLM is installed).
- :mod:`.ownership`: whose a worker row is, in the columns CLM 1.35's job
  gate reads (a session's own, or shared by every build).
- :mod:`.dropin`: CLM's ``WorkerPoolManager`` interface on clm-workers, and
  :func:`install`, which makes ``clm build`` in this process use it.

Read this package first when CLM ships a new release.  Light to import (the
executors import it): :func:`install` and :class:`ClmPoolManager` load the
engine only when first used.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .dropin import ClmPoolManager, install, uninstall

__all__ = ["ClmPoolManager", "install", "uninstall"]


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".dropin", __name__), name)
    globals()[name] = value
    return value
