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
from datetime import UTC, datetime
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
    "OutputSummary",
    "SeriesSummary",
    "StableStudy",
    "StudyDetail",
    "StudySearch",
    "StudySummary",
    "delete_study",
    "find_completed_studies",
    "find_deletable_studies",
    "find_output",
    "force_complete_study",
    "list_studies",
    "mark_study_stable",
    "search_studies",
    "series_instance_paths",
    "study_detail",
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
    accession_number: str | None = None


def list_studies(session: Session, limit: int = 100) -> list[StudySummary]:
    """The most recently received studies with their counts."""
    return search_studies(session, StudySearch(), limit)


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


@dataclass(frozen=True, slots=True)
class StudySearch:
    """What the studies page searches by; empty fields match everything.

    ``study_uid`` matches a whole Study Instance UID or its start; dates are DICOM
    ``YYYYMMDD`` (inclusive); ``modality`` matches any series of the study.
    """

    study_uid: str = ""
    accession: str = ""
    date_from: str = ""
    date_to: str = ""
    modality: str = ""
    calling_ae: str = ""


def search_studies(
    session: Session, search: StudySearch = StudySearch(), limit: int = 50
) -> list[StudySummary]:
    """The most recently received studies matching ``search``, with their counts.

    Two steps, so the cost follows the page, not the index: the newest matching study
    ids through ``ix_studies_last_received``, then the counts of those studies only
    (through the series and instances foreign-key indexes).
    """
    query = select(StudyRecord).order_by(StudyRecord.last_received_at.desc()).limit(limit)
    if search.study_uid:
        query = query.where(StudyRecord.study_instance_uid.startswith(search.study_uid))
    if search.accession:
        query = query.where(StudyRecord.accession_number == search.accession)
    if search.date_from:
        query = query.where(StudyRecord.study_date >= search.date_from)
    if search.date_to:
        query = query.where(StudyRecord.study_date <= search.date_to)
    if search.calling_ae:
        query = query.where(StudyRecord.calling_ae == search.calling_ae)
    if search.modality:
        query = query.where(
            exists().where(
                SeriesRecord.study_id == StudyRecord.id, SeriesRecord.modality == search.modality
            )
        )
    studies = list(session.scalars(query))
    return _summaries(session, studies)


def _summaries(session: Session, studies: list[StudyRecord]) -> list[StudySummary]:
    ids = [s.id for s in studies]
    counts: dict[int, tuple[int, int]] = {}
    modalities: dict[int, set[str]] = {i: set() for i in ids}
    series_count: dict[int, int] = dict.fromkeys(ids, 0)
    if ids:
        for study_id, modality in session.execute(
            select(SeriesRecord.study_id, SeriesRecord.modality).where(
                SeriesRecord.study_id.in_(ids)
            )
        ):
            series_count[study_id] += 1
            if modality:
                modalities[study_id].add(modality)
        counts = {
            study_id: (n, int(size))
            for study_id, n, size in session.execute(
                select(
                    SeriesRecord.study_id,
                    func.count(InstanceRecord.id),
                    func.coalesce(func.sum(InstanceRecord.size_bytes), 0),
                )
                .join(InstanceRecord, InstanceRecord.series_id == SeriesRecord.id)
                .where(SeriesRecord.study_id.in_(ids))
                .group_by(SeriesRecord.study_id)
            )
        }
    return [
        StudySummary(
            study_instance_uid=s.study_instance_uid,
            study_date=s.study_date,
            modalities="/".join(sorted(modalities[s.id])),
            series=series_count[s.id],
            instances=counts.get(s.id, (0, 0))[0],
            size_bytes=counts.get(s.id, (0, 0))[1],
            state=s.state.value,
            last_received_at=s.last_received_at,
            calling_ae=s.calling_ae,
            accession_number=s.accession_number,
        )
        for s in studies
    ]


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """One series of a study page."""

    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    instances: int


