"""What the web page's overview reads: traffic now, peers' delivery state, model versions.

Each figure is one indexed query, so the overview costs the same with ten studies as
with ten thousand: open associations (``ended_at`` NULL), instances and bytes of the
last hour (``ix_instances_received_at``), and one ``GROUP BY`` per peer over the
deliveries that are not sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from dicomnode.index.schema import (
    AssociationRecord,
    DeliveryRecord,
    DeliveryState,
    InstanceRecord,
    JobRecord,
    JobState,
    utc_now,
)

__all__ = [
    "PeerState",
    "Traffic",
    "model_versions",
    "peer_states",
    "recent_traffic",
]


@dataclass(frozen=True, slots=True)
class Traffic:
    """Associations open now and what arrived in the last hour."""

    open_associations: int
    instances_last_hour: int
    bytes_last_hour: int


def recent_traffic(session: Session, now: datetime | None = None) -> Traffic:
    """Open associations, and instances and bytes received in the hour before ``now``."""
    since = (now or utc_now()) - timedelta(hours=1)
    open_now = session.scalar(select(func.count()).where(AssociationRecord.ended_at.is_(None)))
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(InstanceRecord.size_bytes), 0)).where(
            InstanceRecord.received_at >= since
        )
    ).one()
    return Traffic(int(open_now or 0), int(count), int(size))


@dataclass(frozen=True, slots=True)
class PeerState:
    """How deliveries to one peer stand.

    ``state`` is ``failed`` when some delivery failed for good, else ``retrying`` when
    some pending one has been tried and is waiting out its backoff (``since``: when
    the oldest of those was queued), else ``ok``.
    """

    peer: str
    state: str
    pending: int
    failed: int
    since: datetime | None
    last_sent_at: datetime | None


def peer_states(session: Session, peers: list[str]) -> list[PeerState]:
    """The delivery state of each peer in ``peers`` (configured ones), in that order."""
    retrying = (DeliveryRecord.state == DeliveryState.PENDING) & (DeliveryRecord.attempts > 0)
    rows = session.execute(
        select(
            DeliveryRecord.peer,
            func.sum(case((DeliveryRecord.state == DeliveryState.PENDING, 1), else_=0)),
            func.sum(case((DeliveryRecord.state == DeliveryState.FAILED, 1), else_=0)),
            func.sum(case((retrying, 1), else_=0)),
            func.min(case((retrying, DeliveryRecord.created_at), else_=None)),
            func.max(DeliveryRecord.sent_at),
        ).group_by(DeliveryRecord.peer)
    ).all()
    by_peer = {row[0]: row for row in rows}
    out = []
    for peer in peers:
        _, pending, failed, tried, since, last_sent = by_peer.get(peer, (peer, 0, 0, 0, None, None))
        state = "failed" if failed else "retrying" if tried else "ok"
        out.append(
            PeerState(
                peer=peer,
                state=state,
                pending=int(pending or 0),
                failed=int(failed or 0),
                since=_aware(since) if tried else None,
                last_sent_at=_aware(last_sent),
            )
        )
    return out


def _aware(value: datetime | None) -> datetime | None:
    """Aggregates skip the column type: SQLite hands back naive UTC (or text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=utc_now().tzinfo)


def model_versions(session: Session) -> dict[str, str]:
    """Each model's version as its latest finished job recorded it."""
    latest = (
        select(JobRecord.model, func.max(JobRecord.id).label("id"))
        .where(JobRecord.state == JobState.DONE)
        .group_by(JobRecord.model)
        .subquery()
    )
    rows = session.execute(
        select(JobRecord.model, JobRecord.result).join(latest, latest.c.id == JobRecord.id)
    ).all()
    versions = {}
    for model, result in rows:
        try:
            version = json.loads(result or "{}").get("model_version")
        except (ValueError, AttributeError):
            version = None
        versions[model] = str(version) if version else "?"
    return dict(sorted(versions.items()))
