"""C-ECHO and C-STORE SCU: send files to a peer over one association.

Presentation contexts are exactly the (SOP class, transfer syntax) pairs of the
files sent, read from their File Meta; datasets stream from disk unchanged.
:func:`store_files` yields one classified :class:`StoreResult` per file, for
``dicomnode send`` (:func:`send_files`) and for the delivery sender alike.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from dicomnode import __version__
from dicomnode.config import PeerSettings
from dicomnode.errors import SendError
from dicomnode.send._requestor import guard_responses
from dicomnode.sockets import close_sockets_always
from dicomnode.uids import implementation_identity

__all__ = [
    "SendReport",
    "StoreOutcome",
    "StoreResult",
    "classify_status",
    "collect_files",
    "echo_peer",
    "send_files",
    "store_files",
]

logger = logging.getLogger(__name__)

#: PS3.8 9.3.2.2: at most 128 presentation contexts per association.
_MAX_CONTEXTS = 128
#: Seconds to wait for a TCP connection to a peer.
CONNECT_TIMEOUT = 10.0


class StoreOutcome(enum.StrEnum):
    """What one C-STORE attempt means for the file sent (STYLE: errors and statuses)."""

    SENT = "sent"  # Success
    WARNING = "warning"  # Warning: the peer kept the instance, so it counts as sent
    RETRY = "retry"  # 0xA7xx (Out of Resources) or a network error: try again later
    FAILED = "failed"  # any other failure: permanent, do not retry


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The outcome of sending one file."""

    path: Path
    outcome: StoreOutcome
    #: The C-STORE response status; None when there was no response.
    status: int | None = None
    #: Why it failed, or the peer's comment on a warning; no patient data.
    error: str | None = None


def classify_status(code: int) -> StoreOutcome:
    """Classify a C-STORE response status with pynetdicom's ``code_to_category``.

    PS3.4 B.2.3: 0xA7xx is Refused: Out of Resources, worth retrying; every other
    failure (0xA9xx Data Set does not match SOP Class, 0xCxxx Cannot understand, ...)
    is permanent.
    """
    category = code_to_category(code)
    if category == "Success":
        return StoreOutcome.SENT
    if category == "Warning":
        return StoreOutcome.WARNING
    if code & 0xFF00 == 0xA700:
        return StoreOutcome.RETRY
    return StoreOutcome.FAILED


@dataclass
class SendReport:
    """What a send did, per file."""

    sent: int = 0
    warnings: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders (recursively) into files, in a stable order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            raise SendError(f"{path}: no such file or folder")
    return out


def _ae(calling_ae: str) -> AE:
    close_sockets_always()  # a refused connect must not leak its socket
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = CONNECT_TIMEOUT
    # Peers see dicomnode in the association, not pynetdicom (PS3.7 D.3.3.2).
    ae.implementation_class_uid, ae.implementation_version_name = implementation_identity(
        __version__
    )
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 60
    return ae


def echo_peer(peer: PeerSettings, calling_ae: str) -> int:
    """C-ECHO ``peer``; return the status, raise SendError if unreachable."""
    ae = _ae(calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=_tls_args(peer))
    if not assoc.is_established:
        raise SendError(
            f"cannot associate with {peer.name} ({peer.ae_title}@{peer.host}:{peer.port})"
        )
    guard_responses(assoc)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status:
        raise SendError(f"{peer.name}: no C-ECHO response")
    return int(status.Status)


Item = tuple[Path, str, str]  # path, SOP class UID, transfer syntax UID


def _metas(files: Sequence[Path]) -> Iterator[Item | StoreResult]:
    for path in files:
        try:
            meta = read_file_meta_info(path)
            yield path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            yield StoreResult(path, StoreOutcome.FAILED, error=f"not a DICOM file: {exc}")


def _groups(items: list[Item]) -> Iterator[tuple[list[Item], list[tuple[str, str]]]]:
    """Split items into groups of at most 128 (SOP class, transfer syntax) pairs."""
    pending = items
    while pending:
        contexts: list[tuple[str, str]] = []
        batch: list[Item] = []
        rest: list[Item] = []
        for item in pending:
            pair = (item[1], item[2])
            if pair not in contexts:
                if len(contexts) == _MAX_CONTEXTS:
                    rest.append(item)
                    continue
                contexts.append(pair)
            batch.append(item)
        yield batch, contexts
        pending = rest


