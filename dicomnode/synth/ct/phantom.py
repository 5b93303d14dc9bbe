"""The simple synthetic chest CT: an analytic phantom of bright spheres in a plain body.

The phantom is a chest-like elliptical cylinder (soft tissue with a fat rim), two
ellipsoidal lungs in the upper (superior) part of the scanned range, a bone cylinder
standing in for the spine, and a few spherical lesions at seeded random places inside
the body. Every slice is rendered from those shapes on its own, so a 300-slice series
never needs a 3D array, and any slice can be regenerated alone.

Everything is deterministic given the seed and the other arguments, the UIDs included,
so tests can compare bytes and benchmarks see the same data on every run. The lesion
list is exposed through :class:`CtPhantom` so ground-truth masks can be rebuilt
without reading the images back.

Coordinates are DICOM patient coordinates (LPS, millimetres): +x towards the patient's
left, +y posterior, +z superior. Rows run along +y and columns along +x
(ImageOrientationPatient ``1\\0\\0\\0\\1\\0``), and slice ``k`` lies at
``z = origin_z + k * slice_thickness``, so instance numbers increase along the normal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import RE_VALID_UID

from dicomnode.synth.ct._dicom import SeriesHeader, slice_dataset
from dicomnode.uids import derive_uid

__all__ = [
    "CtLesion",
    "CtPhantom",
    "CtSeriesOptions",
    "build_ct_series",
    "ct_phantom",
    "write_ct_series",
]

logger = logging.getLogger(__name__)

# Hounsfield units of the phantom's materials (typical textbook values).
AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LUNG_HU = -850.0
BONE_HU = 700.0
NOISE_SIGMA_HU = 10.0

# Anatomy in millimetres, fixed so that pixel spacing changes resolution, not anatomy.
# A 320 x 230 mm chest fits the default 512 x 0.7 mm = 358 mm field of view.
_BODY_SEMI_AXES = (160.0, 115.0)
_FAT_RIM = 12.0
_SPINE_CENTRE = (0.0, 70.0)
_SPINE_RADIUS = 16.0
_LUNG_CENTRES = ((-68.0, -12.0), (68.0, -12.0))
_LUNG_SEMI_AXES = (50.0, 70.0)
# The lungs span 35 % to 95 % of the z range: "the upper part" of a chest scan.
_LUNG_Z_CENTRE_FRACTION = 0.65
_LUNG_Z_HALF_FRACTION = 0.30

_LESION_COUNT_RANGE = (3, 6)  # numpy upper bound is exclusive: 3 to 5 lesions
_LESION_RADIUS_RANGE = (5.0, 15.0)
_LESION_CONTRAST_RANGE = (60.0, 120.0)
# Lesions keep this much clearance from the fat rim, the spine and each other, so a
# lesion's voxels are all lesion and the label maps never overlap.
_LESION_MARGIN = 3.0
_LESION_ATTEMPTS = 500

# CT Image IOD pixel encoding: 12 bits stored unsigned, HU = stored - 1024 (PS3.3 C.8.2.1).
_RESCALE_INTERCEPT = -1024.0
_MAX_STORED = 4095.0

# Deterministic UIDs without a registered root (dicomnode.uids); pydicom's generate_uid
# ignores its entropy sources when prefix is None, so it cannot do this.
_UID_NAMESPACE = "dicomnode.synth.ct"

# Streams of the seeded generator, so lesions and noise never share random numbers.
_LESION_STREAM = 0
_NOISE_STREAM = 1


@dataclass(frozen=True, slots=True)
class CtLesion:
    """One spherical lesion of the phantom.

    Attributes
    ----------
    centre
        Centre in patient coordinates (x, y, z), millimetres.
    radius
        Radius in millimetres, between 5 and 15.
    contrast
        Hounsfield units above soft tissue (40 HU), between 60 and 120.
    """

    centre: tuple[float, float, float]
    radius: float
    contrast: float

    @property
    def hu(self) -> float:
        """Attenuation of the lesion in Hounsfield units, before noise."""
        return SOFT_TISSUE_HU + self.contrast


@dataclass(frozen=True, slots=True)
class CtPhantom:
    """Geometry of a synthetic CT series and the lesions inside it.

    Attributes
    ----------
    seed
        Seed the lesions and the noise derive from.
    slices, rows, columns
        Size of the series in voxels.
    slice_thickness
        Distance between slice centres along the normal, millimetres.
    pixel_spacing
        In-plane spacing (rows and columns alike), millimetres.
    origin
        ImagePositionPatient of the first slice: centre of its first voxel, millimetres.
    lesions
        The lesions, in the order of their labels in :meth:`lesion_labels` (1, 2, ...).
    """

    seed: int
    slices: int
    rows: int
    columns: int
    slice_thickness: float
    pixel_spacing: float
    origin: tuple[float, float, float]
    lesions: tuple[CtLesion, ...]

    def image_position(self, index: int) -> tuple[float, float, float]:
        """Return ImagePositionPatient of slice `index` (0-based), millimetres.

        Parameters
        ----------
        index
            Slice index, 0 for the first (most inferior) slice.

        Returns
        -------
        tuple of float
            Centre of the slice's first voxel in patient coordinates.
        """
        x0, y0, z0 = self.origin
        return (x0, y0, z0 + index * self.slice_thickness)

    def lesion_labels(self) -> npt.NDArray[np.uint8]:
        """Return the lesions as a label volume on the series' voxel grid.

        Returns
        -------
        numpy.ndarray
            ``uint8`` array of shape (slices, rows, columns): 0 outside every lesion,
            ``i + 1`` inside ``lesions[i]`` (voxel centre within the sphere).
        """
        labels = np.zeros((self.slices, self.rows, self.columns), dtype=np.uint8)
        for k in range(self.slices):
            _draw_lesions(self, labels[k], k, values=None)
        return labels

    def body_mask(self) -> npt.NDArray[np.bool_]:
        """Return the body (outer skin ellipse, fat rim included) on the voxel grid.

        Returns
        -------
        numpy.ndarray
            ``bool`` array of shape (slices, rows, columns); the body is the same
            cylinder on every slice.
        """
        section = np.zeros((self.rows, self.columns), dtype=np.uint8)
        _fill_ellipse(section, self, (0.0, 0.0), _BODY_SEMI_AXES, 1)
        return np.broadcast_to(section.astype(bool), (self.slices, self.rows, self.columns)).copy()

    @property
    def _z_range(self) -> tuple[float, float]:
        z0 = self.origin[2]
        return z0, z0 + (self.slices - 1) * self.slice_thickness


class CtSeriesOptions(TypedDict, total=False):
    """Keyword arguments of :func:`build_ct_series`, for :func:`write_ct_series`."""

    slices: int
    rows: int
    columns: int
    seed: int
    study_instance_uid: str | None
    patient_id: str
    patient_name: str
    slice_thickness: float
    pixel_spacing: float
    series_number: int
    series_description: str


def ct_phantom(
    seed: int = 0,
    slices: int = 300,
    rows: int = 512,
    columns: int = 512,
    slice_thickness: float = 1.0,
    pixel_spacing: float = 0.7,
) -> CtPhantom:
    """Describe the phantom that :func:`build_ct_series` renders for these arguments.

    Parameters
    ----------
    seed
        Non-negative seed; the same arguments always give the same phantom.
    slices, rows, columns
        Size of the series in voxels.
    slice_thickness
        Spacing between slices along the normal, millimetres.
    pixel_spacing
        In-plane spacing, millimetres.

    Returns
    -------
    CtPhantom
        The geometry and the lesions (3 to 5, fewer only when a small field of view
        leaves no room for them).

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    _check_arguments(seed, slices, rows, columns, slice_thickness, pixel_spacing)
    # Centre the volume on the patient origin so the anatomy sits in the middle.
    origin = (
        -(columns - 1) / 2 * pixel_spacing,
        -(rows - 1) / 2 * pixel_spacing,
        -(slices - 1) / 2 * slice_thickness,
    )
    geometry = CtPhantom(
        seed, slices, rows, columns, slice_thickness, pixel_spacing, origin, lesions=()
    )
    lesions = _place_lesions(geometry, np.random.default_rng([seed, _LESION_STREAM]))
    return CtPhantom(seed, slices, rows, columns, slice_thickness, pixel_spacing, origin, lesions)


