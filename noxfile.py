"""Developer sessions: ``nox -s tests``, ``property``, ``lint``, ``demo`` and ``bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The whole suite, as CI runs it."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def property(session: nox.Session) -> None:
    """The property suite only (Hypothesis)."""
    session.install("-e", ".[test]")
    session.run("pytest", "property_tests", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff, and mypy --strict on src/."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "src", "tests", "property_tests", "noxfile.py")
    session.run("mypy")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The README's main job."""
    session.install("-e", ".")
    session.run("clm-workers", "demo", *session.posargs)


@nox.session(python=False)
def image(session: nox.Session) -> None:
    """The docker worker image clm-workers-sim:latest (and, if missing, its local base image).

    Idempotent; about a second when nothing changed.  ``BASE=python:3.11-slim``
    builds on the official image where the engine can pull (docs/docker.md).
    """
    session.run("bash", "worker-image/build-image.sh", external=True)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Every startup strategy side by side; writes docs/benchmarks.md, .json and .png.

    About 23 minutes on 2 cores: the simulated scenarios, then real CLM notebook
    workers (CLM's own start against spawn and the fork server; CLM, with its
    notebook extra, is installed into the session for it).  ``nox -s bench --
    --quick`` is the 15-second smoke run; ``-- --scenarios clm`` the real-CLM part.
    """
    session.install("-e", ".[bench]", "coding-academy-lecture-manager[notebook]")
    session.run("clm-workers", "bench", *session.posargs)
