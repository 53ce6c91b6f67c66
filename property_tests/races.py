"""Models of the races beyond startup: a busy database against the lease and the monitor.

The decisions are the product's own code (:class:`clm_workers.worker.LeaseWatch`,
:func:`clm_workers.monitor.assess`); what happens around them is simulated
here on one exact timeline, as the real parties behave:

* **The database's write lock** is held by other processes for stretches of
  time (``Lock``), some back to back.  When a stretch ends, whoever waits
  for the lock gets it in an order drawn per stretch (``Lock.order``): the
  manager's renewal, the worker's check, or the next stretch's holder first.
  Plain reads are never blocked (WAL).
* **The manager** writes its lease at 0 and renews it ``ttl / 3`` after each
  renewal; a renewal that meets the lock waits for it and happens as the
  manager gets the lock (``clm_workers.lease``: a renewal that timed out on
  the lock is retried at once).  Once dead it renews no more.
* **A container's lease check** reads the lease; when it looks expired it
  takes the write lock (waiting for it if someone holds it) and reads again,
  then asks its :class:`LeaseWatch`.
* **An idle worker's heartbeat** is a write every ``heartbeat`` seconds; one
  that meets the lock waits for it.  **The monitor** ticks every
  ``interval`` seconds, probes the lock (waiting up to ``PROBE_WAIT``),
  reads the heartbeat's age at SQLite's 1 s resolution and asks :func:`assess`.

No Trio and no threads: each example is a few hundred arithmetic steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import strategies as st

from clm_workers.monitor import MonitorSettings, assess
from clm_workers.registry import RowHealth
from clm_workers.worker import LEASE_CONFIRM_SECONDS as LEASE_CONFIRM
from clm_workers.worker import LeaseWatch

PARTIES = ("manager", "worker", "next")
#: The monitor's probe of the write lock waits this long (``Registry.writable``).
PROBE_WAIT = 0.5


@dataclass(frozen=True)
class Lock:
    """Someone else holds the write lock from ``start`` for ``duration`` seconds."""

    start: float
    duration: float
    #: Who gets the lock first as it is released, among those waiting at that moment.
    order: tuple[str, ...] = PARTIES

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Locks:
    stretches: tuple[Lock, ...] = ()

    def covering(self, t: float) -> int | None:
        for i, lock in enumerate(self.stretches):
            if lock.start <= t < lock.end:
                return i
        return None

    def acquire(self, t: float, who: str) -> tuple[float, int]:
        """When ``who``, asking at ``t``, gets the lock, and its rank among those getting it then."""
        while True:
            i = self.covering(t)
            if i is None:
                return t, 0
            lock = self.stretches[i]
            follows = i + 1 < len(self.stretches) and self.stretches[i + 1].start == lock.end
            if not follows or lock.order.index(who) < lock.order.index("next"):
                return lock.end, 1 + lock.order.index(who)
            t = lock.end  # the next stretch's holder got it first: wait for that one too


@st.composite
def lock_timelines(draw: st.DrawFn, horizon: float, longest: float) -> Locks:
    """Stretches of a held lock, often several back to back, some longer than ``longest``."""
    stretches: list[Lock] = []
    t = draw(st.floats(0.0, horizon / 2))
    for _ in range(draw(st.integers(0, 6))):
        duration = draw(st.one_of(st.floats(0.05, 1.5), st.floats(0.05, longest)))
        stretches.append(Lock(t, duration, tuple(draw(st.permutations(PARTIES)))))
        t += duration + draw(st.one_of(st.just(0.0), st.floats(0.0, 3.0)))
        if t > horizon:
            break
    return Locks(tuple(stretches))


# -- the lease --------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseScenario:
    ttl: float
    #: The container's check interval (its heartbeat interval).
    check: float
    locks: Locks
    #: When the manager dies (``None``: it lives to the end).
    death: float | None
    horizon: float


@dataclass
class LeaseRun:
    scenario: LeaseScenario
    #: ``(done at, ranked)`` of every renewal that happened.
    renewals: list[tuple[float, int]] = field(default_factory=list)
    #: Every check: ``(at, expired as read, waited for the lock)``.
    checks: list[tuple[float, bool, float]] = field(default_factory=list)
    #: When the container took its manager for dead, if it did.
    gone_at: float | None = None

    def last_renewal_before(self, t: float, rank: int) -> float:
        """The newest renewal a reader sees at ``t`` (one done at ``t`` itself only if it ranked first)."""
        return max(at for at, r in self.renewals if at < t or (at == t and r < rank))

    def summary(self) -> str:
        s = self.scenario
        return (f"ttl {s.ttl:g}, check {s.check:g}, death {s.death}, locks "
                f"{[(round(k.start, 3), round(k.duration, 3), k.order) for k in s.locks.stretches]}; "
                f"renewals {[round(a, 3) for a, _ in self.renewals]}; checks "
                f"{[(round(a, 3), e, round(w, 3)) for a, e, w in self.checks]}; gone at {self.gone_at}")


def run_lease(scenario: LeaseScenario) -> LeaseRun:
    run = LeaseRun(scenario)
    death = math.inf if scenario.death is None else scenario.death
    run.renewals.append((0.0, 0))
    asked = scenario.ttl / 3
    while asked < min(death, scenario.horizon):
        done, rank = scenario.locks.acquire(asked, "manager")
        if done >= death:
            break  # died waiting for the lock
        run.renewals.append((done, rank))
        asked = done + scenario.ttl / 3

    watch = LeaseWatch()
    t = scenario.check
    while t < scenario.horizon and run.gone_at is None:
        # A plain read: never blocked, sees every renewal done before now.
        if run.last_renewal_before(t, rank=0) + scenario.ttl >= t:
            run.checks.append((t, False, 0.0))
            watch.observe(False, 0.0, t)
            t += watch.interval(scenario.check)
            continue
        got, rank = scenario.locks.acquire(t, "worker")
        expired = run.last_renewal_before(got, rank) + scenario.ttl < got
        run.checks.append((got, expired, got - t))
        if watch.observe(expired, got - t, got):
            run.gone_at = got
        t = got + watch.interval(scenario.check)
    return run


@st.composite
def lease_scenarios(draw: st.DrawFn) -> LeaseScenario:
    ttl = draw(st.sampled_from([1.0, 1.5, 3.0, 6.0, 8.0]))
    horizon = 8 * ttl
    return LeaseScenario(
        ttl=ttl,
        check=draw(st.sampled_from([0.1, 0.5, 2.0])),
        # Up to three lease periods: a lock held for twice the lease, and more.
        locks=draw(lock_timelines(horizon, longest=3 * ttl)),
        death=draw(st.none() | st.floats(0.0, horizon / 2)),
        horizon=horizon,
    )


def lease_bound(scenario: LeaseScenario, run: LeaseRun) -> float | None:
    """When a container must have noticed its dead manager, if no lock came in the way after its death."""
    if scenario.death is None or any(k.end > scenario.death for k in scenario.locks.stretches):
        return None
    expiry = run.renewals[-1][0] + scenario.ttl
    # The first check after the expiry, then the confirmation's checks.
    return expiry + scenario.check + LEASE_CONFIRM + min(scenario.check, LEASE_CONFIRM / 2)


# -- the monitor and an idle worker's heartbeats -------------------------------------------


@dataclass(frozen=True)
class HeartbeatScenario:
    settings: MonitorSettings
    #: The worker's heartbeat interval.
    heartbeat: float
    locks: Locks
    horizon: float


def run_heartbeats(scenario: HeartbeatScenario) -> list[tuple[float, float, str]]:
    """``(tick, heartbeat age as read, verdict)`` of every monitor tick of a healthy idle worker."""
    beats = [(0.0, 0)]
    asked = scenario.heartbeat
    while asked < scenario.horizon:
        done, rank = scenario.locks.acquire(asked, "worker")
        beats.append((done, rank))
        asked = done + scenario.heartbeat
    settings = scenario.settings
    verdicts = []
    locked_at: float | None = None
    t = settings.interval
    while t < scenario.horizon:
        got, rank = scenario.locks.acquire(t, "manager")
        probed = min(got, t + PROBE_WAIT)
        if got - t > PROBE_WAIT:
            locked_at, rank = probed, 0
        now = probed
        last = max(b for b, r in beats if b < now or (b == now and r < rank))
        # CURRENT_TIMESTAMP keeps whole seconds: a heartbeat reads up to 1 s older.
        age = now - math.floor(last)
        verdict = assess(RowHealth(1, "idle", age), None, now, settings, None, locked_at)
        verdicts.append((now, age, verdict.action))
        t += settings.interval
    return verdicts


@st.composite
def heartbeat_scenarios(draw: st.DrawFn) -> HeartbeatScenario:
    interval = draw(st.sampled_from([0.1, 0.5, 1.0]))
    heartbeat = draw(st.sampled_from([0.2, 2.0]))
    # What the CLI allows (heartbeat_timeout >= interval + 1), plus the worker's own interval.
    timeout = draw(st.floats(heartbeat + interval + 1.0 + PROBE_WAIT, 12.0))
    hung = draw(st.floats(timeout, 30.0))
    settings = MonitorSettings(interval=interval, heartbeat_timeout=timeout, hung_timeout=hung)
    horizon = 4 * hung
    # Up to twice the hung timeout, within SQLite's 30 s busy timeout (a heartbeat waits that long).
    locks = draw(lock_timelines(horizon, longest=min(2 * hung, 25.0)))
    return HeartbeatScenario(settings, heartbeat, locks, horizon)
