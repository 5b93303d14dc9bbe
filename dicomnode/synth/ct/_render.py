"""Rendering: paints to labels, labels to CT numbers, then the scanner's blur and noise.

The volume is rendered in slabs of slices, so memory stays bounded for a 512 x 512 x
300 series. Each output slice is the mean of ``s`` sub-slices across its thickness
(partial volume along z: a thick slice shows the average of what it spans); the
labels of the tissue and lesion volumes are those at the slice's centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dicomnode.synth.ct._atlas import Streak
from dicomnode.synth.ct._scanner import Scanner, add_noise, add_streaks, blur
from dicomnode.synth.ct._shapes import LatticeNoise, Paint, paint_grid
from dicomnode.synth.ct._tissues import CtTissue

__all__ = ["Lookups", "Plan", "render", "sub_slices"]

# Streams of the seeded generator (the anatomy and the scanner use others).
_TEXTURE_STREAM = 20
_NOISE_STREAM = 21
_STREAK_STREAM = 22
# Output voxels (slices x rows x columns) per slab: 16 MB of float32 each.
_SLAB_VOXELS = 1 << 22
_HU_MIN, _HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True, slots=True)
class Lookups:
    """Per render label (256 entries): CT number, texture, and the labels it stands for.

    Attributes
    ----------
    hu, coarse, fine, gradient
        Mean HU, coarse and fine texture amplitude (HU), posterior gradient (HU/mm).
    tissue
        The tissue label a render label shows in the tissue volume.
    lesion
        The lesion number (1, 2, ...) a render label belongs to, 0 for none.
    """

    hu: npt.NDArray[np.float32]
    coarse: npt.NDArray[np.float32]
    fine: npt.NDArray[np.float32]
    gradient: npt.NDArray[np.float32]
    tissue: npt.NDArray[np.uint8]
    lesion: npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything :func:`render` needs, already drawn."""

    seed: int
    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    pixel_spacing: float
    slice_spacing: float
    slice_thickness: float
    paints: tuple[Paint, ...]
    lookups: Lookups
    scanner: Scanner
    streaks: tuple[Streak, ...]
    body_y: float


def sub_slices(thickness: float) -> int:
    """Odd number of sub-slices across a slice: 1 up to 1.25 mm, 3 up to 5 mm, then 5."""
    return 1 if thickness <= 1.25 else 3 if thickness <= 5.0 else 5


