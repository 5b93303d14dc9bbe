"""Synthetic four-view screening mammograms where two views disambiguate one.

Each breast is imaged cranio-caudal (CC) and medio-lateral oblique (MLO), as in
screening. The anatomy is drawn in millimetres on a 256 x 208 mm field: a breast
outline against a black background with a darker skin rim, fibroglandular tissue made
of thresholded 1/f^3 noise, a nipple at the anterior-most point, and on the MLO the
pectoral muscle in the upper corner by the chest wall.

**Why correlation across views matters here.** A *real* lesion is a 3D object, so it
projects into both views of its breast at the same distance from the nipple (the
radiologist's triangulation rule), with the same kind and a similar size and
contrast; only its angle around the nipple differs between CC and MLO. Overlapping
normal tissue makes *summation* pseudo-lesions, and dust or skin make one-view
artefacts: these appear in one view only. The generator draws pseudo-lesions from
exactly the same shapes and parameter ranges as the real lesions, so one view alone
cannot tell them apart; the pair of views can.

Findings per breast (when ``finding`` is None, drawn independently per breast):

* ``normal`` (50 %): no lesion.
* ``benign`` (25 %): one round circumscribed mass (segment type SCT Mass).
* ``suspicious`` (25 %): a spiculated mass (50 % of suspicious; SCT Spiculated
  lesion), a microcalcification cluster (30 %; SCT Calcification Cluster) or a
  spiculated mass with a calcification cluster on it (20 %; both segments).

Every breast, whatever its finding, has 0 (35 %), 1 (45 %) or 2 (20 %) one-view
pseudo-lesions: round 40 %, spiculated 35 %, calcification-like 25 %.

Images follow PS3.3 A.26 (Digital Mammography X-Ray Image, For Presentation) with
PatientOrientation as in PS3.3 C.8.11.7.1.2 (``A\\R`` for L CC: the nipple towards
the right of the image, lateral at the top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicomnode.models.api import SegmentLabel
from dicomnode.models.codes import (
    CALCIFICATION_CLUSTER,
    MASS,
    MORPHOLOGICALLY_ABNORMAL,
    SPICULATED_LESION,
)
from dicomnode.synth.projection import (
    UID_NAMESPACE,
    Blob,
    Grid,
    ImageHeader,
    add_code_sequence,
    build_projection_dataset,
    draw_blob,
    power_law_noise,
    to_stored,
)
from dicomnode.uids import derive_uid

__all__ = ["MG_VIEWS", "MgStudy", "build_mg_study"]

#: View names, in the order of the study's series numbers.
MG_VIEWS: tuple[str, ...] = ("L-CC", "L-MLO", "R-CC", "R-MLO")

FINDINGS = ("normal", "benign", "suspicious")
_FINDING_P = (0.5, 0.25, 0.25)

# Field of view in millimetres (rows, columns): the anatomy does not change with size.
_FIELD_MM = (256.0, 208.0)

# Lesion kinds and their parameter ranges (radius mm, contrast on the 0-1 scale).
_RADIUS = {"round": (5.0, 11.0), "spiculated": (6.0, 10.0), "calcifications": (4.0, 9.0)}
_CONTRAST = {"round": (0.10, 0.17), "spiculated": (0.11, 0.18), "calcifications": (0.35, 0.55)}
_PSEUDO_KINDS = ("round", "spiculated", "calcifications")
_PSEUDO_KIND_P = (0.40, 0.35, 0.25)
_PSEUDO_COUNT_P = (0.35, 0.45, 0.20)
# Two pseudo-lesions in different views are kept this far apart in nipple distance,
# so that they never mimic one real lesion.
_PSEUDO_SEPARATION_MM = 25.0

_SEGMENT_NAMES = {
    "round": ("mass", MASS),
    "spiculated": ("spiculated lesion", SPICULATED_LESION),
    "calcifications": ("calcification cluster", CALCIFICATION_CLUSTER),
}

# PS3.3 C.8.11.7.1.2 patient orientation of the four standard views.
_ORIENTATION = {"L-CC": "A\\R", "R-CC": "P\\L", "L-MLO": "A\\FR", "R-MLO": "P\\FL"}
# CID 4014 view codes.
_VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}

# Random streams.
_FINDING_STREAM, _BREAST_STREAM, _TEXTURE_STREAM, _LESION_STREAM = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class MgStudy:
    """A synthetic screening mammogram and its ground truth.

    Attributes
    ----------
    study_instance_uid, patient_id
        Identify the study (synthetic values).
    findings
        ``"L"``/``"R"`` -> ``"normal"``, ``"benign"`` or ``"suspicious"``.
    images
        View name (:data:`MG_VIEWS`) -> Digital Mammography X-Ray Image (For
        Presentation) dataset, each in its own series, with File Meta Information.
    masks
        View name -> boolean array (labels, 1, rows, columns): the real lesions only,
        one plane per entry of ``truth_labels``; a plane is empty on the views of the
        other breast.
    truth_labels
        One segment label per real lesion, numbered from 1 (category Morphologically
        abnormal structure; type Mass, Spiculated lesion or Calcification Cluster).
    """

    study_instance_uid: str
    patient_id: str
    findings: dict[str, str]
    images: dict[str, Dataset]
    masks: dict[str, npt.NDArray[np.bool_]]
    truth_labels: tuple[SegmentLabel, ...]


@dataclass(frozen=True, slots=True)
class _Shape:
    """A breast's outline on one view, millimetres: chest wall at x = 0."""

    depth: float  # chest wall to nipple
    nipple_y: float
    up: float  # semi-axis above the nipple
    down: float  # semi-axis below the nipple
    pectoral: tuple[float, float] | None  # (width at top, height at chest wall), MLO only

    def rho(
        self, y: npt.NDArray[np.float32], x: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Elliptic radius: < 1 inside the breast."""
        semi = np.where(y < self.nipple_y, self.up, self.down).astype(np.float32)
        return np.sqrt((x / self.depth) ** 2 + ((y - self.nipple_y) / semi) ** 2)

    def point(self, distance: float, angle: float) -> tuple[float, float]:
        """(y, x) of the point `distance` mm from the nipple at `angle` radians."""
        return (self.nipple_y + distance * math.sin(angle), self.depth - distance * math.cos(angle))

    def holds(self, y: float, x: float, margin: float) -> bool:
        """Whether (y, x) is inside the breast by `margin` mm and off the pectoral muscle."""
        yy, xx = np.full((1, 1), y, dtype=np.float32), np.full((1, 1), x, dtype=np.float32)
        inside = float(self.rho(yy, xx)[0, 0]) < 1.0 - margin / self.depth and x > margin
        if self.pectoral is not None:
            width, height = self.pectoral
            inside = inside and x > width * (1.0 - y / height) + margin
        return inside


@dataclass(frozen=True, slots=True)
class _Lesion:
    """A lesion drawn on one view: its blob and its segment label, if real."""

    blob: Blob
    label: int | None


def build_mg_study(
    seed: int,
    *,
    rows: int = 512,
    columns: int = 416,
    patient_id: str | None = None,
    study_instance_uid: str | None = None,
    finding: str | None = None,
) -> MgStudy:
    """Build a synthetic four-view screening mammogram.

    Parameters
    ----------
    seed
        Non-negative seed; the same arguments always give the same bytes.
    rows, columns
        Image size in pixels; the 256 x 208 mm field is fixed, so the size sets the
        ImagerPixelSpacing (0.5 mm by default).
    patient_id
        PatientID; by default ``SYNTH-MG-<seed>``.
    study_instance_uid
        By default one derived from the seed and the patient ID.
    finding
        None draws each breast's finding from the seed (normal 50 %, benign 25 %,
        suspicious 25 %). ``"normal"`` makes both breasts normal; ``"benign"`` or
        ``"suspicious"`` gives that finding to one breast (chosen by the seed) and
        leaves the other normal.

    Returns
    -------
    MgStudy
        The four images, the findings and the real lesions' masks.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    _check(seed, rows, columns, finding)
    pid = patient_id or f"SYNTH-MG-{seed:06d}"
    study_uid = study_instance_uid or derive_uid(UID_NAMESPACE, "mg-study", str(seed), pid)
    findings = _draw_findings(seed, finding)
    grid = Grid(rows, columns, (_FIELD_MM[0] / rows, _FIELD_MM[1] / columns))
    lesions, labels = _plan_lesions(seed, findings)
    images: dict[str, Dataset] = {}
    masks: dict[str, npt.NDArray[np.bool_]] = {}
    for number, view in enumerate(MG_VIEWS, start=1):
        shape = _breast_shapes(seed, view[0])[view[2:]]
        pixels, view_masks = _render_view(seed, view, grid, shape, lesions[view], len(labels))
        header = _header(view, number, grid, pid, study_uid, seed)
        images[view] = _mg_dataset(header, view, to_stored(pixels))
        masks[view] = view_masks
    return MgStudy(study_uid, pid, findings, images, masks, labels)


