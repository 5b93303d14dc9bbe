"""Index records: studies, series, instances and the associations that brought them.

Identical on SQLite and PostgreSQL; Alembic migrations in ``alembic/`` build this
schema and ``tests/integration/test_migrations.py`` proves they match. Timestamps are
stored as UTC. No patient name, ID or birth date is stored (docs/receive.md, "Logs").
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "AssociationRecord",
    "AuditEventRecord",
    "AuditEventType",
    "AuditOutcome",
    "Base",
    "DeliveryRecord",
    "DeliveryState",
    "InstanceRecord",
    "JobRecord",
    "JobState",
    "Leased",
    "OutputKind",
    "OutputRecord",
    "OutputState",
    "SeriesRecord",
    "StudyRecord",
    "StudyState",
    "UtcDateTime",
    "utc_now",
]

UID = String(64)
AE = String(16)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and returned as aware UTC on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class StudyState(enum.StrEnum):
    """Where a study is in its life; persisted as lower-case text."""

    RECEIVING = "receiving"
    STABLE = "stable"


class JobState(enum.StrEnum):
    """Where a job is; persisted as lower-case text."""

    QUEUED = "queued"  # waiting for a worker (or for its retry time)
    RUNNING = "running"  # leased by a worker
    DONE = "done"
    FAILED = "failed"  # the last attempt failed; retried after a backoff
    NOT_APPLICABLE = "not_applicable"  # e.g. a required view is missing; not an error
    DEAD = "dead"  # gave up after the maximum number of attempts


class DeliveryState(enum.StrEnum):
    """Where a delivery (one item to one peer) is."""

    PENDING = "pending"  # due, or waiting out its retry backoff (retried without limit)
    SENT = "sent"
    FAILED = "failed"  # refused for good by the peer, an unsendable file or an invalid output


class OutputKind(enum.StrEnum):
    """The encoding of an output; a peer's ``accepts`` lists the kinds it takes."""

    SEG = "seg"  # DICOM Segmentation
    SR = "sr"  # Structured Report, TID 1500 measurement report
    SC = "sc"  # Secondary Capture with the overlay burned in


class OutputState(enum.StrEnum):
    """Whether an output passed the validation gate (docs/outputs.md); only valid ones are sent."""

    VALID = "valid"
    INVALID = "invalid"


class AuditEventType(enum.StrEnum):
    """What an audit event records (``docs/operate.md``, "Audit trail"); persisted as text.

    A plain string column, not a native enum type: a new event needs no migration.
    """

    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
    #: One per association and study, when the association ends (PS3.15 A.5.3, "DICOM
    #: Instances Transferred").
    INSTANCES_STORED = "instances_stored"
    STUDY_PROCESSED = "study_processed"  # a job attempt ended: done, not applicable, failed
    STUDY_DELETED = "study_deleted"  # by retention
    OUTPUT_SENT = "output_sent"  # routed instances or outputs a peer kept
    OUTPUT_FAILED = "output_failed"  # refused for good
    DELIVERY_RETRIED = "delivery_retried"  # 0xA7xx or a network error: tried again later
    WEB_ACTION = "web_action"  # an action of the web page (retry, cancel, ...)
    SETTINGS_LOADED = "settings_loaded"  # run / serve started with its settings
    APPLICATION_STOPPED = "application_stopped"  # run / serve stopped


class AuditOutcome(enum.IntEnum):
    """PS3.15 A.5.1 EventOutcomeIndicator; persisted as its number."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # e.g. retried, or refused at once (a rejected association)
    SERIOUS_FAILURE = 8  # the action ended without doing what it should
    MAJOR_FAILURE = 12  # the node is unavailable


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    return Enum(cls, name=name, values_callable=lambda e: [m.value for m in e])


# Constraint names are fixed so migrations are identical on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    """Declarative base of every record."""

    metadata = metadata


class Leased:
    """The lease columns of a record that processes claim: jobs and deliveries.

    One meaning on every table (:mod:`dicomnode.index.leases`): ``lease_owner`` holds,
    or last held, the claim; ``lease_expires_at`` ends it, NULL when nobody holds it.
    """

    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class AssociationRecord(Base):
    """One accepted association from a peer."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(AE)
    called_ae: Mapped[str] = mapped_column(AE)
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    end_reason: Mapped[str | None] = mapped_column(String(16))
    instances_received: Mapped[int] = mapped_column(Integer, default=0)


class StudyRecord(Base):
    """A study seen by the node."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    #: AccessionNumber (SH) of the first instance received; searchable on the web page.
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    state: Mapped[StudyState] = mapped_column(
        _enum(StudyState, "study_state"), default=StudyState.RECEIVING
    )
    #: Bumped each time the study becomes stable; a job belongs to one version, so a
    #: study that receives late instances and settles again is processed again.
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    first_received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    #: When the study last went (back) to receiving; the force-complete clock.
    receiving_since: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    stable_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    calling_ae: Mapped[str | None] = mapped_column(AE)

    series: Mapped[list[SeriesRecord]] = relationship(back_populates="study")

    __table_args__ = (
        # The completion scan reads only studies still receiving (O(active studies)).
        Index("ix_studies_state_last_received", "state", "last_received_at"),
        # The studies page: the newest first, whatever the state.
        Index("ix_studies_last_received", "last_received_at"),
    )


class SeriesRecord(Base):
    """A series of a study, with the attributes rules and view grouping use."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    frame_of_reference_uid: Mapped[str | None] = mapped_column(UID)
    #: The rule attributes of the series' representative instance (the lowest
    #: InstanceNumber, then the first received), a JSON object by DICOM keyword
    #: (:mod:`dicomnode.index.attributes`). Rules are evaluated on it, never on files.
    #: NULL only for series indexed before revision 0004 until the start-up backfill.
    attributes: Mapped[str | None] = mapped_column(Text)
    #: The SOP Instance UID of that representative instance.
    attributes_sop_instance_uid: Mapped[str | None] = mapped_column(UID)

    study: Mapped[StudyRecord] = relationship(back_populates="series")
    instances: Mapped[list[InstanceRecord]] = relationship(back_populates="series")


