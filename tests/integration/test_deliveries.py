"""Deliveries to a recording pynetdicom SCP, on real SQLite and PostgreSQL.

Each test drives ``send_due_deliveries`` the way the scheduler does (once per tick)
against a real AE on 127.0.0.1 whose C-STORE handler answers a scripted sequence of
statuses, and checks what the peer received and what the index says.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import NodeSettings, PeerSettings, SendSettings, Settings
from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
from dicomnode.index.deliveries import (
    claim_due_deliveries,
    list_deliveries,
    mark_sent,
    queue_output_deliveries,
    record_output,
    retry_deliveries,
)
from dicomnode.index.schema import (
    DeliveryRecord,
    DeliveryState,
    InstanceRecord,
    JobRecord,
    OutputRecord,
    OutputState,
    SeriesRecord,
    StudyRecord,
    utc_now,
)
from dicomnode.send.deliveries import DeliveryCounts, send_due_deliveries
from tests.factories import dataset_bytes, encode, small_ct
from tests.nodeproc import free_port, run_dicomnode
from tests.recording_scp import RecordingSCP

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade_database(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def scp() -> Iterator[RecordingSCP]:
    with RecordingSCP() as running:
        yield running


def peer(
    scp: RecordingSCP | None = None, name: str = "pacs", port: int = 0, **kwargs: object
) -> PeerSettings:
    """A peer for ``scp``, or for whatever listens (or not) on ``port``."""
    return PeerSettings.model_validate(
        {"name": name, "ae_title": scp.ae_title if scp else "RECORDER", "host": "127.0.0.1",
         "port": scp.port if scp else port, **kwargs}
    )  # fmt: skip


def settings_for(tmp_path: Path, *peers: PeerSettings) -> Settings:
    return Settings(
        node=NodeSettings(data_dir=tmp_path / "var", ae_title="DICOMNODE"),
        peers=peers,
        send=SendSettings(retry_backoff_seconds=0.2, max_backoff_seconds=0.5),
    )


def write(settings: Settings, folder: str, ds: Dataset) -> tuple[str, bytes]:
    data = encode(ds)
    relative = f"{folder}/{ds.SOPInstanceUID}.dcm"
    path = settings.data_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return relative, data


def add_study(session: Session, ds: Dataset) -> StudyRecord:
    study = session.scalar(
        select(StudyRecord).where(StudyRecord.study_instance_uid == ds.StudyInstanceUID)
    )
    if study is None:
        study = StudyRecord(study_instance_uid=ds.StudyInstanceUID)
        session.add(study)
        session.flush()
    return study


def add_instance(
    sessions: sessionmaker[Session], settings: Settings, ds: Dataset, *peers: str
) -> int:
    """Store ``ds`` as a received instance and queue it by a route to ``peers``."""
    relative, data = write(settings, "instances", ds)
    with sessions() as session:
        series = SeriesRecord(
            study_id=add_study(session, ds).id, series_instance_uid=ds.SeriesInstanceUID
        )
        session.add(series)
        session.flush()
        instance = InstanceRecord(
            series_id=series.id, sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID, transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), path=relative,
            calling_ae="MODALITY",
        )  # fmt: skip
        session.add(instance)
        session.flush()
        session.add_all(DeliveryRecord(instance_id=instance.id, route="r", peer=p) for p in peers)
        session.commit()
        return instance.id


def add_output(
    sessions: sessionmaker[Session],
    settings: Settings,
    ds: Dataset,
    valid: bool = True,
    kind: str = "seg",
) -> int:
    """Record ``ds`` as a job's output (a rerun when its UID is known); queue it to peers.

    The file is labelled a Segmentation (SOP Class only: the recording SCP does not
    look inside), so its presentation context differs from the CT instances'.
    """
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SEG_CLASS
    relative, data = write(settings, "outputs", ds)
    with sessions() as session:
        job = JobRecord(
            study_id=add_study(session, ds).id, study_version=1, pipeline="p",
            model="test-stats", max_attempts=1,
        )  # fmt: skip
        existing = session.scalar(select(JobRecord).where(JobRecord.study_id == job.study_id))
        if existing is None:
            session.add(job)
            session.flush()
        output_id = record_output(
            session, (existing or job).id, kind, sop_class_uid=SEG_CLASS,
            sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
            path=relative, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
            valid=valid, validation=None if valid else "Error - missing attribute",
        )  # fmt: skip
        queue_output_deliveries(session, output_id, settings.peers)
        session.commit()
        return output_id


def deliveries(sessions: sessionmaker[Session]) -> list[DeliveryRecord]:
    with sessions() as session:
        return list(session.scalars(select(DeliveryRecord).order_by(DeliveryRecord.id)))


def send_until(
    settings: Settings,
    sessions: sessionmaker[Session],
    done: Callable[[], bool],
    timeout: float = 15,
) -> DeliveryCounts:
    """Run the sender every 50 ms (the scheduler does so every second) until ``done``."""
    total = DeliveryCounts()
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not reached; deliveries: {deliveries(sessions)}"
        total.add(send_due_deliveries(settings, sessions))
        time.sleep(0.05)
    return total


def test_out_of_resources_is_retried_with_backoff_then_delivered_once(
    sessions: sessionmaker[Session], scp: RecordingSCP, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(scp))
    scp.script = [0xA700]
    ds = small_ct()
    add_output(sessions, settings, ds)

    first = send_due_deliveries(settings, sessions)

    assert (first.retried, first.sent) == (1, 0)
    (waiting,) = deliveries(sessions)
    assert waiting.state is DeliveryState.PENDING and waiting.attempts == 1
    assert waiting.last_status == 0xA700 and waiting.run_after > utc_now()
    send_until(settings, sessions, lambda: deliveries(sessions)[0].state is DeliveryState.SENT)
    (sent,) = deliveries(sessions)
    assert sent.attempts == 2 and sent.last_status == 0 and sent.sent_at is not None
    assert scp.stored == [ds.SOPInstanceUID]
    assert send_due_deliveries(settings, sessions).total == 0


def test_cannot_understand_fails_at_once_and_is_listed_with_its_status(
    sessions: sessionmaker[Session], scp: RecordingSCP, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(scp))
    scp.script = [0xC000]
    ds = small_ct()
    add_output(sessions, settings, ds)

    counts = send_due_deliveries(settings, sessions)

    assert counts.failed == 1
    (failed,) = deliveries(sessions)
    assert failed.state is DeliveryState.FAILED and failed.attempts == 1
    assert failed.last_status == 0xC000 and "0xC000" in (failed.error or "")
    with sessions() as session:
        (listed,) = list_deliveries(session, state=DeliveryState.FAILED)
    assert (listed.what, listed.peer, listed.last_status) == ("seg", "pacs", 0xC000)
    assert listed.sop_instance_uid == ds.SOPInstanceUID
    time.sleep(0.6)  # past any backoff: a failed delivery is never tried again by itself
    assert send_due_deliveries(settings, sessions).total == 0
    assert len(scp.received) == 1


def test_operator_retry_sends_a_failed_delivery_again(
    sessions: sessionmaker[Session], scp: RecordingSCP, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(scp))
    scp.script = [0xA900]
    add_output(sessions, settings, small_ct())
    send_due_deliveries(settings, sessions)
    assert deliveries(sessions)[0].state is DeliveryState.FAILED

    with sessions() as session:
        assert retry_deliveries(session, failed=True) == [deliveries(sessions)[0].id]

    assert send_due_deliveries(settings, sessions).sent == 1
    (sent,) = deliveries(sessions)
    assert (sent.state, sent.attempts, sent.error) == (DeliveryState.SENT, 1, None)


def test_warning_counts_as_sent_and_keeps_the_warning(
    sessions: sessionmaker[Session], scp: RecordingSCP, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(scp))
    scp.script = [0xB000]
    add_output(sessions, settings, small_ct())

    counts = send_due_deliveries(settings, sessions)

    assert (counts.sent, counts.warnings) == (1, 1)
    (sent,) = deliveries(sessions)
    assert sent.state is DeliveryState.SENT and sent.last_status == 0xB000
    assert "warning 0xB000" in (sent.error or "")


def test_peer_that_is_down_keeps_everything_pending_then_gets_it_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    port = free_port()
    settings = settings_for(tmp_path, peer(port=port))
    uids = [add_output(sessions, settings, small_ct()) for _ in range(3)]

    def attempted(times: int) -> Callable[[], bool]:
        return lambda: {d.attempts for d in deliveries(sessions)} == {times}

    send_until(settings, sessions, attempted(2), timeout=5)  # tried, backed off, tried again
    down = deliveries(sessions)
    assert {d.state for d in down} == {DeliveryState.PENDING}
    assert all("cannot connect" in (d.error or "") and d.last_status is None for d in down)
    assert len({d.run_after for d in down}) == 1, "one peer's retries share one backoff"

    with RecordingSCP(port=port) as scp:
        send_until(
            settings, sessions,
            lambda: {d.state for d in deliveries(sessions)} == {DeliveryState.SENT},
        )  # fmt: skip
        time.sleep(0.6)
        assert send_due_deliveries(settings, sessions).total == 0
    assert len(scp.stored) == len(uids) == len(set(scp.stored))
    assert len(scp.associations) == 1


def test_one_association_per_peer_batch_with_exactly_the_contexts_sent(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with RecordingSCP(ae_title="ONE") as one, RecordingSCP(ae_title="TWO") as two:
        settings = settings_for(tmp_path, peer(one, "one"), peer(two, "two"))
        implicit = small_ct()
        implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        for ds in (small_ct(), small_ct(), implicit):
            add_instance(sessions, settings, ds, "one", "two")
        add_output(sessions, settings, small_ct())

        counts = send_due_deliveries(settings, sessions)

    assert counts.sent == 3 * 2 + 2
    assert (len(one.associations), len(two.associations)) == (1, 1)
    ct = "1.2.840.10008.5.1.4.1.1.2"
    expected = {
        (ct, "1.2.840.10008.1.2.1"),
        (ct, "1.2.840.10008.1.2"),
        (SEG_CLASS, "1.2.840.10008.1.2.1"),
    }
    assert one.associations[0] == expected == two.associations[0]
    assert len(one.stored) == len(two.stored) == 4


def test_routed_instances_arrive_byte_for_byte(
    sessions: sessionmaker[Session], scp: RecordingSCP, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(scp))
    implicit = small_ct(rows=64, columns=64)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    sent = {}
    for ds in (small_ct(rows=64, columns=64), implicit):
        add_instance(sessions, settings, ds, "pacs")
        sent[ds.SOPInstanceUID] = dataset_bytes(encode(ds))

    assert send_due_deliveries(settings, sessions).sent == 2

    assert {r.sop_instance_uid: r.data for r in scp.received} == sent


def test_invalid_output_is_never_sent(
    sessions: sessionmaker[Session], scp: RecordingSCP, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(scp))
    ds = small_ct()
    output_id = add_output(sessions, settings, ds, valid=False)
    assert deliveries(sessions) == []  # queued for nobody
    with sessions() as session:
        # Even a delivery queued by mistake is never claimed.
        session.add(DeliveryRecord(output_id=output_id, peer="pacs"))
        session.commit()
        assert claim_due_deliveries(session, "test", 10) == []
        output = session.get(OutputRecord, output_id)
        assert output is not None and output.state is OutputState.INVALID
        assert output.validation == "Error - missing attribute"

    assert send_due_deliveries(settings, sessions).total == 0
    assert scp.received == []


def test_rerun_replaces_the_output_and_is_delivered_once_more(
    sessions: sessionmaker[Session], scp: RecordingSCP, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(scp))
    ds = small_ct()
    first = add_output(sessions, settings, ds)
    assert send_due_deliveries(settings, sessions).sent == 1

    ds.SeriesDescription = "rerun"  # same deterministic UIDs, new content
    assert add_output(sessions, settings, ds) == first
    (again,) = deliveries(sessions)
    assert (again.state, again.attempts, again.sent_at) == (DeliveryState.PENDING, 0, None)
    assert send_due_deliveries(settings, sessions).sent == 1
    assert send_due_deliveries(settings, sessions).total == 0

    with sessions() as session:
        assert len(session.scalars(select(OutputRecord)).all()) == 1
    assert scp.stored == [ds.SOPInstanceUID] * 2
    assert scp.received[1].data == dataset_bytes(encode(ds))


def test_rerun_that_fails_validation_fails_its_pending_deliveries(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(port=free_port()))  # down: stays pending
    ds = small_ct()
    add_output(sessions, settings, ds)
    send_due_deliveries(settings, sessions)

    add_output(sessions, settings, ds, valid=False)

    (failed,) = deliveries(sessions)
    assert failed.state is DeliveryState.FAILED
    assert "output is invalid: Error - missing attribute" in (failed.error or "")


def test_peers_get_only_the_output_kinds_they_accept(
    sessions: sessionmaker[Session], scp: RecordingSCP, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, peer(scp, "viewer", accepts=("sc",)), peer(scp, "pacs", accepts=("seg", "sr"))
    )
    add_output(sessions, settings, small_ct(), kind="seg")
    add_output(sessions, settings, small_ct(), kind="sc")

    assert [(d.peer, d.output_id) for d in deliveries(sessions)] == [("pacs", 1), ("viewer", 2)]


def test_delivery_to_a_peer_no_longer_configured_fails_visibly(
    sessions: sessionmaker[Session], scp: RecordingSCP, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(scp))
    add_instance(sessions, settings, small_ct(), "gone")

    assert send_due_deliveries(settings, sessions).failed == 1
    (failed,) = deliveries(sessions)
    assert failed.state is DeliveryState.FAILED
    assert failed.error == "peer 'gone' is not configured"


def dicomnode(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_dicomnode("--config", str(config), *args)


def test_deliveries_command_lists_and_retries(scp: RecordingSCP, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, peer(scp))
    config = tmp_path / "settings.toml"
    config.write_text(f'[node]\ndata_dir = "{settings.data_dir}"\n')
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    scp.script = [0xC000]
    ds = small_ct()
    add_instance(sessions, settings, ds, "pacs")
    send_due_deliveries(settings, sessions)
    engine.dispose()

    listed = dicomnode(config, "deliveries", "--state", "failed")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "failed" in line)
    assert "instance (r)" in row and "pacs" in row and "0xC000" in row
    assert ds.SOPInstanceUID[:20] in listed.stdout
    retried = dicomnode(config, "deliveries", "retry", "--failed")
    assert retried.returncode == 0, retried.stderr
    assert "1 deliveries queued" in retried.stdout
    assert "pending" in dicomnode(config, "deliveries").stdout
    missing = dicomnode(config, "deliveries", "retry", "999")
    assert missing.returncode == 1 and "999" in missing.stderr
    assert dicomnode(config, "deliveries", "--state", "lost").returncode == 2


def test_concurrent_senders_claim_disjoint_deliveries(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(port=free_port()))
    for _ in range(4):
        add_instance(sessions, settings, small_ct(), "pacs")
    for _ in range(16):
        add_output(sessions, settings, small_ct())
    claims: dict[str, list[int]] = {}
    start = threading.Barrier(4)

    def claim(owner: str) -> None:
        with sessions() as session:
            start.wait()
            claims[owner] = [d.id for d in claim_due_deliveries(session, owner, 5)]

    threads = [threading.Thread(target=claim, args=(f"sender-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    taken = [i for ids in claims.values() for i in ids]
    assert sorted(taken) == [d.id for d in deliveries(sessions)], "each claimed exactly once"


def test_claim_of_a_sender_that_died_is_taken_over_after_its_lease(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, peer(port=free_port()))
    add_output(sessions, settings, small_ct())
    with sessions() as session:
        (first,) = claim_due_deliveries(session, "dead", 10, lease_seconds=0.2)
        assert claim_due_deliveries(session, "alive", 10) == []  # still leased
        time.sleep(0.3)
        (second,) = claim_due_deliveries(session, "alive", 10)
        assert (first.id, first.attempts, second.attempts) == (second.id, 1, 2)
        assert mark_sent(session, first.id, "dead") is False  # the dead one's claim is gone
        assert mark_sent(session, second.id, "alive") is True
    assert deliveries(sessions)[0].state is DeliveryState.SENT
