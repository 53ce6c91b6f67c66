"""Can ``python -m <module>`` run?  Asked before anything starts, the way a worker would.

Blocking (imports parent packages, as ``python -m`` would).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .config import WorkerConfig


def module_runnable(module: str, extra_path: Sequence[str] = ()) -> bool:
    """Whether this interpreter could run ``module`` as ``python -m``, with ``extra_path`` first.

    A package counts only with a ``__main__`` module; a parent package that
    fails to import counts as not runnable (``python -m`` would fail too).
    """
    with _extra_sys_path(extra_path):
        try:
            spec = importlib.util.find_spec(module)
            if spec is not None and spec.submodule_search_locations is not None:
                spec = importlib.util.find_spec(module + ".__main__")
        except Exception:
            return False
    return spec is not None


@contextmanager
def _extra_sys_path(entries: Sequence[str]) -> Iterator[None]:
    saved = list(sys.path)
    sys.path[:0] = entries
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = saved


def unrunnable_pool(configs: Sequence[WorkerConfig], workspace: Path) -> int | None:
    """The index of the first direct pool whose module could not run, else ``None``.

    Looks each module up the way its workers will: this interpreter (they
    run ``sys.executable``), the workspace first (their working folder), then
    the pool's ``PYTHONPATH``.  Docker pools are not checked: their module
    lives in the image.  ``configs`` must have their modules filled in.
    """
    for index, config in enumerate(configs):
        if config.execution_mode != "direct" or config.count == 0:
            continue
        assert config.module is not None, "resolve the configs first"
        extra = [str(workspace), *(p for p in config.env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        if not module_runnable(config.module, extra):
            return index
    return None


def unrunnable_reason(workspace: Path, *, defaulted: bool) -> str:
    """The "allowed" half of the :class:`ConfigError` for an unrunnable module."""
    default = " (the CLM default for its type: is CLM installed with this worker's extra?)" if defaulted else ""
    return (
        f"a module that `{Path(sys.executable).name} -m` can run{default}: it is not installed in "
        f"{sys.prefix} nor in the workspace {workspace}"
    )
