"""A worker that never registers and ignores SIGTERM and SIGINT: only SIGKILL (or its lifeline) ends it.

Once its handlers are in place it creates ``$TEST_REPORT_DIR/<pid>.ready``, and
on each SIGTERM ``<pid>.term``, so a test knows that a stop has begun without
guessing its moment.
"""

from __future__ import annotations

import os
import signal
import time


def _mark(what: str) -> None:
    folder = os.environ.get("TEST_REPORT_DIR")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.{what}"), "w"):
            pass


def main() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: _mark("term"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _mark("ready")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
