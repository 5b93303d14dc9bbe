"""Attributes the node derives from DICOM headers and records in the index."""

from __future__ import annotations

import numpy as np

__all__ = ["image_plane"]


def image_plane(orientation: object) -> str | None:
    """AXIAL, CORONAL, SAGITTAL or OBLIQUE from ImageOrientationPatient (PS3.3 C.7.6.2)."""
    if not isinstance(orientation, list | tuple) or len(orientation) != 6:
        return None
    try:
        values = np.asarray([float(v) for v in orientation], dtype=float)
    except (TypeError, ValueError):
        return None
    normal = np.abs(np.cross(values[:3], values[3:]))
    if not np.isfinite(normal).all() or normal.max() == 0:
        return None
    axis = int(normal.argmax())
    if normal[axis] / np.linalg.norm(normal) < 0.9:  # more than ~25 degrees off any axis
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]
