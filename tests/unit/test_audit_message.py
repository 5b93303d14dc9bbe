"""Audit events as DICOM audit messages (PS3.15 A.5) in RFC 5424 syslog frames.

Each message is parsed back with ElementTree and checked element by element: the
EventID and EventTypeCode codes, the participants and their roles, the audit source
and the study. The syslog frame is split as a collector splits it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from dicomnode.index.audit import AuditEvent
from dicomnode.index.schema import AuditEventType, AuditOutcome
from dicomnode.send.audit_message import (
    AuditSource,
    audit_message_xml,
    event_codes,
    octet_frame,
    syslog_message,
)
from tests.syslog_collector import BOM, parse_frames, parse_message

SOURCE = AuditSource(ae_title="DICOMNODE", hostname="node1", app_name="dicomnode", procid="4242")
STUDY = "1.2.826.0.1.3680043.8.498.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
WHEN = datetime(2026, 12, 14, 9, 30, 15, 123456, tzinfo=UTC)


def event(kind: AuditEventType, **fields: object) -> AuditEvent:
    values: dict[str, object] = {
        "id": 1, "occurred_at": WHEN, "event": kind.value, "outcome": AuditOutcome.SUCCESS,
        "calling_ae": None, "called_ae": None, "peer_address": None,
        "study_instance_uid": None, "instances": None,
    }  # fmt: skip
    values.update(fields)
    return AuditEvent(**values)  # type: ignore[arg-type]


def parsed(ev: AuditEvent) -> ET.Element:
    text = audit_message_xml(ev, SOURCE)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(text.encode("utf-8"))


def coded(element: ET.Element | None) -> tuple[str, str, str]:
    assert element is not None
    return (element.attrib["csd-code"], element.attrib["codeSystemName"],
            element.attrib["originalText"])  # fmt: skip


def participants(root: ET.Element) -> list[dict[str, str]]:
    found = []
    for participant in root.findall("ActiveParticipant"):
        role = participant.find("RoleIDCode")
        found.append(
            {**participant.attrib, "role": role.attrib["csd-code"] if role is not None else ""}
        )
    return found


def test_instances_stored_is_dicom_instances_transferred_from_the_peer_to_us() -> None:
    root = parsed(
        event(
            AuditEventType.INSTANCES_STORED, calling_ae="CT1", called_ae="DICOMNODE",
            peer_address="10.1.2.3", study_instance_uid=STUDY, instances=3,
            sop_classes={CT: 2, SEG: 1}, detail="3 instances",
        )
    )  # fmt: skip

    assert root.tag == "AuditMessage"
    assert [child.tag for child in root] == [
        "EventIdentification", "ActiveParticipant", "ActiveParticipant",
        "AuditSourceIdentification", "ParticipantObjectIdentification",
    ]  # fmt: skip
    identification = root.find("EventIdentification")
    assert identification is not None
    assert identification.attrib == {
        "EventActionCode": "C",
        "EventDateTime": "2026-12-14T09:30:15.123Z",
        "EventOutcomeIndicator": "0",
    }
    assert coded(identification.find("EventID")) == (
        "110104", "DCM", "DICOM Instances Transferred",
    )  # fmt: skip
    assert identification.find("EventTypeCode") is None
    source, destination = participants(root)
    assert source == {
        "UserID": "CT1", "AlternativeUserID": "AETITLES=CT1", "UserIsRequestor": "true",
        "NetworkAccessPointID": "10.1.2.3", "NetworkAccessPointTypeCode": "2",
        "role": "110153",
    }  # fmt: skip
    assert destination == {
        "UserID": "DICOMNODE", "AlternativeUserID": "AETITLES=DICOMNODE",
        "UserIsRequestor": "false", "NetworkAccessPointID": "node1",
        "NetworkAccessPointTypeCode": "1", "role": "110152",
    }  # fmt: skip


def test_the_study_is_a_participant_object_with_its_sop_classes_and_counts() -> None:
    root = parsed(
        event(AuditEventType.INSTANCES_STORED, calling_ae="CT1", study_instance_uid=STUDY,
              instances=3, sop_classes={CT: 2, SEG: 1})
    )  # fmt: skip

    study = root.find("ParticipantObjectIdentification")
    assert study is not None
    assert study.attrib == {
        "ParticipantObjectID": STUDY,
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3",
    }
    assert coded(study.find("ParticipantObjectIDTypeCode")) == (
        "110180", "DCM", "Study Instance UID",
    )  # fmt: skip
    counts = {s.attrib["UID"]: s.attrib["NumberOfInstances"] for s in study.findall("SOPClass")}
    assert counts == {CT: "2", SEG: "1"}


def test_audit_source_is_this_node_as_an_application_server() -> None:
    root = parsed(event(AuditEventType.SETTINGS_LOADED, detail="run"))

    audit_source = root.find("AuditSourceIdentification")
    assert audit_source is not None
    assert audit_source.attrib == {"AuditSourceID": "DICOMNODE"}
    type_code = audit_source.find("AuditSourceTypeCode")
    assert type_code is not None and type_code.attrib == {"csd-code": "4"}


def test_sent_output_names_us_as_the_source_and_the_peer_as_the_destination() -> None:
    root = parsed(
        event(AuditEventType.OUTPUT_SENT, calling_ae="DICOMNODE", called_ae="PACS",
              peer_address="pacs.example.org", study_instance_uid=STUDY, instances=1,
              sop_classes={SEG: 1})
    )  # fmt: skip

    identification = root.find("EventIdentification")
    assert identification is not None and identification.attrib["EventActionCode"] == "R"
    source, destination = participants(root)
    assert (source["UserID"], source["UserIsRequestor"], source["role"]) == (
        "DICOMNODE", "true", "110153",
    )  # fmt: skip
    assert (destination["UserID"], destination["UserIsRequestor"], destination["role"]) == (
        "PACS", "false", "110152",
    )  # fmt: skip
    assert destination["NetworkAccessPointID"] == "pacs.example.org"
    assert destination["NetworkAccessPointTypeCode"] == "1"  # a machine name


@pytest.mark.parametrize(
    ("kind", "outcome", "indicator"),
    [
        (AuditEventType.OUTPUT_SENT, AuditOutcome.SUCCESS, "0"),
        (AuditEventType.DELIVERY_RETRIED, AuditOutcome.MINOR_FAILURE, "4"),
        (AuditEventType.OUTPUT_FAILED, AuditOutcome.SERIOUS_FAILURE, "8"),
    ],
)
def test_delivery_outcomes_are_instances_transferred_with_their_outcome_indicator(
    kind: AuditEventType, outcome: AuditOutcome, indicator: str
) -> None:
    root = parsed(event(kind, outcome=outcome, calling_ae="DICOMNODE", called_ae="PACS"))

    identification = root.find("EventIdentification")
    assert identification is not None
    assert identification.attrib["EventOutcomeIndicator"] == indicator
    assert coded(identification.find("EventID"))[0] == "110104"


def test_rejected_association_is_a_failed_login_with_its_reason() -> None:
    root = parsed(
        event(AuditEventType.ASSOCIATION_REJECTED, outcome=AuditOutcome.MINOR_FAILURE,
              calling_ae="INTRUDER", called_ae="DICOMNODE", peer_address="192.0.2.7",
              detail="calling_ae_title")
    )  # fmt: skip

    identification = root.find("EventIdentification")
    assert identification is not None
    assert identification.attrib["EventActionCode"] == "E"
    assert identification.attrib["EventOutcomeIndicator"] == "4"
    assert coded(identification.find("EventID")) == ("110114", "DCM", "User Authentication")
    assert coded(identification.find("EventTypeCode")) == ("110122", "DCM", "Login")
    assert identification.findtext("EventOutcomeDescription") == "calling_ae_title"
    assert participants(root)[0]["UserID"] == "INTRUDER"
    assert root.find("ParticipantObjectIdentification") is None  # no study


def test_start_is_application_activity_started_by_its_launcher() -> None:
    root = parsed(event(AuditEventType.SETTINGS_LOADED, actor="run:1234", detail="run 1.0"))

    identification = root.find("EventIdentification")
    assert identification is not None
    assert coded(identification.find("EventID")) == ("110100", "DCM", "Application Activity")
    assert coded(identification.find("EventTypeCode")) == ("110120", "DCM", "Application Start")
    launcher, application = participants(root)
    assert (launcher["UserID"], launcher["UserIsRequestor"], launcher["role"]) == (
        "run:1234", "true", "110151",
    )  # fmt: skip
    assert (application["UserID"], application["UserIsRequestor"], application["role"]) == (
        "DICOMNODE", "false", "110150",
    )  # fmt: skip


def test_stop_is_application_activity_stopped() -> None:
    root = parsed(event(AuditEventType.APPLICATION_STOPPED, actor="run:1234"))

    assert coded(root.find("EventIdentification/EventTypeCode")) == (
        "110121", "DCM", "Application Stop",
    )  # fmt: skip


def test_web_action_is_a_security_alert_naming_the_token_fingerprint() -> None:
    root = parsed(
        event(AuditEventType.WEB_ACTION, actor="token:3f2a9c", detail="retry job 12",
              peer_address="10.0.0.5")
    )  # fmt: skip

    identification = root.find("EventIdentification")
    assert identification is not None
    assert coded(identification.find("EventID")) == ("110113", "DCM", "Security Alert")
    assert coded(identification.find("EventTypeCode")) == (
        "110132", "DCM", "Use of Restricted Function",
    )  # fmt: skip
    assert identification.findtext("EventOutcomeDescription") == "retry job 12"
    actor, node = participants(root)
    assert (actor["UserID"], actor["UserIsRequestor"]) == ("token:3f2a9c", "true")
    assert actor["NetworkAccessPointID"] == "10.0.0.5"  # the web client's address
    assert (node["UserID"], node["UserIsRequestor"]) == ("DICOMNODE", "false")


def action(root: ET.Element) -> str:
    identification = root.find("EventIdentification")
    assert identification is not None
    return identification.attrib["EventActionCode"]


def test_study_processed_and_deleted_are_instances_accessed_and_study_deleted() -> None:
    processed = parsed(event(AuditEventType.STUDY_PROCESSED, study_instance_uid=STUDY))
    deleted = parsed(event(AuditEventType.STUDY_DELETED, study_instance_uid=STUDY))

    assert coded(processed.find("EventIdentification/EventID"))[0] == "110103"
    assert action(processed) == "R"
    assert coded(deleted.find("EventIdentification/EventID")) == (
        "110105", "DCM", "DICOM Study Deleted",
    )  # fmt: skip
    assert action(deleted) == "D"
    study = deleted.find("ParticipantObjectIdentification")
    assert study is not None and study.attrib["ParticipantObjectID"] == STUDY


@pytest.mark.parametrize("kind", list(AuditEventType))
def test_every_event_type_has_dcm_codes_and_a_valid_action(kind: AuditEventType) -> None:
    codes = event_codes(kind.value)

    assert codes.event_id.code.startswith("1101")
    assert codes.action in {"C", "R", "U", "D", "E"}
    root = parsed(event(kind, calling_ae="A", called_ae="B"))
    assert len(root.findall("ActiveParticipant")) >= 1


def test_an_unknown_event_type_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="'sneaky'"):
        audit_message_xml(event(AuditEventType.WEB_ACTION, event="sneaky"), SOURCE)


def test_markup_and_control_characters_from_the_wire_stay_inside_their_attribute() -> None:
    # An AE title may hold <, & and " (PS3.5 AE); a NUL must not reach the XML.
    root = parsed(
        event(AuditEventType.ASSOCIATION_REJECTED, calling_ae='<a&"b>\x00',
              detail="x\n</EventOutcomeDescription>")
    )  # fmt: skip

    assert participants(root)[0]["UserID"] == '<a&"b>\\x00'
    assert root.findtext("EventIdentification/EventOutcomeDescription") == (
        "x\\x0a</EventOutcomeDescription>"
    )


def test_syslog_message_is_rfc5424_authpriv_notice_with_the_dicom_msgid() -> None:
    ev = event(AuditEventType.INSTANCES_STORED, calling_ae="CT1", study_instance_uid=STUDY)

    message = parse_message(syslog_message(ev, SOURCE))

    assert message.pri == 10 * 8 + 5  # authpriv.notice
    assert message.version == "1"
    assert message.timestamp == "2026-12-14T09:30:15.123Z"
    assert (message.hostname, message.app_name, message.procid) == ("node1", "dicomnode", "4242")
    assert message.msgid == "DICOM+RFC3881"
    assert message.structured_data == "-"
    assert message.msg.startswith(BOM)
    assert message.event_id == "110104"


def test_a_failure_is_sent_with_severity_warning() -> None:
    ev = event(AuditEventType.OUTPUT_FAILED, outcome=AuditOutcome.SERIOUS_FAILURE)

    assert parse_message(syslog_message(ev, SOURCE)).pri == 10 * 8 + 4  # authpriv.warning


def test_header_fields_are_printable_ascii_without_spaces() -> None:
    source = replace(SOURCE, hostname="my host\u00e9", procid="")
    message = parse_message(syslog_message(event(AuditEventType.SETTINGS_LOADED), source))

    assert message.hostname == "my_host_"
    assert message.procid == "-"


def test_octet_frame_counts_bytes_not_characters() -> None:
    ev = event(AuditEventType.WEB_ACTION, detail="r\u00e9essayer \u2713")
    message = syslog_message(ev, SOURCE)

    framed = octet_frame(message)

    length, rest = framed.split(b" ", 1)
    assert int(length) == len(message) == len(rest)
    assert int(length) > len(message.decode("utf-8"))
    frames, left = parse_frames(framed + octet_frame(message))
    assert frames == [message, message] and left == b""
