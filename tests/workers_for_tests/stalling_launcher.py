"""clm-workers' sim worker under a launcher that stalls after it first kills the job's processes.

Run as ``python -m clm_workers.launch workers_for_tests.stalling_launcher``.
On a loaded machine the launcher's thread can be descheduled between
killing a job's processes and closing the inner lifeline, and a dying
manager's files close before its children get a new parent: the job's
handler then fails with neither sign of the manager's death visible.  This
module widens that moment to half a second, every time.
"""

import sys
import time

from clm_workers import launch, sim

_kill_descendants = launch._kill_descendants
_stalled = False


def _kill_then_stall(pid: int) -> None:
    global _stalled
    _kill_descendants(pid)
    if not _stalled:
        _stalled = True
        time.sleep(0.5)


launch._kill_descendants = _kill_then_stall

if __name__ == "__main__":
    sys.exit(sim.main())
