"""Associations in the index: who sent what, and how each association ended."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from dicomnode.index.schema import AssociationRecord

__all__ = ["close_association", "open_association"]


def open_association(
    session: Session, calling_ae: str, called_ae: str, peer_host: str, peer_port: int
) -> int:
    """Record an accepted association and return its id (commits)."""
    record = AssociationRecord(
        calling_ae=calling_ae, called_ae=called_ae, peer_host=peer_host, peer_port=peer_port
    )
    session.add(record)
    session.commit()
    return record.id


def close_association(
    session: Session, association_id: int, reason: str, instances: int, now: datetime
) -> None:
    """Record how an association ended (commits)."""
    session.execute(
        update(AssociationRecord)
        .where(AssociationRecord.id == association_id)
        .values(ended_at=now, end_reason=reason, instances_received=instances)
    )
    session.commit()
