"""A plain pynetdicom SCU for tests: send a file's bytes exactly as they are."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

__all__ = ["dcmtk_env", "send_file", "storescu", "try_associate"]


def send_file(
    port: int,
    path: Path,
    called_ae: str = "DICOMNODE",
    calling_ae: str = "TESTSCU",
    tls: ssl.SSLContext | None = None,
) -> int | None:
    """C-STORE the dataset in ``path`` unchanged; the status, or None if rejected.

    With ``tls``, over DICOM TLS (the server certificate must name ``localhost``).

    The command's SOP Class and Instance UIDs come from the File Meta, so a file
    whose meta disagrees with its dataset makes a mismatched request on purpose.
    """
    meta = read_file_meta_info(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        tls_args = (tls, "localhost") if tls is not None else None
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, tls_args=tls_args)
        if not assoc.is_established:
            return None
        try:
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return int(status.Status) if status and "Status" in status else None


def try_associate(
    port: int, called_ae: str, calling_ae: str, tls: ssl.SSLContext | None = None
) -> bool:
    """Whether an association with these AE titles is accepted (over TLS if given)."""
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    tls_args = (tls, "localhost") if tls is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, tls_args=tls_args)
    accepted = bool(assoc.is_established)
    if accepted:
        assoc.release()
    return accepted


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: TCP_NODELAY avoids a 40 ms stall per instance."""
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int,
    files: list[Path],
    options: tuple[str, ...] = (),
    called_ae: str = "DICOMNODE",
    calling_ae: str = "STORESCU",
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK ``storescu [options] 127.0.0.1 port files...``."""
    exe = shutil.which("storescu")
    assert exe, "storescu not installed"
    return subprocess.run(
        [exe, "-aec", called_ae, "-aet", calling_ae, *options, "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=600, check=False,
    )  # fmt: skip