def build_ct_series(
    *,
    slices: int = 300,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
    study_instance_uid: str | None = None,
    patient_id: str = "SYNTH0001",
    patient_name: str = "Synthetic^Patient",
    slice_thickness: float = 1.0,
    pixel_spacing: float = 0.7,
    series_number: int = 1,
    series_description: str = "Synthetic chest CT",
) -> Iterator[Dataset]:
    """Return the slices of a synthetic chest CT, one CT Image Storage dataset each.

    Parameters
    ----------
    slices, rows, columns
        Size of the series in voxels.
    seed
        Non-negative seed for the lesions, the noise and the UIDs.
    study_instance_uid
        Study to put the series in; by default one derived from `seed` and `patient_id`.
    patient_id, patient_name
        Patient Module values.
    slice_thickness
        Spacing between slices along the normal, millimetres.
    pixel_spacing
        In-plane spacing, millimetres.
    series_number, series_description
        General Series Module values; they also enter the series' UIDs, so two series
        of one study with the same seed stay distinct.

    Returns
    -------
    Iterator of pydicom.dataset.Dataset
        Slices in instance-number order, rendered lazily, each with File Meta
        Information for Explicit VR Little Endian, ready for
        ``save_as(..., enforce_file_format=True)``.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    # Validate here, not in the generator, so a bad argument fails at the call.
    phantom = ct_phantom(seed, slices, rows, columns, slice_thickness, pixel_spacing)
    if not 0 <= series_number <= 2**31 - 1:
        raise ValueError(f"series_number must fit an IS value, got {series_number}")
    study_uid = study_instance_uid or derive_uid(_UID_NAMESPACE, "study", str(seed), patient_id)
    if len(study_uid) > 64 or not RE_VALID_UID.match(study_uid):
        raise ValueError(f"study_instance_uid is not a valid UID: {study_uid!r}")
    series_uid = derive_uid(
        _UID_NAMESPACE, "series", study_uid, str(series_number), series_description, repr(phantom)
    )
    return (
        _slice_dataset(
            phantom,
            index,
            stored,
            uids=(study_uid, series_uid),
            patient=(patient_id, patient_name),
            series=(series_number, series_description),
        )
        for index, stored in enumerate(_render_series(phantom))
    )


def write_ct_series(out_dir: Path, **options: Unpack[CtSeriesOptions]) -> list[Path]:
    """Write a synthetic CT series as DICOM Part 10 files ``0001.dcm``, ``0002.dcm``, ...

    Parameters
    ----------
    out_dir
        Folder to write into; created if missing.
    **options
        Passed to :func:`build_ct_series`.

    Returns
    -------
    list of pathlib.Path
        The files written, in instance-number order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for ds in build_ct_series(**options):
        path = out_dir / f"{ds.InstanceNumber:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.debug(
        "synthetic CT series written",
        extra={"action": "synth_ct_written", "count": len(paths)},
    )
    return paths