def render(
    plan: Plan,
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Render the CT numbers, tissue labels and lesion labels (slices, rows, columns)."""
    slices, rows, columns = plan.shape
    ps = plan.pixel_spacing
    x = (plan.origin[0] + np.arange(columns) * ps).astype(np.float32)
    y = (plan.origin[1] + np.arange(rows) * ps).astype(np.float32)
    z = np.asarray(plan.origin[2] + np.arange(slices) * plan.slice_spacing, dtype=np.float64)
    s = sub_slices(plan.slice_thickness)
    offsets = np.asarray((np.arange(s) - (s - 1) / 2) * (plan.slice_thickness / s), np.float64)
    textures = _textures(plan, x, y, z)
    hu = np.empty(plan.shape, dtype=np.int16)
    tissues = np.empty(plan.shape, dtype=np.uint8)
    lesions = np.empty(plan.shape, dtype=np.uint8)
    step = max(1, _SLAB_VOXELS // (rows * columns))
    for k0 in range(0, slices, step):
        k1 = min(slices, k0 + step)
        labels = _labels(plan, x, y, z[k0:k1], offsets)
        centre = labels[:, s // 2]
        tissues[k0:k1] = plan.lookups.tissue[centre]
        lesions[k0:k1] = plan.lookups.lesion[centre]
        z32 = z[k0:k1].astype(np.float32)
        values = _values(plan, labels, y, [t.sample(x, y, z32) for t in textures])
        hu[k0:k1] = _scan(plan, values, (x, y), z[k0:k1], range(k0, k1))
    return hu, tissues, lesions


def _textures(
    plan: Plan, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], z: npt.NDArray[np.float64]
) -> tuple[LatticeNoise, LatticeNoise]:
    rng = np.random.default_rng([plan.seed, _TEXTURE_STREAM])
    lo = (float(x[0]), float(y[0]), float(z[0]) - plan.slice_thickness)
    hi = (float(x[-1]), float(y[-1]), float(z[-1]) + plan.slice_thickness)
    return LatticeNoise(rng, 20.0, lo, hi), LatticeNoise(rng, 5.0, lo, hi)


def _labels(
    plan: Plan,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    z: npt.NDArray[np.float64],
    offsets: npt.NDArray[np.float64],
) -> npt.NDArray[np.uint8]:
    """Render labels of the sub-slices of slices at `z`: (slices, sub_slices, rows, columns)."""
    s = len(offsets)
    positions = (z[:, None] + offsets[None, :]).ravel()
    # Overlapping slices interleave their sub-slices: paint them in ascending z.
    order = np.argsort(positions, kind="stable")
    ascending = positions[order].astype(np.float32)
    labels = np.zeros((len(positions), len(y), len(x)), dtype=np.uint8)
    for paint in plan.paints:
        paint_grid(labels, paint, x, y, ascending)
    unsorted = np.empty_like(labels)
    unsorted[order] = labels
    return unsorted.reshape(len(z), s, len(y), len(x))


def _values(
    plan: Plan,
    labels: npt.NDArray[np.uint8],
    y: npt.NDArray[np.float32],
    textures: list[npt.NDArray[np.float32]],
) -> npt.NDArray[np.float32]:
    """Mean CT number of each slice over its sub-slices, with the texture of its centre.

    Only voxels whose sub-slices disagree (edges crossing the slice) need the mean of
    several labels; the rest take their one label's value.
    """
    lut = plan.lookups
    s = labels.shape[1]
    centre = labels[:, s // 2]
    values = lut.hu[centre]
    if s > 1:
        mixed = np.zeros(centre.shape, dtype=bool)
        for i in range(s):
            if i != s // 2:
                mixed |= labels[:, i] != centre
        where = np.nonzero(mixed)
        if where[0].size:
            # Partial volume: the mean over the slice's thickness.
            values[where] = lut.hu[labels[where[0], :, where[1], where[2]]].mean(axis=1)
    coarse, fine = textures
    values += lut.coarse[centre] * coarse
    values += lut.fine[centre] * fine
    lung = centre == CtTissue.LUNG
    if lung.any():
        toward_back = np.broadcast_to((y - np.float32(plan.body_y))[None, :, None], centre.shape)
        values[lung] += lut.gradient[CtTissue.LUNG] * toward_back[lung]
    # Stool is mottled: gas bubbles where the fine texture peaks.
    values[(centre == CtTissue.STOOL) & (fine > 0.6)] = np.float32(-900.0)
    return np.asarray(values, dtype=np.float32)


def _scan(
    plan: Plan,
    values: npt.NDArray[np.float32],
    axes: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    z: npt.NDArray[np.float64],
    indices: range,
) -> npt.NDArray[np.int16]:
    """Blur, noise, streaks, the reconstruction circle and quantisation to HU."""
    scanner = plan.scanner
    image = blur(values, scanner.kernel, plan.pixel_spacing)
    seeds = [(plan.seed, _NOISE_STREAM, k) for k in indices]
    add_noise(image, seeds, scanner, plan.pixel_spacing)
    for i, k in enumerate(indices):
        if any(s.z0 <= z[i] <= s.z1 for s in plan.streaks):
            rng = np.random.default_rng([plan.seed, _STREAK_STREAM, k])
            add_streaks(image[i], float(z[i]), plan.streaks, axes, rng)
    if scanner.circular:
        x, y = axes
        radius = scanner.field_of_view / 2
        cx, cy = (x[0] + x[-1]) / 2, (y[0] + y[-1]) / 2
        outside = (x[None, :] - cx) ** 2 + (y[:, None] - cy) ** 2 > radius**2
        image[:, outside] = _HU_MIN
    np.rint(image, out=image)
    np.clip(image, _HU_MIN, _HU_MAX, out=image)
    return image.astype(np.int16)
