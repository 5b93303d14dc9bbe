"""The audit trail in the index, on real SQLite and PostgreSQL: recording, listing,
the forwarder's claims, retention, and the events jobs and deliveries record."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.command import downgrade
from pydicom import Dataset
from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import AuditSettings, NodeSettings, PeerSettings, SendSettings, Settings
from dicomnode.index.audit import (
    MAX_LISTED,
    AuditEntry,
    claim_unforwarded,
    delete_audit_events_before,
    list_audit_events,
    mark_forwarded,
    record_audit_event,
    record_audit_events,
    release_unforwarded,
)
from dicomnode.index.db import alembic_config, make_engine, make_session_factory, upgrade_database
from dicomnode.index.jobs import claim_job, enqueue_job, fail_job, finish_job
from dicomnode.index.schema import (
    AuditEventRecord,
    AuditEventType,
    AuditOutcome,
    DeliveryRecord,
    InstanceRecord,
    JobRecord,
    JobState,
    SeriesRecord,
    StudyRecord,
    utc_now,
)
from dicomnode.schedule.retention import apply_retention
from dicomnode.send.deliveries import send_due_deliveries
from tests.factories import encode, small_ct
from tests.recording_scp import RecordingSCP

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    upgrade_database(url)
    return url


@pytest.fixture
def sessions(database: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database)
    yield make_session_factory(engine)
    engine.dispose()


def record(sessions: sessionmaker[Session], kind: str = "web_action", **fields: object) -> int:
    with sessions() as session:
        event_id = record_audit_event(session, kind, **fields)  # type: ignore[arg-type]
    assert event_id is not None
    return event_id


def age(sessions: sessionmaker[Session], event_id: int, days: float) -> None:
    with sessions() as session:
        session.execute(
            update(AuditEventRecord)
            .where(AuditEventRecord.id == event_id)
            .values(occurred_at=utc_now() - timedelta(days=days))
        )
        session.commit()


def remaining(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(AuditEventRecord.id).order_by(AuditEventRecord.id)))


# -- recording and listing ---------------------------------------------------------


def test_listing_is_newest_first_and_pages_with_before_id(
    sessions: sessionmaker[Session],
) -> None:
    ids = [record(sessions, detail=f"action {n}") for n in range(5)]

    with sessions() as session:
        first = list_audit_events(session, limit=2)
        second = list_audit_events(session, limit=2, before_id=first[-1].id)
        last = list_audit_events(session, limit=2, before_id=second[-1].id)

    assert [e.id for e in first + second + last] == ids[::-1]
    assert first[0].detail == "action 4" and first[0].event == "web_action"
    assert first[0].outcome is AuditOutcome.SUCCESS and first[0].forwarded_at is None


def test_listing_filters_by_event_study_and_calling_ae(sessions: sessionmaker[Session]) -> None:
    stored = record(sessions, "instances_stored", calling_ae="CT1", study_instance_uid="1.2.3",
                    instances=2, sop_classes={CT: 2})  # fmt: skip
    record(sessions, "instances_stored", calling_ae="MR1", study_instance_uid="1.2.4")
    rejected = record(sessions, "association_rejected", outcome=4, calling_ae="CT1")

    with sessions() as session:
        by_event = list_audit_events(session, event=AuditEventType.ASSOCIATION_REJECTED)
        by_study = list_audit_events(session, study_uid="1.2.3")
        by_ae = list_audit_events(session, calling_ae="CT1")

    assert [e.id for e in by_event] == [rejected]
    assert by_event[0].outcome is AuditOutcome.MINOR_FAILURE
    assert [e.id for e in by_study] == [stored]
    assert by_study[0].instances == 2 and by_study[0].sop_classes == {CT: 2}
    assert [e.id for e in by_ae] == [rejected, stored]


def test_listing_refuses_a_limit_out_of_range(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, pytest.raises(ValueError, match="limit"):
        list_audit_events(session, limit=MAX_LISTED + 1)


def test_texts_are_cut_to_their_column_and_control_characters_escaped(
    sessions: sessionmaker[Session],
) -> None:
    # PostgreSQL refuses NUL in text and checks VARCHAR lengths: both must be handled.
    record(sessions, "association_rejected", calling_ae="AE\x00WITH_A_VERY_LONG_TITLE",
           detail="x" * 1000, actor="token:\n")  # fmt: skip

    with sessions() as session:
        (event,) = list_audit_events(session)

    assert event.calling_ae == "AE\\x00WITH_A_VER" and len(event.calling_ae) == 16
    assert event.detail == "x" * 256
    assert event.actor == "token:\\x0a"


def test_an_unknown_event_type_or_outcome_is_a_bug_raised_before_writing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        with pytest.raises(ValueError, match="'retried_job'"):
            record_audit_event(session, "retried_job")
        with pytest.raises(ValueError, match="outcome"):
            record_audit_event(session, "web_action", outcome=5)
    assert remaining(sessions) == []


def test_a_database_error_is_logged_and_swallowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An index without the table (never migrated): the insert fails in the database.
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    try:
        with (
            caplog.at_level(logging.WARNING, logger="dicomnode.index.audit"),
            make_session_factory(engine)() as session,
        ):
            assert record_audit_event(session, "web_action", detail="retry job 1") is None
            assert record_audit_events(session, [AuditEntry("web_action")]) == []
    finally:
        engine.dispose()

    assert [getattr(r, "action", None) for r in caplog.records] == ["audit_record_failed"] * 2


# -- the forwarder's claims --------------------------------------------------------


def test_claimed_events_are_not_claimed_again_until_given_back(
    sessions: sessionmaker[Session],
) -> None:
    ids = [record(sessions, detail=str(n)) for n in range(3)]

    with sessions() as session:
        first = claim_unforwarded(session, "a", 2)
        other = claim_unforwarded(session, "b", 10)
        assert release_unforwarded(session, [e.id for e in first], "a") == 2
        again = claim_unforwarded(session, "b", 10)

    assert [e.id for e in first] == ids[:2]  # oldest first
    assert [e.id for e in other] == ids[2:]
    assert [e.id for e in again] == ids[:2]


def test_a_lapsed_claim_is_taken_over(sessions: sessionmaker[Session]) -> None:
    event_id = record(sessions)

    with sessions() as session:
        claim_unforwarded(session, "dead", 10, lease_seconds=0.0)
        taken = claim_unforwarded(session, "alive", 10)

    assert [e.id for e in taken] == [event_id]


def test_only_the_claims_owner_marks_events_forwarded_and_they_are_never_claimed_again(
    sessions: sessionmaker[Session],
) -> None:
    ids = [record(sessions) for _ in range(2)]
    with sessions() as session:
        claim_unforwarded(session, "a", 10)

        assert mark_forwarded(session, ids, "b") == 0
        assert mark_forwarded(session, ids, "a") == 2
        assert mark_forwarded(session, ids, "a") == 0  # once
        assert claim_unforwarded(session, "a", 10, lease_seconds=0.0) == []
        assert all(e.forwarded_at is not None for e in list_audit_events(session))


# -- retention ---------------------------------------------------------------------


def settings(database: str, tmp_path: Path, **audit: object) -> Settings:
    return Settings(
        node=NodeSettings(data_dir=tmp_path / "var", database_url=database),
        audit=AuditSettings.model_validate(audit),
    )


def test_retention_deletes_audit_events_older_than_retention_days(
    database: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    old, recent = record(sessions), record(sessions)
    age(sessions, old, days=31)
    age(sessions, recent, days=29)

    apply_retention(settings(database, tmp_path, retention_days=30), sessions)

    assert remaining(sessions) == [recent]


def test_retention_keeps_events_a_configured_collector_has_not_received(
    database: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    forwarded, pending = record(sessions), record(sessions)
    with sessions() as session:
        claim_unforwarded(session, "f", 1)
        mark_forwarded(session, [forwarded], "f")
    age(sessions, forwarded, days=400)
    age(sessions, pending, days=400)
    collector = {"syslog_host": "127.0.0.1", "syslog_port": 9}

    apply_retention(settings(database, tmp_path, **collector), sessions)

    assert remaining(sessions) == [pending]


def test_retention_days_zero_keeps_every_audit_event(
    database: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    event_id = record(sessions)
    age(sessions, event_id, days=10_000)

    apply_retention(settings(database, tmp_path, retention_days=0), sessions)

    assert remaining(sessions) == [event_id]


def test_deleting_many_old_events_goes_in_batches_and_deletes_them_all(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        record_audit_events(session, [AuditEntry("web_action")] * 12_001)
        session.execute(update(AuditEventRecord).values(occurred_at=utc_now() - timedelta(days=2)))
        session.commit()
        record_audit_event(session, "web_action", detail="today")

        deleted = delete_audit_events_before(session, utc_now() - timedelta(days=1))

        assert deleted == 12_001
        assert session.scalar(select(func.count()).select_from(AuditEventRecord)) == 1


# -- what jobs and deliveries record -----------------------------------------------


def add_study(sessions: sessionmaker[Session], uid: str) -> int:
    with sessions() as session:
        study = StudyRecord(study_instance_uid=uid)
        session.add(study)
        session.commit()
        return study.id


def test_every_ended_job_attempt_records_study_processed(sessions: sessionmaker[Session]) -> None:
    study_id = add_study(sessions, "1.2.840.99.1")
    with sessions() as session:
        for version in (1, 2):
            enqueue_job(session, study_id, version, "ct", "test-stats", max_attempts=2)
        session.commit()
        done = claim_job(session, "w:1", 30)
        assert done is not None
        finish_job(session, done.id, "w:1", JobState.DONE, {}, {})
        failing = claim_job(session, "w:1", 30)
        assert failing is not None
        fail_job(session, failing.id, "w:1", "model: ValueError at unet.forward:12", None, 0.0)
        session.execute(update(JobRecord).values(run_after=utc_now()))  # backoff over
        session.commit()
        again = claim_job(session, "w:2", 30)
        assert again is not None and again.id == failing.id
        fail_job(session, again.id, "w:2", "model: ValueError at unet.forward:12", None, 0.0)

        events = list_audit_events(session, event="study_processed")

    assert [(e.outcome, e.actor) for e in events] == [
        (AuditOutcome.SERIOUS_FAILURE, "w:2"),  # dead after its last attempt
        (AuditOutcome.MINOR_FAILURE, "w:1"),  # failed, retried
        (AuditOutcome.SUCCESS, "w:1"),
    ]
    assert {e.study_instance_uid for e in events} == {"1.2.840.99.1"}
    assert events[2].detail == f"job {done.id} (ct): done"
    assert events[0].detail == f"job {failing.id} (ct): dead: model: ValueError at unet.forward:12"


def add_routed_instance(
    sessions: sessionmaker[Session], data_dir: Path, ds: Dataset, peer: str
) -> None:
    data = encode(ds)
    relative = f"instances/{ds.SOPInstanceUID}.dcm"
    (data_dir / "instances").mkdir(parents=True, exist_ok=True)
    (data_dir / relative).write_bytes(data)
    with sessions() as session:
        study = session.scalar(
            select(StudyRecord).where(StudyRecord.study_instance_uid == ds.StudyInstanceUID)
        )
        if study is None:
            study = StudyRecord(study_instance_uid=ds.StudyInstanceUID)
            session.add(study)
            session.flush()
        series = SeriesRecord(study_id=study.id, series_instance_uid=ds.SeriesInstanceUID)
        session.add(series)
        session.flush()
        instance = InstanceRecord(
            series_id=series.id, sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID, transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), path=relative,
            calling_ae="CT1",
        )  # fmt: skip
        session.add(instance)
        session.flush()
        session.add(DeliveryRecord(instance_id=instance.id, route="all", peer=peer))
        session.commit()


def test_a_peer_batch_records_one_event_per_study_and_outcome(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with RecordingSCP() as scp:
        node = Settings(
            node=NodeSettings(data_dir=tmp_path / "var", ae_title="DICOMNODE"),
            peers=(
                PeerSettings(name="pacs", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port),
            ),
            send=SendSettings(retry_backoff_seconds=0.01, max_backoff_seconds=0.01),
        )
        first, second = small_ct(), small_ct()
        same_study = small_ct(study_instance_uid=first.StudyInstanceUID)
        for ds in (first, same_study, second):
            add_routed_instance(sessions, node.data_dir, ds, "pacs")
        scp.script = [0xA700]  # the first C-STORE: out of resources, retried

        send_due_deliveries(node, sessions)
        with sessions() as session:
            session.execute(update(DeliveryRecord).values(run_after=utc_now()))
            session.commit()
        send_due_deliveries(node, sessions)

    with sessions() as session:
        events = list_audit_events(session)
    found = sorted(
        (e.event, e.study_instance_uid == first.StudyInstanceUID, e.instances, e.outcome)
        for e in events
    )
    assert found == [
        ("delivery_retried", True, 1, AuditOutcome.MINOR_FAILURE),
        ("output_sent", False, 1, AuditOutcome.SUCCESS),
        ("output_sent", True, 1, AuditOutcome.SUCCESS),
        ("output_sent", True, 1, AuditOutcome.SUCCESS),
    ]
    retried = next(e for e in events if e.event == "delivery_retried")
    assert retried.detail == "1 retried to pacs (status 0xA700)"
    assert (retried.calling_ae, retried.called_ae, retried.peer_address) == (
        "DICOMNODE", "RECORDER", "127.0.0.1",
    )  # fmt: skip
    assert retried.sop_classes == {CT: 1} and retried.actor == "send"


# -- the migration -------------------------------------------------------------------


def test_0007_downgrade_drops_the_audit_table_and_upgrade_brings_it_back_empty(
    database: str, sessions: sessionmaker[Session]
) -> None:
    record(sessions)

    downgrade(alembic_config(database), "0006")
    engine = make_engine(database)
    try:
        with engine.connect() as connection:
            assert "audit_events" not in inspect(connection).get_table_names()
    finally:
        engine.dispose()
    upgrade_database(database)

    assert remaining(sessions) == []
    assert record(sessions) > 0
