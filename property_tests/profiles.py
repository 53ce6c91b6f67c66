"""Hypothesis profiles of the property suite, chosen by ``HYPOTHESIS_PROFILE``.

``ci`` (the default): derandomized, so every run explores the same examples;
each test's ``examples(n)`` is exactly ``n`` and the suite runs well over
2,000 examples in total in under 3 minutes.  ``soak``: random seeds and 25
times as many examples, for local runs (``HYPOTHESIS_PROFILE=soak``).
``dev``: a tenth of ``ci``, for a quick look while editing.  ``mutant``: ``ci``
without shrinking (see mutants.py).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_SCALE = {"ci": 1.0, "soak": 25.0, "dev": 0.1, "mutant": 1.0}

if PROFILE not in _SCALE:
    raise SystemExit(f"HYPOTHESIS_PROFILE: {PROFILE!r} is not allowed; expected one of {', '.join(_SCALE)}")

_COMMON = dict(
    deadline=None,  # virtual time: wall time per example says nothing about the engine
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("soak", derandomize=False, **_COMMON)
settings.register_profile("dev", derandomize=True, database=None, **_COMMON)
# ``ci`` without shrinking: the same examples, the first failure reported as found
# (property_tests/mutants.py uses it to run the suite against broken engines fast).
settings.register_profile(
    "mutant", derandomize=True, database=None,
    phases=[Phase.explicit, Phase.generate, Phase.target], **_COMMON,
)
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """The number of examples a test runs: ``n`` under ``ci``, scaled for the others."""
    return max(1, round(n * _SCALE[PROFILE]))
