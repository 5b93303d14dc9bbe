"""Synthetic two-view chest radiographs (PA and left lateral) with and without a nodule.

The anatomy is drawn in millimetres on a 430 x 430 mm detector: body outline, lungs
with a diaphragm dome and vessel-like texture (1/f noise), heart, spine, ribs and
clavicles on the PA; on the lateral one superimposed lung field, the heart in front,
the spine behind and the sternum.

**Why two views matter here.** A real pulmonary nodule is a sphere in the lung, so it
appears on the PA and on the lateral at the same cranio-caudal height (the same row,
the detector heights being aligned), with a similar size and density. Nipple
shadows, vessels seen end-on and bone islands make round pseudo-nodules that appear
on one view only. Pseudo-nodules are drawn with the same shape and parameter ranges as
real nodules, so one view alone is ambiguous and the pair of views is not.

Findings: ``nodule`` (50 % when ``finding`` is None; one nodule, segment type SCT
Nodule, on both views) or ``normal``. Every study, whatever its finding, has 0
(35 %), 1 (45 %) or 2 (20 %) one-view pseudo-nodules (PA 60 %, lateral 40 %).

Images follow PS3.3 A.26 (Digital X-Ray Image, For Presentation); ImageLaterality is
``U`` (the chest is an unpaired region, PS3.3 C.8.11.5), PatientOrientation ``L\\F``
on the PA and ``P\\F`` on the lateral.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicomnode.models.api import SegmentLabel
from dicomnode.models.codes import MORPHOLOGICALLY_ABNORMAL, NODULE
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

__all__ = ["CXR_VIEWS", "CxrStudy", "build_cxr_study"]

#: View names, in the order of the study's series numbers.
CXR_VIEWS: tuple[str, ...] = ("PA", "LAT")

_FINDINGS = ("normal", "nodule")
_FIELD_MM = 430.0
_NODULE_RADIUS = (7.0, 14.0)
_NODULE_CONTRAST = (0.12, 0.20)
_PSEUDO_COUNT_P = (0.35, 0.45, 0.20)
_PSEUDO_SEPARATION_MM = 25.0

_VIEW_POSITION = {"PA": "PA", "LAT": "LL"}
_ORIENTATION = {"PA": ("L", "F"), "LAT": ("P", "F")}
# CID 4010 view codes.
_VIEW_CODES = {"PA": ("399348003", "postero-anterior"), "LAT": ("399173006", "left lateral")}

_FINDING_STREAM, _ANATOMY_STREAM, _TEXTURE_STREAM, _LESION_STREAM = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class CxrStudy:
    """A synthetic two-view chest radiograph and its ground truth.

    Attributes
    ----------
    study_instance_uid, patient_id
        Identify the study (synthetic values).
    finding
        ``"normal"`` or ``"nodule"``.
    images
        ``"PA"`` and ``"LAT"`` -> Digital X-Ray Image (For Presentation) datasets, each
        in its own series, with File Meta Information.
    masks
        View name -> boolean array (labels, 1, rows, columns) of the real nodule (one
        plane when there is a nodule, none otherwise).
    truth_labels
        The nodule's segment label (category Morphologically abnormal structure, type
        Nodule), or empty.
    """

    study_instance_uid: str
    patient_id: str
    finding: str
    images: dict[str, Dataset]
    masks: dict[str, npt.NDArray[np.bool_]]
    truth_labels: tuple[SegmentLabel, ...]


@dataclass(frozen=True, slots=True)
class _Chest:
    """The patient's anatomy in millimetres (image y from the top, x from the left)."""

    centre_x: float
    apex_y: float
    dome_y: float  # height of the diaphragm domes
    lung_half_width: float  # PA, each lung
    lung_gap: float  # PA, between the lung centres
    lung_depth: float  # lateral, half the antero-posterior extent

    @property
    def lung_centre_y(self) -> float:
        return (self.apex_y + self.dome_y) / 2

    def pa_lungs(
        self, y: npt.NDArray[np.float32], x: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Lung 'depth' on the PA, 1 in the middle of a lung, <= 0 outside."""
        half_height = (self.dome_y - self.apex_y) / 2
        out = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=np.float32)
        for sign in (-1.0, 1.0):
            cx = self.centre_x + sign * self.lung_gap / 2
            rho2 = ((x - cx) / self.lung_half_width) ** 2 + (
                (y - self.lung_centre_y) / half_height
            ) ** 2
            out = np.maximum(out, 1.0 - rho2)
        return out

    def lat_lungs(
        self, y: npt.NDArray[np.float32], x: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Lung 'depth' on the lateral (both lungs superimposed)."""
        half_height = (self.dome_y - self.apex_y) / 2
        rho2 = ((x - self.centre_x) / self.lung_depth) ** 2 + (
            (y - self.lung_centre_y) / half_height
        ) ** 2
        return (1.0 - rho2).astype(np.float32)


def build_cxr_study(
    seed: int,
    *,
    rows: int = 512,
    columns: int = 512,
    patient_id: str | None = None,
    study_instance_uid: str | None = None,
    finding: str | None = None,
) -> CxrStudy:
    """Build a synthetic PA + left lateral chest radiograph.

    Parameters
    ----------
    seed
        Non-negative seed; the same arguments always give the same bytes.
    rows, columns
        Image size in pixels; the 430 x 430 mm detector is fixed, so the size sets
        the ImagerPixelSpacing (0.84 mm by default).
    patient_id
        PatientID; by default ``SYNTH-CXR-<seed>``.
    study_instance_uid
        By default one derived from the seed and the patient ID.
    finding
        ``"normal"``, ``"nodule"``, or None to draw it from the seed (50 % each).

    Returns
    -------
    CxrStudy
        The two images, the finding and the real nodule's masks.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    _check(seed, rows, columns, finding)
    pid = patient_id or f"SYNTH-CXR-{seed:06d}"
    study_uid = study_instance_uid or derive_uid(UID_NAMESPACE, "cxr-study", str(seed), pid)
    rng = np.random.default_rng([seed, _FINDING_STREAM])
    drawn = finding or _FINDINGS[int(rng.uniform() < 0.5)]
    grid = Grid(rows, columns, (_FIELD_MM / rows, _FIELD_MM / columns))
    chest = _draw_chest(seed)
    blobs, real = _plan_nodules(seed, chest, drawn == "nodule")
    labels = (SegmentLabel(1, "nodule", MORPHOLOGICALLY_ABNORMAL, NODULE),) if real else ()
    images: dict[str, Dataset] = {}
    masks: dict[str, npt.NDArray[np.bool_]] = {}
    for number, view in enumerate(CXR_VIEWS, start=1):
        image = _anatomy(grid, chest, view, np.random.default_rng([seed, _TEXTURE_STREAM, number]))
        masks[view] = np.zeros((len(labels), 1, rows, columns), dtype=np.bool_)
        for blob, is_real in blobs[view]:
            drawn_mask = draw_blob(image, grid, blob)
            if is_real:
                masks[view][0, 0] |= drawn_mask
        header = _header(view, number, grid, pid, study_uid, seed)
        images[view] = _dx_dataset(header, view, to_stored(image))
    return CxrStudy(study_uid, pid, drawn, images, masks, labels)


def _check(seed: int, rows: int, columns: int, finding: str | None) -> None:
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    for name, size in (("rows", rows), ("columns", columns)):
        if not 64 <= size <= 65535:
            raise ValueError(f"{name} must be between 64 and 65535, got {size}")
    if finding is not None and finding not in _FINDINGS:
        raise ValueError(f"finding must be one of {_FINDINGS} or None, got {finding!r}")


def _draw_chest(seed: int) -> _Chest:
    rng = np.random.default_rng([seed, _ANATOMY_STREAM])
    return _Chest(
        centre_x=float(rng.uniform(200.0, 230.0)),
        apex_y=float(rng.uniform(55.0, 80.0)),
        dome_y=float(rng.uniform(310.0, 350.0)),
        lung_half_width=float(rng.uniform(55.0, 68.0)),
        lung_gap=float(rng.uniform(150.0, 170.0)),
        lung_depth=float(rng.uniform(85.0, 100.0)),
    )


def _inside(chest: _Chest, view: str, y: float, x: float) -> bool:
    yy, xx = np.full((1, 1), y, dtype=np.float32), np.full((1, 1), x, dtype=np.float32)
    depth = chest.pa_lungs(yy, xx) if view == "PA" else chest.lat_lungs(yy, xx)
    return float(depth[0, 0]) > 0.3


def _lung_point(rng: np.random.Generator, chest: _Chest, view: str, y: float) -> float:
    """An x in the lungs of `view` at height `y` (rejection sampling)."""
    for _ in range(200):
        x = float(rng.uniform(chest.centre_x - 160.0, chest.centre_x + 160.0))
        if _inside(chest, view, y, x):
            return x
    return chest.centre_x + (chest.lung_gap / 2 if view == "PA" else 0.0)


def _height(rng: np.random.Generator, chest: _Chest) -> float:
    """A height well inside the lung fields (not by the apex or the domes)."""
    span = chest.dome_y - chest.apex_y
    return float(rng.uniform(chest.apex_y + 0.2 * span, chest.dome_y - 0.2 * span))


def _plan_nodules(
    seed: int, chest: _Chest, nodule: bool
) -> tuple[dict[str, list[tuple[Blob, bool]]], bool]:
    """The real nodule on both views at one height; one-view pseudo-nodules elsewhere."""
    rng = np.random.default_rng([seed, _LESION_STREAM])
    blobs: dict[str, list[tuple[Blob, bool]]] = {view: [] for view in CXR_VIEWS}
    if nodule:
        y = _height(rng, chest)
        radius = float(rng.uniform(*_NODULE_RADIUS))
        contrast = float(rng.uniform(*_NODULE_CONTRAST))
        for view in CXR_VIEWS:
            # Both views share the height to within breathing and magnification.
            at = y + float(rng.normal(0.0, 1.5))
            blob = Blob(
                "round",
                (at, _lung_point(rng, chest, view, at)),
                radius * float(rng.uniform(0.92, 1.08)),
                contrast * float(rng.uniform(0.9, 1.1)),
                int(rng.integers(2**31)),
            )
            blobs[view].append((blob, True))
    placed: list[tuple[str, float]] = []
    for _ in range(int(rng.choice(3, p=_PSEUDO_COUNT_P))):
        view = "PA" if rng.uniform() < 0.6 else "LAT"
        y = _height(rng, chest)
        if any(v != view and abs(y - h) <= _PSEUDO_SEPARATION_MM for v, h in placed):
            continue
        blob = Blob(
            "round",
            (y, _lung_point(rng, chest, view, y)),
            float(rng.uniform(*_NODULE_RADIUS)),
            float(rng.uniform(*_NODULE_CONTRAST)),
            int(rng.integers(2**31)),
        )
        placed.append((view, y))
        blobs[view].append((blob, False))
    return blobs, nodule


def _anatomy(
    grid: Grid, chest: _Chest, view: str, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Body, lungs with texture, heart, spine and ribs (PA) or sternum (lateral)."""
    y, x = grid.mm()
    half_width = 165.0 if view == "PA" else 120.0
    body = np.clip((1.0 - ((x - chest.centre_x) / half_width) ** 2) * 8.0, 0.0, 1.0)
    body = body * np.clip((y - 15.0) / 10.0, 0.0, 1.0)
    lungs = chest.pa_lungs(y, x) if view == "PA" else chest.lat_lungs(y, x)
    aerated = np.clip(lungs * 6.0, 0.0, 1.0)
    texture = power_law_noise(grid, rng, beta=2.2)
    image = 0.05 + body * (0.58 - 0.33 * aerated) + 0.03 * aerated * texture
    heart_x = chest.centre_x + (25.0 if view == "PA" else -40.0)
    heart = ((y - (chest.dome_y - 40.0)) / 70.0) ** 2 + ((x - heart_x) / 75.0) ** 2 < 1.0
    image = np.where(heart, np.maximum(image, 0.5 + 0.02 * texture), image)
    spine_x = chest.centre_x + (0.0 if view == "PA" else 85.0)
    spine = np.exp(-(((x - spine_x) / 16.0) ** 2)) * (y > 20.0)
    image = image + 0.08 * spine
    if view == "PA":
        image = image + _ribs(y, x, chest) * body
    else:
        image = image + 0.05 * np.exp(-(((x - chest.centre_x + 112.0) / 5.0) ** 2)) * (y > 90.0)
    noise = 0.006 * rng.standard_normal(image.shape)
    out: npt.NDArray[np.float32] = (image + noise).astype(np.float32)
    return out


def _ribs(
    y: npt.NDArray[np.float32], x: npt.NDArray[np.float32], chest: _Chest
) -> npt.NDArray[np.float32]:
    """Posterior ribs as curved bands across each hemithorax, and the clavicles."""
    lateral = np.abs(x - chest.centre_x) / 150.0
    out = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=np.float32)
    for k in range(10):
        centre = chest.apex_y - 10.0 + 27.0 * k + 35.0 * lateral**2
        out += 0.045 * np.exp(-(((y - centre) / 5.0) ** 2)).astype(np.float32)
    clavicle = chest.apex_y + 10.0 - 25.0 * lateral
    out += 0.06 * np.exp(-(((y - clavicle) / 6.0) ** 2)).astype(np.float32) * (lateral < 0.8)
    ribs: npt.NDArray[np.float32] = (out * (lateral < 1.05)).astype(np.float32)
    return ribs


