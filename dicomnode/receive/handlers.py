"""pynetdicom event handlers: they write the file, insert the row and return.

Handlers never raise: pynetdicom would answer 0xC211 and the cause would be lost.
Every error becomes one of our statuses (:mod:`dicomnode.receive.status`) with an
ErrorComment of at most 64 characters. No inference ever runs here.

The audit trail (:mod:`dicomnode.index.audit`) costs the ingest path nothing: an
association's events ride on the association's own rows (accepted: with its opening
row; what it stored, one event per study as PS3.15 A.5.3 "DICOM Instances
Transferred" has it: with its closing row), and a C-STORE only counts in memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, cast

from pydicom import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import DicomnodeError, StorageError
from dicomnode.index.associations import close_association, open_association
from dicomnode.index.audit import (
    AuditEntry,
    add_audit_events,
    association_transfers,
    record_audit_event,
)
from dicomnode.index.schema import AuditEventType, AuditOutcome, utc_now
from dicomnode.metrics import (
    ASSOCIATIONS_ACCEPTED,
    ASSOCIATIONS_REJECTED,
    INSTANCES_RECEIVED,
    RECEIVED_BYTES,
    STORE_SECONDS,
    calling_ae_label,
)
from dicomnode.receive._patches import tune_association
from dicomnode.receive.ingest import Ingest, Outcome
from dicomnode.receive.spool import SpoolFile, take_spool
from dicomnode.receive.status import Status, status_for_error

__all__ = [
    "handle_aborted",
    "handle_echo",
    "handle_established",
    "handle_rejected",
    "handle_released",
    "handle_store",
]

logger = logging.getLogger(__name__)

_ASSOC_ID = "dicomnode_association_id"
_COUNT = "dicomnode_instances"
#: SOP Instance UIDs sent again with bytes already held: their rows are another
#: association's, so the audit event of this one looks them up by UID.
_DUPLICATES = "dicomnode_duplicates"
_REFUSED = "dicomnode_refused"


def _status(status: Status, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    # PS3.7 C.4: Error Comment is LO, at most 64 characters.
    ds.ErrorComment = comment[:64]
    return ds


def _peer(assoc: Association) -> dict[str, Any]:
    return {
        "calling_ae": assoc.requestor.ae_title,
        "peer": f"{assoc.requestor.address}:{assoc.requestor.port}",
    }


def _measure(calling_ae: str, outcome: str, spool: SpoolFile | None, started: float) -> None:
    """Count one answered C-STORE in the metrics (no patient data: AE title, outcome)."""
    label = calling_ae_label(calling_ae)
    INSTANCES_RECEIVED.labels(label, outcome).inc()
    if spool is not None:
        RECEIVED_BYTES.labels(label).inc(spool.size)
    STORE_SECONDS.observe(time.perf_counter() - started)


def _duplicates(assoc: Association) -> list[str]:
    """The SOP Instance UIDs ``assoc`` sent again unchanged (one association thread)."""
    found: list[str] | None = getattr(assoc, _DUPLICATES, None)
    if found is None:
        found = []
        setattr(assoc, _DUPLICATES, found)
    return found


def handle_store(event: Event, ingest: Ingest) -> int | Dataset:
    """C-STORE: make the streamed instance durable, then answer."""
    started = time.perf_counter()
    assoc = event.assoc
    # pynetdicom calls this handler for EVT_C_STORE only, whose request is a C-STORE.
    request = cast("C_STORE", event.request)
    sop_uid = str(request.AffectedSOPInstanceUID or "")
    spool: SpoolFile | None = None
    try:
        spool = take_spool(assoc.ae, event.dataset_path)
        if spool is None:
            raise StorageError("the incoming dataset was not spooled")
        outcome = ingest.store(
            spool,
            command_sop_class_uid=str(request.AffectedSOPClassUID or ""),
            command_sop_instance_uid=sop_uid,
            calling_ae=assoc.requestor.ae_title,
            association_id=getattr(assoc, _ASSOC_ID, None),
        )
    except DicomnodeError as exc:
        status = status_for_error(exc)
        logger.warning(
            "C-STORE refused",
            extra={
                "action": "store_refused",
                "status": f"0x{status:04X}",
                "reason": str(exc),
                "sop_instance_uid": sop_uid[:64],
                **_peer(assoc),
            },
        )
        _measure(assoc.requestor.ae_title, "refused", spool, started)
        setattr(assoc, _REFUSED, getattr(assoc, _REFUSED, 0) + 1)
        return _status(status, str(exc))
    except Exception as exc:  # a bug must still give a status we chose
        logger.exception(
            "C-STORE failed unexpectedly",
            extra={"action": "store_crashed", "sop_instance_uid": sop_uid[:64], **_peer(assoc)},
        )
        _measure(assoc.requestor.ae_title, "refused", spool, started)
        setattr(assoc, _REFUSED, getattr(assoc, _REFUSED, 0) + 1)
        return _status(Status.OUT_OF_RESOURCES, f"internal error: {type(exc).__name__}")
    setattr(assoc, _COUNT, getattr(assoc, _COUNT, 0) + 1)
    if outcome is Outcome.DUPLICATE:
        _duplicates(assoc).append(sop_uid)
    _measure(assoc.requestor.ae_title, outcome.value, spool, started)
    return Status.SUCCESS


def handle_echo(event: Event) -> int:
    """C-ECHO: we are alive and ready."""
    logger.debug("C-ECHO", extra={"action": "echo", **_peer(event.assoc)})
    return Status.SUCCESS


def handle_established(event: Event, session_factory: sessionmaker[Session]) -> None:
    """Record the association, and its audit event in the same transaction."""
    assoc = event.assoc
    tune_association(assoc)
    accepted = AuditEntry(
        AuditEventType.ASSOCIATION_ACCEPTED,
        calling_ae=assoc.requestor.ae_title,
        called_ae=assoc.acceptor.ae_title,
        peer_address=str(assoc.requestor.address),
        actor="receive",
    )
    try:
        with session_factory() as session:
            add_audit_events(session, [accepted])  # committed by open_association
            assoc_id = open_association(
                session,
                calling_ae=assoc.requestor.ae_title,
                called_ae=assoc.acceptor.ae_title,
                peer_host=str(assoc.requestor.address),
                peer_port=int(assoc.requestor.port),
            )
        setattr(assoc, _ASSOC_ID, assoc_id)
    except Exception:
        logger.exception("association not recorded", extra={"action": "association_record_failed"})
        logger.warning(
            "audit event not recorded",
            extra={"action": "audit_record_failed", "events": [accepted.event]},
        )
        assoc_id = None
        setattr(assoc, _ASSOC_ID, None)
    ASSOCIATIONS_ACCEPTED.labels(calling_ae_label(assoc.requestor.ae_title)).inc()
    logger.info(
        "association accepted",
        extra={"action": "association_accepted", "association_id": assoc_id, **_peer(assoc)},
    )


def _transfer_events(session: Session, assoc: Association, count: int) -> list[AuditEntry]:
    """The association's audit events: one per study it stored instances of, and one
    for the instances it had refused (their study unknown)."""
    assoc_id = getattr(assoc, _ASSOC_ID)
    transfers = association_transfers(session, assoc_id, getattr(assoc, _DUPLICATES, ()))
    base = AuditEntry(
        AuditEventType.INSTANCES_STORED,
        calling_ae=assoc.requestor.ae_title,
        called_ae=assoc.acceptor.ae_title,
        peer_address=str(assoc.requestor.address),
        actor="receive",
    )
    entries = [
        replace(base, study_instance_uid=t.study_instance_uid, instances=t.instances,
                sop_classes=t.sop_classes, detail=f"{t.instances} instances")
        for t in transfers
    ]  # fmt: skip
    if not transfers and count > 0:  # the association's row was never written
        entries.append(replace(base, instances=count, detail=f"{count} instances"))
    refused = getattr(assoc, _REFUSED, 0)
    if refused:
        entries.append(
            replace(base, outcome=AuditOutcome.MINOR_FAILURE, instances=refused,
                    detail=f"{refused} instances refused")
        )  # fmt: skip
    return entries


def _ended(event: Event, session_factory: sessionmaker[Session], reason: str) -> None:
    assoc = event.assoc
    if not hasattr(assoc, _ASSOC_ID):
        return  # never established (a port probe, a rejected request): nothing to record
    assoc_id = getattr(assoc, _ASSOC_ID)
    count = getattr(assoc, _COUNT, 0)
    try:
        with session_factory() as session:
            entries = _transfer_events(session, assoc, count)
            add_audit_events(session, entries)
            if assoc_id is not None:
                close_association(session, assoc_id, reason, count, utc_now())  # commits
            else:
                session.commit()
    except Exception:
        logger.exception(
            "association end not recorded", extra={"action": "association_record_failed"}
        )
        logger.warning(
            "audit events not recorded",
            extra={"action": "audit_record_failed", "events": ["instances_stored"]},
        )
    logger.info(
        f"association {reason}",
        extra={
            "action": f"association_{reason}",
            "association_id": assoc_id,
            "instances": count,
            **_peer(assoc),
        },
    )


def handle_released(event: Event, session_factory: sessionmaker[Session]) -> None:
    """The peer released the association."""
    _ended(event, session_factory, "released")


def handle_aborted(event: Event, session_factory: sessionmaker[Session]) -> None:
    """The association was aborted."""
    _ended(event, session_factory, "aborted")


def _rejection_reason(assoc: Association) -> str:
    """Why pynetdicom 3.0.4 rejected ``assoc``, tested in the order it decides
    (``ACSE._negotiate_as_acceptor``: a later test overrides an earlier one)."""
    ae = assoc.ae
    acceptors = [a for a in ae.active_associations if a.is_acceptor]
    if len(acceptors) > ae.maximum_associations:
        return "association_limit"
    request = assoc.requestor.primitive  # the A-ASSOCIATE-RQ
    if ae.require_called_aet and request is not None:
        if request.called_ae_title != assoc.acceptor.ae_title.strip():
            return "called_ae_title"
    allowed = [title.strip() for title in ae.require_calling_aet]
    if allowed and assoc.requestor.ae_title not in allowed:
        return "calling_ae_title"
    return "other"


def handle_rejected(event: Event, session_factory: sessionmaker[Session]) -> None:
    """An association was rejected (an AE title not allowed, or too many associations)."""
    assoc = event.assoc
    reason = _rejection_reason(assoc)
    ASSOCIATIONS_REJECTED.labels(reason).inc()
    logger.warning(
        "association rejected",
        extra={
            "action": "association_rejected",
            "called_ae": assoc.acceptor.ae_title,
            "reason": reason,
            **_peer(assoc),
        },
    )
    request = assoc.requestor.primitive  # the A-ASSOCIATE-RQ: the title the peer asked for
    called = request.called_ae_title if request is not None else assoc.acceptor.ae_title
    try:
        with session_factory() as session:
            record_audit_event(
                session, AuditEventType.ASSOCIATION_REJECTED,
                outcome=AuditOutcome.MINOR_FAILURE, calling_ae=assoc.requestor.ae_title,
                called_ae=str(called), peer_address=str(assoc.requestor.address),
                detail=reason, actor="receive",
            )  # fmt: skip
    except Exception:  # record_audit_event swallows database errors; this is a bug
        logger.exception("audit event not recorded", extra={"action": "audit_record_failed"})
