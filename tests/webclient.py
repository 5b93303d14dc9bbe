"""A small HTTP client for tests of the web page served for real (uvicorn on 127.0.0.1).

Keeps cookies like a browser, never follows redirects (a test checks where they go),
and posts forms and multipart uploads. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

__all__ = ["Page", "WebClient"]


@dataclass
class Page:
    """One response."""

    status_code: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebClient:
    """Requests to ``http://host:port`` with a cookie jar."""

    port: int
    host: str = "127.0.0.1"
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            sent = {"Host": f"{self.host}:{self.port}", **(headers or {})}
            if self.cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            page = Page(response.status, {k.lower(): v for k, v in response.getheaders()},
                        response.read())  # fmt: skip
            for value in response.headers.get_all("set-cookie") or []:
                cookie: SimpleCookie = SimpleCookie(value)
                for name, morsel in cookie.items():
                    if morsel.value and morsel["max-age"] != "0":
                        self.cookies[name] = morsel.value
                    else:
                        self.cookies.pop(name, None)
            return page
        finally:
            conn.close()

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Page:
        return self.request("GET", path + ("?" + urlencode(params) if params else ""))

    def post(
        self,
        path: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        body = urlencode(data or {}).encode()
        sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.request("POST", path, body, sent)

    def upload(
        self,
        path: str,
        files: Iterable[tuple[str, str, bytes]],
        data: Mapping[str, str] | None = None,
    ) -> Page:
        """POST multipart/form-data: ``files`` as (field, filename, content)."""
        boundary = "----dicomnode" + secrets.token_hex(8)
        parts: list[bytes] = []
        for name, value in (data or {}).items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        for name, filename, content in files:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: application/dicom\r\n\r\n'.encode()
                + content
                + b"\r\n"
            )
        parts.append(f"--{boundary}--\r\n".encode())
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.request("POST", path, b"".join(parts), headers)
