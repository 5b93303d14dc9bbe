"""Durable file writes under ``data_dir``: what survives a power cut once a call returns.

A file is durable when its bytes are on disk *and* the directory entry naming it is:
``fsync`` of the file alone leaves a freshly renamed name in the page cache, and a
power cut can take it back (ext4 and XFS both document this; POSIX leaves it open).
So every write that must not be lost goes temporary file (same folder, so the rename
is atomic) → write → fsync → rename → fsync of the folder, and any folder it had to
create is fsynced in its parent too.

:func:`atomic_write` does all of that for one file (a job's masks and outputs).
Receive does not use it: its files are already written and fsynced while streaming
into the spool, and its group commit renames many and fsyncs each folder once
(:mod:`dicomnode.receive.ingest`), with :func:`fsync_dir` and :func:`make_dirs` from
here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir", "make_dirs"]


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or new entry in it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, stop: Path) -> set[Path]:
    """Create ``path`` and its missing parents up to ``stop``; return the directories
    whose entries changed (each created folder's parent, and ``path`` itself).

    The caller fsyncs what is returned once its renames are done, so a folder created
    for a new file is as durable as the file.
    """
    changed: set[Path] = set()
    missing = []
    current = path
    while not current.exists() and current != stop:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it meanwhile: its entry is its to fsync
        changed.add(folder.parent)
    changed.add(path)
    return changed


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], object], root: Path) -> None:
    """Write a file so that a reader sees the old file or the whole new one, and the new
    one survives a power cut once this returns.

    Parameters
    ----------
    path
        The file to write (replaced if it exists).
    data
        The bytes, or a function that writes them to the open binary file it is given
        (for writers that stream, such as ``numpy.savez_compressed``).
    root
        The folder ``path`` lies under (``data_dir``): folders missing between the two
        are created and fsynced; ``root`` itself must exist.

    Raises
    ------
    OSError
        The file could not be written; no temporary file is left behind.
    """
    changed = make_dirs(path.parent, root)
    # A random suffix, not the pid alone: two threads of one worker may write at once.
    # Mode "x" (O_EXCL) never reuses a name, and leaves the permissions to the umask.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with temporary.open("xb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    for folder in sorted(changed, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)
