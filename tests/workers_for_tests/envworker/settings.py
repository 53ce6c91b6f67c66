"""Settings read from the environment when imported, as CLM's worker modules read theirs."""

import os

#: The same for every worker of a pool (the fork server's template has it too).
SHARED_AT_IMPORT = os.environ.get("CLM_TEST_SHARED")
#: Each worker's own: a template that preloads this module must import it again in each worker.
WORKER_ID_AT_IMPORT = os.getenv("WORKER_ID")
IMPORTED_BY = os.getpid()
