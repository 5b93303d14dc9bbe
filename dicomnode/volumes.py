"""Turn the DICOM instances of one series into a :class:`~dicomnode.kernel.Volume`.

A library, not a stage: the worker builds each view's volume with it, and the
synthetic ground truth (:mod:`dicomnode.synth.truth`) orders its masks by the same
:func:`slice_order`, so the two can never disagree on which slice is which.

Headers are read first (without pixel data) and checked: one series, one Frame of
Reference, one image size, one orientation, one pixel spacing, and positions along the
slice normal without duplicates or gaps. Only then are the pixels decoded, instance by
instance and frame by frame, into one preallocated ``float32`` array, so memory stays
proportional to one volume whatever the transfer syntax.

Three kinds of input are understood:

- single-frame images with ImagePositionPatient / ImageOrientationPatient (CT, MR, ...),
  sorted along the normal ``row x column`` (PS3.3 C.7.6.2.1.1);
- multi-frame images: enhanced CT/MR with Plane Position, Plane Orientation, Pixel
  Measures and Pixel Value Transformation in the shared or per-frame functional groups
  (PS3.3 C.7.6.16), and plain multi-frame images without per-frame geometry, whose
  frames are kept in stored order;
- projection images (MG, DX, CR) without patient geometry: one slice, origin (0, 0, 0),
  orientation (1, 0, 0, 0, 1, 0), spacing from PixelSpacing or ImagerPixelSpacing.

MONOCHROME1 images are inverted so bright means dense, colour images (RGB, YBR, palette)
become luminance (ITU-R BT.601 weights, as YBR_FULL defines Y in PS3.3 C.7.6.3.1.2).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Generator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import iter_pixels

from dicomnode.errors import VolumeError
from dicomnode.kernel import Volume

__all__ = ["load_volume", "slice_order", "split_volumes", "volume_from_datasets"]

logger = logging.getLogger(__name__)

_DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Direction cosines and spacings written as DS carry a few decimals only.
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE = 1e-3  # millimetres
_DUPLICATE_TOLERANCE = 1e-2  # millimetres along the normal
# A step more than 10 % off the median spacing is a missing (or extra) slice.
_GAP_TOLERANCE = 0.10
_LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_Source = Path | Dataset
_Orientation = tuple[float, float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class _Frame:
    """Everything about one frame that the header tells, no pixels."""

    source: int  # index into the sources given
    frame_number: int  # 1-based
    sop_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    thickness: float | None
    position: tuple[float, float, float] | None
    orientation: _Orientation | None
    slope: float
    intercept: float
    photometric: str
    stored_range: tuple[int, int]


def load_volume(paths: Sequence[Path]) -> Volume:
    """Read the files of one series as one volume, refusing what does not fit.

    Parameters
    ----------
    paths
        DICOM Part 10 files of one series, in any order.

    Returns
    -------
    Volume
        Slices sorted along the normal, rescale applied, ``float32``.

    Raises
    ------
    VolumeError
        If a file cannot be read or decoded, or the files do not make one volume
        (mixed series, size, orientation or pixel spacing, duplicate positions, a
        gap along the normal); the message names the SeriesInstanceUID.
    """
    return _assemble(list(paths), _checked_order(_read_headers(paths)))


def split_volumes(paths: Sequence[Path]) -> list[Volume]:
    """Read the files of a series as consistent stacks, one volume each.

    Files are grouped by series, Frame of Reference, size, orientation and pixel
    spacing, and each group is cut where positions repeat or a slice is missing.
    Images without patient geometry from different instances become separate volumes.

    Parameters
    ----------
    paths
        DICOM Part 10 files, in any order.

    Returns
    -------
    list of Volume
        The stacks, largest first (ties in the order of their first file).

    Raises
    ------
    VolumeError
        If a file cannot be read or decoded.
    """
    sources: list[_Source] = list(paths)
    frames = _read_headers(paths)
    runs = [run for group in _group(frames) for run in _runs(group)]
    runs.sort(key=len, reverse=True)
    return [_assemble(sources, run) for run in runs]


def volume_from_datasets(datasets: Sequence[Dataset]) -> Volume:
    """Build one volume from in-memory datasets, with the checks of :func:`load_volume`.

    Parameters
    ----------
    datasets
        Instances of one series, with pixel data and File Meta Information (for the
        Transfer Syntax UID), in any order.

    Returns
    -------
    Volume
        Slices sorted along the normal, rescale applied, ``float32``.

    Raises
    ------
    VolumeError
        If the datasets do not make one volume or their pixels cannot be decoded.
    """
    frames = [f for i, ds in enumerate(datasets) for f in _frames_of(ds, i)]
    return _assemble(list(datasets), _checked_order(frames))


def _read_headers(paths: Sequence[Path]) -> list[_Frame]:
    frames: list[_Frame] = []
    for index, path in enumerate(paths):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise VolumeError(f"cannot read the DICOM header of file {index + 1}: {exc}") from exc
        frames.extend(_frames_of(ds, index))
    return frames


def slice_order(datasets: Sequence[Dataset]) -> list[tuple[int, int]]:
    """Say where each slice of :func:`volume_from_datasets` comes from, reading headers only.

    Parameters
    ----------
    datasets
        Instances of one series, in any order; pixel data is not needed.

    Returns
    -------
    list of (int, int)
        Per slice, in volume order: the index into `datasets` and the 1-based frame
        number. Masks on the volume's grid map back to the sources through it.

    Raises
    ------
    VolumeError
        If the datasets do not make one volume.
    """
    frames = [f for i, ds in enumerate(datasets) for f in _frames_of(ds, i)]
    return [(f.source, f.frame_number) for f in _checked_order(frames)]


def _checked_order(frames: list[_Frame]) -> list[_Frame]:
    """Sort the frames of one volume, or raise VolumeError saying why they are not one."""
    if not frames:
        raise VolumeError("no instances given: a volume needs at least one image")
    first = frames[0]
    for frame in frames[1:]:
        reason = _mismatch(first, frame)
        if reason is not None:
            raise VolumeError(
                f"series {first.series_instance_uid} does not make one volume: {reason}",
                first.series_instance_uid,
            )
    ordered = _sorted(frames)
    breaks = _breaks(ordered)
    if breaks:
        raise VolumeError(
            f"series {first.series_instance_uid} does not make one volume: {breaks[0][1]}"
            + (f" ({len(breaks)} breaks in all)" if len(breaks) > 1 else ""),
            first.series_instance_uid,
        )
    return ordered


def _frames_of(ds: Dataset, source: int) -> list[_Frame]:
    """Describe every frame of one instance from its header."""
    count = int(ds.get("NumberOfFrames") or 1)
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames = []
    for index in range(count):
        groups = [per_frame[index]] if index < len(per_frame) else []
        if shared is not None:
            groups.append(shared)
        frames.append(_frame(ds, source, index + 1, groups, multi_frame=count > 1))
    return frames


def _frame(
    ds: Dataset, source: int, number: int, groups: list[Dataset], *, multi_frame: bool
) -> _Frame:
    position = _find(groups, "PlanePositionSequence", "ImagePositionPatient")
    # A plain multi-frame image's top-level position belongs to no frame in particular.
    if position is None and not multi_frame:
        position = ds.get("ImagePositionPatient")
    orientation = _find(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
    orientation = orientation if orientation is not None else ds.get("ImageOrientationPatient")
    thickness = _find(groups, "PixelMeasuresSequence", "SliceThickness")
    if multi_frame and position is None:
        thickness = ds.get("SpacingBetweenSlices") or thickness
    thickness = thickness if thickness is not None else ds.get("SliceThickness")
    slope = _find(groups, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _find(groups, "PixelValueTransformationSequence", "RescaleIntercept")
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    for_uid = ds.get("FrameOfReferenceUID")
    return _Frame(
        source=source,
        frame_number=number,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(for_uid) if for_uid else None,
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
        pixel_spacing=_pixel_spacing(ds, groups),
        thickness=_positive(thickness),
        position=_floats(position, 3),  # type: ignore[arg-type]
        orientation=_floats(orientation, 6),  # type: ignore[arg-type]
        slope=_number(slope, ds.get("RescaleSlope"), default=1.0),
        intercept=_number(intercept, ds.get("RescaleIntercept"), default=0.0),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip(),
        stored_range=(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1),
    )


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _find(groups: Sequence[Dataset], macro: str, keyword: str) -> Any:
    """Return `keyword` from the first functional group whose `macro` has it."""
    for group in groups:
        item = _first_item(group, macro)
        if item is not None and item.get(keyword) not in (None, ""):
            return item.get(keyword)
    return None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None or len(value) != count:
        return None
    return tuple(float(v) for v in value)


def _number(*values: Any, default: float) -> float:
    """The first value that is a finite number (an empty DS is None), else `default`."""
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(number):
            return number
    return default


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _pixel_spacing(ds: Dataset, groups: Sequence[Dataset]) -> tuple[float, float]:
    """PixelSpacing (functional groups, then top level), ImagerPixelSpacing, else 1 mm."""
    candidates = (
        _find(groups, "PixelMeasuresSequence", "PixelSpacing"),
        ds.get("PixelSpacing"),
        ds.get("ImagerPixelSpacing"),
    )
    for value in candidates:
        if value is not None and len(value) == 2:
            row, column = _positive(value[0]), _positive(value[1])
            # Some writers put 0\0 in PixelSpacing (e.g. pydicom's RG1_UNCR.dcm).
            if row is not None and column is not None:
                return row, column
    return 1.0, 1.0


def _has_geometry(frame: _Frame) -> bool:
    return frame.position is not None and frame.orientation is not None


def _mismatch(first: _Frame, frame: _Frame) -> str | None:
    """Say why `frame` cannot join the stack that `first` starts, or None if it can."""
    if frame.series_instance_uid != first.series_instance_uid:
        return f"mixed series ({first.series_instance_uid} and {frame.series_instance_uid})"
    if frame.frame_of_reference_uid != first.frame_of_reference_uid:
        return "mixed FrameOfReferenceUID"
    if (frame.rows, frame.columns) != (first.rows, first.columns):
        return (
            f"mixed rows/columns ({first.rows}x{first.columns} and {frame.rows}x{frame.columns},"
            f" instance {frame.sop_instance_uid})"
        )
    if _has_geometry(frame) != _has_geometry(first):
        return "some images have ImagePositionPatient/ImageOrientationPatient and some not"
    if not _has_geometry(first) and frame.source != first.source:
        return "images without ImagePositionPatient from several instances cannot be stacked"
    if (
        first.orientation is not None
        and frame.orientation is not None
        and not np.allclose(first.orientation, frame.orientation, atol=_ORIENTATION_TOLERANCE)
    ):
        return f"mixed orientation (ImageOrientationPatient of instance {frame.sop_instance_uid})"
    if not np.allclose(first.pixel_spacing, frame.pixel_spacing, atol=_SPACING_TOLERANCE):
        return f"mixed pixel spacing ({first.pixel_spacing} and {frame.pixel_spacing} mm)"
    return None


def _group(frames: list[_Frame]) -> list[list[_Frame]]:
    """Partition frames into groups that :func:`_mismatch` accepts, in first-seen order."""
    groups: list[list[_Frame]] = []
    for frame in frames:
        for group in groups:
            if _mismatch(group[0], frame) is None:
                group.append(frame)
                break
        else:
            groups.append([frame])
    return groups


def _normal(orientation: Sequence[float]) -> npt.NDArray[np.float64]:
    n = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    unit: npt.NDArray[np.float64] = n / np.linalg.norm(n)
    return unit


def _distances(frames: Sequence[_Frame]) -> npt.NDArray[np.float64]:
    """Positions along the normal, millimetres (frames must have geometry)."""
    assert frames[0].orientation is not None
    normal = _normal(frames[0].orientation)
    positions = np.array([f.position for f in frames], dtype=np.float64)
    distances: npt.NDArray[np.float64] = positions @ normal
    return distances


def _sorted(frames: list[_Frame]) -> list[_Frame]:
    """Frames along the normal, or in stored order when they have no geometry."""
    if not _has_geometry(frames[0]):
        return sorted(frames, key=lambda f: f.frame_number)
    order = np.argsort(_distances(frames), kind="stable")
    return [frames[i] for i in order]


def _median_step(steps: npt.NDArray[np.float64]) -> float | None:
    real = steps[steps >= _DUPLICATE_TOLERANCE]
    return float(np.median(real)) if real.size else None


def _breaks(ordered: list[_Frame]) -> list[tuple[int, str]]:
    """Where a sorted stack must be cut: (index of the first slice after it, reason).

    Duplicate positions come first, then gaps and irregular steps, each along the normal.
    """
    if len(ordered) < 2 or not _has_geometry(ordered[0]):
        return []
    distances = _distances(ordered)
    steps = np.diff(distances)
    median = _median_step(steps)
    duplicates, others = [], []
    for i, step in enumerate(steps):
        low, high = distances[i], distances[i + 1]
        if step < _DUPLICATE_TOLERANCE:
            duplicates.append((i + 1, f"duplicate position at {low:.3f} mm along the normal"))
        elif median is not None and abs(step - median) > _GAP_TOLERANCE * median:
            kind = "a gap (missing slice?)" if step > median else "an irregular step"
            reason = (
                f"{kind} along the normal: slices at {low:.3f} and {high:.3f} mm are"
                f" {step:.3f} mm apart, median spacing {median:.3f} mm"
            )
            others.append((i + 1, reason))
    # Duplicates first: they also make the neighbouring steps look irregular.
    return duplicates + others


def _runs(group: list[_Frame]) -> list[list[_Frame]]:
    """Cut one consistent group into stacks without duplicates or gaps."""
    ordered = _sorted(group)
    cuts = [0, *sorted(index for index, _ in _breaks(ordered)), len(ordered)]
    return [ordered[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def _spacing_along_normal(frames: list[_Frame]) -> float:
    if len(frames) > 1 and _has_geometry(frames[0]):
        median = _median_step(np.diff(_distances(frames)))
        if median is not None:
            return median
    return frames[0].thickness or 1.0


def _assemble(sources: Sequence[_Source], frames: list[_Frame]) -> Volume:
    """Decode the frames' pixels, in the given order, into one new volume."""
    first = frames[0]
    array = np.empty((len(frames), first.rows, first.columns), dtype=np.float32)
    slots: dict[int, dict[int, int]] = {}
    for slot, frame in enumerate(frames):
        slots.setdefault(frame.source, {})[frame.frame_number - 1] = slot
    for source, wanted in sorted(slots.items()):
        _decode_into(array, sources[source], wanted, frames)
    geometry = _has_geometry(first)
    volume = Volume(
        array=array,
        spacing=(_spacing_along_normal(frames), *first.pixel_spacing),
        origin=first.position if geometry else (0.0, 0.0, 0.0),  # type: ignore[arg-type]
        orientation=first.orientation if geometry else _DEFAULT_ORIENTATION,  # type: ignore[arg-type]
        sop_instance_uids=tuple(f.sop_instance_uid for f in frames),
        frame_numbers=tuple(f.frame_number for f in frames),
        series_instance_uid=first.series_instance_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
    )
    extra = {"action": "volume_built", "series_instance_uid": first.series_instance_uid}
    logger.debug("volume built", extra={**extra, "slices": len(frames)})
    return volume


