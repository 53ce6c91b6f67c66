"""A worker that reports what it inherited, then sleeps until its lifeline breaks.

Report: ``$TEST_REPORT_DIR/<WORKER_ID>.json`` (written atomically) with its
pid, process group, cwd, environment and every open fd (target and access
mode).  With ``SLEEPER_GRANDCHILD=1`` it first starts a child of its own and
reports that pid too (``=session``: in a session of its own, ignoring
SIGTERM), once that child is set up.  SIGTERM is left at its default (exit
code -15).  On EOF on ``CLM_LIFELINE_FD`` it exits with code 0.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading


def _watch_lifeline(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 1)
        except OSError:
            data = b""
        if not data:
            os._exit(0)


def _open_fds() -> dict[str, dict[str, object]]:
    fds: dict[str, dict[str, object]] = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:
            continue  # the fd listdir itself used, closed by now
        fds[name] = {"target": target, "accmode": mode}
    return fds


def main() -> None:
    lifeline = os.environ.get("CLM_LIFELINE_FD")
    if lifeline is not None:
        threading.Thread(target=_watch_lifeline, args=(int(lifeline),), daemon=True).start()

    report: dict[str, object] = {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "fds": _open_fds(),
    }
    grandchild = os.environ.get("SLEEPER_GRANDCHILD")
    if grandchild:
        # "session": in a session of its own, deaf to SIGTERM (a Jupyter kernel's place).
        code = "import time; print(flush=True); time.sleep(60)"
        if grandchild == "session":
            code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True);"
                    " time.sleep(60)")
        child = subprocess.Popen([sys.executable, "-c", code], start_new_session=grandchild == "session",
                                 stdout=subprocess.PIPE)
        # Reported once it is set up (deaf to SIGTERM, for "session"): a stop that came
        # earlier would find a child still booting, which SIGTERM kills.
        child.stdout.readline()  # type: ignore[union-attr]
        report["grandchild_pid"] = child.pid

    out_dir = os.environ.get("TEST_REPORT_DIR")
    if out_dir:
        path = os.path.join(out_dir, f"{os.environ.get('WORKER_ID', os.getpid())}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(report, f)
        os.replace(path + ".tmp", path)
    print("sleeper ready", file=sys.stderr, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
