"""Result previews for the web pages, rendered from the stored DICOM files alone.

The web stage shows what a job produced without importing the builders: every
preview here is read back from the files the index records, with pydicom, numpy and
Pillow, as a viewer would.

API
---
``seg_thumbnail(seg_path, source_paths) -> bytes``
    PNG of a DICOM SEG's key slices (:func:`seg_key_slices`: up to three source
    slices with the largest segmented area, in order along the volume), each source
    slice windowed (:func:`render_grey`) with every segment laid over it in its
    recommended display colour, semi-transparent, with an outline; side by side, at
    most :data:`MAX_WIDTH` pixels wide. A SEG of a projection image (MG, DX, CR) is
    one tile.
``sr_findings(sr_path) -> list[FindingRow]``
    One :class:`FindingRow` per measurement group of a TID 1500 Measurement Report:
    finding, site, laterality, certainty, tracking identifier, measurements
    (:class:`Measurement`), the referenced segment and the image regions
    (:class:`ImageRegion`). Nothing of the patient or study modules is returned.
``projection_preview(image_paths, regions=(), *, segmentation_paths=()) -> bytes``
    PNG of projection views (MG, CXR) side by side, in the order given, with the SR's
    regions drawn on the image each references (``[r for row in
    sr_findings(sr) for r in row.regions]``) and the masks of SEGs of those images.
``PreviewCache(folder).get_or_render(key_parts, render, *, study_instance_uid) -> bytes``
    PNGs kept on disk under ``DataLayout.previews`` (``previews/<study>/``, deleted
    with the study by retention). A ``pathlib.Path`` among ``key_parts`` enters the
    key with its file's identity (device, inode, size, mtime and ctime in
    nanoseconds), so a replaced output or source renders afresh, and the previous
    preview of the same key is removed; a ``str`` is only a label, so give files as
    ``Path``. A hit reads one file and stats the key's files (well under a
    millisecond for a 120-slice series here).

Also public: :func:`seg_key_slices` (which slices a thumbnail shows, as
:class:`SourceSlice`), :func:`render_grey` (one frame windowed to [0, 1]) and
:func:`lab_to_srgb` (DICOM scaled CIELab to sRGB).

A page would do::

    cache = PreviewCache(DataLayout(settings.data_dir).previews)
    png = cache.get_or_render(
        ("seg", seg_path, *source_paths),
        lambda: seg_thumbnail(seg_path, source_paths),
        study_instance_uid=study_uid,
    )

The rendering and reading functions raise :class:`PreviewError` (also a
``ValueError``) for a file that is not what it should be, with a message naming what
is missing and no element values (a library's error text can quote patient data); a
file that is gone raises ``FileNotFoundError``. The cache raises ``ValueError`` for a
``render`` that returns no PNG or a study UID that could leave its folder.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.pixels.utils import iter_pixels, pixel_array

from dicomnode.web._preview_cache import PreviewCache
from dicomnode.web._sr_content import (
    FindingRow,
    ImageRegion,
    Measurement,
    SegmentReference,
    first_value,
)
from dicomnode.web.findings import PreviewError, read_dicom, sr_findings

__all__ = [
    "ALPHA",
    "MAX_WIDTH",
    "OUTLINE_ONLY_SHARE",
    "PALETTE",
    "SOFT_TISSUE",
    "FindingRow",
    "ImageRegion",
    "Measurement",
    "PreviewCache",
    "PreviewError",
    "SegmentReference",
    "SourceSlice",
    "lab_to_srgb",
    "projection_preview",
    "render_grey",
    "seg_key_slices",
    "seg_thumbnail",
    "sr_findings",
]

logger = logging.getLogger(__name__)

#: The widest preview, in pixels.
MAX_WIDTH = 768
#: Opacity of a segment's fill over the image (its outline is opaque).
ALPHA = 0.45
#: A segment covering more than this share of its image is outlined, not filled.
OUTLINE_ONLY_SHARE = 0.25
#: Colours of segments without a RecommendedDisplayCIELabValue, by segment number.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip
#: Soft-tissue window (centre, width) for a CT image that has none of its own.
SOFT_TISSUE = (40.0, 400.0)

_TILE_HEIGHT = 384  # the tallest tile; smaller images are never enlarged
_GAP = 4
_KEY_SLICES = 3
_MAX_FRAMES = 20_000
_MAX_FRAME_PIXELS = 1 << 26  # 64 Mpixel: bounds what one decoded frame costs
#: Segmentation Storage and Label Map Segmentation Storage (PS3.4 B.5).
_SEG_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
_DECODE_ERRORS = (ValueError, TypeError, AttributeError, NotImplementedError, RuntimeError)


# -- colour -------------------------------------------------------------------------

# CIE XYZ of the reference white and the XYZ -> linear sRGB matrix (IEC 61966-2-1).
_WHITE = (0.95047, 1.0, 1.08883)
_XYZ_TO_SRGB = np.array(
    [[3.2404542, -1.5371385, -0.4985314],
     [-0.9692660, 1.8760108, 0.0415560],
     [0.0556434, -0.2040259, 1.0572252]]
)  # fmt: skip


def lab_to_srgb(value: Sequence[int]) -> tuple[int, int, int]:
    """The 8-bit sRGB colour of a DICOM scaled CIELab triplet.

    DICOM stores L* scaled from 0..100 and a*, b* from -128..127 onto 0..65535
    (PS3.3 C.10.7.1.1). The Lab value is converted with the D65 white, as highdicom
    and dcmqi write it, so a colour they encoded from sRGB comes back unchanged;
    out-of-gamut colours are clipped.

    Parameters
    ----------
    value
        (L, a, b), each 0 to 65535.

    Raises
    ------
    PreviewError
        If `value` is not three numbers in 0..65535.
    """
    if len(value) != 3 or not all(0 <= int(v) <= 0xFFFF for v in value):
        raise PreviewError("RecommendedDisplayCIELabValue must be three values in 0..65535")
    lightness = int(value[0]) * 100.0 / 0xFFFF
    a_star, b_star = (int(v) * 255.0 / 0xFFFF - 128.0 for v in value[1:])
    fy = (lightness + 16.0) / 116.0
    f = np.array([fy + a_star / 500.0, fy, fy - b_star / 200.0])
    delta = 6.0 / 29.0
    # Inverse of the CIE 1976 companding: cube above delta, linear below.
    xyz = np.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0)) * np.array(_WHITE)
    linear = np.clip(_XYZ_TO_SRGB @ xyz, 0.0, 1.0)
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    r, g, b = (round(float(c) * 255.0) for c in encoded)
    return r, g, b


def _segment_colours(seg: Dataset) -> dict[int, tuple[int, int, int]]:
    """Segment number -> display colour: the recommended one, else :data:`PALETTE`."""
    colours = {}
    for item in seg.get("SegmentSequence", []):
        number = int(item.get("SegmentNumber", 0))
        colour = PALETTE[(number - 1) % len(PALETTE)]
        lab = item.get("RecommendedDisplayCIELabValue")
        if lab is not None:
            try:
                colour = lab_to_srgb(list(lab))
            except (PreviewError, TypeError, ValueError):
                pass  # a malformed colour is no reason to show nothing: the palette's
        colours[number] = colour
    return colours


# -- reading files ------------------------------------------------------------------


def _macro(ds: Dataset, frame_index: int, keyword: str) -> Dataset | None:
    """The first item of a functional group macro of one frame, per-frame first."""
    for top in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(top) or []
        index = frame_index if top.startswith("PerFrame") else 0
        if index < len(groups):
            items = groups[index].get(keyword)
            if items:
                item: Dataset = items[0]
                return item
    return None


@dataclass(frozen=True, slots=True, order=True)
class SourceSlice:
    """One source image a preview shows: an instance and its 1-based frame."""

    sop_instance_uid: str
    frame_number: int = 1


class _Sources:
    """The source series' files, found by SOP Instance UID.

    Files the layout stores are named ``<sop>.dcm``, so the name is tried first;
    otherwise every header is read once (a 120-slice CT: about 40 ms here).
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        self._paths = [Path(p) for p in paths]
        self._by_stem = {p.stem: p for p in self._paths}
        self._by_uid: dict[str, Path] | None = None
        self._datasets: dict[str, Dataset] = {}
        self._headers: dict[Path, Dataset] = {}

    def _header(self, path: Path) -> Dataset:
        if path not in self._headers:
            self._headers[path] = read_dicom(path, "source image", stop_before_pixels=True)
        return self._headers[path]

    def dataset(self, uid: str) -> Dataset | None:
        """The whole dataset of instance `uid`, or None when no file holds it."""
        if uid in self._datasets:
            return self._datasets[uid]
        path = self._by_stem.get(uid)
        ds = read_dicom(path, "source image") if path is not None else None
        if ds is None or str(ds.get("SOPInstanceUID", "")) != uid:
            if self._by_uid is None:
                self._by_uid = {
                    str(self._header(p).get("SOPInstanceUID", "")): p for p in self._paths
                }
            path = self._by_uid.get(uid)
            ds = read_dicom(path, "source image") if path is not None else None
        if ds is not None:
            self._datasets[uid] = ds
        return ds

    def positions(self) -> list[tuple[SourceSlice, npt.NDArray[np.float64]]]:
        """Every source frame with its ImagePositionPatient (for SEGs without
        references to their source images)."""
        out = []
        for path in self._paths:
            ds = self._header(path)
            uid = str(ds.get("SOPInstanceUID", ""))
            frames = int(ds.get("NumberOfFrames") or 1)
            for index in range(min(frames, _MAX_FRAMES)):
                plane = _macro(ds, index, "PlanePositionSequence")
                position = (plane or ds).get("ImagePositionPatient")
                if position is not None and len(position) == 3:
                    out.append((SourceSlice(uid, index + 1), np.array(position, dtype=float)))
        return out

    def single(self) -> SourceSlice | None:
        """The one image, when the series is one single-frame image."""
        if len(self._paths) != 1:
            return None
        ds = self._header(self._paths[0])
        if int(ds.get("NumberOfFrames") or 1) != 1:
            return None
        return SourceSlice(str(ds.get("SOPInstanceUID", "")))