def _check(seed: int, rows: int, columns: int, finding: str | None) -> None:
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    for name, size in (("rows", rows), ("columns", columns)):
        if not 64 <= size <= 65535:
            raise ValueError(f"{name} must be between 64 and 65535, got {size}")
    if finding is not None and finding not in FINDINGS:
        raise ValueError(f"finding must be one of {FINDINGS} or None, got {finding!r}")


def _draw_findings(seed: int, finding: str | None) -> dict[str, str]:
    rng = np.random.default_rng([seed, _FINDING_STREAM])
    if finding is None:
        drawn = rng.choice(len(FINDINGS), size=2, p=_FINDING_P)
        return {"L": FINDINGS[int(drawn[0])], "R": FINDINGS[int(drawn[1])]}
    if finding == "normal":
        return {"L": "normal", "R": "normal"}
    side = "L" if rng.uniform() < 0.5 else "R"
    return {"L": finding if side == "L" else "normal", "R": finding if side == "R" else "normal"}


def _breast_shapes(seed: int, side: str) -> dict[str, _Shape]:
    """The CC and MLO outline of one breast; the MLO is a little deeper and taller."""
    rng = np.random.default_rng([seed, _BREAST_STREAM, ord(side)])
    depth = float(rng.uniform(105.0, 145.0))
    half = float(rng.uniform(72.0, 92.0))
    cc = _Shape(depth, float(rng.uniform(118.0, 138.0)), half, half, None)
    pectoral = (float(rng.uniform(35.0, 60.0)), float(rng.uniform(90.0, 140.0)))
    mlo = _Shape(
        depth + float(rng.uniform(0.0, 10.0)),
        float(rng.uniform(140.0, 160.0)),
        float(rng.uniform(125.0, 145.0)),
        float(rng.uniform(80.0, 95.0)),
        pectoral,
    )
    return {"CC": cc, "MLO": mlo}


