"""The job queue, in the index database.

A job is one pipeline on one version of a study. Workers claim jobs with a lease
(:mod:`dicomnode.index.leases`, the same columns as deliveries have): on PostgreSQL
the claim is ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)``, so
concurrent workers never wait on each other; on SQLite the same single statement
runs under SQLite's one-writer lock, a short write transaction. Execution
is at-least-once: a worker that dies loses its lease when it lapses, the scheduler
fails the attempt (:func:`recover_expired_leases`) and the job is claimed again.
Failed attempts are retried with exponential backoff and jitter
(:func:`~dicomnode.index.leases.backoff_seconds`) until ``max_attempts``, then the
job is dead.

Each attempt that ends (:func:`finish_job`, :func:`fail_job`, lease recovery and the
timeout included) records a ``study_processed`` audit event after its own commit
(:mod:`dicomnode.index.audit`): an audit failure never fails the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, and_, func, select, update
from sqlalchemy.orm import Session

from dicomnode.index.audit import record_audit_event
from dicomnode.index.leases import RELEASED, backoff_seconds, lease_lapsed, lease_to, owned_by
from dicomnode.index.schema import (
    AuditEventType,
    AuditOutcome,
    JobRecord,
    JobState,
    StudyRecord,
    utc_now,
)

__all__ = [
    "CANCELLED",
    "ClaimedJob",
    "JobSummary",
    "cancel_job",
    "claim_job",
    "claimable_job_exists",
    "count_jobs_by_state",
    "enqueue_job",
    "fail_job",
    "finish_job",
    "heartbeat",
    "list_jobs",
    "recover_expired_leases",
    "release_job",
    "retry_job",
]

#: States a worker may claim (a failed job is retried once its backoff has passed).
CLAIMABLE = (JobState.QUEUED, JobState.FAILED)


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """What a worker needs to run a job it holds the lease of."""

    id: int
    study_id: int
    study_instance_uid: str
    pipeline: str
    model: str
    attempts: int
    max_attempts: int
    created_at: datetime
    study_version: int = 0

    @property
    def key(self) -> str:
        """Names the job's work: study, pipeline and study version. Every attempt of the
        job has the same key, so outputs whose UIDs derive from it replace each other."""
        return f"{self.study_instance_uid}/{self.pipeline}/v{self.study_version}"


def enqueue_job(
    session: Session,
    study_id: int,
    study_version: int,
    pipeline: str,
    model: str,
    max_attempts: int,
    priority: int = 0,
) -> bool:
    """Queue a job unless this study version already has one for this pipeline.

    Returns whether a job was created (no commit).
    """
    exists = session.scalar(
        select(JobRecord.id).where(
            JobRecord.study_id == study_id,
            JobRecord.pipeline == pipeline,
            JobRecord.study_version == study_version,
        )
    )
    if exists is not None:
        return False
    session.add(
        JobRecord(
            study_id=study_id,
            study_version=study_version,
            pipeline=pipeline,
            model=model,
            max_attempts=max_attempts,
            priority=priority,
            state=JobState.QUEUED,
            run_after=utc_now(),
            created_at=utc_now(),
        )
    )
    return True


def _candidates(now: datetime, models: list[str] | None) -> Select[int]:
    """The most urgent job a worker running ``models`` (None: any) may claim now."""
    candidates = (
        select(JobRecord.id)
        .where(JobRecord.state.in_(CLAIMABLE), JobRecord.run_after <= now)
        .order_by(JobRecord.priority.desc(), JobRecord.run_after, JobRecord.id)
        .limit(1)
    )
    if models is not None:
        candidates = candidates.where(JobRecord.model.in_(models))
    return candidates


def claimable_job_exists(session: Session, models: list[str] | None = None) -> bool:
    """Whether a worker running ``models`` (None: any) could claim a job now.

    A read only: a waiting worker asks this before it loads its models.
    """
    found = session.scalar(_candidates(utc_now(), models)) is not None
    session.rollback()
    return found


def claim_job(
    session: Session, owner: str, lease_seconds: float, models: list[str] | None = None
) -> ClaimedJob | None:
    """Lease the most urgent claimable job to ``owner``; None when there is none (commits)."""
    now = utc_now()
    candidates = _candidates(now, models)
    # Look before taking the write lock: idle workers polling an empty queue then
    # never contend with the SCP's writer (it matters on SQLite's single writer).
    if session.scalar(candidates) is None:
        session.rollback()
        return None
    pick = candidates.with_for_update(skip_locked=True)  # PostgreSQL; SQLite ignores it
    row = session.execute(
        update(JobRecord)
        .where(JobRecord.id == pick.scalar_subquery())
        .values(
            state=JobState.RUNNING,
            heartbeat_at=now,
            started_at=now,
            attempts=JobRecord.attempts + 1,
            **lease_to(owner, now, lease_seconds),
        )
        .returning(
            JobRecord.id,
            JobRecord.study_id,
            JobRecord.pipeline,
            JobRecord.model,
            JobRecord.attempts,
            JobRecord.max_attempts,
            JobRecord.created_at,
            JobRecord.study_version,
        )
    ).one_or_none()
    if row is None:
        session.commit()
        return None
    uid = session.scalar(
        select(StudyRecord.study_instance_uid).where(StudyRecord.id == row.study_id)
    )
    session.commit()
    return ClaimedJob(
        id=row.id, study_id=row.study_id, study_instance_uid=str(uid), pipeline=row.pipeline,
        model=row.model, attempts=row.attempts, max_attempts=row.max_attempts,
        created_at=row.created_at, study_version=row.study_version,
    )  # fmt: skip


def _held(job_id: int, owner: str) -> object:
    return and_(
        JobRecord.id == job_id,
        owned_by(JobRecord, owner),
        JobRecord.state == JobState.RUNNING,
    )


def heartbeat(session: Session, job_id: int, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False when the lease was lost (expired and taken) (commits)."""
    now = utc_now()
    result = session.execute(
        update(JobRecord)
        .where(_held(job_id, owner))  # type: ignore[arg-type]
        .values(heartbeat_at=now, **lease_to(owner, now, lease_seconds))
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_job(
    session: Session,
    job_id: int,
    owner: str,
    state: JobState,
    result: dict[str, object],
    timings: dict[str, float],
) -> bool:
    """Record a done or not-applicable job; False if the lease was lost (commits)."""
    finished = session.execute(
        update(JobRecord)
        .where(_held(job_id, owner))  # type: ignore[arg-type]
        .values(
            state=state,
            finished_at=utc_now(),
            result=json.dumps(result, sort_keys=True),
            timings=json.dumps(timings, sort_keys=True),
            lease_expires_at=None,  # lease_owner stays: it tells who ran the job
            error=None,
        )
        .returning(JobRecord.study_id, JobRecord.pipeline)
    ).one_or_none()
    study = _study_uid(session, finished.study_id) if finished is not None else None
    session.commit()
    if finished is None:
        return False
    _audit(session, job_id, finished.pipeline, study, state, owner)
    return True


def _study_uid(session: Session, study_id: int) -> str | None:
    return session.scalar(select(StudyRecord.study_instance_uid).where(StudyRecord.id == study_id))


def _audit(
    session: Session,
    job_id: int,
    pipeline: str,
    study_instance_uid: str | None,
    state: JobState,
    owner: str | None,
    error: str | None = None,
) -> None:
    """Record the ``study_processed`` audit event of an attempt that ended (commits;
    never raises for a database error)."""
    outcome = {
        JobState.DONE: AuditOutcome.SUCCESS,
        JobState.NOT_APPLICABLE: AuditOutcome.SUCCESS,
        JobState.FAILED: AuditOutcome.MINOR_FAILURE,  # retried after its backoff
    }.get(state, AuditOutcome.SERIOUS_FAILURE)
    detail = f"job {job_id} ({pipeline}): {state.value}"
    if error:
        detail += f": {error}"  # our own words (worker.runner.job_error)
    record_audit_event(
        session, AuditEventType.STUDY_PROCESSED, outcome=outcome,
        study_instance_uid=study_instance_uid, detail=detail, actor=owner or "scheduler",
    )  # fmt: skip


def fail_job(
    session: Session,
    job_id: int,
    owner: str | None,
    error: str,
    timings: dict[str, float] | None = None,
    base_backoff: float = 5.0,
) -> JobState | None:
    """Record a failed attempt: retry later, or dead after the last attempt (commits).

    ``owner`` None fails the job whoever holds it (lease recovery). ``error`` is kept
    as the job's error text and shown by ``dicomnode jobs`` and the web page: it must
    be our own words (:func:`dicomnode.worker.runner.job_error`), never the text of a
    library's exception, which can quote element values (patient data).
    """
    job = session.get(JobRecord, job_id, with_for_update=True)
    if job is None or job.state != JobState.RUNNING:
        session.rollback()
        return None
    if owner is not None and job.lease_owner != owner:
        session.rollback()
        return None
    dead = job.attempts >= job.max_attempts
    job.state = JobState.DEAD if dead else JobState.FAILED
    job.error = error[:4000]
    job.finished_at = utc_now()
    _release(job)
    if timings is not None:
        job.timings = json.dumps(timings, sort_keys=True)
    if not dead:
        job.run_after = utc_now() + timedelta(seconds=backoff_seconds(job.attempts, base_backoff))
    state, pipeline, error = job.state, job.pipeline, job.error
    study = _study_uid(session, job.study_id)
    session.commit()
    _audit(session, job_id, pipeline, study, state, owner, error)
    return state


def _release(job: JobRecord) -> None:
    for column, value in RELEASED.items():
        setattr(job, column, value)


def release_job(session: Session, job_id: int, owner: str) -> bool:
    """Give a held job back untouched (worker stopping); the attempt is not counted."""
    job = session.get(JobRecord, job_id, with_for_update=True)
    if job is None or job.state != JobState.RUNNING or job.lease_owner != owner:
        session.rollback()
        return False
    job.state = JobState.QUEUED
    job.attempts = max(0, job.attempts - 1)
    _release(job)
    job.run_after = utc_now()
    session.commit()
    return True


def recover_expired_leases(session: Session, base_backoff: float = 5.0) -> list[int]:
    """Fail running jobs whose lease expired (their worker died); return their ids."""
    now = utc_now()
    expired = list(
        session.scalars(
            select(JobRecord.id).where(
                JobRecord.state == JobState.RUNNING, lease_lapsed(JobRecord, now)
            )
        )
    )
    session.commit()
    recovered = []
    for job_id in expired:
        if fail_job(session, job_id, None, "lease expired: the worker stopped", None, base_backoff):
            recovered.append(job_id)
    return recovered


def retry_job(session: Session, job_id: int) -> bool:
    """Queue a failed, dead, done or not-applicable job again now (commits)."""
    updated = session.execute(
        update(JobRecord)
        .where(JobRecord.id == job_id, JobRecord.state != JobState.RUNNING)
        .values(
            state=JobState.QUEUED,
            attempts=0,
            run_after=utc_now(),
            error=None,
            finished_at=None,
        )
    )
    session.commit()
    return bool(updated.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One line of ``dicomnode jobs``."""

    id: int
    study_instance_uid: str
    pipeline: str
    state: str
    attempts: int
    max_attempts: int
    created_at: datetime
    finished_at: datetime | None
    timings: dict[str, float]
    error: str | None
    result: str | None


def list_jobs(
    session: Session,
    limit: int = 50,
    state: JobState | None = None,
    *,
    study_uid: str | None = None,
    pipeline: str | None = None,
) -> list[JobSummary]:
    """The most recent jobs, newest first; of one state, study or pipeline if given."""
    query = (
        select(JobRecord, StudyRecord.study_instance_uid)
        .join(StudyRecord, StudyRecord.id == JobRecord.study_id)
        .order_by(JobRecord.id.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(JobRecord.state == state)
    if study_uid is not None:
        query = query.where(StudyRecord.study_instance_uid == study_uid)
    if pipeline is not None:
        query = query.where(JobRecord.pipeline == pipeline)
    return [
        JobSummary(
            id=job.id,
            study_instance_uid=uid,
            pipeline=job.pipeline,
            state=job.state.value,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            created_at=job.created_at,
            finished_at=job.finished_at,
            timings=json.loads(job.timings or "{}"),
            error=job.error,
            result=job.result,
        )
        for job, uid in session.execute(query).all()
    ]


#: What a cancelled job's error says; a retry queues it again like any dead job.
CANCELLED = "cancelled by an operator"


def cancel_job(session: Session, job_id: int, by: str = "") -> bool:
    """Give up a queued or failed job: it becomes ``dead`` and is not retried (commits).

    A running job is left alone (its worker holds the lease); False then, and when the
    job is unknown or already finished. ``by`` names who cancelled it in the error.
    """
    updated = session.execute(
        update(JobRecord)
        .where(JobRecord.id == job_id, JobRecord.state.in_((JobState.QUEUED, JobState.FAILED)))
        .values(
            state=JobState.DEAD,
            error=f"{CANCELLED} ({by})" if by else CANCELLED,
            finished_at=utc_now(),
        )
    )
    session.commit()
    return bool(updated.rowcount)  # type: ignore[attr-defined]


def count_jobs_by_state(session: Session) -> dict[JobState, int]:
    """How many jobs are in each state now, every state named (0 when none).

    One ``GROUP BY`` over the claim index (``ix_jobs_claim`` leads with the state), for
    the queue-depth gauges of ``/metrics``.
    """
    counts = dict.fromkeys(JobState, 0)
    query = select(JobRecord.state, func.count()).group_by(JobRecord.state)
    for state, count in session.execute(query).all():
        counts[state] = count
    return counts
