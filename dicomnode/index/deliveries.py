"""Outputs and deliveries in the index: what to send to which peer, and how it went.

A delivery is one item, a routed instance or a job's output, for one peer. It is
``pending`` until the peer keeps it (``sent``, a warning included) or refuses it for
good (``failed``, status recorded). Senders claim due deliveries with a lease, as
workers claim jobs (:mod:`dicomnode.index.leases`: the same ``lease_owner`` and
``lease_expires_at``): on PostgreSQL ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE
SKIP LOCKED)``, so concurrent senders never take the same rows; on SQLite the same
statement under its one-writer lock. The claim counts the attempt, and a sender that
dies mid-batch loses nothing: the rows are claimable again when its lease lapses. A
retry (0xA7xx, network error) leaves the delivery pending with ``run_after`` after a
backoff; it never gives up.

Routes queue their deliveries when a study becomes stable
(:func:`queue_route_deliveries`, inside that transaction), from the index alone.

Outputs carry deterministic SOP Instance UIDs per job (docs/jobs.md, "The queue"): recording one
whose UID is already known replaces that row and queues its deliveries again, so a
rerun is delivered once more, never twice. Only valid outputs are ever claimed.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import ColumnElement, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicomnode.index.leases import RELEASED, lease_to, not_leased, owned_by
from dicomnode.index.schema import (
    DeliveryRecord,
    DeliveryState,
    InstanceRecord,
    JobRecord,
    OutputKind,
    OutputRecord,
    OutputState,
    SeriesRecord,
    StudyRecord,
    utc_now,
)

__all__ = [
    "ClaimedDelivery",
    "DeliverySummary",
    "claim_due_deliveries",
    "count_deliveries_by_state",
    "list_deliveries",
    "mark_failed",
    "mark_retry",
    "mark_sent",
    "queue_output_deliveries",
    "queue_route_deliveries",
    "record_output",
    "retry_deliveries",
]

logger = logging.getLogger(__name__)

#: How long a claim holds its deliveries before another sender may take them.
DEFAULT_LEASE_SECONDS = 600.0
_ERROR_CHARS = 4000


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """What a sender needs to send one claimed delivery."""

    id: int
    peer: str
    #: The file to send, relative to ``data_dir``.
    path: str
    sop_instance_uid: str
    #: Attempts so far, this one included.
    attempts: int
    instance_id: int | None
    output_id: int | None


def record_output(
    session: Session,
    job_id: int,
    kind: OutputKind | str,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    series_instance_uid: str,
    path: str,
    size_bytes: int,
    sha256: str,
    valid: bool,
    validation: str | None = None,
) -> int:
    """Record an output a job wrote under ``data_dir``; return its id (no commit).

    Parameters
    ----------
    session
        The session to write in; the caller commits.
    job_id
        The job that produced the output.
    kind
        ``seg``, ``sr`` or ``sc``.
    sop_class_uid, sop_instance_uid, series_instance_uid
        The output's UIDs. An output with a known SOP Instance UID (a rerun) replaces
        the earlier row: a valid one queues the row's deliveries again, an invalid one
        fails the deliveries still pending.
    path
        The file, relative to ``data_dir``.
    size_bytes, sha256
        The file's size and SHA-256 (hex).
    valid
        Whether the output passed validation (docs/outputs.md); only valid outputs are sent.
    validation
        The validator's message, kept for an invalid output.
    """
    values = {
        "job_id": job_id, "kind": OutputKind(kind), "sop_class_uid": sop_class_uid,
        "series_instance_uid": series_instance_uid, "path": path, "size_bytes": size_bytes,
        "sha256": sha256, "state": OutputState.VALID if valid else OutputState.INVALID,
        "validation": None if valid else (validation or "failed validation")[:_ERROR_CHARS],
        "created_at": utc_now(),
    }  # fmt: skip
    output = session.scalar(
        select(OutputRecord)
        .where(OutputRecord.sop_instance_uid == sop_instance_uid)
        .with_for_update()
    )
    if output is None:
        output = OutputRecord(sop_instance_uid=sop_instance_uid, **values)
        session.add(output)
        session.flush()
        return output.id
    for key, value in values.items():
        setattr(output, key, value)
    session.flush()
    _requeue(session, output.id, valid, output.validation)
    logger.info(
        "output replaced",
        extra={"action": "output_replaced", "job_id": job_id, "output_id": output.id,
               "sop_instance_uid": sop_instance_uid, "valid": valid},
    )  # fmt: skip
    return output.id


def _requeue(session: Session, output_id: int, valid: bool, validation: str | None) -> None:
    """Queue a replaced output's deliveries again (valid) or fail the pending ones."""
    ours = DeliveryRecord.output_id == output_id
    if valid:
        session.execute(
            update(DeliveryRecord)
            .where(ours)
            .values(_fresh())
            .execution_options(synchronize_session=False)
        )
        return
    session.execute(
        update(DeliveryRecord)
        .where(ours, DeliveryRecord.state == DeliveryState.PENDING)
        .values(
            state=DeliveryState.FAILED,
            error=f"output is invalid: {validation}"[:_ERROR_CHARS],
            **RELEASED,
        )
        .execution_options(synchronize_session=False)
    )


