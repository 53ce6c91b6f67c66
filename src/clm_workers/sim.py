"""A simulated worker on :mod:`clm_workers.worker`, for demos, tests and benchmarks.

``python -m clm_workers.sim`` behaves like a CLM worker whose boot and failures
are set by the environment (on top of the runtime's variables):

``CLM_SIM_BOOT_DELAY``
    seconds to sleep before registering (interruptible by a stop).
``CLM_SIM_BOOT_CPU``
    seconds of busy CPU (this thread's CPU time) before registering, to model
    import cost that competes for the cores.
``CLM_SIM_FAIL``
    ``crash``: after the boot, print one line and exit 3 without registering;
    ``hang``: never register, wait until stopped or killed; empty: work.
``CLM_SIM_LIFETIME``
    seconds after its boot began at which it dies abruptly (a line on
    stderr, exit 4), registered or not: a worker that crashes in service.
``CLM_SIM_QUIET_WHILE_BUSY``
    ``1``: write no ``last_heartbeat`` while a job runs, like CLM's workers.

A job copies ``input_file`` to ``output_file`` (relative to the workspace)
after sleeping ``payload["seconds"]`` (no CPU) and after a child process
computed for ``payload["child_cpu"]`` CPU seconds (as a Jupyter kernel does
for a notebook worker), or slept ``payload["child_seconds"]`` in a child
process, and returns ``{"bytes": n}``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from .worker import Job, WorkerContext, run_worker

# Annotations only: every worker imports this module before it registers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

FAIL_MODES = ("crash", "hang")
CRASH_MESSAGE = "clm_workers.sim: simulated crash (CLM_SIM_FAIL=crash)"
DEATH_MESSAGE = "clm_workers.sim: simulated death (CLM_SIM_LIFETIME)"
EXIT_SIMULATED_DEATH = 4


class _SimConfigError(Exception):
    pass


def handle(job: Job, ctx: WorkerContext) -> dict[str, Any]:
    """Copy the input file to the output file, slowly if the payload says so."""
    data = (ctx.workspace / job.input_file).read_bytes()
    seconds = float(job.payload.get("seconds", 0))
    if seconds > 0:
        time.sleep(seconds)
    child_cpu = float(job.payload.get("child_cpu", 0))
    child_seconds = float(job.payload.get("child_seconds", 0))
    if child_cpu > 0 or child_seconds > 0:
        import subprocess  # deferred: only such jobs need it

        if child_cpu > 0:
            code = (f"import time\nend = time.process_time() + {child_cpu}\n"
                    "while time.process_time() < end: pass")
        else:
            code = f"import time\ntime.sleep({child_seconds})"
        subprocess.run([sys.executable, "-c", code], check=True)
    output = ctx.workspace / job.output_file
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    return {"bytes": len(data)}


def _seconds(env: Mapping[str, str], name: str) -> float:
    text = env.get(name, "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise _SimConfigError(f"{name}: {text!r} is not allowed; expected a number of seconds >= 0")
    return value


def _switch(env: Mapping[str, str], name: str) -> bool:
    text = env.get(name, "").strip()
    if text not in ("", "0", "1"):
        raise _SimConfigError(f"{name}: {text!r} is not allowed; expected 1, 0 or empty")
    return text == "1"


def make_boot(env: Mapping[str, str]) -> Callable[[threading.Event], None]:
    """The boot step the environment asks for; raises ``_SimConfigError`` if it is wrong."""
    delay = _seconds(env, "CLM_SIM_BOOT_DELAY")
    cpu = _seconds(env, "CLM_SIM_BOOT_CPU")
    lifetime = _seconds(env, "CLM_SIM_LIFETIME")
    fail = env.get("CLM_SIM_FAIL", "").strip()
    if fail and fail not in FAIL_MODES:
        raise _SimConfigError(
            f"CLM_SIM_FAIL: {fail!r} is not allowed; expected crash, hang or empty"
        )

    def boot(stopping: threading.Event) -> None:
        if lifetime:
            death = threading.Timer(lifetime, _die)
            death.daemon = True
            death.start()
        if delay:
            stopping.wait(delay)
        if cpu:
            end = time.thread_time() + cpu
            while time.thread_time() < end and not stopping.is_set():
                for _ in range(10_000):
                    pass
        if stopping.is_set():
            return
        if fail == "crash":
            sys.stderr.write(CRASH_MESSAGE + "\n")
            sys.stderr.flush()
            raise SystemExit(3)
        if fail == "hang":
            stopping.wait()

    return boot


def _die() -> None:
    sys.stderr.write(DEATH_MESSAGE + "\n")
    sys.stderr.flush()
    os._exit(EXIT_SIMULATED_DEATH)


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        boot = make_boot(env)
        quiet = _switch(env, "CLM_SIM_QUIET_WHILE_BUSY")
    except _SimConfigError as exc:
        sys.stderr.write(f"clm_workers.sim: {exc}\n")
        return 2
    return run_worker(handle, boot=boot, env=env, heartbeat_while_busy=not quiet)


if __name__ == "__main__":
    sys.exit(main())
