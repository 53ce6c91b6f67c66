"""A worker that reads its settings when imported, as CLM's workers do, then runs the sleeper.

Report: ``$TEST_REPORT_DIR/<WORKER_ID>.import.json``: the ``WORKER_ID`` this
module saw when it was imported, the pid that imported :mod:`.preloaded`, and
a draw of ``random``.
"""

import json
import os
import random

from workers_for_tests import preloaded, sleeper

WORKER_ID_AT_IMPORT = os.environ.get("WORKER_ID")

if __name__ == "__main__":
    out_dir = os.environ["TEST_REPORT_DIR"]
    path = os.path.join(out_dir, f"{os.environ['WORKER_ID']}.import.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"worker_id_at_import": WORKER_ID_AT_IMPORT, "preloaded_by": preloaded.IMPORTED_BY,
                   "pid": os.getpid(), "random": random.random()}, f)
    os.replace(path + ".tmp", path)
    sleeper.main()
