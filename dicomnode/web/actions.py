"""The page's actions: retry, cancel and force-complete, behind the web token.

Each action is a ``POST`` checked by :class:`~dicomnode.web.auth.WebAuth` (a bearer
token, or a signed-in session with its CSRF value), done through the index, recorded
in the audit trail with the token's fingerprint, and logged (``web_action``). A
browser's form comes back to the page it was sent from (``303``) with the outcome
shown; a script (bearer token) gets JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.index.deliveries import retry_deliveries
from dicomnode.index.jobs import cancel_job, retry_job
from dicomnode.index.studies import force_complete_study
from dicomnode.web.auth import COOKIE, Credentials, WebAuth
from dicomnode.web.pages import page

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["actions"])


def _auth(request: Request) -> WebAuth:
    auth: WebAuth = request.app.state.auth
    return auth


def _back(request: Request, fallback: str) -> str:
    """The page the form was on (same site only), else ``fallback``."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc and referer.netloc != request.headers.get("host", ""):
        return fallback
    path = referer.path or fallback
    return path if path.startswith("/") and not path.startswith("//") else fallback


def _act(
    request: Request,
    csrf: str,
    what: str,
    do: Callable[[Session], bool],
    fallback: str,
    study_uid: str | None = None,
) -> Response:
    """Check the credentials, do ``do`` in a session, audit and answer."""
    credentials: Credentials = _auth(request).require(request, csrf)
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory() as session:
        done = do(session)
    request.app.state.audit(
        what=what, done=done, actor=credentials.actor, study_uid=study_uid,
        address=request.client.host if request.client else None,
    )  # fmt: skip
    logger.info(
        "web action",
        extra={"action": "web_action", "what": what, "done": done, "actor": credentials.actor},
    )
    message = f"{what}: {'done' if done else 'nothing to do (not in a state that allows it)'}"
    if not credentials.by_cookie:
        return JSONResponse({"what": what, "done": done}, status_code=200 if done else 409)
    key = "done" if done else "error"
    return RedirectResponse(f"{_back(request, fallback)}?{key}={quote(message)}", status_code=303)


@router.post("/jobs/{job_id}/retry")
def retry(request: Request, job_id: int, csrf: str = Form("")) -> Response:
    """Queue a job again now (any state but running)."""
    return _act(request, csrf, f"retry job {job_id}", lambda s: retry_job(s, job_id), "/jobs")


@router.post("/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: int, csrf: str = Form("")) -> Response:
    """Give up a queued or failed job."""
    actor = _auth(request).fingerprint
    return _act(
        request, csrf, f"cancel job {job_id}", lambda s: cancel_job(s, job_id, actor), "/jobs"
    )


@router.post("/studies/{study_uid}/force-complete")
def force_complete(request: Request, study_uid: str, csrf: str = Form("")) -> Response:
    """Make a receiving study stable at the scheduler's next scan."""
    return _act(
        request, csrf, "force-complete study", lambda s: force_complete_study(s, study_uid),
        f"/studies/{quote(study_uid)}", study_uid=study_uid,
    )  # fmt: skip


@router.post("/deliveries/{delivery_id}/retry")
def retry_delivery(request: Request, delivery_id: int, csrf: str = Form("")) -> Response:
    """Send a delivery again now."""
    return _act(
        request, csrf, f"retry delivery {delivery_id}",
        lambda s: bool(retry_deliveries(s, [delivery_id])), "/deliveries",
    )  # fmt: skip


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    """The sign-in form."""
    return page(request, "login.html", "Sign in", "", token_set=_auth(request).enabled)


@router.post("/login")
def login(request: Request, token: str = Form("")) -> Response:
    """Sign in with the token: a session cookie for the page's actions."""
    auth = _auth(request)
    if not auth.token_matches(token):
        request.app.state.audit(
            what="sign-in refused", done=False, actor="",
            address=request.client.host if request.client else None,
        )  # fmt: skip
        return RedirectResponse("/login?error=" + quote("wrong token"), status_code=303)
    response = RedirectResponse("/?done=" + quote("signed in: actions enabled"), status_code=303)
    response.set_cookie(COOKIE, auth.new_session(), httponly=True, samesite="strict", path="/")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Sign out (the cookie is dropped)."""
    response = RedirectResponse("/?done=" + quote("signed out"), status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def no_audit(**_: Any) -> None:
    """The audit hook of an app built without one (tests of pages alone)."""
