"""Prove the suite bites: run the property suite against deliberately broken engines.

Each mutant is one textual edit of a *copy* of the repository (the working
tree is never touched).  For each, this script copies ``src/``,
``property_tests/`` and ``pyproject.toml`` to a temporary folder, applies the
edit, checks that ``import clm_workers`` resolves to the copy, runs
``python -m pytest property_tests`` there with ``PYTHONPATH=<copy>/src`` and
reports which tests and which invariants failed.  A mutant the suite does not
catch is reported as SURVIVED and makes the script exit 1.

    .venv/bin/python property_tests/mutants.py               # every mutant
    .venv/bin/python property_tests/mutants.py no-shield     # some, by name
    .venv/bin/python property_tests/mutants.py --list
    .venv/bin/python property_tests/mutants.py --keep ...    # keep the copies to look at

By default the runs skip Hypothesis' shrinking phase (profile ``mutant``):
generation under the derandomized ``ci`` profile is the same, so the same
examples fail, only faster and unshrunk.  ``--shrink`` uses ``ci`` as is.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    path: str
    old: str
    new: str


MUTANTS = [
    Mutant(
        "no-shield", "remove the shielded cleanup (cleanup runs in the cancelled scope)",
        "src/clm_workers/stopping.py",
        "        with trio.CancelScope(shield=True):\n            results.append(await async_fn())",
        "        with trio.CancelScope():\n            results.append(await async_fn())",
    ),
    Mutant(
        "no-cleanup-on-error", "remove the cleanup of the `except BaseException` path",
        "src/clm_workers/startup.py",
        "        except BaseException:\n            await self._clean_up()\n            raise",
        "        except BaseException:\n            raise",
    ),
    Mutant(
        "own-after-checkpoint", "the backend hands a spawned worker to its owner after a checkpoint",
        "src/clm_workers/testing.py",
        "            return own(WorkerHandle(spec, spec.executor_id, native=worker))",
        "            handle = WorkerHandle(spec, spec.executor_id, native=worker)\n"
        "            await trio.lowlevel.checkpoint()\n"
        "            return own(handle)",
    ),
    Mutant(
        "engine-owns-after-checkpoint", "the engine owns the handle itself, after a checkpoint",
        "src/clm_workers/startup.py",
        "            handle = await self.backend.spawn(spec, self._spawn_limiter, self._own)",
        "            handle = await self.backend.spawn(spec, self._spawn_limiter, lambda h: h)\n"
        "            await trio.lowlevel.checkpoint()\n"
        "            self._own(handle)",
    ),
    Mutant(
        "no-limit-spawn-mode", "ignore the limiter in `spawn` slot mode",
        "src/clm_workers/startup.py",
        'self._limiter if settings.slot_mode == "spawn" else trio.CapacityLimiter(math.inf)',
        "trio.CapacityLimiter(math.inf)",
    ),
    Mutant(
        "no-limit-registration-mode", "ignore the limiter in `registration` slot mode",
        "src/clm_workers/startup.py",
        "            async with self._limiter:\n                await self._spawn_and_wait(spec)",
        "            await self._spawn_and_wait(spec)",
    ),
    Mutant(
        "timeout-not-stopped", "report a timed-out worker without stopping it",
        "src/clm_workers/startup.py",
        '            await self._fail(spec, handle, "timeout", outcome)',
        '            await self._fail(spec, None, "timeout", outcome)',
    ),
    # Beyond the four: one per remaining invariant, to show each bites.
    Mutant(
        "late-deadline", "the registration deadline is twice as long as configured",
        "src/clm_workers/startup.py",
        "        deadline = start + timeout\n",
        "        deadline = start + 2 * timeout\n",
    ),
    Mutant(
        "no-last-look", "no last poll at the deadline: a worker that registered between two polls is killed",
        "src/clm_workers/startup.py",
        "        if handle in last.registered:\n"
        "            return Registered(last.registered[handle], now), 0.0\n",
        "",
    ),
    Mutant(
        "wall-clock-deadline", "the deadline ignores the time a boot waited for a CPU",
        "src/clm_workers/startup.py",
        "            if start + timeout + waited <= now:",
        "            if start + timeout <= now:",
    ),
    # The races after startup (property_tests/test_races.py).
    Mutant(
        "hung-claims", "a worker whose row is hung (being retired) still takes a job",
        "src/clm_workers/worker.py",
        "_CLAIM_SELF = \"UPDATE workers SET status = 'busy' WHERE id = ? AND status = 'idle'\"",
        "_CLAIM_SELF = \"UPDATE workers SET status = 'busy' WHERE id = ?\"",
    ),
    Mutant(
        "lease-lock-ignored", "a lease seen expired after waiting for someone's lock counts as expired",
        "src/clm_workers/worker.py",
        "        if not expired or waited > LEASE_LOCK_TOLERANCE:\n",
        "        if not expired:\n",
    ),
    Mutant(
        "lease-no-confirm", "the first expired lease a container sees ends it (no confirmation)",
        "src/clm_workers/worker.py",
        "        return now - self.expired_since >= LEASE_CONFIRM_SECONDS\n",
        "        return True\n",
    ),
    Mutant(
        "locked-db-is-silence", "the monitor counts heartbeats missed while the database was locked",
        "src/clm_workers/monitor.py",
        "        for since in (busy_seen_at, locked_at):\n",
        "        for since in (busy_seen_at,):\n",
    ),
    Mutant(
        "exits-ignored", "the watcher ignores early exits (they end as timeouts)",
        "src/clm_workers/watcher.py",
        "        for handle, code in result.exited.items():\n"
        "            self._resolve(handle, Exited(code, now))",
        "        pass",
    ),
    Mutant(
        "failed-row-live", "a failed worker's row is not marked dead",
        "src/clm_workers/startup.py",
        "            await self.backend.mark_dead([spec], [handle] if handle else [])\n",
        "            pass\n",
    ),
]

_INVARIANT = re.compile(r"invariant \d \([a-z ]+\)")


def apply(mutant: Mutant, copy: Path) -> None:
    target = copy / mutant.path
    text = target.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"{mutant.name}: the text to replace occurs {count} times in {mutant.path}; "
                         "update the mutant to match the current source")
    target.write_text(text.replace(mutant.old, mutant.new))


def make_copy(mutant: Mutant) -> Path:
    copy = Path(tempfile.mkdtemp(prefix=f"clm-mutant-{mutant.name}-"))
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "property_tests", copy / "property_tests",
                    ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    apply(mutant, copy)
    return copy


def run(mutant: Mutant, *, shrink: bool, keep: bool) -> tuple[bool, str, float]:
    copy = make_copy(mutant)
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "COLUMNS": "400",
           "HYPOTHESIS_PROFILE": "ci" if shrink else "mutant"}
    try:
        imported = subprocess.run(
            [sys.executable, "-c", "import clm_workers; print(clm_workers.__file__)"],
            cwd=copy, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()
        if not imported.startswith(str(copy)):
            raise SystemExit(f"{mutant.name}: clm_workers was imported from {imported}, not the copy")
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "property_tests", "-q", "-p", "no:cacheprovider", "-rf",
             "--deselect", "property_tests/test_engine_regressions.py"],
            cwd=copy, env=env, capture_output=True, text=True,
        )
        took = time.monotonic() - started
    finally:
        if keep:
            print(f"  (copy kept at {copy})")
        else:
            shutil.rmtree(copy, ignore_errors=True)
    if result.returncode not in (0, 1):  # 2-5: interrupted, internal or usage error, no tests
        raise SystemExit(f"{mutant.name}: pytest could not run the suite on the mutated copy "
                         f"(exit {result.returncode}):\n{result.stdout[-2000:]}")
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED ")]
    caught_by = []
    for line in failed:
        test = line.split()[1].split("::", 1)[1]
        found = _INVARIANT.search(line)
        caught_by.append(f"{test}: {found.group(0) if found else line.split(' - ', 1)[-1][:100]}")
    return bool(failed), "; ".join(caught_by) or result.stdout[-500:], took


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--shrink", action="store_true", help="run the ci profile as is (slower)")
    parser.add_argument("--keep", action="store_true", help="keep the mutated copies")
    args = parser.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:30} {m.path:30} {m.bug}")
        return 0
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}; see --list")
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    survived = []
    print("| mutant | deliberate bug | caught by | seconds |")
    print("|---|---|---|---|")
    for mutant in chosen:
        caught, by, took = run(mutant, shrink=args.shrink, keep=args.keep)
        if not caught:
            survived.append(mutant.name)
            by = f"SURVIVED: {by}"
        print(f"| `{mutant.name}` | {mutant.bug} | {by} | {took:.0f} |", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
