"""Instances in the index: what ingest records, and what a job reads back.

Ingest records each group commit's instances with their studies and series in a few
statements (:func:`record_instances`), after one look-up of what is already stored
(:func:`find_instances`). That is the receive hot path: its statements are built once,
and :class:`IdCache` spares the look-ups of studies and series seen before.

Each series keeps the rule attributes of one *representative* instance: the one with
the lowest InstanceNumber, the first received among equals, and instances without a
number after all numbered ones. Ingest maintains it here, so a series' attributes do
not depend on the order its instances arrived in, and the scheduler reads them
(:func:`dicomnode.index.series.series_rule_attributes`) instead of opening files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, case, insert, or_, select, update
from sqlalchemy.orm import Session

from dicomnode.index.attributes import attributes_json
from dicomnode.index.schema import InstanceRecord, SeriesRecord, StudyRecord, StudyState

__all__ = ["IdCache", "StudyImage", "find_instances", "record_instances", "study_images"]


# Statements of the ingest hot path are built once: building SQLAlchemy expressions
# per batch cost more CPU than executing them.
_FIND_INSTANCES = select(
    InstanceRecord.sop_instance_uid, InstanceRecord.sha256, InstanceRecord.path
).where(InstanceRecord.sop_instance_uid.in_(bindparam("uids", expanding=True)))
_FIND_STUDIES = select(StudyRecord.study_instance_uid, StudyRecord.id).where(
    StudyRecord.study_instance_uid.in_(bindparam("uids", expanding=True))
)
_FIND_SERIES = select(SeriesRecord.series_instance_uid, SeriesRecord.id).where(
    SeriesRecord.series_instance_uid.in_(bindparam("uids", expanding=True))
)
_TOUCH_STUDIES = (
    update(StudyRecord)
    .where(StudyRecord.id.in_(bindparam("ids", expanding=True)))
    .values(
        last_received_at=bindparam("now"),
        # A new instance (re)opens a study: stable again only after a quiet period.
        receiving_since=case(
            (StudyRecord.state == StudyState.STABLE, bindparam("now")),
            else_=StudyRecord.receiving_since,
        ),
        state=StudyState.RECEIVING,
        stable_at=None,
    )
)
_INSERT_STUDIES = insert(StudyRecord).returning(StudyRecord.study_instance_uid, StudyRecord.id)
_INSERT_SERIES = insert(SeriesRecord).returning(SeriesRecord.series_instance_uid, SeriesRecord.id)
_INSERT_INSTANCES = insert(InstanceRecord)
# The representative's Instance Number, for the conditional updates below: another
# receiving process may have set a better representative since this one looked.
_CURRENT_NUMBER = (
    select(InstanceRecord.instance_number)
    .where(InstanceRecord.sop_instance_uid == SeriesRecord.attributes_sop_instance_uid)
    .scalar_subquery()
)
_SET_REPRESENTATIVE = update(SeriesRecord).values(
    attributes=bindparam("new_attributes"),
    attributes_sop_instance_uid=bindparam("new_uid"),
)
_SERIES_KEPT = (SeriesRecord.id == bindparam("series_id")) & SeriesRecord.attributes.is_not(None)
#: A numbered instance takes over from a higher or missing number (or re-sends itself).
_CLAIM_NUMBERED = _SET_REPRESENTATIVE.where(
    _SERIES_KEPT,
    or_(
        SeriesRecord.attributes_sop_instance_uid == bindparam("new_uid"),
        _CURRENT_NUMBER.is_(None),
        _CURRENT_NUMBER > bindparam("number"),
    ),
)
#: An instance without a number only refreshes itself (a re-sent representative).
_CLAIM_UNNUMBERED = _SET_REPRESENTATIVE.where(
    _SERIES_KEPT, SeriesRecord.attributes_sop_instance_uid == bindparam("new_uid")
)
_FIND_REPRESENTATIVES = (
    select(
        SeriesRecord.series_instance_uid,
        SeriesRecord.attributes.is_(None),
        SeriesRecord.attributes_sop_instance_uid,
        InstanceRecord.instance_number,
    )
    .outerjoin(
        InstanceRecord,
        InstanceRecord.sop_instance_uid == SeriesRecord.attributes_sop_instance_uid,
    )
    .where(SeriesRecord.series_instance_uid.in_(bindparam("uids", expanding=True)))
)


def find_instances(
    conn: Connection, sop_instance_uids: Iterable[str]
) -> dict[str, tuple[str, str]]:
    """The stored (sha256, path) of each of these instances that is in the index."""
    rows = conn.execute(_FIND_INSTANCES, {"uids": list(set(sop_instance_uids))})
    return {uid: (sha, path) for uid, sha, path in rows}


Rank = tuple[bool, int]


def _rank(instance_number: int | None) -> Rank:
    """Sort key of a representative: lowest InstanceNumber first, none last."""
    return (instance_number is None, instance_number or 0)


class IdCache:
    """Study and series ids the ingest writer has seen, to skip their look-ups.

    It also keeps each series' representative (rank and SOP Instance UID), so that an
    instance that cannot become the representative costs no decoding and no statement.

    Owned by one writer; :meth:`clear` it after any failed transaction (a rolled-back
    insert, a study deleted by retention) so no stale id is used twice.
    """

    #: Studies (or series) remembered before the cache starts afresh. It only saves
    #: look-ups for the studies arriving now; 20,000 let a receiving process grow by
    #: ~0.7 MB per 1,000 new studies for hours (bench/soak.py), 2,000 caps it near 1.4 MB.
    LIMIT = 2_000

    def __init__(self) -> None:
        self.studies: dict[str, int] = {}
        self.series: dict[str, int] = {}
        self.representatives: dict[str, tuple[Rank, str]] = {}

    def clear(self) -> None:
        """Forget everything."""
        self.studies.clear()
        self.series.clear()
        self.representatives.clear()

    def trim(self) -> None:
        """Keep memory bounded on a long-running node."""
        if len(self.studies) > self.LIMIT or len(self.series) > self.LIMIT:
            self.clear()


def _ids(
    conn: Connection,
    find: Any,
    insert_stmt: Any,
    wanted: dict[str, dict[str, Any]],
    known: dict[str, int],
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[dict[str, int], set[str]]:
    """Ids for the UIDs in ``wanted`` (uid -> row to insert), from cache, table or insert.

    ``prepare`` finishes a row that is inserted. Also returns the UIDs it inserted.
    """
    ids = {uid: known[uid] for uid in wanted if uid in known}
    missing = [uid for uid in wanted if uid not in ids]
    inserted: set[str] = set()
    if missing:
        ids.update((uid, i) for uid, i in conn.execute(find, {"uids": missing}))
        new = [wanted[uid] for uid in missing if uid not in ids]
        if new and prepare is not None:
            new = [prepare(row) for row in new]
        if new:
            rows = {uid: i for uid, i in conn.execute(insert_stmt, new)}
            ids.update(rows)
            inserted = set(rows)
    known.update(ids)
    return ids, inserted


def _study_rows(rows: list[dict[str, Any]], now: datetime) -> dict[str, dict[str, Any]]:
    return {
        r["study_instance_uid"]: {
            "study_instance_uid": r["study_instance_uid"],
            "study_date": r["study_date"],
            "study_description": r["study_description"],
            "accession_number": r.get("accession_number"),
            "calling_ae": r["calling_ae"],
            "state": StudyState.RECEIVING,
            "first_received_at": now,
            "receiving_since": now,
            "last_received_at": now,
        }
        for r in reversed(rows)
    }


def _series_rows(
    rows: list[dict[str, Any]], study_ids: dict[str, int], best: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Series to insert, should they be new; attributes decoded only when inserted."""
    return {
        r["series_instance_uid"]: {
            "series_instance_uid": r["series_instance_uid"],
            "study_id": study_ids[r["study_instance_uid"]],
            **{field: r[field] for field in _SERIES_FIELDS},
            "attributes": best[r["series_instance_uid"]].get("attributes"),
            "attributes_sop_instance_uid": best[r["series_instance_uid"]]["sop_instance_uid"],
        }
        for r in reversed(rows)
    }