def _plan_lesions(
    seed: int, findings: dict[str, str]
) -> tuple[dict[str, list[_Lesion]], tuple[SegmentLabel, ...]]:
    """Place the real lesions (both views) and the pseudo-lesions (one view) per breast."""
    lesions: dict[str, list[_Lesion]] = {view: [] for view in MG_VIEWS}
    labels: list[SegmentLabel] = []
    for side in ("L", "R"):
        rng = np.random.default_rng([seed, _LESION_STREAM, ord(side)])
        shapes = _breast_shapes(seed, side)
        real_kinds = _real_kinds(findings[side], rng)
        distance = _nipple_distance(rng, shapes)
        for kind in real_kinds:
            name, code = _SEGMENT_NAMES[kind]
            labels.append(SegmentLabel(len(labels) + 1, name, MORPHOLOGICALLY_ABNORMAL, code))
        for view, blobs in _real_blobs(rng, shapes, real_kinds, distance).items():
            lesions[f"{side}-{view}"] += [
                _Lesion(blob, len(labels) - len(real_kinds) + k + 1) for k, blob in enumerate(blobs)
            ]
        for view, blob in _pseudo_blobs(rng, shapes):
            lesions[f"{side}-{view}"].append(_Lesion(blob, None))
    return lesions, tuple(labels)


