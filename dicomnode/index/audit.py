"""The audit trail in the index: security-relevant events, listed, forwarded, expired.

Stages record what happened with :func:`record_audit_event` (or, for several events of
one moment, :func:`record_audit_events`); the web page lists them with
:func:`list_audit_events`; the syslog forwarder (``dicomnode.send.audit_syslog``)
claims the unforwarded ones with the shared lease (:func:`claim_unforwarded`,
:mod:`dicomnode.index.leases`) and marks each sent one (:func:`mark_forwarded`);
retention deletes the old ones (:func:`delete_audit_events_before`). What each event
means and how it is forwarded: ``docs/operate.md``, "Audit trail".

Recording never fails the work it describes: a database error is logged
(``audit_record_failed``) and swallowed, so a C-STORE or a job never fails because
its audit event could not be written. Every text is cut to its column and its control
characters escaped (:func:`~dicomnode.log.escape_control`) before it is written. No
patient name, ID or birth date is ever recorded: UIDs, AE titles, addresses, counts
and our own words only.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, aliased

from dicomnode.index.leases import RELEASED, lease_to, not_leased, owned_by
from dicomnode.index.schema import (
    AuditEventRecord,
    AuditEventType,
    AuditOutcome,
    DeliveryRecord,
    InstanceRecord,
    JobRecord,
    OutputRecord,
    SeriesRecord,
    StudyRecord,
    utc_now,
)
from dicomnode.log import escape_control

__all__ = [
    "MAX_LISTED",
    "AuditEntry",
    "AuditEvent",
    "DeliveredItem",
    "StudyTransfer",
    "add_audit_events",
    "association_transfers",
    "claim_unforwarded",
    "delete_audit_events_before",
    "delivered_items",
    "list_audit_events",
    "mark_forwarded",
    "record_audit_event",
    "record_audit_events",
    "release_unforwarded",
]

logger = logging.getLogger(__name__)

#: The most events one call of :func:`list_audit_events` returns.
MAX_LISTED = 1000
#: How long a forwarder's claim holds its events before another may take them.
DEFAULT_LEASE_SECONDS = 60.0
#: Rows deleted per transaction: a short write lock each (SQLite has one writer).
_DELETE_BATCH = 5000
#: SOP Instance UIDs per ``IN (...)`` list.
_UID_CHUNK = 500
#: Column widths of the texts (``AuditEventRecord``).
_WIDTHS = {
    "calling_ae": 16,
    "called_ae": 16,
    "peer_address": 64,
    "study_instance_uid": 64,
    "detail": 256,
    "actor": 128,
}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One event to record; see :func:`record_audit_event` for what each field holds."""

    event: AuditEventType | str
    outcome: AuditOutcome | int = AuditOutcome.SUCCESS
    calling_ae: str | None = None
    called_ae: str | None = None
    peer_address: str | None = None
    study_instance_uid: str | None = None
    instances: int | None = None
    sop_classes: Mapping[str, int] | None = None
    detail: str | None = None
    actor: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One recorded event, as listed and forwarded."""

    id: int
    occurred_at: datetime
    #: An :class:`~dicomnode.index.schema.AuditEventType` value (text: a newer node's
    #: event type is listed as it is).
    event: str
    outcome: AuditOutcome
    calling_ae: str | None
    called_ae: str | None
    peer_address: str | None
    study_instance_uid: str | None
    instances: int | None
    #: SOP Class UID -> how many instances of it (empty when not about instances).
    sop_classes: dict[str, int] = field(default_factory=dict)
    detail: str | None = None
    actor: str | None = None
    forwarded_at: datetime | None = None


def _text(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    return escape_control(str(value))[: _WIDTHS[name]]


def _row(entry: AuditEntry, now: datetime) -> dict[str, object]:
    """The column values of ``entry``; raises ValueError naming a bad field."""
    try:
        event = AuditEventType(entry.event)
    except ValueError:
        raise ValueError(f"event: {entry.event!r} is not an AuditEventType") from None
    try:
        outcome = AuditOutcome(entry.outcome)
    except ValueError:
        raise ValueError(f"outcome: {entry.outcome!r} is not 0, 4, 8 or 12") from None
    if entry.instances is not None and entry.instances < 0:
        raise ValueError(f"instances: {entry.instances} is negative")
    sop_classes = None
    if entry.sop_classes:
        cleaned = {escape_control(uid)[:64]: int(n) for uid, n in entry.sop_classes.items()}
        sop_classes = json.dumps(cleaned, sort_keys=True)
    texts = {name: _text(name, getattr(entry, name)) for name in _WIDTHS}
    return {
        "occurred_at": entry.occurred_at or now, "event": event.value,
        "outcome": int(outcome), "instances": entry.instances, "sop_classes": sop_classes,
        **texts,
    }  # fmt: skip


def add_audit_events(session: Session, entries: Iterable[AuditEntry]) -> int:
    """Add events to ``session`` without committing; how many.

    For a caller that commits a write of its own anyway (the SCP's association rows):
    the events cost no transaction of their own, and are lost with that write if it
    fails. Everyone else calls :func:`record_audit_events`.

    Raises
    ------
    ValueError
        An entry with an unknown event type or outcome, or a negative count (a bug of
        the caller, raised before anything is added).
    """
    now = utc_now()
    records = [AuditEventRecord(**_row(entry, now)) for entry in entries]
    session.add_all(records)
    return len(records)


def record_audit_events(session: Session, entries: Iterable[AuditEntry]) -> list[int]:
    """Record events in one transaction; their ids, or [] when it failed (commits).

    Never raises for a database error: it is logged (``audit_record_failed``), the
    session rolled back and the events lost, so the work they describe goes on. Call
    it after committing your own work: a failure rolls back everything pending.

    Raises
    ------
    ValueError
        As :func:`add_audit_events`, before anything is written.
    """
    now = utc_now()
    records = [AuditEventRecord(**_row(entry, now)) for entry in entries]
    if not records:
        return []
    try:
        session.add_all(records)
        session.commit()
        return [record.id for record in records]
    except Exception:
        try:
            session.rollback()
        except Exception:  # the connection itself is gone; nothing more to undo
            pass
        logger.exception(
            "audit event not recorded",
            extra={"action": "audit_record_failed", "events": [r.event for r in records]},
        )
        return []


def record_audit_event(
    session: Session,
    event: AuditEventType | str,
    *,
    outcome: AuditOutcome | int = AuditOutcome.SUCCESS,
    calling_ae: str | None = None,
    called_ae: str | None = None,
    peer_address: str | None = None,
    study_instance_uid: str | None = None,
    instances: int | None = None,
    sop_classes: Mapping[str, int] | None = None,
    detail: str | None = None,
    actor: str | None = None,
    occurred_at: datetime | None = None,
) -> int | None:
    """Record one audit event; its id, or None when it could not be written (commits).

    The web page records its actions so::

        record_audit_event(session, "web_action", actor=fingerprint, detail="retry job 12")

    A database error is logged and swallowed (see :func:`record_audit_events`).

    Parameters
    ----------
    session
        A session whose own work is already committed.
    event
        An :class:`~dicomnode.index.schema.AuditEventType` (or its value).
    outcome
        PS3.15 EventOutcomeIndicator: 0 success, 4 minor, 8 serious, 12 major failure.
    calling_ae, called_ae
        The association's AE titles: the peer's and ours for what we receive, ours
        and the peer's for what we send.
    peer_address
        The peer's IP address or host name.
    study_instance_uid
        The study the event is about, if any.
    instances, sop_classes
        How many instances the event is about, and how many of each SOP Class UID.
    detail
        Our own short words (at most 256 characters kept); never patient data, never
        the text of a library's exception.
    actor
        Who acted: a web token's fingerprint, a process role.
    occurred_at
        When it happened; now when None.
    """
    ids = record_audit_events(
        session,
        [
            AuditEntry(
                event, outcome, calling_ae, called_ae, peer_address, study_instance_uid,
                instances, sop_classes, detail, actor, occurred_at,
            )
        ],
    )  # fmt: skip
    return ids[0] if ids else None


def _event(record: AuditEventRecord) -> AuditEvent:
    return AuditEvent(
        id=record.id, occurred_at=record.occurred_at, event=record.event,
        outcome=AuditOutcome(record.outcome), calling_ae=record.calling_ae,
        called_ae=record.called_ae, peer_address=record.peer_address,
        study_instance_uid=record.study_instance_uid, instances=record.instances,
        sop_classes=json.loads(record.sop_classes) if record.sop_classes else {},
        detail=record.detail, actor=record.actor, forwarded_at=record.forwarded_at,
    )  # fmt: skip


def list_audit_events(
    session: Session,
    *,
    limit: int = 50,
    before_id: int | None = None,
    event: AuditEventType | str | None = None,
    study_uid: str | None = None,
    calling_ae: str | None = None,
) -> list[AuditEvent]:
    """The most recent audit events, newest first; a read only.

    Parameters
    ----------
    session
        A session on the index.
    limit
        How many at most (1 to :data:`MAX_LISTED`).
    before_id
        Only events older than this one (its id): the next page starts at the last
        event's id of the page before.
    event
        Only events of this type (an ``AuditEventType`` value).
    study_uid
        Only events about this Study Instance UID.
    calling_ae
        Only events with this calling AE title.

    Raises
    ------
    ValueError
        When ``limit`` is out of range.
    """
    if not 1 <= limit <= MAX_LISTED:
        raise ValueError(f"limit: {limit} is not between 1 and {MAX_LISTED}")
    query = select(AuditEventRecord).order_by(AuditEventRecord.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditEventRecord.id < before_id)
    if event is not None:
        query = query.where(AuditEventRecord.event == str(event))
    if study_uid is not None:
        query = query.where(AuditEventRecord.study_instance_uid == study_uid)
    if calling_ae is not None:
        query = query.where(AuditEventRecord.calling_ae == calling_ae)
    return [_event(record) for record in session.scalars(query)]


def claim_unforwarded(
    session: Session,
    owner: str,
    limit: int,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    now: datetime | None = None,
) -> list[AuditEvent]:
    """Lease up to ``limit`` of the oldest unforwarded events to ``owner``, oldest
    first (commits).

    A forwarder that dies holding them loses nothing: its lease lapses and another
    run takes them again (at-least-once, as deliveries).
    """
    now = now or utc_now()
    due = (
        select(AuditEventRecord.id)
        .where(AuditEventRecord.forwarded_at.is_(None), not_leased(AuditEventRecord, now))
        .order_by(AuditEventRecord.id)
        .limit(limit)
    )
    # Look before taking the write lock, as the job and delivery claims do.
    if session.scalar(due.limit(1)) is None:
        session.rollback()
        return []
    claimed = session.scalars(
        update(AuditEventRecord)
        .where(AuditEventRecord.id.in_(due.with_for_update(skip_locked=True)))
        .values(**lease_to(owner, now, lease_seconds))
        .returning(AuditEventRecord.id)
        .execution_options(synchronize_session=False)
    ).all()
    records = session.scalars(
        select(AuditEventRecord)
        .where(AuditEventRecord.id.in_(list(claimed)))
        .order_by(AuditEventRecord.id)
    ).all()
    events = [_event(record) for record in records]
    session.commit()
    return events


def mark_forwarded(
    session: Session, ids: Collection[int], owner: str, now: datetime | None = None
) -> int:
    """Record that these events, claimed by ``owner``, reached the collector; how many
    were still ``owner``'s to mark (commits)."""
    if not ids:
        return 0
    result = session.execute(
        update(AuditEventRecord)
        .where(
            AuditEventRecord.id.in_(list(ids)),
            owned_by(AuditEventRecord, owner),
            AuditEventRecord.forwarded_at.is_(None),
        )
        .values(forwarded_at=now or utc_now(), **RELEASED)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def release_unforwarded(session: Session, ids: Collection[int], owner: str) -> int:
    """Give claimed events back unforwarded (the collector could not be reached), so
    the next attempt need not wait for the lease to lapse; how many (commits)."""
    if not ids:
        return 0
    result = session.execute(
        update(AuditEventRecord)
        .where(
            AuditEventRecord.id.in_(list(ids)),
            owned_by(AuditEventRecord, owner),
            AuditEventRecord.forwarded_at.is_(None),
        )
        .values(**RELEASED)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def delete_audit_events_before(
    session: Session, cutoff: datetime, *, keep_unforwarded: bool = False
) -> int:
    """Delete the events that occurred before ``cutoff``; how many (commits).

    In batches of a few thousand rows, each its own short transaction. With
    ``keep_unforwarded`` (syslog forwarding is on) an event not yet forwarded is kept,
    however old: a collector that was down for long still gets everything.
    """
    old = select(AuditEventRecord.id).where(AuditEventRecord.occurred_at < cutoff)
    if keep_unforwarded:
        old = old.where(AuditEventRecord.forwarded_at.is_not(None))
    deleted = 0
    while True:
        batch = session.scalars(old.order_by(AuditEventRecord.id).limit(_DELETE_BATCH)).all()
        if not batch:
            session.rollback()
            return deleted
        session.execute(
            delete(AuditEventRecord)
            .where(AuditEventRecord.id.in_(list(batch)))
            .execution_options(synchronize_session=False)
        )
        session.commit()
        deleted += len(batch)


@dataclass(frozen=True, slots=True)
class StudyTransfer:
    """What one association brought of one study: SOP Class UID -> instances."""

    study_instance_uid: str
    sop_classes: dict[str, int]

    @property
    def instances(self) -> int:
        """How many instances in all."""
        return sum(self.sop_classes.values())


def association_transfers(
    session: Session, association_id: int | None, duplicates: Collection[str] = ()
) -> list[StudyTransfer]:
    """The instances an association stored, by study and SOP class; a read only.

    Those indexed under ``association_id`` (stored or replaced by it), and the
    ``duplicates``: SOP Instance UIDs it sent again with the bytes already held, whose
    rows belong to the association that first brought them. One GROUP BY over
    ``ix_instances_association_id``, once, when the association ends: never a write
    per instance on the ingest path.
    """
    counts: dict[str, Counter[str]] = {}
    study = StudyRecord.study_instance_uid
    grouped = (
        select(study, InstanceRecord.sop_class_uid, func.count())
        .join(SeriesRecord, SeriesRecord.id == InstanceRecord.series_id)
        .join(StudyRecord, StudyRecord.id == SeriesRecord.study_id)
        .group_by(study, InstanceRecord.sop_class_uid)
    )
    queries = []
    if association_id is not None:
        queries.append(grouped.where(InstanceRecord.association_id == association_id))
    uids = sorted(set(duplicates))
    for start in range(0, len(uids), _UID_CHUNK):
        chunk = grouped.where(InstanceRecord.sop_instance_uid.in_(uids[start : start + _UID_CHUNK]))
        if association_id is not None:  # those of this association are counted above
            chunk = chunk.where(
                (InstanceRecord.association_id != association_id)
                | InstanceRecord.association_id.is_(None)
            )
        queries.append(chunk)
    for query in queries:
        for uid, sop_class, count in session.execute(query).all():
            counts.setdefault(uid, Counter())[sop_class] += count
    return [StudyTransfer(uid, dict(classes)) for uid, classes in sorted(counts.items())]


@dataclass(frozen=True, slots=True)
class DeliveredItem:
    """What a delivery's audit event names: the item's study and SOP class."""

    study_instance_uid: str | None
    sop_class_uid: str | None


def delivered_items(session: Session, delivery_ids: Collection[int]) -> dict[int, DeliveredItem]:
    """The study and SOP class of each delivery's item (a routed instance or a job's
    output), by delivery id; a read only, once per peer batch sent."""
    instance_study, output_study = aliased(StudyRecord), aliased(StudyRecord)
    query = (
        select(
            DeliveryRecord.id,
            func.coalesce(instance_study.study_instance_uid, output_study.study_instance_uid),
            func.coalesce(InstanceRecord.sop_class_uid, OutputRecord.sop_class_uid),
        )
        .outerjoin(InstanceRecord, InstanceRecord.id == DeliveryRecord.instance_id)
        .outerjoin(SeriesRecord, SeriesRecord.id == InstanceRecord.series_id)
        .outerjoin(instance_study, instance_study.id == SeriesRecord.study_id)
        .outerjoin(OutputRecord, OutputRecord.id == DeliveryRecord.output_id)
        .outerjoin(JobRecord, JobRecord.id == OutputRecord.job_id)
        .outerjoin(output_study, output_study.id == JobRecord.study_id)
    )
    ids = sorted(set(delivery_ids))
    items = {}
    for start in range(0, len(ids), _UID_CHUNK):
        chunk = query.where(DeliveryRecord.id.in_(ids[start : start + _UID_CHUNK]))
        for delivery_id, study, sop_class in session.execute(chunk).all():
            items[delivery_id] = DeliveredItem(study, sop_class)
    return items
