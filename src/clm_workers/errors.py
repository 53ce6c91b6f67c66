"""The two errors a caller of clm-workers has to know about."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ConfigError(ValueError):
    """A setting has a value that is not allowed.

    Raised at construction, before anything is started.  The message names the
    setting (and its environment variable when it came from there), the value
    given and what is allowed, e.g.::

        max_startup_concurrency (env CLM_MAX_WORKER_STARTUP_CONCURRENCY): 'abc' is not
        allowed; expected a whole number from 1 to 1000
    """

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"{setting}: {value!r} is not allowed; expected {allowed}")


class PoolStartupError(RuntimeError):
    """The pool could not start, for a reason that affects every worker.

    By the time this is raised every pending start has been cancelled and every
    worker already started has been stopped.  ``report`` holds what had
    happened to each worker until then (it may be ``None`` when nothing was
    attempted).
    """

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class PoolStoppedError(RuntimeError):
    """A running pool stopped by itself, for a reason that no replacement can cure.

    Its database file was deleted, replaced by another file, or its path now
    leads to another file: the workers and the manager no longer share one
    database.  By the time this is raised every worker has been stopped.
    """


class FatalExecutorError(RuntimeError):
    """Raised by an executor when every start would fail the same way.

    For example the Docker engine is unreachable or the image is missing.  The
    startup engine turns it into :class:`PoolStartupError` instead of reporting
    N identical per-worker failures.
    """


class DatabaseUnusableError(PoolStartupError):
    """A :class:`PoolStartupError` whose cause is the database (it cannot be created, opened or written).

    The workers are not at fault: the monitor tries a replacement again later
    instead of counting it as another death.
    """


def database_unusable(exc: BaseException) -> PoolStartupError:
    """The fatal error for a database that cannot be created, opened or written."""
    return DatabaseUnusableError(
        f"cannot use the database: {exc}. Check that the path is right and its folder "
        "is writable; no worker was started."
    )


@contextlib.contextmanager
def unwrap_lone_exception() -> Iterator[None]:
    """Let a lone exception out of Trio's exception groups as itself.

    Trio's strict exception groups wrap whatever crosses a nursery; a caller
    of ``start_pools`` expects a plain ``KeyboardInterrupt`` on Ctrl-C and a
    plain :class:`PoolStartupError`.  A group with a ``KeyboardInterrupt`` in
    it is one ``KeyboardInterrupt``, however many Ctrl-C there were and
    whatever else failed meanwhile (the user asked to stop).  Otherwise a
    group with several different errors stays a group, unless one of them is
    a :class:`PoolStartupError` (the cause; the others are its consequences).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        interrupts = [leaf for leaf in leaves if isinstance(leaf, KeyboardInterrupt)]
        if interrupts:
            raise interrupts[0] from (None if len(interrupts) == len(leaves) else group)
        if len(leaves) == 1:
            raise leaves[0] from None
        fatal = [leaf for leaf in leaves if isinstance(leaf, PoolStartupError)]
        if fatal:
            raise fatal[0] from group
        raise


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
