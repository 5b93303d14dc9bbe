"""Retention: delete old stable studies, or the oldest when the disk is too full.

A study is never deleted while it is receiving or has unfinished work (a queued,
running or failed job, a pending delivery). Rows go first, in one transaction per
study, then the files: a crash in between leaves unreferenced files (space, nothing
wrong), never rows pointing at missing files.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.index.queries import job_folder
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
    utc_now,
)

__all__ = ["apply_retention", "disk_used_percent"]

logger = logging.getLogger(__name__)

_UNFINISHED_JOBS = (JobState.QUEUED, JobState.RUNNING, JobState.FAILED)


def disk_used_percent(path: Path) -> float:
    """How full the filesystem holding ``path`` is, in percent."""
    usage = shutil.disk_usage(path)
    return 100.0 * usage.used / usage.total


def _deletable(session: Session) -> Iterator[tuple[int, str]]:
    """Stable studies without unfinished work, oldest first."""
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
        select(StudyRecord.id, StudyRecord.study_instance_uid)
        .where(StudyRecord.state == StudyState.STABLE, ~busy_job, ~busy_delivery, ~busy_output)
        .order_by(StudyRecord.last_received_at)
    )
    yield from ((study_id, uid) for study_id, uid in session.execute(query))


def _delete_study(
    session_factory: sessionmaker[Session], data_dir: Path, study_id: int
) -> int | None:
    """Delete one study's rows (if still stable) then its files.

    Returns the number of files removed, or None when the study was kept.
    """
    with session_factory() as session:
        paths = list(
            session.scalars(
                select(InstanceRecord.path)
                .join(SeriesRecord, InstanceRecord.series_id == SeriesRecord.id)
                .where(SeriesRecord.study_id == study_id)
            )
        )
        jobs = list(session.scalars(select(JobRecord.id).where(JobRecord.study_id == study_id)))
        gone = session.execute(
            delete(StudyRecord).where(
                StudyRecord.id == study_id, StudyRecord.state == StudyState.STABLE
            )
        )
        if not gone.rowcount:  # type: ignore[attr-defined]
            session.rollback()  # an instance arrived meanwhile: keep it
            return None
        session.commit()
    for path in paths:
        (data_dir / path).unlink(missing_ok=True)
    for job_id in jobs:  # the jobs' masks and outputs went with their rows
        shutil.rmtree(job_folder(data_dir, job_id), ignore_errors=True)
    for folder in sorted({(data_dir / p).parent for p in paths}, reverse=True):
        for empty in (folder, folder.parent):
            try:
                os.rmdir(empty)
            except OSError:
                pass  # not empty (or gone): fine
    return len(paths)


def apply_retention(settings: Settings, session_factory: sessionmaker[Session]) -> list[str]:
    """Delete what the retention settings call for; return the deleted study UIDs."""
    policy = settings.retention
    if not policy.max_age_days and not policy.disk_high_water_percent:
        return []
    cutoff = utc_now() - timedelta(days=policy.max_age_days)
    with session_factory() as session:
        candidates = list(_deletable(session))
        rows = session.execute(
            select(StudyRecord.id, StudyRecord.last_received_at).where(
                StudyRecord.id.in_([c[0] for c in candidates])
            )
        )
        ages = {study_id: received for study_id, received in rows}
    deleted = []
    for study_id, uid in candidates:
        too_old = bool(policy.max_age_days) and ages[study_id] < cutoff
        too_full = bool(policy.disk_high_water_percent) and (
            disk_used_percent(settings.data_dir) > policy.disk_high_water_percent
        )
        if not (too_old or too_full):
            continue
        files = _delete_study(session_factory, settings.data_dir, study_id)
        if files is not None:
            deleted.append(uid)
            reason = "age" if too_old else "disk"
            logger.info(
                "study deleted",
                extra={"action": "study_deleted", "study_instance_uid": uid,
                       "files": files, "reason": reason},
            )  # fmt: skip
    return deleted