def _real_kinds(finding: str, rng: np.random.Generator) -> tuple[str, ...]:
    if finding == "normal":
        return ()
    if finding == "benign":
        return ("round",)
    pick = rng.uniform()
    if pick < 0.5:
        return ("spiculated",)
    return ("calcifications",) if pick < 0.8 else ("spiculated", "calcifications")


def _nipple_distance(rng: np.random.Generator, shapes: dict[str, _Shape]) -> float:
    depth = min(shape.depth for shape in shapes.values())
    return float(rng.uniform(25.0, 0.8 * depth))


def _place(
    rng: np.random.Generator, shape: _Shape, distance: float, margin: float
) -> tuple[float, float]:
    """A point at `distance` mm from the nipple inside the breast (rejection sampling)."""
    for _ in range(200):
        y, x = shape.point(distance, float(rng.uniform(-1.2, 1.2)))
        if shape.holds(y, x, margin):
            return y, x
    # Straight behind the nipple is always inside for distances below the depth.
    return shape.point(min(distance, shape.depth - margin), 0.0)


def _real_blobs(
    rng: np.random.Generator,
    shapes: dict[str, _Shape],
    kinds: tuple[str, ...],
    distance: float,
) -> dict[str, list[Blob]]:
    """The real lesions on both views: same kind, distance, size and contrast (+- jitter)."""
    out: dict[str, list[Blob]] = {"CC": [], "MLO": []}
    if not kinds:
        return out
    radius = {k: float(rng.uniform(*_RADIUS[k])) for k in kinds}
    contrast = {k: float(rng.uniform(*_CONTRAST[k])) for k in kinds}
    for view, shape in shapes.items():
        jitter = float(rng.normal(0.0, 2.0))
        centre = _place(rng, shape, distance + jitter, margin=12.0)
        for kind in kinds:
            offset = (0.0, 0.0) if len(kinds) == 1 or kind == "spiculated" else (2.0, -2.0)
            out[view].append(
                Blob(
                    kind,
                    (centre[0] + offset[0], centre[1] + offset[1]),
                    radius[kind] * float(rng.uniform(0.92, 1.08)),
                    contrast[kind] * float(rng.uniform(0.9, 1.1)),
                    int(rng.integers(2**31)),
                )
            )
    return out


def _pseudo_blobs(rng: np.random.Generator, shapes: dict[str, _Shape]) -> list[tuple[str, Blob]]:
    """One-view pseudo-lesions, drawn from the same shapes and ranges as real ones."""
    count = int(rng.choice(3, p=_PSEUDO_COUNT_P))
    placed: list[tuple[str, float]] = []
    out: list[tuple[str, Blob]] = []
    for _ in range(count):
        view = "CC" if rng.uniform() < 0.5 else "MLO"
        distance = _nipple_distance(rng, shapes)
        for _attempt in range(50):
            if all(v == view or abs(distance - d) > _PSEUDO_SEPARATION_MM for v, d in placed):
                break
            distance = _nipple_distance(rng, shapes)
        else:
            continue
        kind = _PSEUDO_KINDS[int(rng.choice(3, p=_PSEUDO_KIND_P))]
        centre = _place(rng, shapes[view], distance, margin=12.0)
        blob = Blob(
            kind,
            centre,
            float(rng.uniform(*_RADIUS[kind])),
            float(rng.uniform(*_CONTRAST[kind])),
            int(rng.integers(2**31)),
        )
        placed.append((view, distance))
        out.append((view, blob))
    return out


