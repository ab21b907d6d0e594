"""Nox sessions: ``tests`` per package, each in its own environment holding only that package
(and its declared dependencies) from the lock, so an undeclared import fails; ``lint``.

    uv run --locked nox -s lint tests          # everything
    uv run --locked nox -s "tests(package='df-core')"   # one package
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())


@nox.session
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Runs one package's tests in an environment with only that package installed."""
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--package",
        package,
        "--group",
        "test",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )
    # pytest exits 5 when it collects nothing; nox fails on any non-zero exit, so an empty
    # package cannot pass silently.
    session.run("pytest", f"packages/{package}", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint over the whole workspace."""
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--only-group",
        "dev",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
