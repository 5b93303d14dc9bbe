"""atomic_write: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import pytest

from dicomnode.index.durable import atomic_write, make_dirs


def test_atomic_write_creates_the_missing_folders_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "results" / "job-1" / "sr-1.2.dcm"

    atomic_write(path, b"DICM", tmp_path)

    assert path.read_bytes() == b"DICM"
    assert os.listdir(path.parent) == [path.name]  # no temporary file left


def test_atomic_write_replaces_a_file_with_what_a_writer_streams(tmp_path: Path) -> None:
    path = tmp_path / "masks.npz"
    path.write_bytes(b"old")

    def write(handle: BinaryIO) -> None:
        handle.write(b"new ")
        handle.write(b"masks")

    atomic_write(path, write, tmp_path)

    assert path.read_bytes() == b"new masks"
    assert os.listdir(tmp_path) == ["masks.npz"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "masks.npz"
    path.write_bytes(b"old")

    def write(handle: BinaryIO) -> None:
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, write, tmp_path)

    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["masks.npz"]


def test_atomic_write_leaves_permissions_to_the_umask(tmp_path: Path) -> None:
    # Workers and the sender may run as different users on a shared data folder.
    path = tmp_path / "out.dcm"
    previous = os.umask(0o022)
    try:
        atomic_write(path, b"x", tmp_path)
    finally:
        os.umask(previous)

    assert path.stat().st_mode & 0o777 == 0o644


def test_make_dirs_names_each_folder_whose_entries_changed(tmp_path: Path) -> None:
    target = tmp_path / "instances" / "1.2" / "1.2.3"

    changed = make_dirs(target, tmp_path)

    assert target.is_dir()
    assert changed == {tmp_path, tmp_path / "instances", tmp_path / "instances" / "1.2", target}
    assert make_dirs(target, tmp_path) == {target}  # nothing new: only the target itself