def _check_arguments(
    seed: int,
    slices: int,
    rows: int,
    columns: int,
    slice_thickness: float,
    pixel_spacing: float,
) -> None:
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if slices < 1:
        raise ValueError(f"slices must be at least 1, got {slices}")
    # Rows and Columns are US (PS3.5 6.2), so 65535 at most.
    for name, size in (("rows", rows), ("columns", columns)):
        if not 1 <= size <= 65535:
            raise ValueError(f"{name} must be between 1 and 65535, got {size}")
    for name, length in (("slice_thickness", slice_thickness), ("pixel_spacing", pixel_spacing)):
        if not (math.isfinite(length) and length > 0):
            raise ValueError(f"{name} must be a positive number of millimetres, got {length}")


def _place_lesions(geometry: CtPhantom, rng: np.random.Generator) -> tuple[CtLesion, ...]:
    """Draw lesions by rejection sampling inside the body, clear of the spine."""
    inner_a = _BODY_SEMI_AXES[0] - _FAT_RIM
    inner_b = _BODY_SEMI_AXES[1] - _FAT_RIM
    x_lo, y_lo, _ = geometry.origin
    x_hi = x_lo + (geometry.columns - 1) * geometry.pixel_spacing
    y_hi = y_lo + (geometry.rows - 1) * geometry.pixel_spacing
    z_lo, z_hi = geometry._z_range
    count = int(rng.integers(*_LESION_COUNT_RANGE))
    lesions: list[CtLesion] = []
    for _ in range(count):
        radius = float(rng.uniform(*_LESION_RADIUS_RANGE))
        contrast = float(rng.uniform(*_LESION_CONTRAST_RANGE))
        # Keep the whole sphere inside the z range when the range is long enough.
        z_min, z_max = (z_lo + radius, z_hi - radius) if z_hi - z_lo > 2 * radius else (z_lo, z_hi)
        for _attempt in range(_LESION_ATTEMPTS):
            # Centres stay inside the field of view so every lesion is visible.
            x, y, z = rng.uniform((x_lo, y_lo, z_min), (x_hi, y_hi, z_max))
            clear = radius + _LESION_MARGIN
            inside_body = (x / (inner_a - clear)) ** 2 + (y / (inner_b - clear)) ** 2 <= 1
            off_spine = math.hypot(x - _SPINE_CENTRE[0], y - _SPINE_CENTRE[1]) > (
                _SPINE_RADIUS + clear
            )
            apart = all(
                math.dist((x, y, z), other.centre) > radius + other.radius + _LESION_MARGIN
                for other in lesions
            )
            if inside_body and off_spine and apart:
                lesions.append(CtLesion((float(x), float(y), float(z)), radius, contrast))
                break
    return tuple(lesions)


