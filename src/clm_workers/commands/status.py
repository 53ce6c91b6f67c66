"""``clm-workers status --db PATH``: the workers, sessions and recent events of a database.

Read-only: tables on stdout for people, ``--json`` for scripts (one object:
``database``, ``sessions``, ``workers``, ``events``, ``jobs``; times in UTC,
ISO 8601).  A session's ``state`` and a worker's ``process_running`` are
checked against this host's processes, so a killed manager shows as ``gone``
at once, not only when its lease runs out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import display, inventory

log = logging.getLogger(__name__)


def run_status(db_path: Path, *, json_output: bool, include_dead: bool, events: int,
               setting: str = "--db") -> int:
    log.info("database %s (from %s)", db_path, setting)
    conn = inventory.open_database(db_path, setting)
    try:
        snap = inventory.snapshot(conn, db_path, include_dead=include_dead, events=events)
    finally:
        conn.close()
    for session in snap.sessions:
        log.debug("session %s: %s (pid %s on %s, lease %.1f s)", session.session_id, session.state,
                  session.pid, session.host, session.lease_left)
    log.debug("%d workers shown (%d dead hidden), %d events, jobs %s", len(snap.workers), snap.dead_hidden,
              len(snap.events), snap.jobs)
    if json_output:
        print(json.dumps(snap.to_json(), indent=2), flush=True)
    else:
        display.print_status(snap)
    return 0
