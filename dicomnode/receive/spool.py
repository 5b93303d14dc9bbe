"""Spool files: where pynetdicom streams an incoming C-STORE dataset.

With ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` set, pynetdicom writes each
incoming dataset to a ``tempfile.NamedTemporaryFile`` in its DUL thread before our
handler runs (memory stays flat whatever the instance size). Two things about that
file matter to a durable store, so we replace the factory pynetdicom calls:

* its folder must be on the same filesystem as the store, so the final rename is
  atomic: ours is ``data_dir/spool``, found from the AE serving the association;
* a failing ``write`` (disk full) would raise inside pynetdicom's DUL thread and
  abort the association; ours records the error and swallows the rest of the
  dataset so the handler can answer 0xA700 and remove the partial file.

We also hash the bytes as they arrive, so a stored file never has to be re-read to
be fingerprinted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages

__all__ = ["SpoolFile", "install_spool", "take_spool"]

logger = logging.getLogger(__name__)

_SPOOL_ATTR = "dicomnode_spool_dir"
_OPEN_ATTR = "dicomnode_open_spools"
_install_lock = threading.Lock()


class SpoolFile:
    """A write-only file that hashes what it receives and never raises on write.

    It offers the subset of ``NamedTemporaryFile`` that pynetdicom uses: ``name``,
    ``write()``, ``file.flush()`` and ``close()``.
    """

    def __init__(self, folder: Path) -> None:
        self._fd = -1
        self.error: OSError | None = None
        self.size = 0
        self._hash = hashlib.sha256()
        self.file = self  # pynetdicom calls ``self._data_set_file.file.flush()``
        # mkstemp gives a unique name with O_EXCL, mode 0600.
        fd, name = tempfile.mkstemp(suffix=".part", dir=folder)
        self._fd = fd
        self.name = name

    def write(self, data: bytes) -> int:
        """Append ``data``; after an error, drop it and remember the first error."""
        if self.error is not None:
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


def _spool_factory(*args: Any, **kwargs: Any) -> Any:
    # Called by pynetdicom's DUL thread as ``NamedTemporaryFile(delete=False, ...)``.
    # The DUL thread knows its association, whose AE carries our spool folder.
    assoc = getattr(threading.current_thread(), "assoc", None)
    ae = getattr(assoc, "ae", None)
    folder: Path | None = getattr(ae, _SPOOL_ATTR, None)
    if folder is None:
        return _original_factory(*args, **kwargs)
    spool = SpoolFile(folder)
    getattr(ae, _OPEN_ATTR)[spool.name] = spool
    return spool


_original_factory = dimse_messages.NamedTemporaryFile  # type: ignore[attr-defined]


def install_spool(ae: Any, folder: Path) -> None:
    """Make pynetdicom stream C-STORE datasets for ``ae`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    setattr(ae, _SPOOL_ATTR, folder)
    setattr(ae, _OPEN_ATTR, {})
    with _install_lock:
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = _spool_factory  # type: ignore[attr-defined]


def take_spool(ae: Any, path: os.PathLike[str] | str) -> SpoolFile | None:
    """Hand the spool file at ``path`` to the caller (the C-STORE handler)."""
    spools: dict[str, SpoolFile] = getattr(ae, _OPEN_ATTR, {})
    return spools.pop(os.fspath(path), None)
