"""Studies in the index: when they become stable, what is stored, what may be deleted.

A study is *receiving* until no instance arrived for a quiet period (or it has been
receiving too long), then *stable* at a new version (:func:`mark_study_stable`, in
the transaction that queues its work). Retention deletes stable studies that have no
unfinished work (:func:`find_deletable_studies`, :func:`delete_study`): the rows go
first, in one short transaction per study, and the caller then removes the files
(:meth:`dicomnode.index.layout.DataLayout.remove_study_files`), so a crash in
between leaves unreferenced files (space, nothing wrong), never rows pointing at
missing files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.orm import Session

from dicomnode.index.schema import (
    DeliveryRecord,
    DeliveryState,
    InstanceRecord,
    JobRecord,
    JobState,
    OutputRecord,
    SeriesRecord,
    StudyRecord,
    StudyState,
)

__all__ = [
    "DeletableStudy",
    "DeletedStudy",
    "StableStudy",
    "StudySummary",
    "delete_study",
    "find_completed_studies",
    "find_deletable_studies",
    "list_studies",
    "mark_study_stable",
]

#: Job states that keep a study from being deleted (a failed job will be retried).
_UNFINISHED_JOBS = (JobState.QUEUED, JobState.RUNNING, JobState.FAILED)


@dataclass(frozen=True, slots=True)
class StableStudy:
    """A study that just became stable, at its new version."""

    id: int
    study_instance_uid: str
    version: int
    forced: bool


def _completed(quiet_cutoff: datetime, force_cutoff: datetime) -> Any:
    return (StudyRecord.state == StudyState.RECEIVING) & (
        (StudyRecord.last_received_at <= quiet_cutoff)
        | (StudyRecord.receiving_since <= force_cutoff)
    )


def find_completed_studies(
    session: Session, quiet_cutoff: datetime, force_cutoff: datetime
) -> list[int]:
    """Ids of studies due to become stable.

    A study is due once no instance arrived since ``quiet_cutoff``, or, for one that
    keeps trickling in, once it has been receiving since before ``force_cutoff``.
    Reads only studies still receiving, through the (state, last_received_at) index,
    so the cost grows with active studies, not with everything stored.
    """
    return list(
        session.scalars(select(StudyRecord.id).where(_completed(quiet_cutoff, force_cutoff)))
    )


def mark_study_stable(
    session: Session, study_id: int, quiet_cutoff: datetime, force_cutoff: datetime, now: datetime
) -> StableStudy | None:
    """Mark one due study stable and bump its version (no commit).

    None when it is no longer due (an instance arrived meanwhile). The caller queues
    the study's work in the same transaction, so a crash never leaves a stable study
    without its jobs.
    """
    row = session.execute(
        update(StudyRecord)
        .where(StudyRecord.id == study_id, _completed(quiet_cutoff, force_cutoff))
        .values(state=StudyState.STABLE, stable_at=now, version=StudyRecord.version + 1)
        .returning(
            StudyRecord.study_instance_uid, StudyRecord.version, StudyRecord.last_received_at
        )
    ).one_or_none()
    if row is None:
        return None
    forced = row.last_received_at > quiet_cutoff
    return StableStudy(study_id, row.study_instance_uid, row.version, forced)


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


@dataclass(frozen=True, slots=True)
class DeletableStudy:
    """A stable study without unfinished work: retention may delete it."""

    id: int
    study_instance_uid: str
    last_received_at: datetime


def find_deletable_studies(session: Session) -> list[DeletableStudy]:
    """Stable studies without a queued, running or failed job, a pending delivery of
    one of their instances, or a pending delivery of one of their jobs' outputs; the
    least recently received first."""
    busy_job = exists().where(
        JobRecord.study_id == StudyRecord.id, JobRecord.state.in_(_UNFINISHED_JOBS)
    )
    busy_delivery = (
        exists()
        .where(DeliveryRecord.state == DeliveryState.PENDING)
        .where(DeliveryRecord.instance_id == InstanceRecord.id)
        .where(InstanceRecord.series_id == SeriesRecord.id)
        .where(SeriesRecord.study_id == StudyRecord.id)
    )
    # Results still on their way to a peer keep their study too.
    busy_output = (
        exists()
        .where(DeliveryRecord.state == DeliveryState.PENDING)
        .where(DeliveryRecord.output_id == OutputRecord.id)
        .where(OutputRecord.job_id == JobRecord.id)
        .where(JobRecord.study_id == StudyRecord.id)
    )
    query = (
        select(StudyRecord.id, StudyRecord.study_instance_uid, StudyRecord.last_received_at)
        .where(StudyRecord.state == StudyState.STABLE, ~busy_job, ~busy_delivery, ~busy_output)
        .order_by(StudyRecord.last_received_at)
    )
    return [DeletableStudy(*row) for row in session.execute(query)]


@dataclass(frozen=True, slots=True)
class DeletedStudy:
    """What the rows of a deleted study named: the files to remove now."""

    study_instance_uid: str
    #: Its instance files, relative to ``data_dir``.
    instance_paths: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    #: Its jobs, whose folders hold their masks and outputs.
    job_ids: tuple[int, ...]


def delete_study(session: Session, study_id: int) -> DeletedStudy | None:
    """Delete a stable study's rows (its series, instances, jobs, outputs and
    deliveries go with it) and say what files they named (commits).

    None when the study is no longer stable (an instance arrived meanwhile): it is
    kept, and nothing is deleted.
    """
    instances = session.execute(
        select(InstanceRecord.path, InstanceRecord.sop_instance_uid)
        .join(SeriesRecord, InstanceRecord.series_id == SeriesRecord.id)
        .where(SeriesRecord.study_id == study_id)
    ).all()
    jobs = session.scalars(select(JobRecord.id).where(JobRecord.study_id == study_id)).all()
    gone = session.execute(
        delete(StudyRecord)
        .where(StudyRecord.id == study_id, StudyRecord.state == StudyState.STABLE)
        .returning(StudyRecord.study_instance_uid)
    ).one_or_none()
    if gone is None:
        session.rollback()  # an instance arrived meanwhile: keep it
        return None
    session.commit()
    return DeletedStudy(
        study_instance_uid=gone.study_instance_uid,
        instance_paths=tuple(path for path, _ in instances),
        sop_instance_uids=tuple(uid for _, uid in instances),
        job_ids=tuple(jobs),
    )
