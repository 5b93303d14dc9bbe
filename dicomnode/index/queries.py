"""The index operations every stage uses: record instances, track studies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from dicomnode.index.schema import (
    AssociationRecord,
    InstanceRecord,
    SeriesRecord,
    StudyRecord,
    StudyState,
)

__all__ = [
    "StudySummary",
    "close_association",
    "find_instance",
    "list_studies",
    "mark_stable_studies",
    "open_association",
    "record_instance",
]


def find_instance(session: Session, sop_instance_uid: str) -> InstanceRecord | None:
    """The stored instance with this SOP Instance UID, if any."""
    return session.scalars(
        select(InstanceRecord).where(InstanceRecord.sop_instance_uid == sop_instance_uid)
    ).one_or_none()


def _study(session: Session, attrs: dict[str, object], now: datetime) -> StudyRecord:
    uid = str(attrs["study_instance_uid"])
    study = session.scalars(
        select(StudyRecord).where(StudyRecord.study_instance_uid == uid)
    ).one_or_none()
    if study is None:
        study = StudyRecord(
            study_instance_uid=uid,
            study_date=attrs.get("study_date"),
            study_description=attrs.get("study_description"),
            calling_ae=attrs.get("calling_ae"),
            state=StudyState.RECEIVING,
            first_received_at=now,
            last_received_at=now,
        )
        session.add(study)
        session.flush()
        return study
    # A new instance (re)opens the study: it is stable again only after a quiet period.
    study.last_received_at = now
    study.state = StudyState.RECEIVING
    study.stable_at = None
    return study


def _series(session: Session, study: StudyRecord, attrs: dict[str, object]) -> SeriesRecord:
    uid = str(attrs["series_instance_uid"])
    series = session.scalars(
        select(SeriesRecord).where(SeriesRecord.series_instance_uid == uid)
    ).one_or_none()
    if series is None:
        series = SeriesRecord(
            study_id=study.id,
            series_instance_uid=uid,
            modality=attrs.get("modality"),
            series_number=attrs.get("series_number"),
            series_description=attrs.get("series_description"),
            body_part_examined=attrs.get("body_part_examined"),
            frame_of_reference_uid=attrs.get("frame_of_reference_uid"),
        )
        session.add(series)
        session.flush()
    return series


_INSTANCE_FIELDS = (
    "sop_class_uid", "transfer_syntax_uid", "instance_number", "image_type",
    "view_position", "laterality", "image_plane", "rows", "columns", "number_of_frames",
    "size_bytes", "sha256", "path", "calling_ae", "association_id",
)  # fmt: skip


def record_instance(session: Session, attrs: dict[str, object], now: datetime) -> InstanceRecord:
    """Insert or update the instance row and its study and series (no commit).

    ``attrs`` holds the :class:`~dicomnode.receive.inspect.InstanceInfo` fields plus
    ``size_bytes``, ``sha256``, ``path``, ``calling_ae`` and ``association_id``.
    """
    study = _study(session, attrs, now)
    series = _series(session, study, attrs)
    instance = find_instance(session, str(attrs["sop_instance_uid"]))
    if instance is None:
        instance = InstanceRecord(sop_instance_uid=attrs["sop_instance_uid"], series_id=series.id)
        session.add(instance)
    for field in _INSTANCE_FIELDS:
        setattr(instance, field, attrs.get(field))
    instance.series_id = series.id
    instance.received_at = now
    return instance


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


def mark_stable_studies(session: Session, cutoff: datetime, now: datetime) -> list[str]:
    """Mark studies quiet since ``cutoff`` as stable; return their UIDs (commits).

    Reads only studies still receiving, through the (state, last_received_at) index,
    so the cost grows with active studies, not with everything stored.
    """
    uids = list(
        session.scalars(
            update(StudyRecord)
            .where(StudyRecord.state == StudyState.RECEIVING)
            .where(StudyRecord.last_received_at <= cutoff)
            .values(state=StudyState.STABLE, stable_at=now)
            .returning(StudyRecord.study_instance_uid)
        )
    )
    session.commit()
    return uids


@dataclass(frozen=True, slots=True)
class StudySummary:
    """One line of ``dicomnode studies``."""

    study_instance_uid: str
    study_date: str | None
    modalities: str
    series: int
    instances: int
    size_bytes: int
    state: str
    last_received_at: datetime
    calling_ae: str | None


def list_studies(session: Session, limit: int = 100) -> list[StudySummary]:
    """The most recently received studies with their counts."""
    rows = session.execute(
        select(
            StudyRecord,
            func.count(func.distinct(SeriesRecord.id)),
            func.count(InstanceRecord.id),
            func.coalesce(func.sum(InstanceRecord.size_bytes), 0),
        )
        .join(SeriesRecord, SeriesRecord.study_id == StudyRecord.id, isouter=True)
        .join(InstanceRecord, InstanceRecord.series_id == SeriesRecord.id, isouter=True)
        .group_by(StudyRecord.id)
        .order_by(StudyRecord.last_received_at.desc())
        .limit(limit)
    ).all()
    out = []
    for study, n_series, n_instances, size in rows:
        modalities = session.scalars(
            select(SeriesRecord.modality).where(SeriesRecord.study_id == study.id).distinct()
        ).all()
        out.append(
            StudySummary(
                study_instance_uid=study.study_instance_uid,
                study_date=study.study_date,
                modalities="/".join(sorted(m for m in modalities if m)),
                series=n_series,
                instances=n_instances,
                size_bytes=int(size),
                state=study.state.value,
                last_received_at=study.last_received_at,
                calling_ae=study.calling_ae,
            )
        )
    return out
