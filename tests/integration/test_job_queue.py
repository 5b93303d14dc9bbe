"""The job queue on real SQLite and PostgreSQL: claims, leases, retries, dead jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
from dicomnode.index.jobs import (
    claim_job,
    enqueue_job,
    fail_job,
    finish_job,
    heartbeat,
    recover_expired_leases,
    release_job,
    retry_job,
)
from dicomnode.index.leases import backoff_seconds
from dicomnode.index.schema import JobRecord, JobState, StudyRecord, utc_now


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade_database(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def add_study(sessions: sessionmaker[Session], uid: str = "1.2.3") -> int:
    with sessions() as session:
        study = StudyRecord(
            study_instance_uid=uid, first_received_at=utc_now(), last_received_at=utc_now()
        )
        session.add(study)
        session.commit()
        return study.id


def queue(sessions: sessionmaker[Session], count: int, **kwargs: object) -> int:
    study_id = add_study(sessions)
    with sessions() as session:
        for version in range(count):
            enqueue_job(session, study_id, version, "p", "test-stats", 3, **kwargs)  # type: ignore[arg-type]
        session.commit()
    return study_id


def job(sessions: sessionmaker[Session], job_id: int) -> JobRecord:
    with sessions() as session:
        record = session.get(JobRecord, job_id)
        assert record is not None
        return record


def test_a_study_version_gets_one_job_per_pipeline(sessions: sessionmaker[Session]) -> None:
    study_id = add_study(sessions)
    with sessions() as session:
        assert enqueue_job(session, study_id, 1, "p", "test-stats", 3) is True
        session.commit()
        assert enqueue_job(session, study_id, 1, "p", "test-stats", 3) is False
        assert enqueue_job(session, study_id, 2, "p", "test-stats", 3) is True
        session.commit()


def test_claim_takes_highest_priority_then_oldest(sessions: sessionmaker[Session]) -> None:
    study_id = add_study(sessions)
    with sessions() as session:
        enqueue_job(session, study_id, 1, "low", "m", 3, priority=0)
        enqueue_job(session, study_id, 1, "high", "m", 3, priority=5)
        enqueue_job(session, study_id, 1, "low2", "m", 3, priority=0)
        session.commit()
    order = []
    with sessions() as session:
        while (claimed := claim_job(session, "w", 30)) is not None:
            order.append(claimed.pipeline)
    assert order == ["high", "low", "low2"]


def test_concurrent_workers_never_claim_the_same_job(sessions: sessionmaker[Session]) -> None:
    queue(sessions, 60)
    claimed: list[int] = []
    lock = threading.Lock()

    def work(owner: str) -> None:
        while True:
            with sessions() as session:
                got = claim_job(session, owner, 30)
            if got is None:
                return
            with lock:
                claimed.append(got.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 60
    assert len(set(claimed)) == 60


def test_failed_attempt_backs_off_then_the_last_one_is_dead(
    sessions: sessionmaker[Session],
) -> None:
    queue(sessions, 1)
    states = []
    for _ in range(3):
        with sessions() as session:
            # make the job claimable now, whatever its backoff
            session.execute(update(JobRecord).values(run_after=utc_now()))
            session.commit()
            claimed = claim_job(session, "w", 30)
            assert claimed is not None
            states.append(fail_job(session, claimed.id, "w", "boom", {"model": 0.1}, 10))
            record = session.get(JobRecord, claimed.id)
            assert record is not None
            if record.state is JobState.FAILED:
                delay = (record.run_after - utc_now()).total_seconds()
                assert 0 < delay <= 10 * 2 ** (record.attempts - 1)
    assert states == [JobState.FAILED, JobState.FAILED, JobState.DEAD]
    final = job(sessions, claimed.id)
    assert final.error == "boom" and final.attempts == 3
    with sessions() as session:
        assert claim_job(session, "w", 30) is None


def test_backoff_grows_exponentially_with_jitter() -> None:
    for attempt in range(1, 8):
        values = [backoff_seconds(attempt, base=2, cap=100) for _ in range(50)]
        ceiling = min(100, 2 * 2 ** (attempt - 1))
        assert all(ceiling / 2 <= v <= ceiling for v in values)
        assert len(set(values)) > 1


def test_expired_lease_is_recovered_and_claimed_by_another_worker(
    sessions: sessionmaker[Session],
) -> None:
    queue(sessions, 1)
    with sessions() as session:
        first = claim_job(session, "dead-worker", 0.2)
    assert first is not None
    time.sleep(0.4)
    with sessions() as session:
        assert recover_expired_leases(session, base_backoff=0) == [first.id]
        again = claim_job(session, "live-worker", 30)
    assert again is not None and again.id == first.id and again.attempts == 2
    with sessions() as session:
        # the dead worker cannot finish or heartbeat a job it no longer holds
        assert heartbeat(session, first.id, "dead-worker", 30) is False
        assert finish_job(session, first.id, "dead-worker", JobState.DONE, {}, {}) is False
        assert finish_job(
            session, first.id, "live-worker", JobState.DONE, {"ok": 1}, {"model": 1.0}
        )
    done = job(sessions, first.id)
    assert done.state is JobState.DONE and done.lease_owner == "live-worker"


def test_released_job_goes_back_to_the_queue_without_using_an_attempt(
    sessions: sessionmaker[Session],
) -> None:
    queue(sessions, 1)
    with sessions() as session:
        claimed = claim_job(session, "w", 30)
        assert claimed is not None
        assert release_job(session, claimed.id, "w") is True
    record = job(sessions, claimed.id)
    assert record.state is JobState.QUEUED and record.attempts == 0


def test_retry_queues_a_dead_job_again(sessions: sessionmaker[Session]) -> None:
    queue(sessions, 1)
    with sessions() as session:
        claimed = claim_job(session, "w", 30)
        assert claimed is not None
        session.execute(update(JobRecord).values(max_attempts=1))
        session.commit()
        assert fail_job(session, claimed.id, "w", "boom") is JobState.DEAD
        assert retry_job(session, claimed.id) is True
        again = claim_job(session, "w", 30)
    assert again is not None and again.id == claimed.id and again.attempts == 1


def test_heartbeat_extends_the_lease(sessions: sessionmaker[Session]) -> None:
    queue(sessions, 1)
    with sessions() as session:
        claimed = claim_job(session, "w", 1)
        assert claimed is not None
        before = job(sessions, claimed.id).lease_expires_at
        assert heartbeat(session, claimed.id, "w", 60) is True
    after = job(sessions, claimed.id).lease_expires_at
    assert before is not None and after is not None
    assert after - before > timedelta(seconds=30)
