"""Spool files: where pynetdicom streams an incoming C-STORE dataset.

With ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` set, pynetdicom writes each
incoming dataset to a ``tempfile.NamedTemporaryFile`` in its DUL thread before our
handler runs (memory stays flat whatever the instance size). Two things about that
file matter to a durable store, so we replace the factory pynetdicom calls:

* its folder must be on the same filesystem as the store, so the final rename is
  atomic: ours is the receiving process's folder under ``data_dir/spool``
  (:meth:`~dicomnode.index.layout.DataLayout.spool_dir`), found from the AE serving
  the association;
* a failing ``write`` (disk full) would raise inside pynetdicom's DUL thread and
  abort the association; ours records the error and swallows the rest of the
  dataset so the handler can answer 0xA700 and remove the partial file.

pynetdicom starts each spool file with a File Meta Information header built as a
pydicom dataset (UID objects validated by regular expression, then encoded element
by element): about a third of its per-instance CPU time here. We write the same
bytes directly (:func:`file_meta_bytes`).

We also hash the bytes as they arrive, so a stored file never has to be re-read to
be fingerprinted. On Linux the handler asks the kernel to start writing the file
(``sync_file_range``) before it checks the dataset, so the fsync that follows
waits for less.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from dicomnode import __version__
from dicomnode.uids import implementation_identity

__all__ = [
    "SpoolFile",
    "discard_untaken",
    "file_meta_bytes",
    "install_spool",
    "open_spool",
    "take_spool",
]

logger = logging.getLogger(__name__)

#: Written in the File Meta of every received instance: the node wrote the file.
IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME = implementation_identity(__version__)

_SPOOL_ATTR = "dicomnode_spool_dir"
_OPEN_ATTR = "dicomnode_open_spools"
_MAX_ATTR = "dicomnode_max_instance_bytes"
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages, do not wait


def _load_sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


class SpoolFile:
    """A write-only file that hashes what it receives and never raises on write.

    It offers the subset of ``NamedTemporaryFile`` that pynetdicom uses: ``name``,
    ``write()``, ``file.flush()`` and ``close()``.
    """

    def __init__(self, folder: Path, max_bytes: int = 0) -> None:
        self._fd = -1
        self.error: OSError | None = None
        self.size = 0
        #: The most this file may hold (0: no limit); past it, the rest is dropped.
        self.max_bytes = max_bytes
        #: Whether more than ``max_bytes`` arrived (then nothing more was written).
        self.too_large = False
        self._hash = hashlib.sha256()
        self.file = self  # pynetdicom calls ``self._data_set_file.file.flush()``
        # mkstemp gives a unique name with O_EXCL, mode 0600.
        fd, name = tempfile.mkstemp(suffix=".part", dir=folder)
        self._fd = fd
        self.name = name

    def write(self, data: bytes) -> int:
        """Append ``data``; after an error, drop it and remember the first error."""
        if self.error is not None or self.too_large:
            return len(data)
        if self.max_bytes and self.size + len(data) > self.max_bytes:
            # Stop writing; the handler answers with a failure and removes the file.
            self.too_large = True
            return len(data)
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self.error = exc
            return len(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def start_writeback(self) -> None:
        """Ask the kernel to start writing the file to disk now (Linux; a hint only).

        Whatever the caller does next (checking the dataset) overlaps with the disk
        writes that :meth:`sync_and_close` would otherwise wait for from the start.
        A failed write-back shows up as an fsync error there.
        """
        if _sync_file_range is not None and self._fd >= 0 and self.error is None:
            _sync_file_range(self._fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # 0, 0: whole file

    def flush(self) -> None:
        """Nothing to do: writes go straight to the file descriptor."""

    def sync_and_close(self) -> None:
        """fsync the data and close; raises the first write error, if any."""
        if self.error is not None:
            self.close()
            raise self.error
        try:
            os.fsync(self._fd)
        finally:
            self.close()

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of everything written so far."""
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Close and delete the file."""
        self.close()
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass


def _element(group_element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    """One explicit VR little endian element with a 2-byte length."""
    if len(value) % 2:
        value += pad
    return struct.pack("<HH2sH", 0x0002, group_element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    # A UID longer than 64 characters is refused by the handler; clip it here so the
    # header stays encodable until then.
    return str(value).strip().encode("ascii", "replace")[:64]


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta Information group written before a received dataset.

    The same bytes as ``pydicom.filewriter.write_file_meta_info`` writes for
    ``pynetdicom.dsutils.create_file_meta`` with the same values and this node's
    implementation identity (tested).
    """
    elements = b"".join(
        (
            # (0002,0001) OB: 2 reserved bytes, then a 4-byte length.
            struct.pack("<HH2s2xI", 0x0002, 0x0001, b"OB", 2) + b"\x00\x01",
            _element(0x0002, b"UI", _uid(sop_class_uid), b"\x00"),
            _element(0x0003, b"UI", _uid(sop_instance_uid), b"\x00"),
            _element(0x0010, b"UI", _uid(transfer_syntax), b"\x00"),
            _element(0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID), b"\x00"),
            _element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" "),
        )
    )
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(elements)) + elements


def install_spool(ae: Any, folder: Path, max_instance_bytes: int = 0) -> None:
    """Make pynetdicom stream C-STORE datasets for ``ae`` into ``folder``.

    The patch that routes pynetdicom's temporary files here is applied by
    :func:`dicomnode.receive._patches.install`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    setattr(ae, _SPOOL_ATTR, folder)
    setattr(ae, _OPEN_ATTR, {})
    setattr(ae, _MAX_ATTR, max_instance_bytes)


def open_spool(ae: Any) -> SpoolFile | None:
    """A new spool file for an association of ``ae``; None if ``ae`` has no spool."""
    folder: Path | None = getattr(ae, _SPOOL_ATTR, None)
    if folder is None:
        return None
    spool = SpoolFile(folder, getattr(ae, _MAX_ATTR, 0))
    getattr(ae, _OPEN_ATTR)[spool.name] = spool
    return spool


def discard_untaken(ae: Any, spools: list[SpoolFile]) -> int:
    """Close and delete those of ``spools`` no handler has taken; how many there were."""
    opened: dict[str, SpoolFile] = getattr(ae, _OPEN_ATTR, {})
    count = 0
    for spool in spools:
        if opened.pop(spool.name, None) is not None:  # pop: the handler cannot take it now
            spool.discard()
            count += 1
    return count


def take_spool(ae: Any, path: os.PathLike[str] | str) -> SpoolFile | None:
    """Hand the spool file at ``path`` to the caller (the C-STORE handler)."""
    spools: dict[str, SpoolFile] = getattr(ae, _OPEN_ATTR, {})
    return spools.pop(os.fspath(path), None)
