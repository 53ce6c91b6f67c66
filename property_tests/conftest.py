"""The property suite: Hypothesis over the startup engine with pure-Trio fakes.

Loading :mod:`profiles` here registers the ``ci``/``soak``/``dev`` profiles and
selects one from ``HYPOTHESIS_PROFILE`` (default ``ci``) before any test
module builds its ``@settings``.  See docs/property-tests.md.
"""

from __future__ import annotations

import logging

import pytest

import profiles


def pytest_report_header(config):
    return f"hypothesis profile: {profiles.PROFILE} (set HYPOTHESIS_PROFILE to ci, soak or dev)"


@pytest.fixture(autouse=True, scope="module")
def _quiet_engine_logs():
    """Thousands of examples log expected failures; keep the report readable.

    Module-scoped, so it only covers this folder and is restored afterwards.
    """
    engine = logging.getLogger("clm_workers")
    level, engine.level = engine.level, logging.CRITICAL
    try:
        yield
    finally:
        engine.level = level
