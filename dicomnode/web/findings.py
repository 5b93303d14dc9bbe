"""Reading results without numpy: a report's findings, and the error previews raise.

The web server's own process never imports numpy (``dicomnode.cli.process``): the
study page reads an SR's findings here, in that process, while pixels are decoded
and drawn by :mod:`dicomnode.web.previews` in the renderer's child process
(:mod:`dicomnode.web.render`). :mod:`dicomnode.web.previews` re-exports all of this.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.errors import DicomnodeError
from dicomnode.web._sr_content import (
    FindingRow,
    ImageRegion,
    Measurement,
    SegmentReference,
    finding_rows,
)

__all__ = [
    "READ_ERRORS",
    "FindingRow",
    "ImageRegion",
    "Measurement",
    "PreviewError",
    "SegmentReference",
    "read_dicom",
    "sr_findings",
]

#: What pydicom raises on a malformed file or one it cannot decode (a missing codec
#: plugin is a RuntimeError; a too deeply nested sequence a RecursionError).
READ_ERRORS = (
    InvalidDicomError, EOFError, ValueError, TypeError, KeyError, AttributeError,
    IndexError, struct.error, RecursionError,
)  # fmt: skip


class PreviewError(DicomnodeError, ValueError):
    """A file cannot be previewed; the message names what it lacks, no values."""


def read_dicom(path: str | os.PathLike[str], what: str, **kwargs: Any) -> Dataset:
    """Read a DICOM file; :class:`PreviewError` in our words if it cannot be."""
    try:
        return dcmread(path, **kwargs)
    except READ_ERRORS as exc:
        # Our own sentence: the library's may quote element values.
        raise PreviewError(f"{what} {Path(path).name} is not a readable DICOM file") from exc


def sr_findings(sr_path: str | os.PathLike[str]) -> list[FindingRow]:
    """One row per measurement group of a TID 1500 Measurement Report.

    Parameters
    ----------
    sr_path
        The SR file (Enhanced, Comprehensive or Comprehensive 3D SR).

    Returns
    -------
    list of FindingRow
        In report order; empty when the report has no measurement group. Only
        content items are read: no patient or study attribute is returned.

    Raises
    ------
    PreviewError
        If the file is not a readable SR document.
    """
    ds = read_dicom(sr_path, "report", stop_before_pixels=True)
    if ds.get("ValueType") != "CONTAINER" or "ContentSequence" not in ds:
        raise PreviewError(f"{Path(sr_path).name} is not an SR document (no root CONTAINER)")
    try:
        return finding_rows(ds)
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise PreviewError(f"report {Path(sr_path).name} has a malformed content item") from exc
