"""pynetdicom event handlers: they write the file, insert the row and return.

Handlers never raise: pynetdicom would answer 0xC211 and the cause would be lost.
Every error becomes one of our statuses (:mod:`dicomnode.receive.status`) with an
ErrorComment of at most 64 characters. No inference ever runs here.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from pydicom import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import DicomnodeError, StorageError
from dicomnode.index.associations import close_association, open_association
from dicomnode.index.schema import utc_now
from dicomnode.receive._patches import tune_association
from dicomnode.receive.ingest import Ingest
from dicomnode.receive.spool import take_spool
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


def handle_store(event: Event, ingest: Ingest) -> int | Dataset:
    """C-STORE: make the streamed instance durable, then answer."""
    assoc = event.assoc
    # pynetdicom calls this handler for EVT_C_STORE only, whose request is a C-STORE.
    request = cast("C_STORE", event.request)
    sop_uid = str(request.AffectedSOPInstanceUID or "")
    try:
        spool = take_spool(assoc.ae, event.dataset_path)
        if spool is None:
            raise StorageError("the incoming dataset was not spooled")
        ingest.store(
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
        return _status(status, str(exc))
    except Exception as exc:  # a bug must still give a status we chose
        logger.exception(
            "C-STORE failed unexpectedly",
            extra={"action": "store_crashed", "sop_instance_uid": sop_uid[:64], **_peer(assoc)},
        )
        return _status(Status.OUT_OF_RESOURCES, f"internal error: {type(exc).__name__}")
    setattr(assoc, _COUNT, getattr(assoc, _COUNT, 0) + 1)
    return Status.SUCCESS


def handle_echo(event: Event) -> int:
    """C-ECHO: we are alive and ready."""
    logger.debug("C-ECHO", extra={"action": "echo", **_peer(event.assoc)})
    return Status.SUCCESS


def handle_established(event: Event, session_factory: sessionmaker[Session]) -> None:
    """Record the association; instances point at it."""
    assoc = event.assoc
    tune_association(assoc)
    try:
        with session_factory() as session:
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
        assoc_id = None
        setattr(assoc, _ASSOC_ID, None)
    logger.info(
        "association accepted",
        extra={"action": "association_accepted", "association_id": assoc_id, **_peer(assoc)},
    )


def _ended(event: Event, session_factory: sessionmaker[Session], reason: str) -> None:
    assoc = event.assoc
    if not hasattr(assoc, _ASSOC_ID):
        return  # never established (a port probe, a rejected request): nothing to record
    assoc_id = getattr(assoc, _ASSOC_ID)
    count = getattr(assoc, _COUNT, 0)
    if assoc_id is not None:
        try:
            with session_factory() as session:
                close_association(session, assoc_id, reason, count, utc_now())
        except Exception:
            logger.exception(
                "association end not recorded", extra={"action": "association_record_failed"}
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


def handle_rejected(event: Event) -> None:
    """An association was rejected (calling or called AE title not allowed)."""
    assoc = event.assoc
    logger.warning(
        "association rejected",
        extra={
            "action": "association_rejected",
            "called_ae": assoc.acceptor.ae_title,
            **_peer(assoc),
        },
    )