def _fill_ellipse(
    image: npt.NDArray[np.generic],
    phantom: CtPhantom,
    centre: tuple[float, float],
    semi_axes: tuple[float, float],
    value: float,
) -> None:
    """Set every pixel whose centre lies inside an axis-aligned ellipse to `value`.

    Only the ellipse's bounding box is evaluated, which keeps small shapes cheap.
    """
    spacing = phantom.pixel_spacing
    x0, y0, _ = phantom.origin
    (cx, cy), (ax, ay) = centre, semi_axes
    j0 = max(0, math.ceil((cx - ax - x0) / spacing))
    j1 = min(phantom.columns, math.floor((cx + ax - x0) / spacing) + 1)
    i0 = max(0, math.ceil((cy - ay - y0) / spacing))
    i1 = min(phantom.rows, math.floor((cy + ay - y0) / spacing) + 1)
    if j0 >= j1 or i0 >= i1:
        return
    dx = (x0 + np.arange(j0, j1) * spacing - cx) / ax
    dy = (y0 + np.arange(i0, i1) * spacing - cy) / ay
    inside = dy[:, np.newaxis] ** 2 + dx[np.newaxis, :] ** 2 <= 1.0
    image[i0:i1, j0:j1][inside] = value


def _draw_lesions(
    phantom: CtPhantom,
    image: npt.NDArray[np.generic],
    index: int,
    *,
    values: list[float] | None,
) -> None:
    """Draw lesion cross-sections of slice `index`: HU `values`, or labels 1, 2, ... if None."""
    z = phantom.image_position(index)[2]
    for number, lesion in enumerate(phantom.lesions, start=1):
        cx, cy, cz = lesion.centre
        squared = lesion.radius**2 - (z - cz) ** 2
        # A slice that only grazes the sphere has no pixel to draw (and r = 0 divides).
        if squared <= 0:
            continue
        r = math.sqrt(squared)
        value = number if values is None else values[number - 1]
        _fill_ellipse(image, phantom, (cx, cy), (r, r), value)