def _render_view(
    seed: int,
    view: str,
    grid: Grid,
    shape: _Shape,
    lesions: list[_Lesion],
    label_count: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Draw one view (chest wall at column 0) and mirror right breasts (PS3.3 C.8.11.7)."""
    rng = np.random.default_rng([seed, _TEXTURE_STREAM, MG_VIEWS.index(view)])
    image = _tissue(grid, shape, rng)
    masks = np.zeros((label_count, 1, grid.rows, grid.columns), dtype=np.bool_)
    for lesion in lesions:
        drawn = draw_blob(image, grid, lesion.blob)
        if lesion.label is not None:
            masks[lesion.label - 1, 0] |= drawn
    image += np.float32(0.006) * rng.standard_normal(image.shape).astype(np.float32)
    if view.startswith("R"):
        # Right breasts face the other way: chest wall on the right (P\L, P\FL).
        return image[:, ::-1].copy(), masks[..., ::-1].copy()
    return image, masks


def _tissue(grid: Grid, shape: _Shape, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Background, breast with skin fall-off, glandular texture, nipple, pectoral muscle."""
    y, x = grid.mm()
    rho = shape.rho(y, x)
    # Compressed thickness falls off over the outer ~10 % towards the skin line.
    thickness = np.sqrt(np.clip((1.0 - rho) / 0.1, 0.0, 1.0))
    gland_noise = power_law_noise(grid, rng, beta=3.0)
    fine = power_law_noise(grid, rng, beta=1.8)
    density = float(rng.uniform(0.3, 0.8))
    centrality = np.exp(-(((x / shape.depth) - 0.45) ** 2) / 0.12 - (rho**2) * 0.6)
    gland = 1.0 / (1.0 + np.exp(-(gland_noise - 0.3) * 3.0)) * centrality
    tissue = 0.30 + 0.22 * density * gland + 0.015 * fine
    image = (0.02 + thickness * tissue).astype(np.float32)
    # The nipple: a small dense bump at the anterior-most point.
    nipple = (y - shape.nipple_y) ** 2 + (x - shape.depth + 1.5) ** 2 <= 4.5**2
    image[nipple] = np.maximum(image[nipple], 0.36)
    if shape.pectoral is not None:
        width, height = shape.pectoral
        inside = np.clip((width * (1.0 - y / height) - x) / 3.0, 0.0, 1.0)
        image += (0.22 * inside * (1.0 + 0.05 * fine)).astype(np.float32)
    out: npt.NDArray[np.float32] = image.astype(np.float32)
    return out


def _header(
    view: str, number: int, grid: Grid, patient_id: str, study_uid: str, seed: int
) -> ImageHeader:
    series_uid = derive_uid(UID_NAMESPACE, "mg-series", study_uid, view, str(seed), str(grid))
    return ImageHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        modality="MG",
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=derive_uid(UID_NAMESPACE, "mg-sop", series_uid),
        # One frame of reference per breast: its two views share the compression.
        frame_of_reference_uid=derive_uid(UID_NAMESPACE, "mg-frame", study_uid, view[0]),
        patient_id=patient_id,
        series_number=number,
        series_description=view.replace("-", " "),
        study_description="Synthetic screening mammogram",
        body_part="BREAST",
        spacing=grid.spacing,
    )


def _mg_dataset(header: ImageHeader, view: str, stored: npt.NDArray[np.uint16]) -> Dataset:
    """Add the Mammography Image and DX Anatomy / Positioning modules (PS3.3 C.8.11.7)."""
    ds = build_projection_dataset(header, stored)
    side, position = view.split("-")
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.ImageLaterality = side
    ds.ViewPosition = position
    ds.PatientOrientation = _ORIENTATION[view].split("\\")
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    add_code_sequence(ds, "AnatomicRegionSequence", "76752008", "SCT", "Breast")
    value, meaning = _VIEW_CODES[position]
    add_code_sequence(ds, "ViewCodeSequence", value, "SCT", meaning)
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = []
    return ds
