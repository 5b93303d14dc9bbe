"""Preprocessing any model can use: crop, denoise, window, resample, label components.

Every function is a plain numpy (or numpy-in, numpy-out torch) function on arrays of
shape ``(slices, rows, columns)``; none reads files or keeps state.

- :func:`find_body_box` crops to the body (or any region brighter than a threshold):
  the largest connected component of the thresholded projection along the slices,
  its bounding box plus a margin in millimetres. In-plane only: a chest CT's body
  fills every slice, while half a 512 x 512 field of view is often air.
- :func:`denoise` smooths each slice: a Gaussian (``sigma`` in pixels) or a 3 x 3
  median. Optional: a network trained on noisy data learns its own filter.
- :func:`window` maps a window centre / width (PS3.3 C.11.2.1.2, linear) to [0, 1];
  :func:`zscore` standardises to zero mean and unit variance, inside a mask if given.
- :func:`resample_slices` resizes every slice to a new in-plane shape on the same
  field of view (pixel centres at ``(i + 0.5) * extent / n``, torch's
  ``align_corners=False``), so going to a working spacing and back with
  :func:`inplane_shape` / the source shape lands on the exact source grid.
  :func:`resample_mask` does it for masks: linear interpolation of the 0/1 values
  then a 0.5 threshold (``method="threshold"``, smooth edges) or nearest neighbour.
  :func:`resize_slices` is the same resampling on a torch tensor (any device), for
  pipelines that keep their arrays on the GPU.
- :func:`label_components` labels face-connected components of a mask of any
  dimension (scipy is not a dependency): union-find over the neighbour pairs with
  pointer jumping, vectorised in numpy; :func:`component_boxes` gives their
  bounding boxes (scipy's ``find_objects``) and :func:`longest_axial_diameter`
  the RECIST-style size of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

__all__ = [
    "CropBox",
    "component_boxes",
    "denoise",
    "find_body_box",
    "inplane_shape",
    "label_components",
    "largest_component",
    "longest_axial_diameter",
    "resample_mask",
    "resample_slices",
    "resize_slices",
    "window",
    "zscore",
]

_Scalar = TypeVar("_Scalar", bound=np.generic)

#: Slices resampled per torch call: bounds the float32 temporaries of a big series.
_CHUNK = 32


@dataclass(frozen=True, slots=True)
class CropBox:
    """An in-plane box, ``rows row0:row1`` and ``columns column0:column1`` (numpy slicing)."""

    row0: int
    row1: int
    column0: int
    column1: int

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) inside the box."""
        return self.row1 - self.row0, self.column1 - self.column0

    def crop(self, array: npt.NDArray[_Scalar]) -> npt.NDArray[_Scalar]:
        """Return the box of every slice of ``array`` (slices, rows, columns), a view."""
        return array[..., self.row0 : self.row1, self.column0 : self.column1]


def label_components(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.int32], int]:
    """Label the face-connected components of a boolean array (4-connected in 2D, 6 in 3D).

    Parameters
    ----------
    mask
        Boolean array of any dimension.

    Returns
    -------
    labels : numpy.ndarray
        ``int32`` array of ``mask``'s shape: 0 outside, 1..count inside, numbered in
        the raster order of each component's first voxel.
    count : int
        Number of components.
    """
    from scipy import ndimage  # scipy's default structure is face connectivity

    labels, count = ndimage.label(np.asarray(mask, dtype=bool))
    return labels.astype(np.int32, copy=False), int(count)


