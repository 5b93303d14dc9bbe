"""Attributes the node derives from DICOM headers and records in the index."""

from __future__ import annotations

import math

__all__ = ["image_plane"]


def image_plane(orientation: object) -> str | None:
    """AXIAL, CORONAL, SAGITTAL or OBLIQUE from ImageOrientationPatient (PS3.3 C.7.6.2).

    The plane is the patient axis the slice normal (row x column direction) is closest
    to; more than about 25 degrees away from every axis is OBLIQUE. Plain Python: the
    receiving process has no other use for numpy.
    """
    if not isinstance(orientation, list | tuple) or len(orientation) != 6:
        return None
    try:
        rx, ry, rz, cx, cy, cz = (float(v) for v in orientation)
    except (TypeError, ValueError):
        return None
    normal = (abs(ry * cz - rz * cy), abs(rz * cx - rx * cz), abs(rx * cy - ry * cx))
    length = math.sqrt(sum(n * n for n in normal))
    if not math.isfinite(length) or length == 0:
        return None
    axis = max(range(3), key=lambda i: normal[i])
    if normal[axis] / length < 0.9:
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]
