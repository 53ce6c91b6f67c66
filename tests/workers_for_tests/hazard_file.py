"""Opens a file when imported and keeps it open."""

import os

KEPT = open(os.devnull)  # noqa: SIM115 - kept open on purpose
