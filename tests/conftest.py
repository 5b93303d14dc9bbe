"""Shared fixtures: a private PostgreSQL server per test session (per xdist worker)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator

import pytest

from tests.pg import PostgresServer, postgres_available

#: Set to 1 (as CI does) to fail, not skip, PostgreSQL tests when no server can start.
REQUIRE_POSTGRES_ENV = "DICOMNODE_REQUIRE_POSTGRES"

_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL server on 127.0.0.1, stopped and deleted after the session."""
    reason = postgres_available()
    if reason is not None:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The SQLAlchemy URL of a fresh, empty database made for this test alone."""
    # Readable in the server log; the counter keeps it unique (63-byte identifier limit).
    label = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    return postgres_server.create_database(f"t{next(_database_numbers)}_{label}")


#: Set to 1 (as CI does) to stop the run when a real peer the tests use is missing.
REQUIRE_TOOLS_ENV = "DICOMNODE_REQUIRE_TOOLS"
_TOOLS = ("storescu", "echoscu", "storescp", "dciodvfy", "sqlite3", "openssl")


def pytest_sessionstart(session: pytest.Session) -> None:
    """With DICOMNODE_REQUIRE_TOOLS=1 a missing tool fails the run instead of skipping."""
    import shutil

    if os.environ.get(REQUIRE_TOOLS_ENV) != "1":
        return
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(f"{REQUIRE_TOOLS_ENV}=1 but not installed: {', '.join(missing)}")
