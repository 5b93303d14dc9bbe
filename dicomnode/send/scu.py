"""C-ECHO and C-STORE SCU: send files to a peer over one association.

Presentation contexts are exactly the (SOP class, transfer syntax) pairs of the
files sent, read from their File Meta; datasets stream from disk unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from dicomnode.config import PeerSettings
from dicomnode.errors import SendError

__all__ = ["SendReport", "collect_files", "echo_peer", "send_files"]

logger = logging.getLogger(__name__)

#: PS3.8 9.3.2.2: at most 128 presentation contexts per association.
_MAX_CONTEXTS = 128


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
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 60
    return ae


def echo_peer(peer: PeerSettings, calling_ae: str) -> int:
    """C-ECHO ``peer``; return the status, raise SendError if unreachable."""
    ae = _ae(calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise SendError(
            f"cannot associate with {peer.name} ({peer.ae_title}@{peer.host}:{peer.port})"
        )
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status:
        raise SendError(f"{peer.name}: no C-ECHO response")
    return int(status.Status)


def _metas(files: list[Path], report: SendReport) -> Iterator[tuple[Path, str, str]]:
    for path in files:
        try:
            meta = read_file_meta_info(path)
            yield path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            report.failed.append((path, f"not a DICOM file: {exc}"))


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
    pending = list(_metas(files, report))
    if progress and report.failed:
        progress(len(report.failed))
    _config.STORE_SEND_CHUNKED_DATASET = True
    while pending:
        contexts: list[tuple[str, str]] = []
        batch: list[tuple[Path, str, str]] = []
        for item in pending:
            pair = (item[1], item[2])
            if pair not in contexts:
                if len(contexts) == _MAX_CONTEXTS:
                    continue
                contexts.append(pair)
            batch.append(item)
        pending = [item for item in pending if item not in batch]
        _send_batch(batch, contexts, peer, calling_ae, report, progress)
    return report


def _send_batch(
    batch: list[tuple[Path, str, str]],
    contexts: list[tuple[str, str]],
    peer: PeerSettings,
    calling_ae: str,
    report: SendReport,
    progress: Callable[[int], None] | None,
) -> None:
    ae = _ae(calling_ae)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        reason = f"association with {peer.name} failed"
        report.failed.extend((path, reason) for path, _, _ in batch)
        if progress:
            progress(len(batch))
        return
    try:
        for path, _, _ in batch:
            _store_one(assoc, path, report)
            if progress:
                progress(1)
    finally:
        if assoc.is_established:
            assoc.release()


def _store_one(assoc: object, path: Path, report: SendReport) -> None:
    if not assoc.is_established:  # type: ignore[attr-defined]
        report.failed.append((path, "association lost"))
        return
    try:
        status = assoc.send_c_store(path)  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError) as exc:
        report.failed.append((path, f"cannot send: {exc}"))
        return
    if not status or "Status" not in status:
        report.failed.append((path, "no response (association aborted or timed out)"))
        return
    code = int(status.Status)
    category = code_to_category(code)
    if category == "Success":
        report.sent += 1
    elif category == "Warning":
        report.sent += 1
        report.warnings += 1
    else:
        comment = str(status.get("ErrorComment", ""))
        report.failed.append((path, f"status 0x{code:04X} {comment}".strip()))
