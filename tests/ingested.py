"""A node's ingest and scheduler database without its network: for tests that drive
the real ingest path (spool, header walk, group commit, index rows) and then run the
scheduler's jobs against the same database, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
from dicomnode.index.layout import DataLayout
from dicomnode.receive.ingest import Ingest, Outcome
from dicomnode.receive.spool import SpoolFile
from tests.factories import encode

__all__ = ["DATABASES", "IngestedNode", "database_url", "ingested_node", "store"]

#: Parameters of a fixture that runs its tests on both databases.
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@dataclass
class IngestedNode:
    """Ingest, and the scheduler's own sessions on the same database."""

    layout: DataLayout
    url: str
    ingest: Ingest
    #: The scheduler's own engine (ingest has its own, as in separate processes).
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def data_dir(self) -> Path:
        return self.layout.root


def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh database of the fixture's parameter ("sqlite"/"postgresql")."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@contextmanager
def ingested_node(url: str, data_dir: Path) -> Iterator[IngestedNode]:
    """A migrated database, a started ingest writing into ``data_dir``, and an engine."""
    upgrade_database(url)
    layout = DataLayout(data_dir)
    ingest_engine = make_engine(url)
    ingest = Ingest(layout.root, ingest_engine)
    ingest.start()
    engine = make_engine(url)
    try:
        yield IngestedNode(layout, url, ingest, engine, make_session_factory(engine))
    finally:
        ingest.stop()
        ingest_engine.dispose()
        engine.dispose()


def store(node: IngestedNode, ds: Dataset, calling_ae: str = "CT1") -> Outcome:
    """C-STORE ``ds`` through the real ingest path, as the SCP handler does."""
    spool = SpoolFile(node.ingest.spool_dir)
    spool.write(encode(ds))
    return node.ingest.store(
        spool, str(ds.SOPClassUID), str(ds.SOPInstanceUID), calling_ae, association_id=None
    )
