"""``clm-workers status --db PATH``: the workers, sessions and recent events of a database.

Read-only: tables on stdout for people, ``--json`` for scripts (one object:
``database``, ``sessions``, ``workers``, ``events``, ``jobs``; times in UTC,
ISO 8601).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import display, inventory


def run_status(db_path: Path, *, json_output: bool, include_dead: bool, events: int,
               setting: str = "--db") -> int:
    conn = inventory.open_database(db_path, setting)
    try:
        snap = inventory.snapshot(conn, db_path, include_dead=include_dead, events=events)
    finally:
        conn.close()
    if json_output:
        print(json.dumps(snap.to_json(), indent=2), flush=True)
    else:
        display.print_status(snap)
    return 0
