"""An audit event as a DICOM audit message (PS3.15 A.5) in an RFC 5424 syslog message.

:func:`audit_message_xml` writes the XML of the DICOM Audit Message Schema (PS3.15
A.5.1, derived from RFC 3881): ``EventIdentification`` (the EventID and EventTypeCode
of PS3.15 A.5.3, coded in DCM), one ``ActiveParticipant`` per side (its AE title as
UserID, RoleIDCode 110153 Source / 110152 Destination), ``AuditSourceIdentification``
and, for an event about a study, a ``ParticipantObjectIdentification`` of it (type 2
system object, role 3 report, ID type 110180 Study Instance UID, its SOP classes).
Coded values carry ``csd-code``, ``codeSystemName`` and ``originalText`` (A.5.1).

Deliberately left out: the Patient participant object that PS3.15 A.5.3 asks of "DICOM
Instances Transferred": the node records no patient ID (``docs/security.md``).

:func:`syslog_message` wraps the XML as RFC 5424 says (PRI of facility 10 authpriv,
version 1, timestamp, host, APP-NAME, PROCID, MSGID ``DICOM+RFC3881`` as PS3.15's
syslog transmission profiles name it, no structured data, then a UTF-8 BOM and the
XML), and :func:`octet_frame` prefixes its length for TCP (RFC 6587 octet counting,
also RFC 5425's TLS framing). Pure functions: the connection is
:mod:`dicomnode.send.audit_syslog`'s.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address

from dicomnode.index.audit import AuditEvent
from dicomnode.index.schema import AuditEventType, AuditOutcome
from dicomnode.log import escape_control

__all__ = [
    "FACILITY_AUTHPRIV",
    "MSGID",
    "AuditSource",
    "Code",
    "EventCodes",
    "audit_message_xml",
    "event_codes",
    "octet_frame",
    "syslog_message",
]

#: RFC 5424 6.2.1: facility 10, security/authorization messages.
FACILITY_AUTHPRIV = 10
#: RFC 5424 severities: notice for what succeeded, warning for a failure.
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4
#: The MSGID of a DICOM audit message (the SYSLOG-TLS transmission profile, PS3.15).
MSGID = "DICOM+RFC3881"
#: RFC 5424 6.4: a UTF-8 MSG starts with the byte order mark.
BOM = b"\xef\xbb\xbf"
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
#: RFC 5424 6.2.4-6.2.6: printable US-ASCII without space, limited lengths.
_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value of the DCM coding scheme (PS3.16): its code and meaning."""

    code: str
    meaning: str


@dataclass(frozen=True, slots=True)
class EventCodes:
    """How an event type is written: EventID, EventTypeCode, EventActionCode and which
    side the peer is on (``in``: it called us, ``out``: we called it, ``local``: none)."""

    event_id: Code
    type_code: Code | None
    action: str
    direction: str


# PS3.16 CID 400 (Audit Event ID), CID 401 (Audit Event Type Code), CID 402
# (Audit Active Participant Role ID Code) and CID 404 (Audit Participant Object ID
# Type Code): the codes this node uses.
APPLICATION_ACTIVITY = Code("110100", "Application Activity")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DICOM Study Deleted")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
LOGIN = Code("110122", "Login")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")
APPLICATION = Code("110150", "Application")
APPLICATION_LAUNCHER = Code("110151", "Application Launcher")
DESTINATION = Code("110152", "Destination Role ID")
SOURCE = Code("110153", "Source Role ID")
STUDY_INSTANCE_UID = Code("110180", "Study Instance UID")

