"""Test certificates for DICOM TLS, made with the ``openssl`` command line tool."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certificates", "client_context", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    """A test CA, a server certificate for 127.0.0.1 / localhost and a client one."""

    ca: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _issue(folder: Path, name: str, ca: Path, ca_key: Path, extensions: str) -> tuple[Path, Path]:
    key, request, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(extensions, encoding="ascii")
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
             "-out", request, "-subj", f"/CN={name}")  # fmt: skip
    _openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-sha256", "-extfile", ext)  # fmt: skip
    return cert, key


def make_certificates(folder: Path) -> Certificates:
    """Create the CA and both certificates in ``folder`` (valid for two days)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
             "-days", "2", "-subj", "/CN=dicomnode test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    server_cert, server_key = _issue(
        folder, "server", ca, ca_key,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    client_cert, client_key = _issue(folder, "client", ca, ca_key, "extendedKeyUsage=clientAuth\n")
    return Certificates(ca, server_cert, server_key, client_cert, client_key)


def client_context(certs: Certificates, with_certificate: bool = False) -> ssl.SSLContext:
    """A client context trusting the test CA, optionally presenting the client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    if with_certificate:
        context.load_cert_chain(certs.client_certificate, certs.client_key)
    return context
