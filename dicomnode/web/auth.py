"""Who may act on the web page: a bearer token from the environment, CSRF-safe.

The page reads without credentials. An action (retry, cancel, force-complete) needs
the token of ``[web] token``, which only the environment sets
(``DICOMNODE_WEB__TOKEN``; a settings file that sets it is refused). With no token
set, every action is refused.

Two ways to present it:

* a script sends ``Authorization: Bearer <token>``; a browser never adds that header
  on its own, so such a request cannot be forged from another site;
* a person signs in once (``POST /login`` with the token): the node sets a session
  cookie ``<nonce>.<HMAC(token, nonce)>`` (``HttpOnly``, ``SameSite=Strict``), and each
  action form carries a CSRF value ``HMAC(token, "csrf:" + nonce)`` that a page of
  another site cannot read. Both are checked in constant time, statelessly: changing
  the token (a restart with another one) ends every session. A request whose
  ``Origin`` names another host is refused as well.

Each accepted action is attributed to the token's fingerprint (the first 12 hex
digits of its SHA-256), never the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

__all__ = ["COOKIE", "Credentials", "WebAuth"]

#: The session cookie's name.
COOKIE = "dicomnode_session"


@dataclass(frozen=True, slots=True)
class Credentials:
    """An accepted request: who (the token's fingerprint) and how it came."""

    actor: str
    by_cookie: bool


class WebAuth:
    """Checks requests against the node's token (empty: every action refused)."""

    def __init__(self, token: str) -> None:
        self._key = token.encode()
        self.enabled = bool(token)
        self.fingerprint = "token:" + hashlib.sha256(self._key).hexdigest()[:12] if token else ""

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, offered: str) -> bool:
        """Whether ``offered`` is the token (constant time)."""
        return self.enabled and hmac.compare_digest(offered.encode(), self._key)

    def new_session(self) -> str:
        """A fresh session cookie value for a person who gave the token."""
        nonce = secrets.token_hex(16)
        return f"{nonce}.{self._mac(nonce)}"

    def session_nonce(self, request: Request) -> str | None:
        """The nonce of a valid session cookie on ``request``; None without one."""
        value = request.cookies.get(COOKIE, "")
        nonce, _, mac = value.partition(".")
        if not self.enabled or not nonce or not hmac.compare_digest(mac, self._mac(nonce)):
            return None
        return nonce

    def csrf_for(self, request: Request) -> str:
        """The CSRF value the page's action forms carry ("" without a session)."""
        nonce = self.session_nonce(request)
        return self._mac(f"csrf:{nonce}") if nonce else ""

    def require(self, request: Request, csrf: str = "") -> Credentials:
        """The credentials of an action request, or an HTTP error.

        Raises
        ------
        HTTPException
            403 when no token is set, the Origin is another host's, or the token or
            CSRF value is wrong; 401 when the request carries no credentials at all.
        """
        if not self.enabled:
            raise HTTPException(403, "actions are disabled: no web token is set")
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
            raise HTTPException(403, "cross-origin request refused")
        scheme, _, offered = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            if not self.token_matches(offered.strip()):
                raise HTTPException(403, "wrong token")
            return Credentials(self.fingerprint, by_cookie=False)
        nonce = self.session_nonce(request)
        if nonce is None:
            raise HTTPException(401, "sign in with the web token first")
        if not hmac.compare_digest(csrf, self._mac(f"csrf:{nonce}")):
            raise HTTPException(403, "missing or wrong CSRF value")
        return Credentials(self.fingerprint, by_cookie=True)