def _fresh() -> dict[str, object]:
    """Column values of a delivery queued anew, due now."""
    return {
        "state": DeliveryState.PENDING, "attempts": 0, "run_after": utc_now(),
        "last_status": None, "error": None, "sent_at": None, **RELEASED,
    }  # fmt: skip


class _Peer(Protocol):
    """What queuing needs of a peer (``config.PeerSettings`` has it; the index takes no config)."""

    @property
    def name(self) -> str: ...

    @property
    def accepts(self) -> Collection[str]: ...


def queue_output_deliveries(session: Session, output_id: int, peers: Iterable[_Peer]) -> int:
    """Queue a valid output for each peer that accepts its kind; return how many (no commit).

    A peer that already has a delivery of this output gets no second one; an invalid
    output is queued for nobody.
    """
    output = session.get(OutputRecord, output_id)
    if output is None or output.state is not OutputState.VALID:
        return 0
    wanted = [p.name for p in peers if output.kind.value in p.accepts]
    queued = set(
        session.scalars(select(DeliveryRecord.peer).where(DeliveryRecord.output_id == output_id))
    )
    new = [name for name in dict.fromkeys(wanted) if name not in queued]
    session.add_all(DeliveryRecord(output_id=output_id, peer=name) for name in new)
    return len(new)


def _sendable() -> ColumnElement[bool]:
    """Routed instances, and outputs that passed validation."""
    valid = select(OutputRecord.id).where(OutputRecord.state == OutputState.VALID)
    return or_(DeliveryRecord.output_id.is_(None), DeliveryRecord.output_id.in_(valid))


