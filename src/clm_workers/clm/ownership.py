"""Whose a worker row is, in the two columns CLM 1.35 reads: ``session_id`` and ``managed_by``.

CLM 1.35 hands a build's jobs only to workers whose row carries the build's
session or no session at all (its job gate and each worker's claim), and it
counts a live worker as reusable by another build unless ``managed_by`` says
``build`` (a build's own workers, gone when it ends).  CLM 1.9 reads neither
column.  So a manager writes one of two kinds of rows:

* **owned** (the default): ``session_id`` is the manager's session and
  ``managed_by`` is ``build``.  Only that session's jobs reach them; another
  CLM build on the database leaves them alone and starts its own workers.
  The drop-in (:mod:`.dropin`) writes these with the session of the CLM build
  it serves.
* **shared** (``serve_builds``: what ``clm-workers start`` does): no
  ``session_id``, and ``managed_by`` is ``clm-workers:<session>``.  Every CLM
  build on the database counts these workers as reusable, its gate accepts
  them, and they claim its jobs: a long-lived pool for repeated builds.  The
  marker keeps them the session's own for clm-workers (stop, status, the
  retiring of a dead session's rows).

Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

#: ``managed_by`` of owned rows: CLM 1.35's mark of a build's own workers (``MANAGED_BY_BUILD``).
OWNED_MANAGED_BY = "build"
#: ``managed_by`` of shared rows is this, followed by the session id.
SHARED_PREFIX = "clm-workers:"

#: A UUID's hex, CLM's ``session-%Y%m%d-%H%M%S``, or any such name.
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")


def check_session_id(value: object) -> str:
    """``value`` if it can name a session (it ends up in rows, file names and container labels)."""
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        raise ConfigError(
            "session_id", value,
            "1-200 letters, digits, '_', '.', ':', '-', starting with a letter or digit "
            "(such as CLM's 'session-20261202-093000')",
        )
    return value


@dataclass(frozen=True)
class RowOwner:
    """What a manager writes into ``workers.session_id`` and ``workers.managed_by``."""

    session_id: str | None
    managed_by: str


def row_owner(session_id: str, *, serve_builds: bool) -> RowOwner:
    if serve_builds:
        return RowOwner(None, SHARED_PREFIX + session_id)
    return RowOwner(session_id, OWNED_MANAGED_BY)


def running_session_sql(table: str = "") -> str:
    """SQL for the session that runs a ``workers`` row, owned or shared (NULL: none of ours).

    ``table``: the alias or name to qualify the columns with, if any.
    """
    prefix = f"{table}." if table else ""
    return (
        f"COALESCE({prefix}session_id, CASE WHEN {prefix}managed_by LIKE '{SHARED_PREFIX}%'"
        f" THEN substr({prefix}managed_by, {len(SHARED_PREFIX) + 1}) END)"
    )