def component_boxes(labels: npt.NDArray[np.integer], count: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of each labelled component, as scipy's ``ndimage.find_objects``.

    Parameters
    ----------
    labels
        Labels 0 (background) to ``count``, e.g. from :func:`label_components`.
    count
        Number of components.

    Returns
    -------
    list
        ``boxes[i]`` is a tuple of slices (one per axis) around label ``i + 1``, or
        None when that label is absent.
    """
    boxes: list[tuple[slice, ...] | None] = [None] * count
    where = np.nonzero(labels)
    if not where[0].size or count == 0:
        return boxes
    values = labels[where].astype(np.intp) - 1
    lows = [np.full(count, np.iinfo(np.intp).max) for _ in where]
    highs = [np.full(count, -1) for _ in where]
    for axis, coordinates in enumerate(where):
        np.minimum.at(lows[axis], values, coordinates)
        np.maximum.at(highs[axis], values, coordinates)
    for i in np.flatnonzero(highs[0] >= 0):
        boxes[i] = tuple(
            slice(int(lo[i]), int(hi[i]) + 1) for lo, hi in zip(lows, highs, strict=True)
        )
    return boxes


def largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Return the largest face-connected component of ``mask`` (all False if it is empty)."""
    labels, count = label_components(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest: npt.NDArray[np.bool_] = labels == int(np.argmax(sizes))
    return largest


def longest_axial_diameter(
    component: npt.NDArray[np.bool_], pixel_spacing: tuple[float, float]
) -> float:
    """Longest in-plane diameter of a mask over its slices (RECIST style), millimetres.

    The distance between the two farthest pixel centres of one slice's outline, plus
    half a pixel: the extreme centres of a disc drawn by pixel centres lie on average
    about half a pixel inside its diameter.

    Parameters
    ----------
    component
        Boolean mask (slices, rows, columns), e.g. one lesion's bounding box.
    pixel_spacing
        (between rows, between columns), millimetres.

    Returns
    -------
    float
        The diameter; 0 for an empty mask.
    """
    longest = -1.0
    step = np.array(pixel_spacing, dtype=np.float64)
    for plane in component:
        if not plane.any():
            continue
        # The outline: pixels with a 4-neighbour outside (the padding counts as outside).
        p = np.pad(plane, 1)
        inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        points = np.argwhere(plane & ~inner) * step
        if len(points) > 2000:  # a huge component: a thinned outline is close enough
            points = points[:: len(points) // 2000 + 1]
        gaps = points[:, np.newaxis, :] - points[np.newaxis, :, :]
        longest = max(longest, float(np.sqrt((gaps**2).sum(axis=-1)).max()))
    return longest + float(step.mean()) / 2 if longest >= 0 else 0.0


def find_body_box(
    array: npt.NDArray[np.floating],
    pixel_spacing: tuple[float, float],
    *,
    threshold: float = -500.0,
    margin_mm: float = 10.0,
) -> CropBox:
    """Find the in-plane bounding box of the body, with a margin.

    Voxels above ``threshold`` (HU: air is -1000, fat -100) are projected along the
    slices; the box is that of the projection's largest component (so a stray
    bright spot outside the body does not widen it), grown by ``margin_mm`` on every
    side and clipped to the image.

    Parameters
    ----------
    array
        Volume (slices, rows, columns), e.g. Hounsfield units.
    pixel_spacing
        (between rows, between columns), millimetres.
    threshold
        Values above it are body.
    margin_mm
        Margin around the component's box, millimetres.

    Returns
    -------
    CropBox
        The box; the whole image when nothing is above the threshold.
    """
    rows, columns = array.shape[1:]
    projection = np.zeros((rows, columns), dtype=bool)
    for start in range(0, array.shape[0], _CHUNK):  # no full-size boolean temporary
        projection |= (array[start : start + _CHUNK] > threshold).any(axis=0)
    body = largest_component(projection)
    if not body.any():
        return CropBox(0, rows, 0, columns)
    hit_rows, hit_columns = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    grow_r = int(np.ceil(margin_mm / pixel_spacing[0]))
    grow_c = int(np.ceil(margin_mm / pixel_spacing[1]))
    return CropBox(
        max(0, int(hit_rows[0]) - grow_r),
        min(rows, int(hit_rows[-1]) + 1 + grow_r),
        max(0, int(hit_columns[0]) - grow_c),
        min(columns, int(hit_columns[-1]) + 1 + grow_c),
    )


def denoise(
    array: npt.NDArray[np.floating],
    method: Literal["gaussian", "median"] = "gaussian",
    sigma: float = 1.0,
) -> npt.NDArray[np.float32]:
    """Smooth every slice in-plane.

    Parameters
    ----------
    array
        Volume (slices, rows, columns).
    method
        ``gaussian`` (separable, truncated at 3 sigma, reflected borders) or
        ``median`` (3 x 3, reflected borders).
    sigma
        Gaussian standard deviation in pixels; ignored by ``median``.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape.

    Raises
    ------
    ValueError
        For an unknown method or a sigma that is not positive.
    """
    if method not in ("gaussian", "median"):
        raise ValueError(f"denoise method must be 'gaussian' or 'median', got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"denoise sigma must be positive, got {sigma}")
    out = np.empty(array.shape, dtype=np.float32)
    for start in range(0, array.shape[0], _CHUNK):
        chunk = torch.from_numpy(np.asarray(array[start : start + _CHUNK], dtype=np.float32))
        x = chunk.unsqueeze(1)
        smooth = _gaussian(x, sigma) if method == "gaussian" else _median3(x)
        out[start : start + _CHUNK] = smooth.squeeze(1).numpy()
    return out


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps = taps / taps.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1))
    return F.conv2d(x, taps.view(1, 1, -1, 1))


def _median3(x: torch.Tensor) -> torch.Tensor:
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    patches = F.unfold(padded, 3)  # (batch, 9, rows * columns)
    return patches.median(dim=1).values.view(x.shape)


def window(array: npt.NDArray[np.floating], centre: float, width: float) -> npt.NDArray[np.float32]:
    """Map a window to [0, 1]: ``centre - width / 2`` to 0, ``centre + width / 2`` to 1, clipped.

    Parameters
    ----------
    array
        Values (e.g. HU), any shape.
    centre, width
        Window centre and width, in the array's units (soft tissue: 40 / 400).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape.

    Raises
    ------
    ValueError
        When ``width`` is not positive.
    """
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    out = (np.asarray(array, dtype=np.float32) - np.float32(centre - width / 2)) / np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def zscore(
    array: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.float32]:
    """Standardise to zero mean, unit standard deviation (of the voxels in ``mask``, if given).

    Parameters
    ----------
    array
        Values, any shape.
    mask
        Voxels the statistics come from (e.g. the body), same shape; all by default.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape; a constant input gives zeros.
    """
    values = np.asarray(array, dtype=np.float32)
    sample = values if mask is None else values[mask]
    if sample.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    std = float(sample.std())
    return ((values - np.float32(sample.mean())) / np.float32(std if std > 0 else 1.0)).astype(
        np.float32, copy=False
    )


def inplane_shape(
    shape: tuple[int, int], pixel_spacing: tuple[float, float], target_spacing: float
) -> tuple[int, int]:
    """Rows and columns that cover the same field of view at about ``target_spacing``.

    The spacing actually reached is ``extent / size``, within half a pixel of the
    target, so the field of view is kept exactly.

    Parameters
    ----------
    shape
        (rows, columns) at ``pixel_spacing``.
    pixel_spacing
        (between rows, between columns), millimetres.
    target_spacing
        Wanted spacing, millimetres.
    """
    if not target_spacing > 0:
        raise ValueError(f"target_spacing must be positive, got {target_spacing}")
    return (
        max(1, round(shape[0] * pixel_spacing[0] / target_spacing)),
        max(1, round(shape[1] * pixel_spacing[1] / target_spacing)),
    )


def resample_slices(
    array: npt.NDArray[np.generic],
    shape: tuple[int, int],
    mode: Literal["linear", "nearest"] = "linear",
) -> npt.NDArray[np.float32]:
    """Resize every slice to ``shape`` (rows, columns) over the same field of view.

    Parameters
    ----------
    array
        (slices, rows, columns), or (slices, channels, rows, columns).
    shape
        New (rows, columns).
    mode
        ``linear`` (bilinear, antialiased when shrinking) or ``nearest``.

    Returns
    -------
    numpy.ndarray
        ``float32``, the new in-plane shape.
    """
    planar = array.ndim == 3
    stack = array[:, np.newaxis] if planar else array
    out = np.empty((stack.shape[0], stack.shape[1], *shape), dtype=np.float32)
    for start in range(0, stack.shape[0], _CHUNK):
        chunk = torch.from_numpy(np.asarray(stack[start : start + _CHUNK], dtype=np.float32))
        out[start : start + _CHUNK] = resize_slices(chunk, shape, mode).numpy()
    return out[:, 0] if planar else out


def resize_slices(
    x: torch.Tensor,
    shape: tuple[int, int],
    mode: Literal["linear", "nearest"] = "linear",
) -> torch.Tensor:
    """Resize a float tensor (batch, channels, rows, columns) in-plane, as :func:`resample_slices`.

    Parameters
    ----------
    x
        Floating-point tensor on any device.
    shape
        New (rows, columns).
    mode
        ``linear`` (bilinear, antialiased when shrinking) or ``nearest``.

    Returns
    -------
    torch.Tensor
        ``x`` itself when the shape is already ``shape``, else a new tensor.
    """
    if tuple(x.shape[2:]) == shape:
        return x
    if mode == "linear":
        # Antialiasing (a triangle filter as wide as the step) when shrinking, so
        # downsampled noise is averaged rather than aliased; no effect when growing.
        return F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(x, size=shape, mode="nearest-exact")


def resample_mask(
    mask: npt.NDArray[np.bool_],
    shape: tuple[int, int],
    method: Literal["threshold", "nearest"] = "threshold",
) -> npt.NDArray[np.bool_]:
    """Resize a mask (slices, rows, columns) in-plane to ``shape``.

    Parameters
    ----------
    mask
        Boolean mask.
    shape
        New (rows, columns), e.g. the source grid's.
    method
        ``threshold``: bilinear interpolation of the 0/1 values, then >= 0.5, which
        gives smooth edges when upsampling; ``nearest``: nearest neighbour.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the new in-plane shape.
    """
    if method == "nearest":
        return resample_slices(mask.astype(np.uint8), shape, "nearest") > 0.5
    return resample_slices(mask.astype(np.uint8), shape, "linear") >= 0.5
