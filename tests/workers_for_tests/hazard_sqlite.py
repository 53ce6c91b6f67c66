"""Opens a SQLite database when imported and keeps the connection."""

import os
import sqlite3
import tempfile

_folder = os.environ.get("TEST_REPORT_DIR") or tempfile.mkdtemp(prefix="clm-workers-hazard-")
CONNECTION = sqlite3.connect(os.path.join(_folder, "kept.db"))
CONNECTION.execute("CREATE TABLE IF NOT EXISTS t (x)")