class InstanceRecord(Base):
    """One stored SOP instance: where its file is and what it is."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    association_id: Mapped[int | None] = mapped_column(
        ForeignKey("associations.id", ondelete="SET NULL"), index=True
    )
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    image_type: Mapped[str | None] = mapped_column(String(128))
    view_position: Mapped[str | None] = mapped_column(String(16))
    laterality: Mapped[str | None] = mapped_column(String(2))
    image_plane: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))
    calling_ae: Mapped[str] = mapped_column(AE)
    #: Indexed for the overview's "received in the last hour".
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now, index=True)

    series: Mapped[SeriesRecord] = relationship(back_populates="instances")


class JobRecord(Leased, Base):
    """One pipeline run on one version of a study, with its lease and history."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    pipeline: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.QUEUED)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    #: Not claimable before this time (retry backoff).
    run_after: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: JSON object of seconds per stage (queue, load, views, model, outputs).
    timings: Mapped[str | None] = mapped_column(Text)
    #: JSON summary of the result (for a done job) or the reason (not applicable).
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("study_id", "pipeline", "study_version", name="uq_jobs_study_pipeline"),
        # The claim query: claimable states, by priority, oldest first.
        Index("ix_jobs_claim", "state", "priority", "run_after"),
    )


class OutputRecord(Base):
    """One DICOM object a job produced (SEG, SR or SC), kept under ``data_dir``.

    The SOP Instance UID is deterministic per job, so a rerun replaces the row (and
    re-queues its deliveries) instead of adding a second one (docs/jobs.md, "The queue").
    """

    __tablename__ = "outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[OutputKind] = mapped_column(_enum(OutputKind, "output_kind"))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    #: Relative to ``data_dir``.
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[OutputState] = mapped_column(_enum(OutputState, "output_state"))
    #: The validator's message for an invalid output (None when valid).
    validation: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)


class DeliveryRecord(Leased, Base):
    """One item, a routed instance or a job's output, to send to one peer.

    Exactly one of ``instance_id`` and ``output_id`` is set. A pending delivery is
    claimable once ``run_after`` (the retry backoff) has passed and nobody holds its
    lease; a sender that dies mid-batch loses nothing: its lease lapses.
    """

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    output_id: Mapped[int | None] = mapped_column(
        ForeignKey("outputs.id", ondelete="CASCADE"), index=True
    )
    route: Mapped[str | None] = mapped_column(String(64))
    peer: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState, "delivery_state"), default=DeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Not claimable before this time (retry backoff).
    run_after: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    last_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (
        UniqueConstraint("instance_id", "route", "peer", name="uq_deliveries_instance_route_peer"),
        UniqueConstraint("output_id", "peer", name="uq_deliveries_output_peer"),
        CheckConstraint(
            "(instance_id IS NULL) <> (output_id IS NULL)", name="ck_deliveries_one_item"
        ),
        Index("ix_deliveries_state_run_after", "state", "run_after"),
    )


class AuditEventRecord(Leased, Base):
    """One security-relevant event (``docs/operate.md``, "Audit trail").

    Never patient data: UIDs, AE titles, addresses, counts and our own short words.
    ``forwarded_at`` is set once the event went to the syslog collector; the forwarder
    claims unforwarded events with the shared lease (:mod:`dicomnode.index.leases`).
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    #: An :class:`AuditEventType` value.
    event: Mapped[str] = mapped_column(String(32))
    #: An :class:`AuditOutcome` value (0, 4, 8, 12).
    outcome: Mapped[int] = mapped_column(Integer, default=0)
    calling_ae: Mapped[str | None] = mapped_column(AE)
    called_ae: Mapped[str | None] = mapped_column(AE)
    #: The peer's IP address (or host name): the calling side's for what we receive,
    #: the called side's for what we send.
    peer_address: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(UID)
    #: How many instances the event is about (instances stored or sent), if any.
    instances: Mapped[int | None] = mapped_column(Integer)
    #: JSON object of those instances' SOP Class UIDs and how many of each.
    sop_classes: Mapped[str | None] = mapped_column(Text)
    #: Our own short words (a reason, a count, the action taken); never patient data.
    detail: Mapped[str | None] = mapped_column(String(256))
    #: Who acted: a web token's fingerprint, a process role ("worker", "scheduler").
    actor: Mapped[str | None] = mapped_column(String(128))
    forwarded_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (
        # The audit page: newest first (the primary key), optionally of one event type.
        Index("ix_audit_events_event_id", "event", "id"),
        Index("ix_audit_events_study_instance_uid", "study_instance_uid"),
        Index("ix_audit_events_calling_ae", "calling_ae"),
        # The forwarder: the oldest not yet forwarded (forwarded_at IS NULL, by id).
        Index("ix_audit_events_forwarded_at_id", "forwarded_at", "id"),
        # Retention: everything older than the cutoff.
        Index("ix_audit_events_occurred_at", "occurred_at"),
    )
