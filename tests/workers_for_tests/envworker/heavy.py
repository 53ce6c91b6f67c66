"""A stand-in for the heavy part of a worker package (CLM's notebook processor): reads no setting."""

import os

IMPORTED_BY = os.getpid()
