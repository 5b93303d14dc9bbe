"""OHIF Viewer v3, served offline for browser tests of the node's outputs.

The npm package ``@ohif/app`` ships a built viewer in its ``dist/`` folder. It is not
in the repository: ``python -m tests.ohif install`` (run by ``scripts/check``) fetches
the pinned version with ``npm pack`` from the npm registry and unpacks its ``dist/``
under ``build/ohif/<version>/`` (git-ignored). Tests never download: without the
folder they skip (fail with ``DICOMNODE_REQUIRE_TOOLS=1``).

``OhifServer`` serves that folder from 127.0.0.1 in a thread, as a static host of a
single-page application must: a known file as is, any other path without a file
extension as ``index.html`` (OHIF routes on the client: ``/viewer?...``). It answers
``/app-config.js`` with its own configuration, whose one DICOMweb data source is
``/dicom-web`` on the *same origin*, which it passes through to Orthanc's DICOMweb
plugin; so the browser never makes a cross-origin request and CORS never comes up.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

__all__ = [
    "OHIF_DIST",
    "OHIF_PACKAGE",
    "OHIF_VERSION",
    "OhifServer",
    "app_config",
    "install_ohif",
    "ohif_available",
    "require_ohif",
]

#: The viewer tested against; a new version is a deliberate change (its dist differs).
OHIF_VERSION = "3.13.2"
OHIF_PACKAGE = f"@ohif/app@{OHIF_VERSION}"
#: Where ``install`` unpacks the viewer (``build/`` is git-ignored).
OHIF_DIST = Path(__file__).resolve().parents[1] / "build" / "ohif" / OHIF_VERSION / "dist"
REQUIRE_TOOLS_ENV = "DICOMNODE_REQUIRE_TOOLS"

# Request headers passed through to Orthanc; Host too, so that the BulkDataURIs the
# DICOMweb plugin writes into metadata point back at this server.
_FORWARDED = ("Accept", "Content-Type", "Host", "Range")
# Response headers passed back; the body is sent with its own Content-Length.
_RETURNED = ("Content-Type", "Content-Disposition", "Content-Range", "ETag")


def ohif_available(dist: Path = OHIF_DIST) -> str | None:
    """None when the viewer is installed, else the reason it is not."""
    if (dist / "index.html").is_file() and (dist / "app-config.js").is_file():
        return None
    return f"OHIF Viewer {OHIF_VERSION} not installed in {dist} (python -m tests.ohif install)"


def require_ohif(dist: Path = OHIF_DIST) -> None:
    """Skip the calling test without the viewer (fail with DICOMNODE_REQUIRE_TOOLS=1)."""
    reason = ohif_available(dist)
    if reason is None:
        return
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{REQUIRE_TOOLS_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def install_ohif(dist: Path = OHIF_DIST, npm: str = "npm") -> Path:
    """Fetch :data:`OHIF_PACKAGE` with ``npm pack`` and unpack its ``dist/`` to `dist`.

    Nothing is done when `dist` already holds the viewer. The tarball is unpacked in a
    temporary folder beside `dist` and renamed into place, so an interrupted install
    leaves no half viewer behind.
    """
    if ohif_available(dist) is None:
        return dist
    dist.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dist.parent, prefix=".install-") as scratch:
        subprocess.run(
            [npm, "pack", "--silent", "--pack-destination", scratch, OHIF_PACKAGE],
            check=True, stdout=subprocess.DEVNULL, timeout=600,
        )  # fmt: skip
        (tarball,) = Path(scratch).glob("*.tgz")
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(unpacked, filter="data")
        if dist.exists():
            shutil.rmtree(dist)
        (unpacked / "package" / "dist").rename(dist)
    return dist


def app_config(dicomweb_root: str) -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source at `dicomweb_root`.

    Orthanc's plugin serves QIDO-RS and WADO-RS under one root; it has no
    ``includefield`` support worth relying on, no fuzzy matching, and its rendered
    thumbnails are what OHIF's thumbnail strategy ``wadors`` asks for.
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test)",
            "name": "orthanc",
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "wadoUriRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video,pdf",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, ``index.html`` for client routes, ``/dicom-web/`` to Orthanc."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        # Quiet: the test reads the browser's log, not the server's.
        return

    def end_headers(self) -> None:
        # A fresh profile each run, but never let a stale config or index be cached.
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/dicom-web/"):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, "application/javascript", self.server.config.encode())
        elif path in ("/sw.js", "/init-service-worker.js"):
            # No service worker: it would serve cached files between test runs.
            self._send(200, "application/javascript", b"// no service worker in tests\n")
        else:
            target = Path(self.translate_path(path))
            if not target.is_file() and "." not in path.rsplit("/", 1)[-1]:
                self.path = "/index.html"
            super().do_GET()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self) -> None:
        """Pass a DICOMweb GET through to Orthanc, status and body unchanged."""
        connection = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=60)
        try:
            headers = {k: v for k in _FORWARDED if (v := self.headers.get(k)) is not None}
            connection.request("GET", self.path, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
        except OSError as exc:
            self._send(502, "text/plain", f"Orthanc did not answer: {exc}\n".encode())
            return
        finally:
            connection.close()
        self.send_response(answer.status)
        for name in _RETURNED:
            value = answer.getheader(name)
            if value is not None:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.requests.append((self.path, answer.status))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, orthanc_port: int, config: str) -> None:
        self.dist = dist
        self.orthanc_port = orthanc_port
        self.config = config
        self.requests: list[tuple[str, int]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handler serves files from the viewer's folder, not the working directory.
        _Handler(request, client_address, self, directory=str(self.dist))


class OhifServer:
    """OHIF's ``dist/`` on 127.0.0.1 (port 0), with Orthanc's DICOMweb on the same origin.

    Parameters
    ----------
    orthanc_http_port
        Orthanc's HTTP port; its DICOMweb plugin must be loaded (``/dicom-web/``).
    dist
        The installed viewer.
    """

    def __init__(self, orthanc_http_port: int, dist: Path = OHIF_DIST) -> None:
        self._server = _Server(dist, orthanc_http_port, "")
        self.port = int(self._server.server_address[1])
        self._server.config = app_config(f"{self.url}/dicom-web")
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ohif-http", daemon=True
        )

    @property
    def url(self) -> str:
        """The viewer's origin."""
        return f"http://127.0.0.1:{self.port}"

    def viewer_url(self, study_instance_uid: str) -> str:
        """The viewer's page for one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

    @property
    def dicomweb_requests(self) -> list[tuple[str, int]]:
        """(path, status) of every DICOMweb request passed to Orthanc, in order."""
        return list(self._server.requests)

    def start(self) -> OhifServer:
        """Serve in a daemon thread (the socket is already bound)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()

    def __enter__(self) -> OhifServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.ohif install``: fetch the viewer (a no-op when it is there)."""
    parser = argparse.ArgumentParser(prog="python -m tests.ohif", description=__doc__)
    parser.add_argument("command", choices=["install", "where"])
    args = parser.parse_args(argv)
    if args.command == "install":
        if shutil.which("npm") is None:
            print("npm not found: OHIF Viewer not installed; its tests will skip", file=sys.stderr)
            return 0
        print(f"OHIF Viewer {OHIF_VERSION}: {install_ohif()}")
    else:
        print(OHIF_DIST)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
