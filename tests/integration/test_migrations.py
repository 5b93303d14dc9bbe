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
from sqlalchemy.exc import IntegrityError

from dicomnode.index.db import alembic_config, make_engine, upgrade_database
from dicomnode.index.schema import Base, DeliveryState


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


def insert_routed_delivery(connection: Connection, claimed_by: str | None, run_after: str) -> None:
    """One instance (with its study and series) and one pending delivery of it, at 0004."""
    connection.execute(
        text(
            "INSERT INTO studies (id, study_instance_uid, state, version, first_received_at,"
            " last_received_at) VALUES (1, '1.2.3', 'stable', 1, :t, :t)"
        ),
        {"t": "2026-12-01 08:00:00"},
    )
    connection.execute(
        text("INSERT INTO series (id, study_id, series_instance_uid) VALUES (1, 1, '1.2.3.4')")
    )
    connection.execute(
        text(
            "INSERT INTO instances (id, series_id, sop_instance_uid, sop_class_uid,"
            " transfer_syntax_uid, number_of_frames, size_bytes, sha256, path, calling_ae,"
            " received_at) VALUES (1, 1, '1.2.3.4.5', '1.2', '1.2.840.10008.1.2.1', 1, 10,"
            " 'ab', 'instances/x.dcm', 'CT', :t)"
        ),
        {"t": "2026-12-01 08:00:00"},
    )
    connection.execute(
        text(
            "INSERT INTO deliveries (id, instance_id, route, peer, state, attempts, run_after,"
            " claimed_by, created_at) VALUES (1, 1, 'all', 'archive', 'pending', 1, :run_after,"
            " :claimed_by, :t)"
        ),
        {"run_after": run_after, "claimed_by": claimed_by, "t": "2026-12-01 08:00:00"},
    )
    connection.commit()


def delivery_columns(url: str, *names: str) -> tuple[Any, ...]:
    with connected(url) as connection:
        row = connection.execute(text(f"SELECT {', '.join(names)} FROM deliveries")).one()
        return tuple(str(value) if value is not None else None for value in row)


def test_0005_moves_a_held_delivery_claim_into_the_lease_columns_and_back(
    database_url: str,
) -> None:
    upgrade_database(database_url, "0004")
    with connected(database_url) as connection:
        insert_routed_delivery(connection, "host:1:send", "2026-12-01 08:10:00")

    upgrade_database(database_url, "0005")

    assert delivery_columns(database_url, "lease_owner", "lease_expires_at", "run_after") == (
        "host:1:send", "2026-12-01 08:10:00", "2026-12-01 08:10:00",
    )  # fmt: skip
    with connected(database_url) as connection:  # a later claim: the lease outlasts the backoff
        connection.execute(text("UPDATE deliveries SET lease_expires_at = '2026-12-01 09:00:00'"))
        connection.commit()

    downgrade(alembic_config(database_url), "0004")

    assert delivery_columns(database_url, "claimed_by", "run_after") == (
        "host:1:send", "2026-12-01 09:00:00",
    )  # fmt: skip
    with connected(database_url) as connection:
        assert "lease_owner" not in {
            c["name"] for c in inspect(connection).get_columns("deliveries")
        }


def test_0005_leaves_an_unclaimed_delivery_unleased(database_url: str) -> None:
    upgrade_database(database_url, "0004")
    with connected(database_url) as connection:
        insert_routed_delivery(connection, None, "2026-12-01 08:10:00")

    upgrade_database(database_url, "0005")

    assert delivery_columns(database_url, "lease_owner", "lease_expires_at") == (None, None)
    downgrade(alembic_config(database_url), "0004")
    assert delivery_columns(database_url, "claimed_by", "run_after") == (
        None, "2026-12-01 08:10:00",
    )  # fmt: skip


def test_0005_keeps_the_one_item_check_of_deliveries(database_url: str) -> None:
    upgrade_database(database_url)
    with connected(database_url) as connection, pytest.raises(IntegrityError):
        connection.execute(
            text(
                "INSERT INTO deliveries (peer, state, attempts, run_after, created_at)"
                " VALUES ('archive', 'pending', 0, :t, :t)"
            ),
            {"t": "2026-12-01 08:00:00"},
        )


def delivery_state_values(url: str) -> list[str] | None:
    """PostgreSQL's ``delivery_state`` labels in order; None on SQLite (a VARCHAR)."""
    with connected(url) as connection:
        if connection.dialect.name != "postgresql":
            return None
        rows = connection.execute(
            text(
                "SELECT enumlabel FROM pg_enum JOIN pg_type ON pg_enum.enumtypid = pg_type.oid"
                " WHERE typname = 'delivery_state' ORDER BY enumsortorder"
            )
        )
        return list(rows.scalars())


def test_0006_drops_the_dead_delivery_state_and_the_downgrade_restores_it(
    database_url: str,
) -> None:
    upgrade_database(database_url, "0004")
    with connected(database_url) as connection:
        insert_routed_delivery(connection, None, "2026-12-01 08:10:00")
        connection.execute(text("UPDATE deliveries SET state = 'dead'"))
        connection.commit()
    upgrade_database(database_url, "0005")
    sqlite = database_url.startswith("sqlite")

    upgrade_database(database_url, "0006")

    assert delivery_columns(database_url, "state") == ("failed",)  # the nearest state
    assert delivery_state_values(database_url) == (
        None if sqlite else [s.value for s in DeliveryState]
    )
    # (The schema as a whole is compared with the code's at head, below: later
    # revisions change other tables.)

    downgrade(alembic_config(database_url), "0005")

    assert delivery_state_values(database_url) == (
        None if sqlite else ["pending", "sent", "failed", "dead"]
    )
    with connected(database_url) as connection:  # the value is usable again
        connection.execute(text("UPDATE deliveries SET state = 'dead'"))
        connection.commit()
    assert delivery_columns(database_url, "state") == ("dead",)
    with connected(database_url) as connection:
        connection.execute(text("DELETE FROM deliveries"))
        connection.commit()
    upgrade_database(database_url)
    assert_matches_metadata(database_url)


def test_0006_keeps_the_deliveries_claim_index(database_url: str) -> None:
    upgrade_database(database_url)

    with connected(database_url) as connection:
        indexes = {
            ix["name"]: ix["column_names"] for ix in inspect(connection).get_indexes("deliveries")
        }
    assert indexes["ix_deliveries_state_run_after"] == ["state", "run_after"]