def claim_due_deliveries(
    session: Session,
    owner: str,
    limit: int,
    now: datetime | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due deliveries to ``owner``, grouped by peer (commits).

    The oldest due deliveries are taken first; the result is ordered by peer, then
    id, so a sender makes one association per peer.
    """
    now = now or utc_now()
    due = (
        select(DeliveryRecord.id)
        .where(DeliveryRecord.state == DeliveryState.PENDING, DeliveryRecord.run_after <= now)
        .where(not_leased(DeliveryRecord, now), _sendable())
        .order_by(DeliveryRecord.run_after, DeliveryRecord.id)
        .limit(limit)
    )
    # Look before taking the write lock, as the job queue does: an idle sender
    # polling every second must not contend with the SCP's writer on SQLite.
    if session.scalar(due.limit(1)) is None:
        session.rollback()
        return []
    claimed = session.scalars(
        update(DeliveryRecord)
        .where(DeliveryRecord.id.in_(due.with_for_update(skip_locked=True)))
        .values(attempts=DeliveryRecord.attempts + 1, **lease_to(owner, now, lease_seconds))
        .returning(DeliveryRecord.id)
        .execution_options(synchronize_session=False)
    ).all()
    rows = _claimed_rows(session, list(claimed))
    session.commit()
    return rows


def _claimed_rows(session: Session, ids: list[int]) -> list[ClaimedDelivery]:
    if not ids:
        return []
    query = (
        select(
            DeliveryRecord.id, DeliveryRecord.peer, DeliveryRecord.attempts,
            DeliveryRecord.instance_id, DeliveryRecord.output_id,
            func.coalesce(InstanceRecord.path, OutputRecord.path),
            func.coalesce(InstanceRecord.sop_instance_uid, OutputRecord.sop_instance_uid),
        )
        .outerjoin(InstanceRecord, InstanceRecord.id == DeliveryRecord.instance_id)
        .outerjoin(OutputRecord, OutputRecord.id == DeliveryRecord.output_id)
        .where(DeliveryRecord.id.in_(ids))
        .order_by(DeliveryRecord.peer, DeliveryRecord.id)
    )  # fmt: skip
    return [
        ClaimedDelivery(
            id=row[0],
            peer=row[1],
            attempts=row[2],
            instance_id=row[3],
            output_id=row[4],
            path=str(row[5]),
            sop_instance_uid=str(row[6]),
        )
        for row in session.execute(query).all()
    ]


def _finish(session: Session, delivery_id: int, owner: str, **values: object) -> bool:
    """Update a delivery ``owner`` still holds; False when its claim was lost (commits)."""
    result = session.execute(
        update(DeliveryRecord)
        .where(
            DeliveryRecord.id == delivery_id,
            owned_by(DeliveryRecord, owner),
            DeliveryRecord.state == DeliveryState.PENDING,
        )
        .values(**RELEASED, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_sent(
    session: Session, delivery_id: int, owner: str, status: int = 0, warning: str | None = None
) -> bool:
    """Record that the peer kept the item (``warning``: its warning text) (commits).

    Returns False when ``owner`` no longer holds the claim (its lease lapsed and another
    sender took the delivery, or a rerun queued it again): the delivery then stays due.
    """
    return _finish(
        session, delivery_id, owner, state=DeliveryState.SENT, sent_at=utc_now(),
        last_status=status, error=warning,
    )  # fmt: skip


def mark_retry(
    session: Session,
    delivery_id: int,
    owner: str,
    status: int | None,
    error: str,
    backoff: float,
    now: datetime | None = None,
) -> bool:
    """Leave the delivery pending, due again ``backoff`` seconds after ``now`` (commits).

    ``status`` is the peer's 0xA7xx status, or None for a network error. Pass the same
    ``now`` and ``backoff`` for deliveries that should be retried together.
    """
    run_after = (now or utc_now()) + timedelta(seconds=backoff)
    return _finish(
        session, delivery_id, owner, run_after=run_after,
        last_status=status, error=error[:_ERROR_CHARS],
    )  # fmt: skip


def mark_failed(
    session: Session, delivery_id: int, owner: str, status: int | None, error: str
) -> bool:
    """Record a permanent failure (a refusing status, or an unsendable file) (commits)."""
    return _finish(
        session, delivery_id, owner, state=DeliveryState.FAILED, last_status=status,
        error=error[:_ERROR_CHARS],
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    """One line of ``dicomnode deliveries``."""

    id: int
    #: ``instance`` for a routed instance, else the output's kind (``seg``, ``sr``, ``sc``).
    what: str
    sop_instance_uid: str
    route: str | None
    peer: str
    state: str
    attempts: int
    last_status: int | None
    error: str | None
    created_at: datetime
    run_after: datetime
    sent_at: datetime | None


def list_deliveries(
    session: Session,
    limit: int = 50,
    state: DeliveryState | None = None,
    *,
    peer: str | None = None,
    study_uid: str | None = None,
) -> list[DeliverySummary]:
    """The most recent deliveries, newest first; of one state, peer or study if given
    (a study's deliveries: its routed instances and its jobs' outputs)."""
    query = (
        select(
            DeliveryRecord, OutputRecord.kind,
            func.coalesce(InstanceRecord.sop_instance_uid, OutputRecord.sop_instance_uid),
        )
        .outerjoin(InstanceRecord, InstanceRecord.id == DeliveryRecord.instance_id)
        .outerjoin(OutputRecord, OutputRecord.id == DeliveryRecord.output_id)
        .order_by(DeliveryRecord.id.desc())
        .limit(limit)
    )  # fmt: skip
    if state is not None:
        query = query.where(DeliveryRecord.state == state)
    if peer is not None:
        query = query.where(DeliveryRecord.peer == peer)
    if study_uid is not None:
        study = select(StudyRecord.id).where(StudyRecord.study_instance_uid == study_uid)
        query = query.where(
            or_(
                InstanceRecord.series_id.in_(
                    select(SeriesRecord.id).where(SeriesRecord.study_id.in_(study))
                ),
                OutputRecord.job_id.in_(select(JobRecord.id).where(JobRecord.study_id.in_(study))),
            )
        )
    return [
        DeliverySummary(
            id=d.id,
            what=kind.value if kind is not None else "instance",
            sop_instance_uid=str(uid),
            route=d.route,
            peer=d.peer,
            state=d.state.value,
            attempts=d.attempts,
            last_status=d.last_status,
            error=d.error,
            created_at=d.created_at,
            run_after=d.run_after,
            sent_at=d.sent_at,
        )
        for d, kind, uid in session.execute(query).all()
    ]


def retry_deliveries(
    session: Session, ids: Collection[int] = (), *, failed: bool = False
) -> list[int]:
    """Queue deliveries again, due now: those in ``ids``, and every failed one if
    ``failed``; return the ids queued (commits).

    A delivery a sender holds right now, or one of an invalid output, is left alone.
    A sent delivery named in ``ids`` is sent again.
    """
    chosen: list[ColumnElement[bool]] = []
    if ids:
        chosen.append(DeliveryRecord.id.in_(list(ids)))
    if failed:
        chosen.append(DeliveryRecord.state == DeliveryState.FAILED)
    if not chosen:
        return []
    queued = session.scalars(
        update(DeliveryRecord)
        .where(or_(*chosen), not_leased(DeliveryRecord, utc_now()), _sendable())
        .values(_fresh())
        .returning(DeliveryRecord.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return sorted(queued)


def queue_route_deliveries(session: Session, series_ids: list[int], route: str, peer: str) -> int:
    """Queue one delivery per instance of these series not yet queued for ``route`` and
    ``peer``; return how many (no commit).

    Runs inside the transaction that marks a study stable, so it reads nothing but the
    index and sends no row through Python.
    """
    if not series_ids:
        return 0
    now = utc_now()
    columns = DeliveryRecord.__table__.c
    rows = select(
        InstanceRecord.id,
        literal(route, columns.route.type),
        literal(peer, columns.peer.type),
        literal(DeliveryState.PENDING, columns.state.type),
        literal(0, columns.attempts.type),
        literal(now, columns.run_after.type),
        literal(now, columns.created_at.type),
    ).where(InstanceRecord.series_id.in_(series_ids))
    fields = ("instance_id", "route", "peer", "state", "attempts", "run_after", "created_at")
    # One INSERT ... SELECT whose rows never travel through Python, and ON CONFLICT DO
    # NOTHING (uq_deliveries_instance_route_peer) rather than an anti-join: PostgreSQL,
    # with statistics from before a burst of studies, ran NOT EXISTS as a scan of every
    # delivery of the route (80 ms for the third 900-instance study, and growing).
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(DeliveryRecord)
        .from_select(fields, rows)
        .on_conflict_do_nothing()
        .returning(DeliveryRecord.id)  # rowcount came back -1 from psycopg here
    )
    return len(session.execute(statement).all())


def count_deliveries_by_state(session: Session) -> dict[DeliveryState, int]:
    """How many deliveries are in each state now, every state named (0 when none).

    One ``GROUP BY`` over ``ix_deliveries_state_run_after``, for the queue-depth gauges
    of ``/metrics``.
    """
    counts = dict.fromkeys(DeliveryState, 0)
    query = select(DeliveryRecord.state, func.count()).group_by(DeliveryRecord.state)
    for state, count in session.execute(query).all():
        counts[state] = count
    return counts
