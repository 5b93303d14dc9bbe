"""Engines, sessions and schema upgrades for the index.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` so that a
committed row survives power loss, which is what a 0x0000 C-STORE response promises
(docs/receive.md). PostgreSQL needs nothing special.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import IndexSchemaError
from dicomnode.index.schema import StudyRecord

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "alembic_config",
    "make_engine",
    "make_session_factory",
    "open_database",
    "ping_database",
    "upgrade_database",
]

logger = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(database_url: str) -> Engine:
    """Create an engine; for SQLite, create the folder and set durable pragmas."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("", "psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(url, pool_pre_ping=True)


def ping_database(session: Session) -> None:
    """Read one row id of the index's studies table; raises if the index cannot be read.

    A query on a table, not ``SELECT 1``, which SQLite answers without reading its
    file. For ``/readyz``; SQLAlchemy's error is raised as it is.
    """
    session.execute(select(StudyRecord.id).limit(1)).scalar_one_or_none()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def _script_location() -> str:
    # A built wheel carries the root ``alembic/`` folder as ``dicomnode/_alembic``;
    # a source checkout (editable install) uses the folder itself.
    package = Path(__file__).resolve().parents[1]
    shipped = package / "_alembic"
    if (shipped / "env.py").is_file():
        return str(shipped)
    return str(package.parent / "alembic")


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration pointing at the shipped migration scripts."""
    from alembic.config import Config  # imported on use: receiving processes never need it

    cfg = Config()
    cfg.set_main_option("script_location", _script_location())
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)
    logger.info("database upgraded", extra={"action": "db_upgraded", "revision": revision})


def open_database(database_url: str) -> Engine:
    """An engine on an index already at the code's schema revision; never migrates.

    For the commands that only read or edit rows. Only the node's own processes and
    ``dicomnode db upgrade`` change the schema, so an index left behind by an upgrade
    of dicomnode is reported instead of being migrated under a running node.

    Raises
    ------
    IndexSchemaError
        When there is no index yet, or it is at another revision than this code's.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    url = make_url(database_url)
    where = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        where = str(url.database)
        if not Path(where).is_file():  # connecting would create an empty one
            raise IndexSchemaError(f"no index at {where}: run `dicomnode db upgrade` first")
    scripts = ScriptDirectory.from_config(alembic_config(database_url))
    head = scripts.get_current_head()
    engine = make_engine(database_url)
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return engine
    engine.dispose()
    if current is None:
        raise IndexSchemaError(f"the index at {where} has no schema: run `dicomnode db upgrade`")
    if current in {script.revision for script in scripts.walk_revisions()}:
        raise IndexSchemaError(
            f"the index at {where} is at schema revision {current} and this dicomnode "
            f"reads {head}: run `dicomnode db upgrade`"
        )
    raise IndexSchemaError(
        f"the index at {where} is at schema revision {current}, which this dicomnode does "
        "not know: it was written by a newer version"
    )
