"""The audit trail forwarded to a real syslog collector on 127.0.0.1 (plain TCP and TLS),
by the forwarder in this process and by a node started as a user starts it.

The collector (tests/syslog_collector.py) parses every octet-counted RFC 5424 frame
it receives; a collector that is down, or one whose certificate is not trusted, must
lose nothing: the events stay in the index and arrive once it can be reached.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import AuditSettings, NodeSettings, Settings
from dicomnode.index.audit import list_audit_events, record_audit_event
from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
from dicomnode.index.schema import AuditEventRecord
from dicomnode.send.audit_syslog import AuditForwarder, syslog_target
from tests.factories import dataset_bytes, encode, small_ct
from tests.nodeproc import NodeProcess, free_port
from tests.scu import try_associate
from tests.syslog_collector import SyslogCollector, SyslogMessage
from tests.tls import Certificates, make_certificates


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    upgrade_database(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def settings_for(port: int, **audit: object) -> Settings:
    return Settings(
        node=NodeSettings(ae_title="DICOMNODE"),
        audit=AuditSettings.model_validate({"syslog_host": "127.0.0.1", "syslog_port": port,
                                            **audit}),
    )  # fmt: skip


def forwarder(sessions: sessionmaker[Session], settings: Settings) -> AuditForwarder:
    target = syslog_target(settings)
    assert target is not None
    return AuditForwarder(settings, sessions, target, owner="test:audit")


def record_three(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        ids = [
            record_audit_event(session, "settings_loaded", detail="run", actor="run:1"),
            record_audit_event(session, "association_accepted", calling_ae="CT1",
                               called_ae="DICOMNODE", peer_address="127.0.0.1"),
            record_audit_event(session, "instances_stored", calling_ae="CT1",
                               called_ae="DICOMNODE", peer_address="127.0.0.1",
                               study_instance_uid="1.2.3.4", instances=2,
                               sop_classes={"1.2.840.10008.5.1.4.1.1.2": 2}),
        ]  # fmt: skip
    assert None not in ids
    return [i for i in ids if i is not None]


def unforwarded(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return sum(1 for e in list_audit_events(session, limit=1000) if e.forwarded_at is None)


def actions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "action", "") for r in caplog.records if r.name.startswith("dicomnode")]


def test_forwarder_sends_each_event_once_as_an_rfc5424_frame_in_order(
    sessions: sessionmaker[Session],
) -> None:
    record_three(sessions)
    with SyslogCollector() as collector:
        forward = forwarder(sessions, settings_for(collector.port))

        assert forward() == 3
        messages = collector.wait_for(lambda got: len(got) == 3)
        assert forward() == 0  # nothing new

    assert [m.event_id for m in messages] == ["110100", "110114", "110104"]
    assert {(m.pri, m.msgid, m.app_name) for m in messages} == {(85, "DICOM+RFC3881", "dicomnode")}
    study = messages[2].audit.find("ParticipantObjectIdentification")
    assert study is not None and study.attrib["ParticipantObjectID"] == "1.2.3.4"
    assert unforwarded(sessions) == 0
    assert collector.connections == 1  # one connection per batch


def server_context(certificates: Certificates) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.server_certificate, certificates.server_key)
    return context


def test_forwarder_over_tls_checks_the_collectors_certificate(
    sessions: sessionmaker[Session], certificates: Certificates
) -> None:
    record_three(sessions)
    with SyslogCollector(tls=server_context(certificates)) as collector:
        settings = settings_for(collector.port, syslog_tls=True, syslog_ca=str(certificates.ca))

        assert forwarder(sessions, settings)() == 3
        messages = collector.wait_for(lambda got: len(got) == 3)

    assert [m.event_id for m in messages] == ["110100", "110114", "110104"]
    assert unforwarded(sessions) == 0


def test_a_collector_with_an_untrusted_certificate_gets_nothing_and_the_events_stay(
    sessions: sessionmaker[Session],
    certificates: Certificates,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    record_three(sessions)
    other_ca = make_certificates(tmp_path / "other").ca
    with SyslogCollector(tls=server_context(certificates)) as collector:
        settings = settings_for(collector.port, syslog_tls=True, syslog_ca=str(other_ca))

        with caplog.at_level(logging.INFO, logger="dicomnode"):
            assert forwarder(sessions, settings)() == 0

    assert collector.received() == []
    assert unforwarded(sessions) == 3
    (failed,) = [r for r in caplog.records if getattr(r, "action", "") == "audit_forward_failed"]
    assert "TLS" in failed.error  # type: ignore[attr-defined]


def test_a_collector_that_is_down_loses_nothing_and_its_outage_is_logged_once(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    ids = record_three(sessions)
    port = free_port()  # nothing listens there yet
    forward = forwarder(sessions, settings_for(port))

    with caplog.at_level(logging.INFO, logger="dicomnode"):
        for _ in range(3):
            forward.next_attempt = 0.0  # skip the backoff's wait, not the attempt
            assert forward() == 0
        assert unforwarded(sessions) == 3
        with sessions() as session:  # events keep arriving during the outage
            ids.append(record_audit_event(session, "web_action", detail="retry job 1") or 0)
        waited = forward.next_attempt
        assert forward() == 0  # still waiting out its backoff: no attempt at all
        assert forward.next_attempt == waited

        with SyslogCollector(port=port) as collector:
            forward.next_attempt = 0.0
            assert forward() == 4
            messages = collector.wait_for(lambda got: len(got) == 4)

    assert [m.event_id for m in messages] == ["110100", "110114", "110104", "110113"]
    assert unforwarded(sessions) == 0
    assert actions(caplog).count("audit_forward_failed") == 1
    assert actions(caplog).count("audit_forward_resumed") == 1


def test_more_events_than_a_batch_go_in_several_frames_of_one_run(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        for n in range(450):
            record_audit_event(session, "web_action", detail=f"action {n}")
    with SyslogCollector() as collector:
        assert forwarder(sessions, settings_for(collector.port))() == 450
        messages = collector.wait_for(lambda got: len(got) == 450)

    details = [m.audit.findtext("EventIdentification/EventOutcomeDescription") for m in messages]
    assert details == [f"action {n}" for n in range(450)]
    assert collector.connections == 3  # batches of 200


def test_an_event_of_a_type_this_version_does_not_know_does_not_block_the_others(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    with sessions() as session:  # as a newer node sharing the index would record it
        session.add(AuditEventRecord(event="from_the_future", outcome=0))
        session.commit()
    record_three(sessions)
    with SyslogCollector() as collector:
        with caplog.at_level(logging.WARNING, logger="dicomnode"):
            assert forwarder(sessions, settings_for(collector.port))() == 4
        messages = collector.wait_for(lambda got: len(got) == 3)

    assert [m.event_id for m in messages] == ["110100", "110114", "110104"]
    assert actions(caplog) == ["audit_event_unforwardable"]
    assert unforwarded(sessions) == 0


# -- a node started as a user starts it ----------------------------------------------


def send_over_one_association(port: int, paths: list[Path], calling_ae: str) -> list[int]:
    """C-STORE the files, unchanged, over one association; their statuses."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
        assert assoc.is_established
        try:
            return [int(assoc.send_c_store(path).Status) for path in paths]
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def write_files(folder: Path, study_instance_uid: str) -> tuple[Path, Path, Path]:
    """Two instances of the study, and one whose File Meta names another instance (the
    node refuses it: the command's UID differs from the dataset's)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("a", "b"):
        path = folder / f"{name}.dcm"
        path.write_bytes(encode(small_ct(study_instance_uid=study_instance_uid)))
        paths.append(path)
    ds = small_ct(study_instance_uid=study_instance_uid)
    data = encode(ds)
    meta_end = len(data) - len(dataset_bytes(data))
    # Same length, so the File Meta's group length still holds.
    other = ds.SOPInstanceUID[:-1] + ("1" if ds.SOPInstanceUID[-1] != "1" else "2")
    mismatched = folder / "mismatched.dcm"
    mismatched.write_bytes(
        data[:meta_end].replace(ds.SOPInstanceUID.encode(), other.encode()) + data[meta_end:]
    )
    return paths[0], paths[1], mismatched


def wait_for_log(node: NodeProcess, action: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while f"action={action}" not in node.log_text():
        assert time.monotonic() < deadline, f"no {action} in the node's log"
        time.sleep(0.1)


def by_event(messages: list[SyslogMessage], event_id: str) -> list[SyslogMessage]:
    return [m for m in messages if m.event_id == event_id]


def outcome(message: SyslogMessage) -> str:
    identification = message.audit.find("EventIdentification")
    assert identification is not None
    return identification.attrib["EventOutcomeIndicator"]


def type_code(message: SyslogMessage) -> str:
    code = message.audit.find("EventIdentification/EventTypeCode")
    assert code is not None
    return code.attrib["csd-code"]


def study_counts(message: SyslogMessage) -> tuple[str | None, list[int]]:
    """The study participant object's UID and its SOP classes' instance counts."""
    study = message.audit.find("ParticipantObjectIdentification")
    if study is None:
        return None, []
    counts = [int(c.attrib["NumberOfInstances"]) for c in study.findall("SOPClass")]
    return study.attrib["ParticipantObjectID"], counts


def test_a_node_forwards_its_start_associations_and_transfers_once_its_collector_is_up(
    tmp_path: Path,
) -> None:
    port = free_port()  # the collector starts only after the node has audited events
    audit = (
        f'[audit]\nsyslog_host = "127.0.0.1"\nsyslog_port = {port}\n'
        "[worker]\ncount = 0\n[web]\nenabled = false\n"  # neither is needed here
    )
    study = generate_uid()
    with NodeProcess(tmp_path / "node", extra_toml=audit, receive_processes=1) as node:
        first, second, mismatched = write_files(tmp_path / "files", study)
        assert send_over_one_association(node.port, [first, second, mismatched], "CT1") == [
            0x0000, 0x0000, 0xA900,
        ]  # fmt: skip
        assert send_over_one_association(node.port, [first], "CT1") == [0x0000]  # a duplicate
        assert try_associate(node.port, "NOTUS", "CT1") is False
        wait_for_log(node, "audit_forward_failed")
        time.sleep(3)  # a few more attempts fail meanwhile (backoff 1 s, then 2 s)
        with node.session() as session:
            recorded = list_audit_events(session, limit=100)
        assert recorded and all(e.forwarded_at is None for e in recorded)

        with SyslogCollector(port=port) as collector:
            messages = collector.wait_for(
                lambda got: len(by_event(got, "110104")) == 3 and len(by_event(got, "110114")) == 4,
                timeout=90,
            )
        log = node.log_text()

    (start,) = by_event(messages, "110100")
    assert type_code(start) == "110120"  # Application Start
    logins = by_event(messages, "110114")
    # The start-up probe's C-ECHO, two senders' associations, then NOTUS rejected.
    assert sorted(outcome(m) for m in logins) == ["0", "0", "0", "4"]
    transfers = sorted((outcome(m), study_counts(m)) for m in by_event(messages, "110104"))
    assert transfers == [
        ("0", (study, [1])),  # the duplicate, found by its UID
        ("0", (study, [2])),
        ("4", (None, [])),  # the refused instance: its study is not known
    ]
    payload = b"".join(m.msg for m in messages)
    assert b"Factory" not in payload  # the patient's name (small_ct's) never leaves
    assert log.count("audit_forward_failed") == 1
    assert "audit_forward_resumed" in log and "audit_record_failed" not in log
