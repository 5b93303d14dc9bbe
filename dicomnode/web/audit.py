"""The audit page, and the hook that records the page's own actions in the trail.

The page lists the index's audit trail (:func:`~dicomnode.index.audit.list_audit_events`)
newest first, filtered by event, study and calling AE, a page at a time. Every action
of the page, and every refused sign-in, is recorded as a ``web_action`` event with the
token's fingerprint as the actor (:func:`index_audit`).
"""

from __future__ import annotations

from typing import Protocol

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.index.audit import list_audit_events
from dicomnode.index.schema import AuditEventType, AuditOutcome
from dicomnode.web.pages import PAGE_LIMIT, page

__all__ = ["AuditHook", "index_audit", "router"]

router = APIRouter(tags=["audit"])

_OUTCOMES = {
    AuditOutcome.SUCCESS: "ok",
    AuditOutcome.MINOR_FAILURE: "retrying",
    AuditOutcome.SERIOUS_FAILURE: "failed",
    AuditOutcome.MAJOR_FAILURE: "dead",
}


class AuditHook(Protocol):
    """Records one action of the web page."""

    def __call__(
        self,
        *,
        what: str,
        done: bool,
        actor: str,
        study_uid: str | None = None,
        address: str | None = None,
    ) -> None: ...


def index_audit(session_factory: sessionmaker[Session]) -> AuditHook:
    """The hook that writes ``web_action`` events to the index."""
    from dicomnode.index.audit import record_audit_event

    def hook(
        *,
        what: str,
        done: bool,
        actor: str,
        study_uid: str | None = None,
        address: str | None = None,
    ) -> None:
        with session_factory() as session:
            record_audit_event(
                session,
                AuditEventType.WEB_ACTION,
                outcome=AuditOutcome.SUCCESS if done else AuditOutcome.MINOR_FAILURE,
                peer_address=address,
                study_instance_uid=study_uid,
                detail=what,
                actor=actor or "anonymous",
            )

    return hook


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    event: str = "",
    study_uid: str = "",
    calling_ae: str = "",
    before_id: int | None = None,
) -> HTMLResponse:
    """The audit trail, newest first."""
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory() as session:
        events = list_audit_events(
            session, limit=PAGE_LIMIT, before_id=before_id, event=event or None,
            study_uid=study_uid.strip() or None, calling_ae=calling_ae.strip() or None,
        )  # fmt: skip
    return page(
        request, "audit.html", "Audit trail", "Audit",
        events=events, event_names=[e.value for e in AuditEventType], event=event,
        study_uid=study_uid, calling_ae=calling_ae,
        outcome_names={int(k): v for k, v in _OUTCOMES.items()},
        next_before=events[-1].id if len(events) == PAGE_LIMIT else None,
    )  # fmt: skip