def _render_series(phantom: CtPhantom) -> Iterator[npt.NDArray[np.uint16]]:
    """Yield the stored pixel values (HU + 1024, 12 bits) of each slice."""
    # Body, fat rim and spine do not change along z: draw them once.
    base = np.full((phantom.rows, phantom.columns), AIR_HU, dtype=np.float32)
    _fill_ellipse(base, phantom, (0.0, 0.0), _BODY_SEMI_AXES, FAT_HU)
    inner = (_BODY_SEMI_AXES[0] - _FAT_RIM, _BODY_SEMI_AXES[1] - _FAT_RIM)
    _fill_ellipse(base, phantom, (0.0, 0.0), inner, SOFT_TISSUE_HU)
    _fill_ellipse(base, phantom, _SPINE_CENTRE, (_SPINE_RADIUS, _SPINE_RADIUS), BONE_HU)

    z_lo, z_hi = phantom._z_range
    lung_zc = z_lo + _LUNG_Z_CENTRE_FRACTION * (z_hi - z_lo)
    # A one-slice series has no z extent; one slice thickness keeps the lungs in it.
    lung_half = max(_LUNG_Z_HALF_FRACTION * (z_hi - z_lo), phantom.slice_thickness)
    lesion_hu = [lesion.hu for lesion in phantom.lesions]

    for index in range(phantom.slices):
        image = base.copy()
        z = phantom.image_position(index)[2]
        scale_squared = 1.0 - ((z - lung_zc) / lung_half) ** 2
        if scale_squared > 0:
            # Cross-section of an ellipsoid: the in-plane semi-axes shrink with |z - zc|.
            scale = math.sqrt(scale_squared)
            lung_axes = (_LUNG_SEMI_AXES[0] * scale, _LUNG_SEMI_AXES[1] * scale)
            for centre in _LUNG_CENTRES:
                _fill_ellipse(image, phantom, centre, lung_axes, LUNG_HU)
        _draw_lesions(phantom, image, index, values=lesion_hu)
        # Each slice has its own generator, so any slice can be regenerated alone.
        noise_rng = np.random.default_rng([phantom.seed, _NOISE_STREAM, index])
        noise = noise_rng.standard_normal(image.shape, dtype=np.float32)
        image += noise * np.float32(NOISE_SIGMA_HU)
        # In place: stored = round(HU - intercept), clipped to 12 bits.
        image -= np.float32(_RESCALE_INTERCEPT)
        np.rint(image, out=image)
        np.clip(image, 0.0, _MAX_STORED, out=image)
        yield image.astype("<u2")


def _slice_dataset(
    phantom: CtPhantom,
    index: int,
    stored: npt.NDArray[np.uint16],
    *,
    uids: tuple[str, str],
    patient: tuple[str, str],
    series: tuple[int, str],
) -> Dataset:
    """Build the CT Image IOD (PS3.3 A.3) for one slice."""
    study_uid, series_uid = uids
    header = SeriesHeader(
        namespace=_UID_NAMESPACE,
        study_uid=study_uid,
        series_uid=series_uid,
        patient=patient,
        series=series,
        rows=phantom.rows,
        columns=phantom.columns,
        pixel_spacing=phantom.pixel_spacing,
        slice_thickness=phantom.slice_thickness,
        reconstruction_diameter=max(phantom.rows, phantom.columns) * phantom.pixel_spacing,
    )
    return slice_dataset(header, index, phantom.image_position(index), stored)