def _decode_attributes(row: dict[str, Any]) -> dict[str, Any]:
    return row | {"attributes": attributes_json(row.get("attributes"))}


def _best_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per series UID, the row of this batch that sorts first (first received on a tie)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        uid = row["series_instance_uid"]
        if uid not in best or _rank(row["instance_number"]) < _rank(best[uid]["instance_number"]):
            best[uid] = row
    return best


def _load_representatives(conn: Connection, uids: list[str], cache: IdCache) -> None:
    for uid, legacy, rep_uid, number in conn.execute(_FIND_REPRESENTATIVES, {"uids": uids}):
        # A series from before revision 0004 is left to the backfill, and not cached:
        # once backfilled, its next instances must compare with what it recorded.
        if not legacy and rep_uid is not None:
            cache.representatives[uid] = (_rank(number), rep_uid)


def _claim_representative(conn: Connection, series_id: int, row: dict[str, Any]) -> bool:
    """Make ``row``'s instance its series' representative if it sorts first (no commit)."""
    number = row["instance_number"]
    params = {
        "series_id": series_id,
        "new_uid": row["sop_instance_uid"],
        "new_attributes": attributes_json(row.get("attributes")),
        "number": number,
    }
    stmt = _CLAIM_UNNUMBERED if number is None else _CLAIM_NUMBERED
    return bool(conn.execute(stmt, params).rowcount)


