"""The Alembic migrations build exactly ``Base.metadata``, on SQLite and PostgreSQL."""

from __future__ import annotations

import pprint
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.command import downgrade
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from dicomnode.index.db import alembic_config, make_engine, upgrade_database
from dicomnode.index.schema import Base


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@contextmanager
def connected(url: str) -> Iterator[Connection]:
    """A connection to ``url`` whose engine is disposed afterwards."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def schema_diff(url: str) -> list[Any]:
    """What autogenerate would change to turn the database into ``Base.metadata``."""
    with connected(url) as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def head_revision(url: str) -> str:
    """The newest revision among the shipped migration scripts."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def stamped_revisions(url: str) -> list[str]:
    """The revisions recorded in ``alembic_version``."""
    with connected(url) as connection:
        rows = connection.execute(text("SELECT version_num FROM alembic_version"))
        return [row[0] for row in rows]


def assert_matches_metadata(url: str) -> None:
    """Fail, listing every difference, unless the database schema is ``Base.metadata``."""
    diff = schema_diff(url)
    assert diff == [], "migrated schema differs from Base.metadata:\n" + pprint.pformat(diff)


def test_migrations_build_exactly_the_metadata_schema(database_url: str) -> None:
    upgrade_database(database_url)

    assert_matches_metadata(database_url)


def test_upgrade_ends_at_the_head_revision(database_url: str) -> None:
    upgrade_database(database_url)

    assert stamped_revisions(database_url) == [head_revision(database_url)]


def test_upgrading_twice_changes_nothing(database_url: str) -> None:
    upgrade_database(database_url)
    upgrade_database(database_url)

    assert_matches_metadata(database_url)
    assert stamped_revisions(database_url) == [head_revision(database_url)]


def test_downgrade_to_base_removes_the_schema_and_upgrade_rebuilds_it(database_url: str) -> None:
    upgrade_database(database_url)

    downgrade(alembic_config(database_url), "base")

    with connected(database_url) as connection:
        assert inspect(connection).get_table_names() == ["alembic_version"]
        if connection.dialect.name == "postgresql":
            # A type left behind makes the next upgrade fail on CREATE TYPE.
            enums = connection.execute(text("SELECT typname FROM pg_type WHERE typtype = 'e'"))
            assert enums.scalars().all() == [], "downgrade left enum types behind"
    assert stamped_revisions(database_url) == []

    upgrade_database(database_url, "head")

    assert_matches_metadata(database_url)
    assert stamped_revisions(database_url) == [head_revision(database_url)]
