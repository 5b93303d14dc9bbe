"""Record the rule attributes of series indexed before revision 0004, from their files.

Revision 0004 gave each series the rule attributes of its representative instance
(:mod:`dicomnode.index.instances`), which ingest records from then on. Series indexed
before have none (NULL), and a migration cannot read their files: it knows only the
database, not the ``data_dir`` the instance paths are relative to. So the node runs
:func:`backfill_series_attributes` at start-up, right after upgrading the schema
(``dicomnode run``, ``serve`` and ``db upgrade``).

Each representative's header is read with ingest's own walk
(:func:`~dicomnode.receive.inspect.inspect_instance`), so a rule means the same on an
old series as on a new one. Files are read with no transaction open; one short write
transaction per batch then records what was read, and only where nothing changed
meanwhile (no newer instance in the series, the representative not re-sent): a
series that changed is read again in the next pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import InvalidDatasetError
from dicomnode.index.db import make_engine, make_session_factory
from dicomnode.index.layout import DataLayout
from dicomnode.index.schema import InstanceRecord, SeriesRecord
from dicomnode.receive.inspect import MAX_ELEMENTS, MAX_INFLATED_BYTES, inspect_instance

__all__ = ["backfill_database", "backfill_series_attributes"]

logger = logging.getLogger(__name__)

#: Series read per write transaction.
BATCH = 200
#: Passes over series that changed while they were read, before giving up on them.
MAX_PASSES = 3

_RECORD = (
    update(SeriesRecord)
    .where(
        SeriesRecord.id == bindparam("series_id"),
        SeriesRecord.attributes.is_(None),
        ~exists().where(
            InstanceRecord.series_id == SeriesRecord.id,
            InstanceRecord.id > bindparam("newest_id"),
        ),
        exists().where(
            InstanceRecord.id == bindparam("instance_id"),
            InstanceRecord.sha256 == bindparam("sha256"),
        ),
    )
    .values(attributes=bindparam("new_attributes"), attributes_sop_instance_uid=bindparam("uid"))
)


@dataclass(frozen=True, slots=True)
class _Reader:
    """Reads headers as ingest does: the same walk under the same limits."""

    layout: DataLayout
    scratch: Path
    max_inflated_bytes: int
    max_elements: int

    def attributes(self, legacy: _Legacy) -> str:
        """The representative's rule attributes; an empty object if the file is unusable."""
        path = self.layout.path(legacy.path)
        try:
            info = inspect_instance(path, self.scratch, self.max_inflated_bytes, self.max_elements)
        except (OSError, InvalidDatasetError) as exc:
            # Rules then see no attributes for this series, as for a file that is gone.
            logger.warning(
                "series attributes not readable",
                extra={"action": "series_backfill_unreadable",
                       "sop_instance_uid": legacy.sop_instance_uid,
                       "reason": type(exc).__name__},
            )  # fmt: skip
            return "{}"
        return info.attributes.to_json()


@dataclass(frozen=True, slots=True)
class _Legacy:
    """A series without attributes and what its representative was when looked up."""

    series_id: int
    instance_id: int
    sop_instance_uid: str
    sha256: str
    path: str
    newest_id: int


def _representative(session: Session, series_id: int) -> _Legacy | None:
    # The same order ingest keeps: lowest Instance Number, first received, none last.
    first = session.execute(
        select(
            InstanceRecord.id, InstanceRecord.sop_instance_uid, InstanceRecord.sha256,
            InstanceRecord.path,
        )
        .where(InstanceRecord.series_id == series_id)
        .order_by(
            InstanceRecord.instance_number.is_(None),
            InstanceRecord.instance_number,
            InstanceRecord.id,
        )
        .limit(1)
    ).first()  # fmt: skip
    newest = session.scalar(
        select(func.max(InstanceRecord.id)).where(InstanceRecord.series_id == series_id)
    )
    if first is None or newest is None:
        return None
    return _Legacy(series_id, *first, newest_id=newest)


def _find_legacy(session: Session, after: int) -> list[_Legacy]:
    ids = session.scalars(
        select(SeriesRecord.id)
        .where(SeriesRecord.attributes.is_(None), SeriesRecord.id > after)
        .order_by(SeriesRecord.id)
        .limit(BATCH)
    ).all()
    found = (_representative(session, series_id) for series_id in ids)
    return [legacy for legacy in found if legacy is not None]


def _pass(session_factory: sessionmaker[Session], reader: _Reader) -> tuple[int, int]:
    """One pass over every series without attributes: (recorded, changed meanwhile)."""
    recorded = changed = 0
    after = 0
    while True:
        with session_factory() as session:
            batch = _find_legacy(session, after)
        if not batch:
            return recorded, changed
        after = batch[-1].series_id
        # No session is open here: reading files never holds a transaction.
        read = [(legacy, reader.attributes(legacy)) for legacy in batch]
        with session_factory() as session:
            for legacy, attributes in read:
                params = {
                    "series_id": legacy.series_id, "newest_id": legacy.newest_id,
                    "instance_id": legacy.instance_id, "sha256": legacy.sha256,
                    "new_attributes": attributes, "uid": legacy.sop_instance_uid,
                }  # fmt: skip
                done = session.connection().execute(_RECORD, params).rowcount
                recorded += done
                changed += 1 - done
            session.commit()


def backfill_series_attributes(
    session_factory: sessionmaker[Session],
    data_dir: Path,
    max_inflated_bytes: int = MAX_INFLATED_BYTES,
    max_elements: int = MAX_ELEMENTS,
) -> int:
    """Record the rule attributes of every series that has none; return how many.

    Parameters
    ----------
    session_factory
        Sessions on the index.
    data_dir
        The node's data folder, which instance paths are relative to.
    max_inflated_bytes, max_elements
        The limits ingest applies (``node.max_inflated_bytes``, ``node.max_elements``).
    """
    total = 0
    layout = DataLayout(data_dir)
    with layout.scratch_dir("backfill") as scratch:
        reader = _Reader(layout, Path(scratch), max_inflated_bytes, max_elements)
        for _ in range(MAX_PASSES):
            recorded, changed = _pass(session_factory, reader)
            total += recorded
            if not changed:
                break
    if total:
        logger.info(
            "series attributes backfilled",
            extra={"action": "series_attributes_backfilled", "series": total},
        )
    return total


def backfill_database(database_url: str, data_dir: Path, **limits: int) -> int:
    """:func:`backfill_series_attributes` on the database at ``database_url``."""
    engine = make_engine(database_url)
    try:
        return backfill_series_attributes(make_session_factory(engine), data_dir, **limits)
    finally:
        engine.dispose()