def _decode_into(
    array: npt.NDArray[np.float32],
    source: _Source,
    wanted: dict[int, int],
    frames: list[_Frame],
) -> None:
    """Decode the wanted frames (0-based index -> slot) of one instance into `array`."""
    indices = sorted(wanted)
    try:
        palette = None
        if frames[wanted[indices[0]]].photometric == "PALETTE COLOR":
            palette = (
                source if isinstance(source, Dataset) else dcmread(source, stop_before_pixels=True)
            )
        # iter_pixels decodes one frame at a time, reading a path lazily; closing()
        # shuts its file at once when a frame fails.
        pixel_frames = cast("Generator[npt.NDArray[Any]]", iter_pixels(source, indices=indices))
        with closing(pixel_frames) as decoded:
            for index, pixels in zip(indices, decoded, strict=True):
                slot = wanted[index]
                array[slot] = _to_values(pixels, frames[slot], palette)
    except Exception as exc:
        frame = frames[wanted[indices[0]]]
        raise VolumeError(
            f"cannot decode the pixel data of instance {frame.sop_instance_uid}"
            f" (series {frame.series_instance_uid}): {exc}",
            frame.series_instance_uid,
        ) from exc


def _to_values(
    pixels: npt.NDArray[Any], frame: _Frame, palette: Dataset | None
) -> npt.NDArray[np.float32]:
    """One frame's stored values -> rescaled, grey, bright-is-dense float32."""
    if palette is not None:
        pixels = apply_color_lut(pixels, palette)
    values = pixels.astype(np.float32, copy=False)
    if values.ndim == 3:
        return values @ _LUMINANCE
    if frame.photometric == "MONOCHROME1":
        # Minimum is white in MONOCHROME1 (PS3.3 C.7.6.3.1.2): mirror the stored range.
        low, high = frame.stored_range
        values = np.float32(low + high) - values
    return values * np.float32(frame.slope) + np.float32(frame.intercept)
