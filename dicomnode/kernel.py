"""The shared kernel: the types the worker, the models and the outputs all speak.

A *shared kernel*, as domain-driven design names it: the small part of the model that
several parts of the node agree on and none owns. A model (:mod:`dicomnode.models`)
takes :class:`Volume` s and answers a :class:`ModelResult` of masks, probabilities and
:class:`Finding` s, labelled with :class:`SegmentLabel` s and :class:`ClassLabel` s
and their coded concepts (:class:`Code`); the output builders (:mod:`dicomnode.outputs`)
turn the same types into DICOM SEG, SR and Secondary Capture; the synthetic studies
(:mod:`dicomnode.synth`) label their ground truth with them. Living here, at the top
of the package, none of those libraries imports another to share them.

Model authors import these names from :mod:`dicomnode.models.api`, which re-exports
them beside the model interface.

Plain data: no I/O, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "ClassLabel",
    "Code",
    "Finding",
    "ModelResult",
    "Region",
    "SegmentLabel",
    "Volume",
]


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept (PS3.3 Code Sequence Macro): value, scheme and meaning.

    ``scheme`` is a Coding Scheme Designator such as ``SCT`` (SNOMED CT) or ``DCM``.
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for name in ("value", "scheme", "meaning"):
            text = getattr(self, name)
            if not text or len(text) > 64:
                raise ValueError(f"Code.{name} must have 1 to 64 characters, got {text!r}")


@dataclass(frozen=True, slots=True)
class SegmentLabel:
    """One segment a model draws (becomes a SEG segment).

    Attributes
    ----------
    number
        Segment number, 1 for the first label; masks are ordered by it.
    name
        Short label, e.g. ``lesion``.
    category, type
        Segmented Property Category and Type codes (PS3.16 CID 7150 / 7151).
    """

    number: int
    name: str
    category: Code
    type: Code


@dataclass(frozen=True, slots=True)
class ClassLabel:
    """One class a model scores, e.g. ``suspicious`` with its finding code."""

    name: str
    code: Code


@dataclass(frozen=True, slots=True)
class Volume:
    """A series (or one image) as an array with its patient geometry.

    Attributes
    ----------
    array
        ``float32`` array (slices, rows, columns), rescale slope/intercept applied
        (Hounsfield units for CT). A single 2D image has one slice. Colour images
        are converted to luminance.
    spacing
        (between slices, between rows, between columns), millimetres. The first is
        the slice spacing along the normal (SliceThickness, or 1.0 for one image).
    origin
        ImagePositionPatient of the first slice, or (0, 0, 0) when the image has none
        (projection radiography).
    orientation
        ImageOrientationPatient (row direction then column direction).
    sop_instance_uids, frame_numbers
        Per slice: the source instance and its 1-based frame number, so masks on
        this grid can be referenced back to the source images.
    series_instance_uid, frame_of_reference_uid
        Source series and its Frame of Reference (None when the header has none).
    """

    array: npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    sop_instance_uids: tuple[str, ...]
    frame_numbers: tuple[int, ...]
    series_instance_uid: str
    frame_of_reference_uid: str | None = None

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(
                f"Volume.array must be 3D (slices, rows, columns), got {self.array.ndim}D"
            )
        slices = self.array.shape[0]
        if len(self.sop_instance_uids) != slices or len(self.frame_numbers) != slices:
            raise ValueError(
                "Volume.sop_instance_uids and frame_numbers need one entry per slice "
                f"({slices}), got {len(self.sop_instance_uids)} and {len(self.frame_numbers)}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        s, r, c = self.array.shape
        return int(s), int(r), int(c)

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        """Unit slice normal, row direction x column direction."""
        row = np.asarray(self.orientation[:3], dtype=np.float64)
        col = np.asarray(self.orientation[3:], dtype=np.float64)
        n = np.cross(row, col)
        return n / np.linalg.norm(n)


@dataclass(frozen=True, slots=True)
class Region:
    """An image region: a box on one slice of one view, in pixel coordinates.

    ``row0, column0`` is the top-left pixel, ``row1, column1`` one past the
    bottom-right, as in numpy slicing.
    """

    view: str
    slice_index: int
    row0: int
    column0: int
    row1: int
    column1: int


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding: a coded concept, its probability, measurements and where it is.

    Attributes
    ----------
    code
        What was found (e.g. SCT "Mass").
    probability
        Model's probability for it, 0 to 1.
    laterality
        ``L``/``R`` for a finding in one breast or lung, else None.
    views
        Names of the views the finding was made on (every view for a study-level
        multi-view classification).
    segment_number
        The :class:`SegmentLabel` number whose mask holds this finding, if any.
    measurements
        Name -> (value, UCUM unit), e.g. ``{"volume": (523.6, "mm3")}``.
    regions
        Boxes locating the finding.
    """

    code: Code
    probability: float
    laterality: str | None = None
    views: tuple[str, ...] = ()
    segment_number: int | None = None
    measurements: Mapping[str, tuple[float, str]] = field(default_factory=dict)
    regions: tuple[Region, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Finding.probability must be in [0, 1], got {self.probability}")


@dataclass(frozen=True, slots=True)
class ModelResult:
    """What a model found in one study.

    Attributes
    ----------
    masks
        View name -> boolean array (labels, slices, rows, columns) on that view's
        source grid, one plane per :class:`SegmentLabel` in ``Model.labels`` order.
    probabilities
        Class name -> probability, at study level (``Model.classes``), plus any
        per-laterality entries a model documents (e.g. ``L:suspicious``).
    findings
        Coded findings with measurements and regions.
    summary
        Any further JSON-able values the job record should keep.
    """

    masks: Mapping[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    probabilities: Mapping[str, float] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    summary: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The result without its masks (those are stored as files), as JSON values."""
        return {
            "probabilities": {k: round(float(v), 6) for k, v in self.probabilities.items()},
            "findings": [_finding_json(f) for f in self.findings],
            "masks": {
                view: {"shape": list(mask.shape), "voxels": [int(m.sum()) for m in mask]}
                for view, mask in self.masks.items()
            },
            **dict(self.summary),
        }


def _finding_json(finding: Finding) -> dict[str, object]:
    return {
        "code": [finding.code.value, finding.code.scheme, finding.code.meaning],
        "probability": round(float(finding.probability), 6),
        "laterality": finding.laterality,
        "views": list(finding.views),
        "segment_number": finding.segment_number,
        "measurements": {k: [round(float(v), 3), u] for k, (v, u) in finding.measurements.items()},
        "regions": [
            [r.view, r.slice_index, r.row0, r.column0, r.row1, r.column1] for r in finding.regions
        ],
    }
