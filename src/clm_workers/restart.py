"""When to replace a dead worker: exponential backoff, and a flap limit per type."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartPolicy:
    """How the monitor replaces workers that died after registering.

    The n-th death of a type within ``flap_window`` seconds waits
    ``min(backoff_initial * backoff_factor ** (n - 1), backoff_max)`` before
    the replacement starts; the ``flap_limit``-th death within the window
    stops restarts of that type for good (the pool reports it).
    """

    enabled: bool = True
    backoff_initial: float = 0.5
    backoff_factor: float = 2.0
    backoff_max: float = 30.0
    flap_limit: int = 5
    flap_window: float = 60.0


@dataclass
class RestartTracker:
    """Keeps the recent deaths per worker type and decides each restart."""

    policy: RestartPolicy
    _deaths: dict[str, deque[float]] = field(default_factory=dict)
    #: Types whose restarts were stopped, with the reason.
    flapping: dict[str, str] = field(default_factory=dict)

    def on_death(self, worker_type: str, now: float) -> float | None:
        """Record a death; the delay before its replacement, or ``None`` for no restart."""
        if not self.policy.enabled or worker_type in self.flapping:
            return None
        deaths = self._deaths.setdefault(worker_type, deque())
        deaths.append(now)
        while deaths and deaths[0] < now - self.policy.flap_window:
            deaths.popleft()
        if len(deaths) >= self.policy.flap_limit:
            self.flapping[worker_type] = (
                f"{len(deaths)} {worker_type} workers died within {self.policy.flap_window:g} s; "
                "restarts of this type are stopped"
            )
            return None
        return min(
            self.policy.backoff_initial * self.policy.backoff_factor ** (len(deaths) - 1),
            self.policy.backoff_max,
        )