_CODES = {
    # An association is a peer application authenticating by its AE titles and
    # address (A.5.3 "User Authentication", Login): accepted 0, rejected 4.
    AuditEventType.ASSOCIATION_ACCEPTED: EventCodes(USER_AUTHENTICATION, LOGIN, "E", "in"),
    AuditEventType.ASSOCIATION_REJECTED: EventCodes(USER_AUTHENTICATION, LOGIN, "E", "in"),
    # A.5.3 "DICOM Instances Transferred": "C" as the receiver holding new copies,
    # "R" as the sender.
    AuditEventType.INSTANCES_STORED: EventCodes(INSTANCES_TRANSFERRED, None, "C", "in"),
    AuditEventType.OUTPUT_SENT: EventCodes(INSTANCES_TRANSFERRED, None, "R", "out"),
    AuditEventType.OUTPUT_FAILED: EventCodes(INSTANCES_TRANSFERRED, None, "R", "out"),
    AuditEventType.DELIVERY_RETRIED: EventCodes(INSTANCES_TRANSFERRED, None, "R", "out"),
    # A.5.3 "DICOM Instances Accessed": a job read the study's instances (its
    # outputs are new instances, audited when they are sent).
    AuditEventType.STUDY_PROCESSED: EventCodes(INSTANCES_ACCESSED, None, "R", "local"),
    AuditEventType.STUDY_DELETED: EventCodes(STUDY_DELETED, None, "D", "local"),
    # A token-protected action of the web page (A.5.3.11 "Security Alert").
    AuditEventType.WEB_ACTION: EventCodes(SECURITY_ALERT, USE_OF_RESTRICTED_FUNCTION, "E", "local"),
    AuditEventType.SETTINGS_LOADED: EventCodes(
        APPLICATION_ACTIVITY, APPLICATION_START, "E", "local"
    ),
    AuditEventType.APPLICATION_STOPPED: EventCodes(
        APPLICATION_ACTIVITY, APPLICATION_STOP, "E", "local"
    ),
}


def event_codes(event: str) -> EventCodes:
    """The codes of an event type; raises ValueError for one this node does not know."""
    try:
        return _CODES[AuditEventType(event)]
    except ValueError:
        raise ValueError(f"event: {event!r} is not an AuditEventType") from None


@dataclass(frozen=True, slots=True)
class AuditSource:
    """Who reports: this node's AE title, host and process, and the syslog APP-NAME."""

    ae_title: str
    hostname: str
    app_name: str = "dicomnode"
    procid: str = "-"


def _text(value: object) -> str:
    """A value XML 1.0 can carry: control characters written as ``\\xNN``."""
    return escape_control(str(value))


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code.code, "codeSystemName": "DCM", "originalText": code.meaning}
    )