def store_files(
    files: Sequence[Path], peer: PeerSettings, calling_ae: str
) -> Iterator[StoreResult]:
    """C-STORE each file to ``peer``, one association per group of 128 contexts.

    Yields one classified result per file, in the order sent (unreadable files
    first). Nothing raises: an association that cannot be made or that is lost
    turns the files it should have carried into ``RETRY`` results.
    """
    items: list[Item] = []
    for meta in _metas(files):
        if isinstance(meta, StoreResult):
            yield meta
        else:
            items.append(meta)
    # Stream each dataset from its file as it is, never decoded (docs/receive.md, docs/outputs.md).
    _config.STORE_SEND_CHUNKED_DATASET = True
    for batch, contexts in _groups(items):
        yield from _store_batch(batch, contexts, peer, calling_ae)


def _unreachable(peer: PeerSettings) -> str | None:
    """Why a TCP connection to ``peer`` cannot be made, or None when it can.

    pynetdicom 3.0.4 leaks its socket when the connection is refused, so a plain
    socket checks first (a peer that is down is the common case while retrying).
    """
    try:
        socket.create_connection((peer.host, peer.port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        return f"cannot connect to {peer.host}:{peer.port}: {exc.strerror or exc}"
    return None


def _tls_args(peer: PeerSettings) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for ``peer`` (TLS 1.2+, certificate checked); None: TCP.

    Raises SendError when a TLS file cannot be loaded.
    """
    if not peer.tls:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=peer.tls_ca or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if peer.tls_certificate:
            context.load_cert_chain(peer.tls_certificate, peer.tls_private_key)
    except (OSError, ssl.SSLError) as exc:
        raise SendError(
            f"{peer.name}: cannot load its TLS files: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    return context, peer.tls_server_name or peer.host


def _association_error(assoc: object, peer: PeerSettings) -> str:
    if assoc.is_rejected:  # type: ignore[attr-defined]
        return f"association rejected by {peer.ae_title}@{peer.host}:{peer.port}"
    return f"association with {peer.ae_title}@{peer.host}:{peer.port} failed (aborted)"


def _store_batch(
    batch: list[Item], contexts: list[tuple[str, str]], peer: PeerSettings, calling_ae: str
) -> Iterator[StoreResult]:
    reason = _unreachable(peer)
    assoc = None
    if reason is None:
        ae = _ae(calling_ae)
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, syntax)
        try:
            tls_args = _tls_args(peer)
        except SendError as exc:
            reason = str(exc)
        else:
            assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
            if not assoc.is_established:
                reason = _association_error(assoc, peer)
            else:
                guard_responses(assoc)
    if assoc is None or reason is not None:
        logger.warning(
            "peer unreachable",
            extra={"action": "peer_unreachable", "peer": peer.name, "ae_title": peer.ae_title,
                   "files": len(batch), "error": reason},
        )  # fmt: skip
        for path, _, _ in batch:
            yield StoreResult(path, StoreOutcome.RETRY, error=reason)
        return
    try:
        for path, _, _ in batch:
            yield _store_one(assoc, path)
    finally:
        if assoc.is_established:
            assoc.release()


def _store_one(assoc: object, path: Path) -> StoreResult:
    if not assoc.is_established:  # type: ignore[attr-defined]
        return StoreResult(path, StoreOutcome.RETRY, error="association lost")
    try:
        status = assoc.send_c_store(path)  # type: ignore[attr-defined]
    except ValueError as exc:
        # No accepted presentation context for this SOP class and transfer syntax:
        # the peer refuses it on every association, so retrying cannot help.
        return StoreResult(path, StoreOutcome.FAILED, error=f"cannot send: {exc}"[:500])
    except (OSError, AttributeError) as exc:
        return StoreResult(path, StoreOutcome.FAILED, error=f"cannot send: {exc}"[:500])
    if not status or "Status" not in status:
        error = "no response (association aborted or timed out)"
        return StoreResult(path, StoreOutcome.RETRY, error=error)
    code = int(status.Status)
    outcome = classify_status(code)
    comment = str(status.get("ErrorComment", "")) or None
    if outcome is StoreOutcome.SENT:
        return StoreResult(path, outcome, code)
    if outcome is StoreOutcome.WARNING:
        return StoreResult(path, outcome, code, f"warning 0x{code:04X} {comment or ''}".strip())
    return StoreResult(path, outcome, code, f"status 0x{code:04X} {comment or ''}".strip())


def send_files(
    files: list[Path],
    peer: PeerSettings,
    calling_ae: str,
    progress: Callable[[int], None] | None = None,
) -> SendReport:
    """C-STORE every file to ``peer``; warnings count as sent.

    Files are grouped so each association proposes at most 128 contexts.
    """
    report = SendReport()
    for result in store_files(files, peer, calling_ae):
        if result.outcome is StoreOutcome.SENT:
            report.sent += 1
        elif result.outcome is StoreOutcome.WARNING:
            report.sent += 1
            report.warnings += 1
        else:
            report.failed.append((result.path, result.error or result.outcome.value))
        if progress:
            progress(1)
    return report
