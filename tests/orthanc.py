"""Orthanc as the PACS in tests: Debian's ``Orthanc`` with a private configuration.

Orthanc 1.10 does not start as a service here; ``OrthancServer`` runs ``Orthanc
config.json`` with its own storage and index in a test folder, DICOM and HTTP on
free ports, REST on 127.0.0.1 only (``RemoteAccessAllowed`` false, no
authentication), and ``DicomModalities`` naming the nodes it may send to. Orthanc's
DICOM layer is DCMTK's, so ``TCP_NODELAY=1`` is in its environment (PITFALLS: 40 ms
per instance on loopback otherwise). Orthanc 1.10 has no DICOM bind-address option:
its DICOM port listens on every interface, the HTTP port on loopback only.

``stop()`` then ``start()`` again keeps the ports and the stored data, for tests of
a peer that goes down and comes back. ``dicomweb=True`` loads Debian's DICOMweb plugin
(package ``orthanc-dicomweb``) under ``/dicom-web/`` with full study and series
metadata, for viewers that read QIDO-RS / WADO-RS (OHIF); off by default.

The REST client is ``urllib`` (the project has no HTTP client dependency).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

__all__ = [
    "DICOMWEB_PLUGIN",
    "ORTHANC",
    "OrthancServer",
    "dicomweb_available",
    "orthanc_available",
    "require_dicomweb",
    "require_orthanc",
]

#: Debian's Orthanc binary (package ``orthanc``); else whatever is on PATH.
ORTHANC = "/usr/sbin/Orthanc"
#: Debian's DICOMweb plugin (package ``orthanc-dicomweb``).
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
#: Set to 1 (as CI does) to fail, not skip, when a real peer the tests use is missing.
REQUIRE_TOOLS_ENV = "DICOMNODE_REQUIRE_TOOLS"


def _binary() -> str | None:
    if Path(ORTHANC).is_file() and os.access(ORTHANC, os.X_OK):
        return ORTHANC
    return shutil.which("Orthanc")


def orthanc_available() -> str | None:
    """None when Orthanc can be started here, else the reason it cannot."""
    if _binary() is None:
        return "Orthanc not installed (Debian package: orthanc)"
    return None


def dicomweb_available() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else the reason."""
    reason = orthanc_available()
    if reason is None and not Path(DICOMWEB_PLUGIN).is_file():
        reason = "Orthanc's DICOMweb plugin not installed (Debian package: orthanc-dicomweb)"
    return reason


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{REQUIRE_TOOLS_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_orthanc() -> None:
    """Skip the calling test when Orthanc is missing (fail with DICOMNODE_REQUIRE_TOOLS=1)."""
    _require(orthanc_available())


def require_dicomweb() -> None:
    """As :func:`require_orthanc`, for Orthanc with its DICOMweb plugin."""
    _require(dicomweb_available())


#: Logs every C-STORE Orthanc receives, a duplicate included (Orthanc keeps one copy
#: and its REST API cannot tell a second delivery from none); ``print`` in Orthanc's
#: Lua goes to its log as ``Lua says: ...``.
_STORE_MARK = "dicomnode-test received "
_COUNT_STORES = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if origin["RequestOrigin"] == "DicomProtocol" then
    print("{_STORE_MARK}" .. dicom["SOPInstanceUID"])
  end
  return true
end
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrthancServer:
    """One Orthanc process with its own folder, ports and modalities.

    Parameters
    ----------
    folder
        Holds the configuration, storage, index and log (``orthanc.log``).
    ae_title
        Orthanc's ``DicomAet``.
    modalities
        ``DicomModalities``: name -> (AE title, host, port) of the peers Orthanc may
        send to (e.g. the node under test).
    dicomweb
        Load the DICOMweb plugin: QIDO-RS, WADO-RS and STOW-RS under
        :attr:`dicomweb_url` (``/dicom-web/``), with ``Full`` study and series metadata
        (read from the stored files, so every attribute a viewer asks for is there).
    """

    def __init__(
        self,
        folder: Path,
        ae_title: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        *,
        dicomweb: bool = False,
    ) -> None:
        self.folder = folder
        self.dicomweb = dicomweb
        self.ae_title = ae_title
        self.modalities = dict(modalities or {})
        self.dicom_port = _free_port()
        self.http_port = _free_port()
        self.log = folder / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------

    @property
    def url(self) -> str:
        """The REST API's base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS), without a trailing slash."""
        return f"{self.url}/dicom-web"

    def write_config(self) -> Path:
        """Write ``orthanc.json`` from the current settings; its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": f"test-{self.ae_title}",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: list(m) for name, m in self.modalities.items()},
            "StorageCompression": False,
            "Plugins": [],
            "ConcurrentJobs": 2,
            "SaveJobs": False,
            # Orthanc waits this long before closing its own SCU associations; tests
            # that count our associations want them closed at once.
            "DicomAssociationCloseDelay": 0,
        }
        if self.dicomweb:
            config["Plugins"] = [DICOMWEB_PLUGIN]
            config["DicomWeb"] = {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            }
        lua = self.folder / "count-stores.lua"
        lua.write_text(_COUNT_STORES, encoding="utf-8")
        config["LuaScripts"] = [str(lua)]
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path

    def start(self, timeout: float = 30) -> OrthancServer:
        """Start Orthanc (same ports and storage as before) and wait until it serves."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("Orthanc is already running")
        binary = _binary()
        if binary is None:
            raise RuntimeError(orthanc_available() or "Orthanc not found")
        config = self.write_config()
        env = {**os.environ, "TCP_NODELAY": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, str(config)], stdout=log, stderr=log, env=env, cwd=self.folder,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start:\n{self.log_text()[-4000:]}")
            if self._answers() and self._dicom_listening():
                return
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc not ready within {timeout} s:\n{self.log_text()[-4000:]}")

    def _answers(self) -> bool:
        try:
            return bool(self.get("/system").get("DicomAet") == self.ae_title)
        except (OSError, ValueError):
            return False

    def _dicom_listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 30) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL); the storage stays. Safe to repeat."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        """What Orthanc logged so far."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    # -- REST ------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """Call the REST API; the decoded JSON answer (raw bytes when not JSON).

        A ``bytes`` body goes as is (``application/dicom``), anything else as JSON.
        """
        raw = isinstance(body, bytes)
        data = body if raw else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/dicom" if raw else "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as response:
            content = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(content)
            return content

    def get(self, path: str) -> Any:
        """``GET path``."""
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        """``POST path`` with a JSON body."""
        return self.request("POST", path, body)

    def instances(self) -> list[str]:
        """The Orthanc ids of every stored instance."""
        return list(self.get("/instances"))

    def sop_instance_uids(self) -> list[str]:
        """The SOP Instance UID of every stored instance (each once: Orthanc keeps one)."""
        return sorted(
            self.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in self.instances()
        )

    def count_instances(self) -> int:
        """``CountInstances`` from ``/statistics``."""
        return int(self.get("/statistics")["CountInstances"])

    def received_stores(self) -> list[str]:
        """The SOP Instance UID of every C-STORE received, in order, duplicates included."""
        return [
            line.split(_STORE_MARK, 1)[1].strip()
            for line in self.log_text().splitlines()
            if _STORE_MARK in line
        ]

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of an instance, as Orthanc keeps it."""
        data: bytes = self.get(f"/instances/{orthanc_id}/file")
        return data

    def upload(self, data: bytes) -> str:
        """Store a DICOM file through the REST API (as a modality would); its study's id."""
        answer = self.request("POST", "/instances", data)
        return str(answer["ParentStudy"])

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        """The series of a study, each with ``MainDicomTags`` and ``Instances``."""
        return list(self.get(f"/studies/{study_id}/series"))

    def store_to(self, modality: str, resources: list[str]) -> Any:
        """Have Orthanc C-STORE ``resources`` (Orthanc ids) to a modality, synchronously."""
        return self.post(
            f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": True}
        )