@dataclass(frozen=True, slots=True)
class OutputSummary:
    """One output of a study's job: where it is and whether it passed validation."""

    id: int
    job_id: int
    kind: str
    sop_instance_uid: str
    series_instance_uid: str
    #: Relative to ``data_dir``.
    path: str
    sha256: str
    state: str
    validation: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StudyDetail:
    """A study page: the study, its series and its jobs' outputs (jobs and deliveries
    come from :func:`~dicomnode.index.jobs.list_jobs` and
    :func:`~dicomnode.index.deliveries.list_deliveries` with the study's UID)."""

    summary: StudySummary
    study_description: str | None
    version: int
    first_received_at: datetime
    stable_at: datetime | None
    series: tuple[SeriesSummary, ...]
    outputs: tuple[OutputSummary, ...]


def study_detail(session: Session, study_uid: str) -> StudyDetail | None:
    """Everything the study page shows of one study; None when it is not indexed."""
    study = session.scalars(
        select(StudyRecord).where(StudyRecord.study_instance_uid == study_uid)
    ).one_or_none()
    if study is None:
        return None
    series = session.execute(
        select(SeriesRecord, func.count(InstanceRecord.id))
        .join(InstanceRecord, InstanceRecord.series_id == SeriesRecord.id, isouter=True)
        .where(SeriesRecord.study_id == study.id)
        .group_by(SeriesRecord.id)
        .order_by(SeriesRecord.series_number, SeriesRecord.id)
    ).all()
    outputs = session.scalars(
        select(OutputRecord)
        .join(JobRecord, JobRecord.id == OutputRecord.job_id)
        .where(JobRecord.study_id == study.id)
        .order_by(OutputRecord.job_id.desc(), OutputRecord.kind, OutputRecord.id)
    ).all()
    return StudyDetail(
        summary=_summaries(session, [study])[0],
        study_description=study.study_description,
        version=study.version,
        first_received_at=study.first_received_at,
        stable_at=study.stable_at,
        series=tuple(
            SeriesSummary(
                series_instance_uid=s.series_instance_uid,
                modality=s.modality,
                series_number=s.series_number,
                series_description=s.series_description,
                body_part_examined=s.body_part_examined,
                instances=n,
            )
            for s, n in series
        ),
        outputs=tuple(
            OutputSummary(
                id=o.id,
                job_id=o.job_id,
                kind=o.kind.value,
                sop_instance_uid=o.sop_instance_uid,
                series_instance_uid=o.series_instance_uid,
                path=o.path,
                sha256=o.sha256,
                state=o.state.value,
                validation=o.validation,
                created_at=o.created_at,
            )
            for o in outputs
        ),
    )


def series_instance_paths(session: Session, series_uid: str) -> list[str]:
    """The files of one series, relative to ``data_dir``, in instance-number order."""
    return list(
        session.scalars(
            select(InstanceRecord.path)
            .join(SeriesRecord, SeriesRecord.id == InstanceRecord.series_id)
            .where(SeriesRecord.series_instance_uid == series_uid)
            .order_by(InstanceRecord.instance_number, InstanceRecord.id)
        )
    )


def find_output(session: Session, output_id: int) -> tuple[str, OutputSummary] | None:
    """One output and the Study Instance UID of its job; None when unknown."""
    row = session.execute(
        select(OutputRecord, StudyRecord.study_instance_uid)
        .join(JobRecord, JobRecord.id == OutputRecord.job_id)
        .join(StudyRecord, StudyRecord.id == JobRecord.study_id)
        .where(OutputRecord.id == output_id)
    ).one_or_none()
    if row is None:
        return None
    o, study_uid = row
    return study_uid, OutputSummary(
        o.id, o.job_id, o.kind.value, o.sop_instance_uid, o.series_instance_uid, o.path,
        o.sha256, o.state.value, o.validation, o.created_at,
    )  # fmt: skip


#: Where ``receiving_since`` is set to make a study due for completion at once.
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)


def force_complete_study(session: Session, study_uid: str) -> bool:
    """Make a receiving study due now: the scheduler's next scan marks it stable and
    queues its work, as if its force-complete timeout had passed (commits).

    False when the study is unknown or not receiving.
    """
    updated = session.execute(
        update(StudyRecord)
        .where(
            StudyRecord.study_instance_uid == study_uid,
            StudyRecord.state == StudyState.RECEIVING,
        )
        .values(receiving_since=_LONG_AGO)
    )
    session.commit()
    return bool(updated.rowcount)  # type: ignore[attr-defined]
