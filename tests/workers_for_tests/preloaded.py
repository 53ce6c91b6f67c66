"""A stand-in for a worker's heavy dependency: remembers which process imported it."""

import os

IMPORTED_BY = os.getpid()