def _header(
    view: str, number: int, grid: Grid, patient_id: str, study_uid: str, seed: int
) -> ImageHeader:
    series_uid = derive_uid(UID_NAMESPACE, "cxr-series", study_uid, view, str(seed), str(grid))
    return ImageHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        modality="DX",
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=derive_uid(UID_NAMESPACE, "cxr-sop", series_uid),
        # One patient position for both views: they share the cranio-caudal axis.
        frame_of_reference_uid=derive_uid(UID_NAMESPACE, "cxr-frame", study_uid),
        patient_id=patient_id,
        series_number=number,
        series_description=f"Chest {view}",
        study_description="Synthetic chest radiograph",
        body_part="CHEST",
        spacing=grid.spacing,
    )


def _dx_dataset(header: ImageHeader, view: str, stored: npt.NDArray[np.uint16]) -> Dataset:
    """Add the DX Anatomy Imaged and DX Positioning modules (PS3.3 C.8.11.5, C.8.11.6)."""
    ds = build_projection_dataset(header, stored)
    ds.ImageLaterality = "U"
    ds.ViewPosition = _VIEW_POSITION[view]
    ds.PatientOrientation = list(_ORIENTATION[view])
    ds.PositionerType = "NONE"
    add_code_sequence(ds, "AnatomicRegionSequence", "816094009", "SCT", "Chest")
    value, meaning = _VIEW_CODES[view]
    add_code_sequence(ds, "ViewCodeSequence", value, "SCT", meaning)
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = []
    ds.DistanceSourceToDetector = "1800"
    return ds