def _timestamp(moment: datetime) -> str:
    """RFC 3339 / xsd:dateTime in UTC with milliseconds: ``2026-12-14T09:00:00.123Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        ip_address(address.split("%")[0])
    except ValueError:
        return "1"
    return "2"


def _participant(
    message: ET.Element,
    user_id: str,
    requestor: bool,
    role: Code | None,
    address: str | None = None,
    ae_title: str | None = None,
) -> None:
    attributes = {"UserID": _text(user_id), "UserIsRequestor": "true" if requestor else "false"}
    if ae_title:  # A.5.2, AlternativeUserID: a DICOM application's AE titles
        attributes["AlternativeUserID"] = _text(f"AETITLES={ae_title}")
    if address:
        attributes["NetworkAccessPointID"] = _text(address)
        attributes["NetworkAccessPointTypeCode"] = _access_point_type(address)
    element = ET.SubElement(message, "ActiveParticipant", attributes)
    if role is not None:
        _coded(element, "RoleIDCode", role)


def _participants(
    message: ET.Element, event: AuditEvent, codes: EventCodes, source: AuditSource
) -> None:
    """The active participants: the requesting side first (A.5.2)."""
    if codes.direction == "in":  # the peer called us
        peer_ae = event.calling_ae or "-"
        _participant(message, peer_ae, True, SOURCE, event.peer_address, event.calling_ae)
        ours = event.called_ae or source.ae_title
        _participant(message, ours, False, DESTINATION, source.hostname, ours)
    elif codes.direction == "out":  # we called the peer
        ours = event.calling_ae or source.ae_title
        _participant(message, ours, True, SOURCE, source.hostname, ours)
        peer_ae = event.called_ae or "-"
        _participant(message, peer_ae, False, DESTINATION, event.peer_address, event.called_ae)
    else:
        if event.actor:  # who asked: a web token's fingerprint (from its client's
            # address), a worker process
            launcher = APPLICATION_LAUNCHER if codes.event_id == APPLICATION_ACTIVITY else None
            _participant(message, event.actor, True, launcher, event.peer_address)
        role = APPLICATION if codes.event_id == APPLICATION_ACTIVITY else None
        _participant(
            message, source.ae_title, not event.actor, role, source.hostname, source.ae_title
        )


def _study(message: ET.Element, event: AuditEvent) -> None:
    """The study as participant object (A.5.3 "DICOM Instances Transferred"): type 2,
    role 3, ID type 110180, and how many instances of each SOP class."""
    assert event.study_instance_uid is not None
    study = ET.SubElement(
        message,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": _text(event.study_instance_uid),
            "ParticipantObjectTypeCode": "2",  # system object
            "ParticipantObjectTypeCodeRole": "3",  # report
        },
    )
    _coded(study, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
    for uid, count in sorted(event.sop_classes.items()):
        ET.SubElement(study, "SOPClass", {"UID": _text(uid), "NumberOfInstances": str(int(count))})


def audit_message_xml(event: AuditEvent, source: AuditSource) -> str:
    """The DICOM audit message (PS3.15 A.5.1) of ``event``, with its XML declaration.

    Raises ValueError for an event type this node does not know.
    """
    codes = event_codes(event.event)
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": codes.action,
            "EventDateTime": _timestamp(event.occurred_at),
            "EventOutcomeIndicator": str(int(event.outcome)),
        },
    )
    _coded(identification, "EventID", codes.event_id)
    if codes.type_code is not None:
        _coded(identification, "EventTypeCode", codes.type_code)
    if event.detail:
        ET.SubElement(identification, "EventOutcomeDescription").text = _text(event.detail)
    _participants(message, event, codes, source)
    audit_source = ET.SubElement(
        message, "AuditSourceIdentification", {"AuditSourceID": _text(source.ae_title)}
    )
    # A.5.1.2.1: 4, an application server process.
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": "4"})
    if event.study_instance_uid:
        _study(message, event)
    return _XML_DECLARATION + ET.tostring(message, encoding="unicode")


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII, at most ``limit``; ``-`` if empty."""
    cleaned = _PRINTUSASCII.sub("_", value)[:limit]
    return cleaned or "-"


def syslog_message(event: AuditEvent, source: AuditSource) -> bytes:
    """The RFC 5424 message carrying the audit message of ``event``.

    The TIMESTAMP is the event's own time (its row may be forwarded long after, once
    an unreachable collector is back); severity notice, or warning for a failure.
    """
    failed = event.outcome is not AuditOutcome.SUCCESS
    pri = FACILITY_AUTHPRIV * 8 + (SEVERITY_WARNING if failed else SEVERITY_NOTICE)
    header = " ".join(
        (
            f"<{pri}>1",
            _timestamp(event.occurred_at),
            _header_field(source.hostname, 255),
            _header_field(source.app_name, 48),
            _header_field(source.procid, 128),
            MSGID,
            "-",  # no STRUCTURED-DATA
        )
    )
    return header.encode("ascii") + b" " + BOM + audit_message_xml(event, source).encode("utf-8")


def octet_frame(message: bytes) -> bytes:
    """``message`` framed for a TCP stream: its length in octets, a space, itself
    (RFC 6587 3.4.1, the framing RFC 5425 4.3 uses over TLS)."""
    return f"{len(message)} ".encode("ascii") + message
