import json
import os
import random

from workers_for_tests import preloaded, sleeper
from workers_for_tests.envworker import heavy, settings

out_dir = os.environ["TEST_REPORT_DIR"]
path = os.path.join(out_dir, f"{os.environ['WORKER_ID']}.import.json")
with open(path + ".tmp", "w") as f:
    json.dump({
        "shared_at_import": settings.SHARED_AT_IMPORT, "worker_id_at_import": settings.WORKER_ID_AT_IMPORT,
        "settings_imported_by": settings.IMPORTED_BY, "heavy_imported_by": heavy.IMPORTED_BY,
        "preloaded_by": preloaded.IMPORTED_BY, "pid": os.getpid(), "random": random.random(),
    }, f)
os.replace(path + ".tmp", path)
sleeper.main()