def render_grey(ds: Dataset, frame_number: int = 1) -> npt.NDArray[np.float32]:
    """One frame of an image as display grey levels in [0, 1].

    The stored values are rescaled (Rescale Slope/Intercept, top level or Pixel Value
    Transformation), then windowed linearly: a CT image with its first
    WindowCenter/WindowWidth, else :data:`SOFT_TISSUE`; any other modality from its
    1st to its 99th percentile. MONOCHROME1 is inverted; a colour image becomes its
    luminance.

    Raises
    ------
    PreviewError
        If the image has no pixel data or the frame does not exist.
    """
    frames = int(ds.get("NumberOfFrames") or 1)
    if "PixelData" not in ds or not 1 <= frame_number <= frames:
        raise PreviewError(f"image has no pixel data for frame {frame_number}")
    if int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) > _MAX_FRAME_PIXELS:
        raise PreviewError("image frame is too large to preview")
    try:
        array = pixel_array(ds, index=frame_number - 1) if frames > 1 else ds.pixel_array
    except _DECODE_ERRORS as exc:
        raise PreviewError("image pixel data cannot be decoded") from exc
    values = np.asarray(array, dtype=np.float32)
    if values.ndim == 3:  # colour (rows, columns, samples): already display values
        grey = values[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.asarray(np.clip(grey / 255.0, 0.0, 1.0), dtype=np.float32)
    index = frame_number - 1
    rescale = _macro(ds, index, "PixelValueTransformationSequence") or ds
    slope = float(first_value(rescale.get("RescaleSlope")) or 1.0)
    values = values * slope + float(first_value(rescale.get("RescaleIntercept")) or 0.0)
    low, high = _window(ds, index, values)
    grey = np.clip((values - low) / (high - low), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 1.0 - grey
    return np.asarray(grey, dtype=np.float32)


def _window(ds: Dataset, index: int, values: npt.NDArray[np.float32]) -> tuple[float, float]:
    """(lowest, highest) value shown (PS3.3 C.11.2.1.2, linear, simplified)."""
    if str(ds.get("Modality", "")) == "CT":
        voi = _macro(ds, index, "FrameVOILUTSequence") or ds
        centre, width = first_value(voi.get("WindowCenter")), first_value(voi.get("WindowWidth"))
        try:
            c, w = (float(centre), float(width)) if centre is not None else SOFT_TISSUE
        except (TypeError, ValueError):
            c, w = SOFT_TISSUE
        if w <= 0:
            c, w = SOFT_TISSUE
        return c - w / 2.0, c + w / 2.0
    step = max(1, int(math.sqrt(values.size / 250_000)))  # a sample is enough
    low, high = (float(v) for v in np.percentile(values[::step, ::step], (1.0, 99.0)))
    return low, max(high, low + 1e-3)


# -- segmentations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Frame:
    """One SEG frame: its index, segment (None for a LABELMAP), source and position."""

    index: int
    segment: int | None
    source: SourceSlice | None
    position: tuple[float, float, float] | None


class _Seg:
    """A SEG read back: its frames, where each lies, and how to decode one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        ds = read_dicom(path, "segmentation")
        if str(ds.get("SOPClassUID", "")) not in _SEG_CLASSES or "PixelData" not in ds:
            raise PreviewError(f"{Path(path).name} is not a Segmentation with pixel data")
        frames = int(ds.get("NumberOfFrames") or 1)
        if not 1 <= frames <= _MAX_FRAMES:
            raise PreviewError(f"segmentation NumberOfFrames must be 1..{_MAX_FRAMES}")
        if int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) > _MAX_FRAME_PIXELS:
            raise PreviewError("segmentation frames are too large to preview")
        self.ds = ds
        self.kind = str(ds.get("SegmentationType", "BINARY"))
        # FRACTIONAL: a pixel belongs to the segment from half the maximum up.
        self.threshold = (
            max(1.0, float(ds.get("MaximumFractionalValue") or 255) / 2.0)
            if self.kind == "FRACTIONAL"
            else 1.0
        )
        self.colours = _segment_colours(ds)
        self.frames = [self._frame(i) for i in range(frames)]

    def _frame(self, index: int) -> _Frame:
        ident = _macro(self.ds, index, "SegmentIdentificationSequence")
        number = ident.get("ReferencedSegmentNumber") if ident is not None else None
        segment = int(number) if number is not None else None
        if segment is None and self.kind != "LABELMAP":
            segment = 1 if len(self.colours) == 1 else None
        source = None
        derivation = _macro(self.ds, index, "DerivationImageSequence")
        items = derivation.get("SourceImageSequence") if derivation is not None else None
        if items and "ReferencedSOPInstanceUID" in items[0]:
            frame = int(first_value(items[0].get("ReferencedFrameNumber")) or 1)
            source = SourceSlice(str(items[0].ReferencedSOPInstanceUID), frame)
        plane = _macro(self.ds, index, "PlanePositionSequence")
        position = plane.get("ImagePositionPatient") if plane is not None else None
        xyz = None
        if position is not None and len(position) == 3:
            xyz = (float(position[0]), float(position[1]), float(position[2]))
        return _Frame(index, segment, source, xyz)

    def masks(self, pixels: npt.NDArray[Any], frame: _Frame) -> dict[int, npt.NDArray[np.bool_]]:
        """Segment number -> mask of one decoded frame."""
        if self.kind == "LABELMAP":
            # 0 is the background, even when a segment describes it (highdicom does).
            masks = {n: pixels == n for n in self.colours if n > 0}
            return {n: mask for n, mask in masks.items() if mask.any()}
        if frame.segment is None:
            return {}
        return {frame.segment: pixels >= self.threshold}

    def decode(self, frame: _Frame) -> npt.NDArray[Any]:
        try:
            return np.asarray(pixel_array(self.ds, index=frame.index))
        except _DECODE_ERRORS as exc:
            raise PreviewError("segmentation pixel data cannot be decoded") from exc

    def iter_decoded(self) -> Iterator[tuple[_Frame, npt.NDArray[Any]]]:
        try:
            for frame, pixels in zip(self.frames, iter_pixels(self.ds), strict=False):
                yield frame, np.asarray(pixels)
        except _DECODE_ERRORS as exc:
            raise PreviewError("segmentation pixel data cannot be decoded") from exc

    def normal(self) -> npt.NDArray[np.float64] | None:
        plane = _macro(self.ds, 0, "PlaneOrientationSequence")
        cosines = plane.get("ImageOrientationPatient") if plane is not None else None
        if not cosines or len(cosines) != 6:
            return None
        row, column = np.array(cosines[:3], float), np.array(cosines[3:], float)
        return np.cross(row, column)


def _locate(seg: _Seg, sources: _Sources) -> dict[int, SourceSlice]:
    """SEG frame index -> the source slice it lies on.

    By the frame's Derivation Image reference; else by its Plane Position matched to
    a source frame's (within 0.01 mm); else, for a SEG of one single-frame image (a
    projection), that image.
    """
    located = {f.index: f.source for f in seg.frames if f.source is not None}
    unplaced = [f for f in seg.frames if f.source is None]
    if unplaced and any(f.position is not None for f in unplaced):
        known = sources.positions()
        if known:
            points = np.stack([xyz for _, xyz in known])
            for frame in unplaced:
                if frame.position is None:
                    continue
                distances = np.linalg.norm(points - np.array(frame.position), axis=1)
                nearest = int(distances.argmin())
                if distances[nearest] < 0.01:
                    located[frame.index] = known[nearest][0]
    if len(located) < len(seg.frames):
        only = sources.single()
        if only is not None:
            located.update({f.index: only for f in seg.frames if f.index not in located})
    return located


def _areas(seg: _Seg, located: dict[int, SourceSlice]) -> dict[SourceSlice, float]:
    """Each source slice's share of the segments: per segment, its pixels on the slice
    over its pixels on all slices, summed over the segments.

    Every segment weighs the same however big it is, so the slices chosen show where
    the small segments (lesions) are largest, not where a segment of the whole body
    is; with one segment this ranks by area.
    """
    per_segment: dict[int, dict[SourceSlice, int]] = {}
    for frame, pixels in seg.iter_decoded():
        source = located.get(frame.index)
        if source is None:
            continue
        for number, mask in seg.masks(pixels, frame).items():
            counts = per_segment.setdefault(number, {})
            counts[source] = counts.get(source, 0) + int(np.count_nonzero(mask))
    shares: dict[SourceSlice, float] = dict.fromkeys(located.values(), 0.0)
    for counts in per_segment.values():
        total = sum(counts.values())
        for source, n in counts.items():
            if total:
                shares[source] += n / total
    return shares


def _key_slices(
    seg: _Seg, sources: _Sources, count: int
) -> tuple[list[SourceSlice], dict[int, SourceSlice]]:
    located = _locate(seg, sources)
    if not located:
        raise PreviewError(
            "no segmentation frame could be placed on a source image: no"
            " DerivationImageSequence reference or PlanePositionSequence matches source_paths"
        )
    areas = _areas(seg, located)
    ranked = sorted((s for s in areas if areas[s] > 0), key=lambda s: (-areas[s], s))
    chosen = ranked[:count] or sorted(areas)[:1]
    return _along_volume(seg, located, chosen), located


def _along_volume(
    seg: _Seg, located: dict[int, SourceSlice], chosen: list[SourceSlice]
) -> list[SourceSlice]:
    """The chosen slices in order along the slice normal (else by SEG frame order)."""
    first_frame: dict[SourceSlice, _Frame] = {}
    for frame in seg.frames:
        source = located.get(frame.index)
        if source in chosen and source not in first_frame:
            first_frame[source] = frame
    normal = seg.normal()
    positions = {s: first_frame[s].position for s in chosen}
    if normal is None or any(p is None for p in positions.values()):
        return sorted(chosen, key=lambda s: first_frame[s].index)
    return sorted(chosen, key=lambda s: float(np.dot(normal, np.asarray(positions[s]))))


def seg_key_slices(
    seg_path: str | os.PathLike[str],
    source_paths: Iterable[str | os.PathLike[str]],
    count: int = _KEY_SLICES,
) -> list[SourceSlice]:
    """The source slices a SEG thumbnail shows: up to `count` with the largest
    segmented area (all segments together), ordered along the volume.

    A SEG whose segments are all empty gives its first source slice.

    Raises
    ------
    PreviewError
        If the SEG cannot be read or no frame lies on one of `source_paths`.
    """
    chosen, _ = _key_slices(_Seg(seg_path), _Sources(source_paths), count)
    return chosen


def seg_thumbnail(
    seg_path: str | os.PathLike[str], source_paths: Iterable[str | os.PathLike[str]]
) -> bytes:
    """PNG of a SEG over its key slices (:func:`seg_key_slices`), side by side.

    Parameters
    ----------
    seg_path
        The DICOM Segmentation (BINARY, FRACTIONAL or LABELMAP).
    source_paths
        The files of its source series; the slices are found by SOP Instance UID.

    Returns
    -------
    bytes
        PNG, RGB, at most :data:`MAX_WIDTH` wide. Outside a segment a pixel is the
        windowed source grey (:func:`render_grey`); inside, that grey blended with
        the segment's colour at :data:`ALPHA` (the smallest segment on top); a
        segment's edge is its colour.

    Raises
    ------
    PreviewError
        If the SEG or a source cannot be read, or no frame lies on a source.
    """
    seg, sources = _Seg(seg_path), _Sources(source_paths)
    chosen, located = _key_slices(seg, sources, _KEY_SLICES)
    tiles = []
    for source in chosen:
        ds = sources.dataset(source.sop_instance_uid)
        if ds is None:
            raise PreviewError(f"source image {source.sop_instance_uid} is not in source_paths")
        grey = render_grey(ds, source.frame_number)
        tiles.append(_Tile(grey, _slice_masks(seg, located, source, grey.shape)))
    image = _compose(tiles)
    logger.debug(
        "SEG thumbnail rendered",
        extra={"action": "seg_thumbnail_rendered", "sop_instance_uid": str(seg.ds.SOPInstanceUID),
               "slices": len(chosen)},
    )  # fmt: skip
    return _png(image)


def _slice_masks(
    seg: _Seg, located: dict[int, SourceSlice], source: SourceSlice, shape: tuple[int, ...]
) -> list[tuple[npt.NDArray[np.bool_], tuple[int, int, int]]]:
    """The masks of one source slice with their colours, one per segment."""
    merged: dict[int, npt.NDArray[np.bool_]] = {}
    for frame in seg.frames:
        if located.get(frame.index) != source:
            continue
        for number, mask in seg.masks(seg.decode(frame), frame).items():
            if mask.shape != shape:
                raise PreviewError("segmentation Rows/Columns differ from its source image's")
            merged[number] = merged[number] | mask if number in merged else mask
    return [(mask, seg.colours.get(n, PALETTE[0])) for n, mask in sorted(merged.items())]


# -- composing ----------------------------------------------------------------------

_Layer = tuple[npt.NDArray[np.bool_], tuple[int, int, int]]


@dataclass(frozen=True, slots=True)
class _Tile:
    grey: npt.NDArray[np.float32]
    layers: list[_Layer]


def _plane_shape(plane: npt.NDArray[Any]) -> tuple[int, int]:
    return int(plane.shape[0]), int(plane.shape[1])


def _tile_sizes(shapes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(height, width) of each tile: one height, never enlarged, all within MAX_WIDTH."""
    height = min([_TILE_HEIGHT, *(rows for rows, _ in shapes)])
    aspects = [columns / rows for rows, columns in shapes]
    room = MAX_WIDTH - _GAP * (len(shapes) - 1)
    if sum(math.floor(a * height) for a in aspects) > room:
        height = max(1, math.floor(room / sum(aspects)))
    return [(height, max(1, math.floor(a * height))) for a in aspects]


def _resize(plane: npt.NDArray[np.float32], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    if plane.shape == size:
        return plane
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    # BOX averages the pixels a thumbnail pixel covers (no aliasing when shrinking).
    resized = image.resize((size[1], size[0]), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.float32)


def _edges(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The pixels of `mask` with a 4-neighbour outside it."""
    inner = np.pad(mask, 1, constant_values=False)
    eroded = inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1]
    eroded &= inner[1:-1, :-2] & inner[1:-1, 2:]
    return mask & ~eroded


def _overlay(grey: npt.NDArray[np.float32], layers: list[_Layer]) -> npt.NDArray[np.uint8]:
    """RGB of `grey` with each layer blended in (largest first, so small ones stay
    visible on top) and outlined."""
    base = np.rint(grey * 255.0).astype(np.float32)
    order = sorted(layers, key=lambda layer: -int(np.count_nonzero(layer[0])))
    top = np.full(grey.shape, -1, dtype=np.int16)
    for number, (mask, _) in enumerate(order):
        top[mask] = number
    rgb = np.repeat(base[..., None], 3, axis=2)
    if order:
        colours = np.array([colour for _, colour in order], dtype=np.float32)
        # A segment over a large part of the image (a body or organ outline) is only
        # outlined, so the anatomy and the small segments on it stay readable.
        filled = np.array(
            [np.count_nonzero(mask) <= OUTLINE_ONLY_SHARE * mask.size for mask, _ in order]
        )
        inside = top >= 0
        inside[inside] = filled[top[inside]]
        rgb[inside] = (1.0 - ALPHA) * rgb[inside] + ALPHA * colours[top[inside]]
        for mask, colour in order:
            rgb[_edges(mask)] = colour
    out: npt.NDArray[np.uint8] = np.rint(rgb).astype(np.uint8)
    return out


def _compose(tiles: Sequence[_Tile]) -> Image.Image:
    """The tiles side by side on black, each scaled to one height."""
    sizes = _tile_sizes([_plane_shape(tile.grey) for tile in tiles])
    width = sum(w for _, w in sizes) + _GAP * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, sizes[0][0]))
    x = 0
    for tile, size in zip(tiles, sizes, strict=True):
        layers = [(_resize(m.astype(np.float32), size) >= 0.5, c) for m, c in tile.layers]
        rgb = _overlay(np.clip(_resize(tile.grey, size), 0.0, 1.0), layers)
        canvas.paste(Image.fromarray(rgb), (x, 0))
        x += size[1] + _GAP
    return canvas


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


# -- projection views ---------------------------------------------------------------


def projection_preview(
    image_paths: Sequence[str | os.PathLike[str]],
    regions: Iterable[ImageRegion] = (),
    *,
    segmentation_paths: Sequence[str | os.PathLike[str]] = (),
) -> bytes:
    """PNG of projection views side by side, with regions and segments drawn.

    Parameters
    ----------
    image_paths
        The views (MG, DX, CR), one file each, shown left to right in this order
        (the first frame of a multi-frame image).
    regions
        Regions to outline on the image each references (:attr:`FindingRow.regions`
        of :func:`sr_findings`); one colour per label, from :data:`PALETTE`.
        Regions on other images are ignored.
    segmentation_paths
        SEGs of these images, laid over them as :func:`seg_thumbnail` does.

    Returns
    -------
    bytes
        PNG, RGB, at most :data:`MAX_WIDTH` wide.

    Raises
    ------
    PreviewError
        If an image or SEG cannot be read or has no frame on the images.
    """
    if not image_paths:
        raise PreviewError("image_paths must name at least one image")
    images = [read_dicom(path, "image") for path in image_paths]
    greys = [render_grey(ds) for ds in images]
    layers: list[list[_Layer]] = [[] for _ in images]
    for path in segmentation_paths:
        seg = _Seg(path)
        located = _locate(seg, _Sources(image_paths))
        for index, ds in enumerate(images):
            source = SourceSlice(str(ds.SOPInstanceUID))
            layers[index] += _slice_masks(seg, located, source, greys[index].shape)
    canvas = _compose([_Tile(g, lay) for g, lay in zip(greys, layers, strict=True)])
    _draw_regions(canvas, images, greys, list(regions))
    return _png(canvas)


def _draw_regions(
    canvas: Image.Image,
    images: Sequence[Dataset],
    greys: Sequence[npt.NDArray[np.float32]],
    regions: Sequence[ImageRegion],
) -> None:
    sizes = _tile_sizes([_plane_shape(g) for g in greys])
    labels = list(dict.fromkeys(r.label for r in regions))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for ds, grey, (height, width) in zip(images, greys, sizes, strict=True):
        uid = str(ds.SOPInstanceUID)
        scale = (width / grey.shape[1], height / grey.shape[0])
        for region in regions:
            if region.sop_instance_uid == uid and region.frame_number in (None, 1):
                colour = PALETTE[labels.index(region.label) % len(PALETTE)]
                points = [(x + c * scale[0], r * scale[1]) for c, r in region.points]
                _draw_region(draw, region.graphic_type, points, colour)
        x += width + _GAP


def _draw_region(
    draw: ImageDraw.ImageDraw,
    graphic_type: str,
    points: list[tuple[float, float]],
    colour: tuple[int, int, int],
) -> None:
    """One SCOORD in thumbnail coordinates (PS3.3 C.18.6.1.2 graphic types)."""
    if graphic_type == "CIRCLE" and len(points) >= 2:
        (cx, cy), (px, py) = points[:2]
        radius = math.hypot(px - cx, py - cy)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour, width=2)
    elif graphic_type == "ELLIPSE" and len(points) >= 4:
        draw.polygon(_ellipse(points[:4]), outline=colour, width=2)
    elif graphic_type in ("POLYLINE", "POLYGON") and len(points) >= 2:
        closed = graphic_type == "POLYGON" and points[0] != points[-1]
        draw.line([*points, points[0]] if closed else points, fill=colour, width=2)
    else:  # POINT, MULTIPOINT: a cross at each point
        for px, py in points:
            draw.line((px - 4, py, px + 4, py), fill=colour, width=2)
            draw.line((px, py - 4, px, py + 4), fill=colour, width=2)


def _ellipse(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A polygon of an ELLIPSE given by its major then its minor axis end points."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = points
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    major, minor = math.hypot(x1 - x0, y1 - y0) / 2.0, math.hypot(x3 - x2, y3 - y2) / 2.0
    angle = math.atan2(y1 - y0, x1 - x0)
    out = []
    for step in range(48):
        t = 2.0 * math.pi * step / 48
        u, v = major * math.cos(t), minor * math.sin(t)
        out.append((cx + u * math.cos(angle) - v * math.sin(angle),
                    cy + u * math.sin(angle) + v * math.cos(angle)))  # fmt: skip
    return out