def _update_representatives(
    conn: Connection,
    rows: list[dict[str, Any]],
    replaced: set[str],
    series_ids: dict[str, int],
    cache: IdCache,
) -> None:
    """Let the instances of series that existed before this batch claim representation."""
    missing = [uid for uid in series_ids if uid not in cache.representatives]
    if missing:
        _load_representatives(conn, missing, cache)
    best = _best_rows(rows)
    # A re-sent representative refreshes its attributes even if it no longer sorts first.
    candidates = list(best.values()) + [
        r
        for r in rows
        if r["sop_instance_uid"] in replaced and r is not best[r["series_instance_uid"]]
    ]
    for row in candidates:
        uid = row["series_instance_uid"]
        current = cache.representatives.get(uid)
        if current is None:
            continue  # a series from before revision 0004: the backfill reads its files
        rank, rep_uid = current
        if row["sop_instance_uid"] != rep_uid and _rank(row["instance_number"]) >= rank:
            continue
        if _claim_representative(conn, series_ids[uid], row):
            cache.representatives[uid] = (_rank(row["instance_number"]), row["sop_instance_uid"])
        else:
            cache.representatives.pop(uid, None)  # another process's is better: look again


_SERIES_FIELDS = (
    "modality", "series_number", "series_description", "body_part_examined",
    "frame_of_reference_uid",
)  # fmt: skip
_INSTANCE_FIELDS = (
    "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "instance_number",
    "image_type", "view_position", "laterality", "image_plane", "rows", "columns",
    "number_of_frames", "size_bytes", "sha256", "path", "calling_ae", "association_id",
)  # fmt: skip


def record_instances(
    conn: Connection,
    rows: list[dict[str, Any]],
    replaced: set[str],
    now: datetime,
    cache: IdCache | None = None,
) -> None:
    """Insert (or, for UIDs in ``replaced``, update) instance rows with their studies
    and series, in a few statements per batch (no commit).

    Each row holds the :class:`~dicomnode.receive.inspect.InstanceInfo` fields plus
    ``size_bytes``, ``sha256``, ``path``, ``calling_ae`` and ``association_id``; its
    ``attributes`` (:class:`~dicomnode.index.attributes.RawAttributes` or JSON text)
    are decoded only if the instance becomes its series' representative.
    Every study touched is marked receiving with ``now`` as its last instance time.
    """
    if not rows:
        return
    cache = cache if cache is not None else IdCache()
    study_ids, _ = _ids(conn, _FIND_STUDIES, _INSERT_STUDIES, _study_rows(rows, now), cache.studies)
    conn.execute(_TOUCH_STUDIES, {"ids": list(study_ids.values()), "now": now})
    best = _best_rows(rows)
    series_rows = _series_rows(rows, study_ids, best)
    series_ids, inserted = _ids(
        conn, _FIND_SERIES, _INSERT_SERIES, series_rows, cache.series, _decode_attributes
    )
    values = [
        {field: r[field] for field in _INSTANCE_FIELDS}
        | {"series_id": series_ids[r["series_instance_uid"]], "received_at": now}
        for r in rows
    ]
    new = [v for v in values if v["sop_instance_uid"] not in replaced]
    if new:
        conn.execute(_INSERT_INSTANCES, new)
    for value in values:
        if value["sop_instance_uid"] in replaced:
            conn.execute(
                update(InstanceRecord)
                .where(InstanceRecord.sop_instance_uid == value["sop_instance_uid"])
                .values(**value)
            )
    for uid in inserted:
        first = best[uid]
        cache.representatives[uid] = (_rank(first["instance_number"]), first["sop_instance_uid"])
    existing = {uid: i for uid, i in series_ids.items() if uid not in inserted}
    if existing:
        _update_representatives(
            conn,
            [r for r in rows if r["series_instance_uid"] in existing],
            replaced,
            existing,
            cache,
        )


@dataclass(frozen=True, slots=True)
class StudyImage:
    """One instance of a study with the header values view grouping needs.

    ``path`` is relative to ``data_dir`` when it comes from the index; the training
    loader fills the same record from files it reads, with absolute paths.
    """

    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    instance_number: int | None = None
    image_type: str | None = None
    view_position: str | None = None
    laterality: str | None = None
    image_plane: str | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int = 1
    received_at: datetime | None = None


def study_images(session: Session, study_id: int) -> list[StudyImage]:
    """Every instance of a study, by series number then Instance Number."""
    rows = session.execute(
        select(
            SeriesRecord.series_instance_uid,
            InstanceRecord.sop_instance_uid,
            InstanceRecord.sop_class_uid,
            InstanceRecord.path,
            SeriesRecord.modality,
            SeriesRecord.series_number,
            SeriesRecord.series_description,
            SeriesRecord.body_part_examined,
            InstanceRecord.instance_number,
            InstanceRecord.image_type,
            InstanceRecord.view_position,
            InstanceRecord.laterality,
            InstanceRecord.image_plane,
            InstanceRecord.rows,
            InstanceRecord.columns,
            InstanceRecord.number_of_frames,
            InstanceRecord.received_at,
        )
        .join(InstanceRecord, InstanceRecord.series_id == SeriesRecord.id)
        .where(SeriesRecord.study_id == study_id)
        .order_by(
            SeriesRecord.series_number,
            SeriesRecord.id,
            InstanceRecord.instance_number,
            InstanceRecord.id,
        )
    ).all()
    return [StudyImage(*row) for row in rows]
