"""Developer sessions: ``nox -s tests``, ``nox -s property``, ``nox -s lint``, ``nox -s demo``."""

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
