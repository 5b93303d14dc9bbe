"""Keep a job's label masks as a file under ``data_dir/results`` (the job row keeps the rest).

The masks are the model's full-resolution output on the source grid; the output
writers (SEG, SC overlay) read them from here, and a rerun of the job replaces the
file. Written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicomnode.index.queries import job_folder

__all__ = ["load_masks", "masks_path", "save_masks"]


def masks_path(data_dir: Path, job_id: int) -> Path:
    """Where job ``job_id``'s masks live."""
    return job_folder(data_dir, job_id) / "masks.npz"


def save_masks(data_dir: Path, job_id: int, masks: Mapping[str, npt.NDArray[np.bool_]]) -> str:
    """Write the masks (view name -> bool array) and return the path relative to data_dir."""
    path = masks_path(data_dir, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        arrays = {name: np.asarray(m, dtype=bool) for name, m in masks.items()}
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return str(path.relative_to(data_dir))


def load_masks(data_dir: Path, relative: str) -> dict[str, npt.NDArray[np.bool_]]:
    """Read masks written by :func:`save_masks`."""
    with np.load(data_dir / relative) as data:
        return {name: data[name].astype(bool) for name in data.files}
