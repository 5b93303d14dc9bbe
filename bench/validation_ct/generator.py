"""Validation CT studies with known lesions, for checking the ``ct-lesion-seg`` model.

Written independently of the training data generator (see README.md in this folder):
it shares no code or geometry with it and must never be used to train or tune a model.

Each study is a chest/abdomen CT series (CT Image Storage, one instance per slice) of a
simulated patient lying supine on the table, with the voxel-exact truth of every lesion:

- anatomy built from analytic shapes in a body-relative frame (body outline, fat and
  muscle wall, spine, ribs, sternum, lungs with vessels and airways, heart, aorta, IVC,
  portal vein, liver with vessels, gallbladder, spleen, kidneys, pancreas, stomach,
  colon and small bowel with air/fluid, bladder and pelvic bones), sized, placed and
  contrast-enhanced differently for every seed;
- 1 to 4 lesions in the liver, spleen, kidneys or lungs (hypodense, hyperdense,
  cystic or rim-enhancing; spherical, ellipsoidal or lobulated; 6-35 mm), each fully
  inside its organ;
- correlated Gaussian noise and a slight blur, then rescale to 16-bit stored values.

Usage as a script::

    .venv/bin/python bench/validation_ct/generator.py OUTDIR --count 8 --seed 1000

writes ``OUTDIR/study-<seed>/<n>.dcm`` plus ``truth.npz`` and ``truth.json`` per study.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian
from pydicom.uid import generate_uid as _generate_uid
from scipy import ndimage

__all__ = [
    "LESION_ORGANS",
    "LesionTruth",
    "Tissue",
    "ValidationStudy",
    "build_studies",
    "build_study",
    "main",
    "write_study",
]

Array = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float64]
Region = Callable[[Array, Array, Array], Array]

HU_MIN, HU_MAX = -1024.0, 3071.0


class Tissue(IntEnum):
    """The class of each voxel of the anatomy (``ValidationStudy.tissues``)."""

    AIR = 0
    TABLE_SHELL = 1
    TABLE_FOAM = 2
    FAT = 3  # subcutaneous
    MUSCLE = 4
    VISCERAL_FAT = 5  # intra-abdominal and mediastinal fat
    LUNG = 6
    LUNG_VESSEL = 7
    AIRWAY = 8
    HEART_WALL = 9
    HEART_BLOOD = 10
    AORTA = 11
    IVC = 12
    PORTAL_VEIN = 13
    LIVER = 14
    LIVER_VESSEL = 15
    GALLBLADDER = 16
    SPLEEN = 17
    KIDNEY_CORTEX = 18
    KIDNEY_MEDULLA = 19
    RENAL_SINUS = 20
    PANCREAS = 21
    GI_WALL = 22
    GI_FLUID = 23
    GI_AIR = 24
    STOOL = 25
    BLADDER = 26
    CORTICAL_BONE = 27
    MARROW = 28
    DISC = 29
    CSF = 30


#: Organs that may hold a lesion -> the tissues that make up that organ. A lesion lies
#: in voxels of these tissues only, and so do its neighbours one voxel away.
LESION_ORGANS: dict[str, tuple[Tissue, ...]] = {
    "liver": (Tissue.LIVER, Tissue.LIVER_VESSEL),
    "spleen": (Tissue.SPLEEN,),
    "kidney": (Tissue.KIDNEY_CORTEX, Tissue.KIDNEY_MEDULLA),
    "lung": (Tissue.LUNG, Tissue.LUNG_VESSEL),
}
# The tissue whose HU a lesion's contrast is relative to.
_REFERENCE_TISSUE = {
    "liver": Tissue.LIVER,
    "spleen": Tissue.SPLEEN,
    "kidney": Tissue.KIDNEY_CORTEX,
    "lung": Tissue.LUNG,
}
KINDS = ("hypodense", "hyperdense", "cystic", "rim_enhancing")
SHAPES = ("sphere", "ellipsoid", "lobulated")
PHASES = ("none", "arterial", "portal_venous")

# Texture amplitude (HU, standard deviation of a smooth random field) per tissue.
_TEXTURE = {
    Tissue.TABLE_SHELL: 5,
    Tissue.TABLE_FOAM: 8,
    Tissue.FAT: 6,
    Tissue.MUSCLE: 4,
    Tissue.VISCERAL_FAT: 8,
    Tissue.LUNG: 18,
    Tissue.LUNG_VESSEL: 5,
    Tissue.AIRWAY: 4,
    Tissue.HEART_WALL: 4,
    Tissue.HEART_BLOOD: 3,
    Tissue.AORTA: 3,
    Tissue.IVC: 5,
    Tissue.PORTAL_VEIN: 3,
    Tissue.LIVER: 3,
    Tissue.LIVER_VESSEL: 3,
    Tissue.GALLBLADDER: 2,
    Tissue.SPLEEN: 3,
    Tissue.KIDNEY_CORTEX: 4,
    Tissue.KIDNEY_MEDULLA: 4,
    Tissue.RENAL_SINUS: 10,
    Tissue.PANCREAS: 7,
    Tissue.GI_WALL: 5,
    Tissue.GI_FLUID: 3,
    Tissue.GI_AIR: 0,
    Tissue.STOOL: 80,
    Tissue.BLADDER: 2,
    Tissue.CORTICAL_BONE: 70,
    Tissue.MARROW: 40,
    Tissue.DISC: 5,
    Tissue.CSF: 3,
}
_LESION_TEXTURE = 4.0


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LesionTruth:
    """One lesion as built: ``lesion_labels == label`` are exactly its voxels.

    ``centre_voxel`` is (slice, row, column) in the order of ``ValidationStudy.datasets``
    and ``centre_mm`` the same point in patient coordinates (x, y, z; DICOM LPS): the
    centre of the main sphere or ellipsoid, always a voxel centre inside the lesion.
    ``diameter_mm`` is the largest diameter of the analytic shape. ``organ_hu`` is the
    organ's HU before noise, ``core_hu`` the lesion's (its centre for rim-enhancing
    lesions) and ``rim_hu`` the rim's (rim-enhancing lesions only).
    """

    label: int
    organ: str  # "liver", "spleen", "left_kidney", "right_kidney", "left_lung", "right_lung"
    kind: str  # one of KINDS
    shape: str  # one of SHAPES
    centre_voxel: tuple[int, int, int]
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    voxels: int
    organ_hu: float
    core_hu: float
    rim_hu: float | None = None
    rim_mm: float | None = None

    @property
    def organ_class(self) -> str:
        """The key of :data:`LESION_ORGANS` (``"left_lung"`` -> ``"lung"``)."""
        return self.organ.split("_")[-1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "organ": self.organ,
            "kind": self.kind,
            "shape": self.shape,
            "centre_voxel": list(self.centre_voxel),
            "centre_mm": list(self.centre_mm),
            "diameter_mm": self.diameter_mm,
            "voxels": self.voxels,
            "organ_hu": self.organ_hu,
            "core_hu": self.core_hu,
            "rim_hu": self.rim_hu,
            "rim_mm": self.rim_mm,
        }


@dataclass(frozen=True, eq=False)
class ValidationStudy:
    """A built study: the series, the lesion truth, and the anatomy it was drawn from.

    ``datasets`` are ordered by position along the slice normal (increasing z, feet to
    head), as :func:`dicomnode.volumes.volume_from_datasets` orders them, and
    ``lesion_labels`` / ``tissues`` have one slice per dataset in that order.
    """

    seed: int
    datasets: list[Dataset]
    lesion_labels: npt.NDArray[np.uint8]
    lesions: list[LesionTruth]
    tissues: npt.NDArray[np.uint8]  # Tissue per voxel (lesions not drawn)
    tissue_hu: dict[str, float]  # HU of each tissue before texture and noise
    phase: str
    noise_sigma: float
    spacing: tuple[float, float, float]  # (between slices, between rows, between columns)
    origin: tuple[float, float, float]  # ImagePositionPatient of the first dataset

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.lesion_labels.shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- helpers


def _rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> FloatArray:
    """Rotation matrix (degrees): yaw about w (u->v), pitch about u (v->w), roll about v."""
    a, b, c = np.radians([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    result: FloatArray = rz @ rx @ ry
    return result


def _random_rotation(rng: np.random.Generator) -> FloatArray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _smoothstep(x: Array, lo: float, hi: float) -> Array:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _bump(x: Array, centre: float, width: float) -> Array:
    return np.exp(-(((x - centre) / width) ** 2))


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


@dataclass(frozen=True)
class _Grid:
    """Voxel centres in patient mm; every axis ascending."""

    x: FloatArray  # per column
    y: FloatArray  # per row
    z: FloatArray  # per slice

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.z), len(self.y), len(self.x)

    @staticmethod
    def span(coords: FloatArray, lo: float, hi: float) -> tuple[int, int]:
        return int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right"))


class _Canvas:
    """The tissue map, painted structure by structure (later paint wins)."""

    _CHUNK_VOXELS = 4_000_000

    def __init__(self, grid: _Grid) -> None:
        self.grid = grid
        self.tissue = np.zeros(grid.shape, dtype=np.uint8)

    def paint(
        self,
        lo: Sequence[float],
        hi: Sequence[float],
        region: Region,
        label: Tissue,
        only: Sequence[Tissue] | None = None,
    ) -> None:
        g = self.grid
        i0, i1 = g.span(g.x, lo[0], hi[0])
        j0, j1 = g.span(g.y, lo[1], hi[1])
        k0, k1 = g.span(g.z, lo[2], hi[2])
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return
        xs = g.x[i0:i1][None, None, :]
        ys = g.y[j0:j1][None, :, None]
        step = max(1, self._CHUNK_VOXELS // ((j1 - j0) * (i1 - i0)))
        allowed = None if only is None else np.array([int(t) for t in only], dtype=np.uint8)
        for ka in range(k0, k1, step):
            kb = min(k1, ka + step)
            zs = g.z[ka:kb][:, None, None]
            mask = np.broadcast_to(region(xs, ys, zs), (kb - ka, j1 - j0, i1 - i0))
            sub = self.tissue[ka:kb, j0:j1, i0:i1]
            if allowed is not None:
                mask = mask & np.isin(sub, allowed)
            sub[mask] = int(label)

    def paint_levels(
        self,
        lo: Sequence[float],
        hi: Sequence[float],
        field: Region,
        levels: Sequence[tuple[float, Tissue]],
    ) -> None:
        """Paint each label where `field` <= its level, levels from the largest down."""
        g = self.grid
        i0, i1 = g.span(g.x, lo[0], hi[0])
        j0, j1 = g.span(g.y, lo[1], hi[1])
        k0, k1 = g.span(g.z, lo[2], hi[2])
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return
        xs = g.x[i0:i1][None, None, :]
        ys = g.y[j0:j1][None, :, None]
        step = max(1, self._CHUNK_VOXELS // ((j1 - j0) * (i1 - i0)))
        for ka in range(k0, k1, step):
            kb = min(k1, ka + step)
            values = field(xs, ys, g.z[ka:kb][:, None, None])
            values = np.broadcast_to(values, (kb - ka, j1 - j0, i1 - i0))
            sub = self.tissue[ka:kb, j0:j1, i0:i1]
            for level, label in sorted(levels, key=lambda item: -item[0]):
                sub[values <= level] = int(label)

    def paint_tube(
        self,
        p0: Sequence[float],
        p1: Sequence[float],
        r0: float,
        r1: float,
        label: Tissue,
        only: Sequence[Tissue] | None = None,
        extra: Region | None = None,
    ) -> None:
        """A capsule from p0 to p1 (real mm) whose radius goes from r0 to r1."""
        a = np.asarray(p0, float)
        d = np.asarray(p1, float) - a
        length2 = float(d @ d) or 1e-9
        r_max = max(r0, r1)
        if r_max <= 0:
            return

        def region(x: Array, y: Array, z: Array) -> Array:
            dx, dy, dz = x - a[0], y - a[1], z - a[2]
            t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / length2, 0.0, 1.0)
            dist2 = (dx - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dz - t * d[2]) ** 2
            inside = dist2 <= (r0 + (r1 - r0) * t) ** 2
            return inside if extra is None else inside & extra(x, y, z)

        lo = np.minimum(a, a + d) - r_max
        hi = np.maximum(a, a + d) + r_max
        self.paint(lo, hi, region, label, only)


# --------------------------------------------------------------------------- anatomy


class _Anatomy:
    """One simulated patient.

    Organs are placed in a body-relative frame (u, v, w) in "reference millimetres":
    u to the patient's left, v to the back, w up from the top of the right diaphragm
    dome; the cavity inside the muscle wall is 270 x 170 there. Real millimetres are
    ``x = cx + sx*u``, ``y = cy + sy*v``, ``z = z0 + sz*w``.
    """

    def __init__(self, rng: np.random.Generator, grid: _Grid, z0: float, body: dict[str, float]):
        self.rng = rng
        self.grid = grid
        self.canvas = _Canvas(grid)
        self.cx, self.cy = body["cx"], body["cy"]
        self.sx, self.sy, self.sz = body["sx"], body["sy"], body["sz"]
        self.z0 = z0
        self.fat = body["fat"]
        self.muscle = body["muscle"]
        self.belly = body["belly"]
        self.apex = body["apex"]  # w of the lung apices
        self.left_dome = rng.uniform(-20, -10)
        self.s = 0.5 * (self.sx + self.sy)

    # ---- frames
    def uvw(self, x: Array, y: Array, z: Array) -> tuple[Array, Array, Array]:
        return (x - self.cx) / self.sx, (y - self.cy) / self.sy, (z - self.z0) / self.sz

    def real(self, p: Sequence[float]) -> FloatArray:
        u, v, w = p
        return np.array([self.cx + self.sx * u, self.cy + self.sy * v, self.z0 + self.sz * w])

    def box(
        self, centre: Sequence[float], radius: Sequence[float]
    ) -> tuple[FloatArray, FloatArray]:
        c, r = np.asarray(centre, float), np.asarray(radius, float)
        return self.real(c - r), self.real(c + r)

    # ---- body outline: semi-axes (real mm) of the cavity inside the muscle wall
    def cavity_axes(self, w: Array) -> tuple[Array, Array, Array]:
        lateral = 135 * (1 - 0.05 * _smoothstep(w, 60, 200) + 0.06 * _bump(w, -330, 70))
        front = 85 * (1 + 0.04 * _bump(w, 40, 80) - 0.05 * _bump(w, -400, 60))
        back = np.full_like(np.asarray(w, float), 85.0)
        return lateral * self.sx, front * self.sy, back * self.sy

    def wall(self, w: Array) -> Array:
        """Muscle wall thickness (mm): thicker around the chest."""
        return self.muscle + 5 * _smoothstep(w, -60, -10)

    def fat_axes(self, w: Array) -> tuple[Array, Array, Array]:
        """Fat thickness (mm) laterally, in front, at the back."""
        lateral = self.fat * 1.1 * np.ones_like(np.asarray(w, float))
        front = self.fat * (1 + self.belly * _bump(w, -200, 130))
        return lateral, front, 0.7 * self.fat * np.ones_like(np.asarray(w, float))

    @staticmethod
    def outline(ur: Array, vr: Array, a: Array, front: Array, back: Array) -> Array:
        """< 1 inside a cross-section elliptic in front and flattened at the back."""
        t = np.where(vr < 0, vr / front, vr / back)
        q = np.where(t < 0, t * t, (t * t + 0.6 * t**4) / 1.6)
        result: Array = (ur / a) ** 2 + q
        return result

    def layers(self, x: Array, y: Array, z: Array) -> tuple[Array, Array, Array]:
        """Outline values of the cavity, the muscle wall and the skin."""
        w = (z - self.z0) / self.sz
        ur, vr = x - self.cx, y - self.cy
        a, f, b = self.cavity_axes(w)
        m = self.wall(w)
        fl, ff, fb = self.fat_axes(w)
        cavity = self.outline(ur, vr, a, f, b)
        muscle = self.outline(ur, vr, a + m, f + m, b + m)
        skin = self.outline(ur, vr, a + m + fl, f + m + ff, b + m + fb)
        return cavity, muscle, skin

    def in_cavity(self, x: Array, y: Array, z: Array) -> Array:
        w = (z - self.z0) / self.sz
        a, f, b = self.cavity_axes(w)
        return self.outline(x - self.cx, y - self.cy, a, f, b) <= 1

    def diaphragm(self, u: Array, v: Array) -> Array:
        """w of the diaphragm's upper surface at (u, v)."""
        right = -35 * ((u + 60) / 75) ** 2 - 20 * ((v + 10) / 70) ** 2
        left = self.left_dome - 35 * ((u - 60) / 75) ** 2 - 20 * ((v + 10) / 70) ** 2
        recess = -35 * np.clip(v / 85, 0, 1) ** 2
        result: Array = np.maximum(right, left) + recess
        return result

    def in_abdomen(self, x: Array, y: Array, z: Array) -> Array:
        u, v, w = self.uvw(x, y, z)
        return (w < self.diaphragm(u, v) - 4) & self.in_cavity(x, y, z)

    def in_chest(self, x: Array, y: Array, z: Array) -> Array:
        u, v, w = self.uvw(x, y, z)
        return (w > self.diaphragm(u, v)) & self.in_cavity(x, y, z)

    def in_lung(self, x: Array, y: Array, z: Array) -> Array:
        u, v, w = self.uvw(x, y, z)
        mediastinum = np.abs(u - 4) < 20 + 8 * np.clip(v / 60, 0, 1) + 16 * _bump(w, 85, 25)
        start = self.apex - 80
        f = np.sqrt(np.clip(1 - ((np.maximum(w, start) - start) / 80) ** 2, 0, 1))
        apex = ((np.abs(u) - 68) / (70 * f + 1e-6)) ** 2 + ((v - 5) / (80 * f + 1e-6)) ** 2 <= 1
        return self.in_chest(x, y, z) & ~mediastinum & (apex | (w < start))

    # ---- shapes in the (u, v, w) frame
    def ellipsoid(
        self,
        centre: Sequence[float],
        semi: Sequence[float],
        rotation: FloatArray | None = None,
        wobble: float = 0.0,
        clip: Region | None = None,
    ) -> tuple[FloatArray, FloatArray, Region]:
        c = np.asarray(centre, float)
        s = np.asarray(semi, float)
        rot = np.eye(3) if rotation is None else rotation
        phases = self.rng.uniform(0, 2 * np.pi, 3)

        def region(x: Array, y: Array, z: Array) -> Array:
            u, v, w = self.uvw(x, y, z)
            du, dv, dw = u - c[0], v - c[1], w - c[2]
            p = [(rot[0, i] * du + rot[1, i] * dv + rot[2, i] * dw) / s[i] for i in range(3)]
            r2 = p[0] ** 2 + p[1] ** 2 + p[2] ** 2
            if wobble:
                h = (
                    np.sin(3 * p[0] + phases[0])
                    + np.sin(3 * p[1] + phases[1])
                    + np.sin(2 * p[2] + phases[2])
                )
                r2 = r2 - wobble * h / 3
            inside = r2 <= 1
            return inside if clip is None else inside & clip(x, y, z)

        lo, hi = self.box(c, np.full(3, s.max() * math.sqrt(1 + wobble)))
        return lo, hi, region

    def paint_ellipsoid(
        self,
        label: Tissue,
        centre: Sequence[float],
        semi: Sequence[float],
        rotation: FloatArray | None = None,
        wobble: float = 0.0,
        clip: Region | None = None,
        only: Sequence[Tissue] | None = None,
    ) -> None:
        lo, hi, region = self.ellipsoid(centre, semi, rotation, wobble, clip)
        self.canvas.paint(lo, hi, region, label, only)

    def paint_polyline(
        self,
        points: Sequence[Sequence[float]],
        radii: Sequence[float],
        label: Tissue,
        only: Sequence[Tissue] | None = None,
        extra: Region | None = None,
        shrink: float = 0.0,
    ) -> None:
        """Tubes through points (u, v, w) with radii in real mm (minus `shrink`)."""
        for i in range(len(points) - 1):
            self.canvas.paint_tube(
                self.real(points[i]),
                self.real(points[i + 1]),
                radii[i] - shrink,
                radii[i + 1] - shrink,
                label,
                only,
                extra,
            )

    def tree(
        self,
        root: Sequence[float],
        direction: Sequence[float],
        length: float,
        radius: float,
        generations: int,
        inside: Region,
    ) -> list[tuple[FloatArray, FloatArray, float, float]]:
        """A branching vessel tree in real mm, growing only inside `inside`."""
        segments: list[tuple[FloatArray, FloatArray, float, float]] = []
        rng = self.rng

        def grow(p: FloatArray, d: FloatArray, length: float, r: float, gen: int) -> None:
            for scale in (1.0, 0.6):
                end = p + d * length * scale
                if bool(np.all(inside(end[0:1], end[1:2], end[2:3]))):
                    break
            else:
                return
            segments.append((p, end, r, r * 0.85))
            if gen == 0 or r < 0.7:
                return
            for _ in range(2):
                perp = np.cross(d, rng.normal(size=3))
                perp /= np.linalg.norm(perp) + 1e-12
                angle = np.radians(rng.uniform(18, 42))
                nd = d * np.cos(angle) + perp * np.sin(angle)
                grow(end, nd / np.linalg.norm(nd), length * 0.78, r * 0.72, gen - 1)

        d0 = np.asarray(direction, float) * np.array([self.sx, self.sy, self.sz])
        grow(
            self.real(root), d0 / np.linalg.norm(d0), length * self.s, radius * self.s, generations
        )
        return segments

    # ---- the whole patient
    def build(self, table_y: float) -> None:
        self._body(table_y)
        self._chest()
        self._abdomen()
        self._vessels()
        self._bones()

    def _body(self, table_y: float) -> None:
        g, canvas = self.grid, self.canvas
        x, y = g.x[None, None, :], g.y[None, :, None]
        curve = table_y - 0.0006 * (g.x - self.cx) ** 2  # a slightly concave table top
        step = max(1, _Canvas._CHUNK_VOXELS // (len(g.x) * len(g.y)))
        for ka in range(0, len(g.z), step):
            kb = min(len(g.z), ka + step)
            z = g.z[ka:kb][:, None, None]
            cavity, muscle, skin = self.layers(x, y, z)
            sub = canvas.tissue[ka:kb]
            top = curve[None, None, :]
            table = (y >= top) & (y < top + 45) & (np.abs(x - self.cx) < 240)
            shell = table & ((y < top + 3) | (y >= top + 42))
            sub[np.broadcast_to(table, sub.shape)] = Tissue.TABLE_FOAM
            sub[np.broadcast_to(shell, sub.shape)] = Tissue.TABLE_SHELL
            sub[skin <= 1] = Tissue.FAT
            sub[muscle <= 1] = Tissue.MUSCLE
            sub[cavity <= 1] = Tissue.VISCERAL_FAT

    def _chest(self) -> None:
        c = self.canvas
        lo, hi = self.box((0, 0, self.apex / 2 - 80), (150, 100, self.apex / 2 + 90))
        c.paint(lo, hi, self.in_lung, Tissue.LUNG)

        # Diaphragm muscle: a band just under its upper surface.
        def diaphragm(x: Array, y: Array, z: Array) -> Array:
            u, v, w = self.uvw(x, y, z)
            top = self.diaphragm(u, v)
            return (w <= top) & (w > top - 4) & self.in_cavity(x, y, z)

        lo, hi = self.box((0, 0, -90), (150, 100, 95))
        c.paint(lo, hi, diaphragm, Tissue.MUSCLE)
        rng = self.rng
        # Heart: myocardium around the blood pool, resting on the diaphragm.
        centre = (18 + rng.uniform(-5, 5), -25, 42 + rng.uniform(-5, 5))
        semi = np.array([62, 48, 50]) * rng.uniform(0.9, 1.1)
        rot = _rotation(yaw=-30 + rng.uniform(-8, 8), pitch=15)
        self.paint_ellipsoid(Tissue.VISCERAL_FAT, centre, semi + 5, rot, clip=self.in_chest)
        self.paint_ellipsoid(Tissue.HEART_WALL, centre, semi, rot, clip=self.in_chest)
        self.paint_ellipsoid(Tissue.HEART_BLOOD, centre, semi - 11, rot, 0.05, self.in_chest)
        # Trachea, main bronchi (air inside a soft-tissue wall), oesophagus.
        carina = (3, 0, 100)
        airways = [
            [(3, -8, self.apex + 40), carina],
            [carina, (-38, 6, 82), (-60, 10, 70)],
            [carina, (36, 10, 78), (58, 14, 66)],
        ]
        for path, r in zip(airways, (9.0, 6.5, 6.0), strict=True):
            radii = [r * self.s] * len(path)
            self.paint_polyline(path, radii, Tissue.GI_WALL)
            self.paint_polyline(path, radii, Tissue.AIRWAY, shrink=2.0)
        oesophagus = [(2, 22, self.apex + 40), (8, 26, 40), (12, 22, 0), (35, -5, -25)]
        self.paint_polyline(oesophagus, [7 * self.s] * 4, Tissue.GI_WALL)
        # Pulmonary vessels: trees from each hilum.
        lung_vessels = []
        for side in (-1, 1):
            hilum = (side * 44, 5, 84)
            for target in (
                (side * 55, 5, 170),
                (side * 75, -45, 120),
                (side * 80, -40, 50),
                (side * 95, 20, 60),
                (side * 70, 30, 0),
            ):
                direction = np.subtract(target, hilum)
                lung_vessels += self.tree(hilum, direction, 30, 5.0, 6, self.in_lung)
        for p0, p1, r0, r1 in lung_vessels:
            c.paint_tube(p0, p1, r0, r1, Tissue.LUNG_VESSEL, only=(Tissue.LUNG,))

    def _abdomen(self) -> None:
        rng, abdomen = self.rng, self.in_abdomen
        fat = (Tissue.VISCERAL_FAT,)
        # What an organ may take the place of: fat and bowel, never muscle or bone.
        soft = (Tissue.VISCERAL_FAT, Tissue.GI_WALL, Tissue.GI_FLUID, Tissue.GI_AIR, Tissue.STOOL)
        # Paraspinal muscles (chest and abdomen) and psoas (lower abdomen).
        for side in (-1, 1):
            self.paint_ellipsoid(
                Tissue.MUSCLE, (side * 30, 64, -100), (25, 21, 400), clip=self.in_cavity
            )
            psoas = [(side * 26, 24, -90), (side * 42, 18, -220), (side * 60, 5, -330)]
            self.paint_polyline(psoas, [4 * self.s, 17 * self.s, 20 * self.s], Tissue.MUSCLE)
        # Bowel: colon around the edge, small bowel loops in the middle, both in fat.
        colon = [
            (-95, -10, -260),
            (-100, 5, -160),
            (-88, -30, -120),
            (-40, -62, -130),
            (40, -62, -122),
            (95, -20, -80),
            (102, 18, -150),
            (96, 15, -262),
            (60, -20, -320),
            (10, 10, -360),
            (0, 48, -420),
        ]
        radii = [22, 22, 20, 20, 19, 18, 16, 16, 15, 15, 14]
        for i in range(len(colon) - 1):
            self._bowel(colon[i : i + 2], radii[i : i + 2], 3.0, abdomen, fat, colon=True)
        position = np.array([rng.uniform(-50, 50), rng.uniform(-60, -20), rng.uniform(-260, -190)])
        heading = rng.normal(size=3)
        for _ in range(int(rng.integers(22, 36))):
            heading = heading / np.linalg.norm(heading) + 0.8 * rng.normal(size=3)
            heading /= np.linalg.norm(heading)
            nxt = position + 24 * heading
            low, high = np.array([-80, -75, -330]), np.array([80, 5, -140])
            heading = np.where((nxt < low) | (nxt > high), -heading, heading)
            nxt = np.clip(nxt, low, high)
            r = rng.uniform(10, 14)
            self._bowel([position, nxt], [r, r], 2.5, abdomen, fat, colon=False)
            position = nxt
        # Stomach: fundus and body under the left dome, antrum to the right.
        air_level = self.cy + self.sy * rng.uniform(-45, 0)  # air rises to the front
        full = rng.uniform(0.75, 1.1)
        for centre, semi, yaw in (
            ((55, -20, -38), np.array([38, 34, 45]) * full, 20),
            ((15, -48, -80), np.array([38, 20, 22]) * full, -10),
        ):
            wall = 4 / self.s
            self.paint_ellipsoid(Tissue.GI_WALL, centre, semi, _rotation(yaw), clip=abdomen)
            self.paint_ellipsoid(Tissue.GI_FLUID, centre, semi - wall, _rotation(yaw), clip=abdomen)
            lo, hi, inner = self.ellipsoid(centre, semi - wall, _rotation(yaw), clip=abdomen)

            def air(x: Array, y: Array, z: Array, inner: Region = inner) -> Array:
                return inner(x, y, z) & (y < air_level)

            self.canvas.paint(lo, hi, air, Tissue.GI_AIR, only=(Tissue.GI_FLUID,))
        # Pancreas: head by the duodenum, body over the spine, tail to the spleen.
        pancreas = [(-28, -18, -100), (0, -20, -88), (35, -5, -80), (62, 12, -72)]
        radii = [13 * self.s, 9 * self.s, 9 * self.s, 7 * self.s]
        self.paint_polyline(pancreas, radii, Tissue.PANCREAS, only=soft)
        # Liver: right lobe, left lobe across the midline, under the right dome.
        scale = rng.uniform(0.9, 1.12)
        right = ((-68, 0, -72), np.array([66, 74, 84]) * scale)
        left = ((-5, -40, -42), np.array([62, 30, 42]) * scale)
        for centre, semi in (right, left):
            rot = _rotation(yaw=rng.uniform(-8, 8), pitch=rng.uniform(-8, 8))
            self.paint_ellipsoid(Tissue.LIVER, centre, semi, rot, 0.12, abdomen, soft)
        # Gallbladder under the liver.
        gb = (-52 + rng.uniform(-6, 6), -42, -112)
        gb_semi = np.array([14, 15, 32]) * rng.uniform(0.7, 1.1)
        self.paint_ellipsoid(
            Tissue.GALLBLADDER, gb, gb_semi, _rotation(pitch=25), 0, abdomen, (*soft, Tissue.LIVER)
        )
        # Spleen, posterolateral on the left.
        spleen = (92, 22, -48)
        semi = np.array([20, 50, 50]) * rng.uniform(0.8, 1.2)
        self.paint_ellipsoid(Tissue.SPLEEN, spleen, semi, _rotation(yaw=35), 0.08, abdomen, soft)
        # Kidneys: cortex, medulla, renal sinus fat at the hilum.
        for side, w in ((-1, -128 + rng.uniform(-10, 10)), (1, -112 + rng.uniform(-10, 10))):
            centre = (side * 74, 36, w)
            semi = np.array([29, 25, 56]) * rng.uniform(0.9, 1.1)
            rot = _rotation(yaw=side * 25, roll=side * 12)
            self.paint_ellipsoid(Tissue.KIDNEY_CORTEX, centre, semi, rot, 0.04, abdomen, soft)
            cortex = 7 / self.s
            self.paint_ellipsoid(
                Tissue.KIDNEY_MEDULLA,
                centre,
                semi - cortex,
                rot,
                0.04,
                abdomen,
                (Tissue.KIDNEY_CORTEX,),
            )
            sinus = (side * (74 - 0.45 * semi[0]), 32, w)
            self.paint_ellipsoid(
                Tissue.RENAL_SINUS,
                sinus,
                semi * [0.42, 0.45, 0.5],
                rot,
                only=(Tissue.KIDNEY_MEDULLA, Tissue.KIDNEY_CORTEX),
            )
        # Bladder in the pelvis.
        fill = rng.uniform(0.5, 1.2)
        self.paint_ellipsoid(
            Tissue.BLADDER, (0, -35, -430), np.array([42, 30, 34]) * fill, clip=abdomen
        )

    def _bowel(
        self,
        points: Sequence[Sequence[float]],
        radii: Sequence[float],
        wall: float,
        clip: Region,
        under: Sequence[Tissue],
        *,
        colon: bool,
    ) -> None:
        rng = self.rng
        radii = [r * self.s for r in radii]
        content = rng.choice(
            ["air", "fluid", "level", "stool"] if colon else ["fluid", "collapsed", "level"],
            p=[0.3, 0.2, 0.25, 0.25] if colon else [0.55, 0.25, 0.2],
        )
        allowed = (*under, Tissue.GI_WALL)
        self.paint_polyline(points, radii, Tissue.GI_WALL, allowed, clip)
        if content == "collapsed":
            return
        inside = {"air": Tissue.GI_AIR, "stool": Tissue.STOOL}.get(str(content), Tissue.GI_FLUID)
        self.paint_polyline(points, radii, inside, (Tissue.GI_WALL,), clip, shrink=wall)
        if content == "level":
            level = self.real(points[0])[1] - 0.3 * radii[0]

            def above(x: Array, y: Array, z: Array) -> Array:
                return y < level

            self.paint_polyline(points, radii, Tissue.GI_AIR, (Tissue.GI_FLUID,), above, wall)

    def _vessels(self) -> None:
        rng, s = self.rng, self.s
        aorta = [
            (-12, -30, 58),
            (-8, -28, 122),
            (8, -10, 142),
            (26, 12, 128),
            (28, 12, 60),
            (16, 4, -20),
            (12, -8, -100),
            (10, -10, -270),
        ]
        r = rng.uniform(0.9, 1.15) * s
        radii = np.array([15, 14, 13, 12, 12, 11, 11, 9]) * r
        self.paint_polyline(aorta, radii, Tissue.AORTA)
        for side in (-1, 1):
            self.paint_polyline(
                [(10, -10, -270), (side * 35, -5, -330), (side * 70, 5, -420)],
                [9 * r, 6 * r, 5 * r],
                Tissue.AORTA,
            )
        ivc = [(-20, -2, 8), (-22, 0, -60), (-20, -4, -150), (-14, -4, -280)]
        self.paint_polyline(ivc, [13 * s, 12 * s, 11 * s, 10 * s], Tissue.IVC)
        for side in (-1, 1):
            self.paint_polyline(
                [(-14, -4, -280), (side * 40, 2, -340), (side * 72, 10, -420)],
                [10 * s, 7 * s, 6 * s],
                Tissue.IVC,
            )
        confluence = (-5, -22, -100)
        self.paint_polyline([confluence, (-35, -15, -75)], [7 * s, 7 * s], Tissue.PORTAL_VEIN)
        self.paint_polyline([confluence, (62, 10, -78)], [4.5 * s] * 2, Tissue.PORTAL_VEIN)
        self.paint_polyline([confluence, (-8, -32, -200)], [5 * s] * 2, Tissue.PORTAL_VEIN)

        # Vessels inside the liver: portal branches from the hilum, hepatic veins to the IVC.
        def in_liver(x: Array, y: Array, z: Array) -> Array:
            g = self.grid
            i = np.clip(np.searchsorted(g.x, x), 0, len(g.x) - 1)
            j = np.clip(np.searchsorted(g.y, y), 0, len(g.y) - 1)
            k = np.clip(np.searchsorted(g.z, z), 0, len(g.z) - 1)
            inside = self.canvas.tissue[k, j, i] == Tissue.LIVER
            return inside & self.in_abdomen(x, y, z)

        segments = []
        for root, target in (
            ((-35, -15, -75), (-85, 5, -60)),
            ((-35, -15, -75), (5, -45, -50)),
            ((-20, 0, -18), (-90, -10, -25)),
            ((-20, 0, -18), (-45, -50, -20)),
            ((-20, 0, -18), (15, -45, -30)),
        ):
            segments += self.tree(root, np.subtract(target, root), 26, 5.0, 4, in_liver)
        for p0, p1, r0, r1 in segments:
            self.canvas.paint_tube(p0, p1, r0, r1, Tissue.LIVER_VESSEL, only=(Tissue.LIVER,))

    def _bones(self) -> None:
        rng, c = self.rng, self.canvas
        period = rng.uniform(26, 31)
        phase = rng.uniform(0, period)
        top = self.apex + 40

        # Spine: vertebral bodies with discs, posterior arch around the canal,
        # spinous and (lumbar) transverse processes.
        def vertebra(x: Array, y: Array, z: Array, inner: bool) -> Array:
            u, v, w = self.uvw(x, y, z)
            size = 1 + 0.25 * np.clip(-w / 300, 0, 1) - 0.15 * np.clip(w / 200, 0, 1)
            shrink = 2.5 if inner else 0.0
            body = ((u / (22 * size - shrink)) ** 2 + ((v - 26) / (17 * size - shrink)) ** 2) <= 1
            r = np.hypot(u, v - 52)
            arch = (r >= 9) & (r <= 16 - shrink / 2) & (v > 46)
            spinous = (np.abs(u) <= 4 - shrink / 2) & (v > 60) & (v < 88 - shrink)
            transverse = (
                (np.abs(u) > 14)
                & (np.abs(u) < 42 - shrink)
                & (np.abs(v - 46) < 3.5 - shrink / 2)
                & (w < -90)
            )
            # Processes belong to the vertebra, not to the disc level between two.
            level = ((w - phase) % period > 8) & ((w - phase) % period < period - 4)
            bone = body | arch | ((spinous | transverse) & level)
            return bone & (w > -290) & (w < top)

        def in_disc(w: Array) -> Array:
            return ((w - phase) % period) < 6

        lo, hi = self.box((0, 50, top / 2 - 150), (50, 42, top / 2 + 150))

        def cortex(x: Array, y: Array, z: Array) -> Array:
            return vertebra(x, y, z, False)

        def marrow(x: Array, y: Array, z: Array) -> Array:
            return vertebra(x, y, z, True)

        def disc(x: Array, y: Array, z: Array) -> Array:
            u, v, w = self.uvw(x, y, z)
            size = 1 + 0.25 * np.clip(-w / 300, 0, 1) - 0.15 * np.clip(w / 200, 0, 1)
            body = ((u / (22 * size)) ** 2 + ((v - 26) / (17 * size)) ** 2) <= 1
            return body & in_disc(w) & (w > -290) & (w < top)

        def canal(x: Array, y: Array, z: Array) -> Array:
            u, v, w = self.uvw(x, y, z)
            return (np.hypot(u, v - 52) < 9) & (w > -290)

        c.paint(lo, hi, cortex, Tissue.CORTICAL_BONE)
        c.paint(lo, hi, marrow, Tissue.MARROW)
        c.paint(lo, hi, disc, Tissue.DISC)
        c.paint(lo, hi, canal, Tissue.CSF)
        # Ribs: bands inside the chest wall that descend towards the front.
        drop = rng.uniform(70, 95) * self.sz
        rib_period = period * self.sz
        first = (self.apex + 5) * self.sz

        def rib(x: Array, y: Array, z: Array) -> Array:
            """<= 1 inside a rib, <= 0.5 in its marrow."""
            ur, vr = x - self.cx, y - self.cy
            zr = z - self.z0
            a, f, b = self.cavity_axes(zr / self.sz)
            value = np.maximum(self.outline(ur, vr, a, f, b), 1e-6)
            r = np.hypot(ur, vr) + 1e-6
            depth = r * (1 - 1 / np.sqrt(value))  # mm outside the cavity
            cos = -vr / r  # 1 at the front, -1 at the back
            s = zr + drop * (1 + cos) / 2
            k = np.clip(np.round((first - s) / rib_period), 0, 11)
            across = (s - (first - k * rib_period)) / 5.5
            radial = (depth - 6.0) / 3.5
            ok = (cos < 0.82) & (cos > -0.97) & ((k < 10) | (cos < -0.17))
            ok &= s > first - 11.5 * rib_period
            result: Array = np.where(ok, radial**2 + across**2, np.inf)
            return result

        lo, hi = self.box((0, 0, self.apex / 2 - 90), (180, 130, self.apex / 2 + 110))
        c.paint_levels(lo, hi, rib, [(1.0, Tissue.CORTICAL_BONE), (0.5, Tissue.MARROW)])

        # Sternum, in the front wall from the xiphoid up.
        def sternum(x: Array, y: Array, z: Array, inner: bool) -> Array:
            ur, vr = x - self.cx, y - self.cy
            w = (z - self.z0) / self.sz
            _, f, _ = self.cavity_axes(w)
            shrink = 1.8 if inner else 0.0
            across = np.abs(ur) < 14 * self.sx - shrink
            depth = (vr < -f - 1 - shrink) & (vr > -f - 11 + shrink)
            return across & depth & (w > -30) & (w < self.apex)

        lo, hi = self.box((0, -110, self.apex / 2), (30, 40, self.apex / 2 + 40))
        c.paint(lo, hi, lambda x, y, z: sternum(x, y, z, False), Tissue.CORTICAL_BONE)
        c.paint(lo, hi, lambda x, y, z: sternum(x, y, z, True), Tissue.MARROW)
        # Pelvis: sacrum, iliac wings, femoral heads and necks.
        thin = 2.5 / self.s
        parts: list[tuple[tuple[float, float, float], FloatArray, FloatArray]] = [
            ((0, 52, -335), np.array([42, 16, 52]), _rotation(pitch=-25))
        ]
        for side in (-1, 1):
            parts.append(((side * 92, 30, -300), np.array([13, 45, 50]), _rotation(side * -35)))
            parts.append(((side * 86, -2, -425), np.array([24, 24, 24]), np.eye(3)))
            parts.append(((side * 104, 4, -440), np.array([14, 14, 30]), _rotation(roll=side * 55)))
        for centre, semi, rot in parts:
            self.paint_ellipsoid(Tissue.CORTICAL_BONE, centre, semi, rot)
            self.paint_ellipsoid(Tissue.MARROW, centre, semi - thin, rot)


# --------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class _Shape:
    """A lesion shape in real mm around its centre: ellipsoids (spheres are special)."""

    offsets: FloatArray  # (n, 3) x, y, z
    semi: FloatArray  # (n, 3)
    rotation: FloatArray  # (3, 3), shared

    @property
    def reach(self) -> float:
        return float(np.max(np.linalg.norm(self.offsets, axis=1) + self.semi.max(axis=1)))

    def mask(self, x: Array, y: Array, z: Array, grow: float = 0.0) -> Array:
        result = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=bool)
        rot = self.rotation
        for offset, semi in zip(self.offsets, self.semi, strict=True):
            s = semi + grow
            if np.any(s <= 0):
                continue
            dx, dy, dz = x - offset[0], y - offset[1], z - offset[2]
            r2 = sum(
                ((rot[0, i] * dx + rot[1, i] * dy + rot[2, i] * dz) / s[i]) ** 2 for i in range(3)
            )
            result |= r2 <= 1
        return result


def _make_shape(rng: np.random.Generator, kind: str, diameter: float) -> _Shape:
    """A shape whose largest diameter is exactly `diameter`."""
    radius = diameter / 2
    if kind == "sphere":
        return _Shape(np.zeros((1, 3)), np.full((1, 3), radius), np.eye(3))
    if kind == "ellipsoid":
        semi = np.array([1.0, rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95)]) * radius
        return _Shape(np.zeros((1, 3)), semi[None, :], _random_rotation(rng))
    count = int(rng.integers(2, 4))
    radii = np.concatenate([[1.0], rng.uniform(0.5, 0.8, count - 1)])
    offsets = np.zeros((count, 3))
    for i in range(1, count):
        direction = rng.normal(size=3)
        offsets[i] = direction / np.linalg.norm(direction) * rng.uniform(0.4, 0.7)
    feret = max(
        np.linalg.norm(offsets[i] - offsets[j]) + radii[i] + radii[j]
        for i in range(count)
        for j in range(count)
    )
    scale = diameter / feret
    return _Shape(offsets * scale, np.repeat(radii[:, None] * scale, 3, axis=1), np.eye(3))


@dataclass
class _PlacedLesion:
    truth: LesionTruth
    box: tuple[slice, slice, slice]
    core: npt.NDArray[np.bool_]  # within box
    rim: npt.NDArray[np.bool_] | None


def _lesion_values(
    rng: np.random.Generator, kind: str, organ: str, organ_hu: float
) -> tuple[float, float | None]:
    """(core HU, rim HU or None) for a lesion of `kind` in an organ of `organ_hu`."""
    lung = organ == "lung"
    if kind == "cystic":
        return rng.uniform(0, 10), None
    if kind == "hypodense":
        return organ_hu + rng.uniform(-60, -20), None
    if kind == "hyperdense":
        # In the lung a "hyperdense" lesion is a solid, soft-tissue nodule.
        return (rng.uniform(10, 50) if lung else organ_hu + rng.uniform(30, 70)), None
    # Rim-enhancing: a bright rim around a darker centre (a cavity in the lung).
    if lung:
        return rng.uniform(-950, -880), rng.uniform(25, 60)
    return organ_hu + rng.uniform(-55, -25), organ_hu + rng.uniform(35, 75)


def _place_lesions(
    rng: np.random.Generator,
    canvas: _Canvas,
    labels: npt.NDArray[np.uint8],
    hu: dict[Tissue, float],
    phase: str,
    body_x: float,
) -> list[_PlacedLesion]:
    grid, tissue = canvas.grid, canvas.tissue
    spacing = np.array([grid.z[1] - grid.z[0] if len(grid.z) > 1 else 1.0, *_steps(grid)])
    organs: dict[str, tuple[npt.NDArray[np.intp], ...]] = {}
    for organ, members in LESION_ORGANS.items():
        found = np.nonzero(np.isin(tissue[:, ::2, ::2], np.array(members, dtype=np.uint8)))
        if len(found[0]) >= 8:
            organs[organ] = (found[0], found[1] * 2, found[2] * 2)
    placed: list[_PlacedLesion] = []
    if not organs:
        return placed
    weights = {"liver": 0.4, "lung": 0.25, "kidney": 0.2, "spleen": 0.15}
    wanted = int(rng.integers(1, 5))
    structure = ndimage.generate_binary_structure(3, 1)
    for _ in range(wanted * 3):
        if len(placed) == wanted:
            break
        names = sorted(organs)
        p = np.array([weights[n] for n in names])
        organ = str(rng.choice(names, p=p / p.sum()))
        if organ == "lung":
            kind = str(rng.choice(["hyperdense", "cystic", "rim_enhancing"], p=[0.6, 0.15, 0.25]))
        elif phase == "none":
            kind = str(rng.choice(["hypodense", "hyperdense", "cystic"]))
        else:
            kind = str(rng.choice(KINDS))
        shape_kind = str(rng.choice(SHAPES))
        diameter = float(np.exp(rng.uniform(np.log(6), np.log(35))))
        members = np.array(LESION_ORGANS[organ], dtype=np.uint8)
        points = organs[organ]
        result = None
        for attempt in range(120):
            if attempt and attempt % 30 == 0:
                diameter = max(6.0, diameter * 0.75)
            shape = _make_shape(rng, shape_kind, diameter)
            index = int(rng.integers(len(points[0])))
            centre = np.array([points[0][index], points[1][index], points[2][index]])
            reach = np.ceil(shape.reach / spacing).astype(int) + 2
            lo, hi = centre - reach, centre + reach + 1
            if np.any(lo < 0) or np.any(hi > np.array(tissue.shape)):
                continue
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
            cz, cy, cx = grid.z[centre[0]], grid.y[centre[1]], grid.x[centre[2]]
            zs = grid.z[box[0]][:, None, None] - cz
            ys = grid.y[box[1]][None, :, None] - cy
            xs = grid.x[box[2]][None, None, :] - cx
            mask = shape.mask(xs, ys, zs)
            around = ndimage.binary_dilation(mask, structure)
            if not np.all(np.isin(tissue[box][around], members)):
                continue
            if np.any(labels[box][around]):
                continue
            result = (shape, box, mask, centre, (cx, cy, cz))
            break
        if result is None:
            continue
        shape, box, mask, centre, centre_mm = result
        label = len(placed) + 1
        organ_hu = hu[_REFERENCE_TISSUE[organ]]
        core_hu, rim_hu = _lesion_values(rng, kind, organ, organ_hu)
        rim = None
        rim_mm = None
        if rim_hu is not None:
            rim_mm = float(np.clip(0.2 * diameter, 1.5, 5.0))
            inner = shape.mask(xs, ys, zs, grow=-rim_mm)
            rim = mask & ~inner
            if not inner.any():  # too small for a centre: make the middle voxel the centre
                rim[tuple(centre - np.array([b.start for b in box]))] = False
        core = mask if rim is None else mask & ~rim
        labels[box][mask] = label
        side = "left" if centre_mm[0] > body_x else "right"
        name = organ if organ in ("liver", "spleen") else f"{side}_{organ}"
        truth = LesionTruth(
            label=label,
            organ=name,
            kind=kind,
            shape=shape_kind,
            centre_voxel=(int(centre[0]), int(centre[1]), int(centre[2])),
            centre_mm=(float(centre_mm[0]), float(centre_mm[1]), float(centre_mm[2])),
            diameter_mm=round(float(diameter), 3),
            voxels=int(mask.sum()),
            organ_hu=round(float(organ_hu), 2),
            core_hu=round(float(core_hu), 2),
            rim_hu=None if rim_hu is None else round(float(rim_hu), 2),
            rim_mm=None if rim_mm is None else round(rim_mm, 3),
        )
        placed.append(_PlacedLesion(truth, box, core, rim))  # type: ignore[arg-type]
    return placed


def _steps(grid: _Grid) -> tuple[float, float]:
    return float(grid.y[1] - grid.y[0]), float(grid.x[1] - grid.x[0])


# --------------------------------------------------------------------------- HU


def _tissue_hu(rng: np.random.Generator, phase: str) -> dict[Tissue, float]:
    u = rng.uniform
    arterial, portal = phase == "arterial", phase == "portal_venous"
    contrast = arterial or portal
    liver = u(55, 65)
    spleen = u(45, 50)
    kidney = u(28, 34)
    pancreas = u(35, 45)
    hu = {
        Tissue.AIR: -1000.0,
        Tissue.TABLE_SHELL: u(150, 250),
        Tissue.TABLE_FOAM: u(-900, -820),
        Tissue.FAT: u(-110, -90),
        Tissue.MUSCLE: u(45, 55) + (u(5, 10) if contrast else 0),
        Tissue.VISCERAL_FAT: u(-105, -90),
        Tissue.LUNG: u(-870, -830),
        Tissue.LUNG_VESSEL: u(35, 45) if not contrast else u(100, 160),
        Tissue.AIRWAY: u(-1000, -980),
        Tissue.HEART_WALL: u(40, 50) + (u(40, 70) if contrast else 0),
        Tissue.HEART_BLOOD: u(35, 45)
        if not contrast
        else (u(220, 300) if arterial else u(140, 170)),
        Tissue.AORTA: u(35, 45) if not contrast else (u(150, 250) if arterial else u(130, 160)),
        Tissue.IVC: u(35, 45) if not contrast else (u(60, 90) if arterial else u(120, 150)),
        Tissue.PORTAL_VEIN: u(35, 45)
        if not contrast
        else (u(80, 120) if arterial else u(150, 190)),
        Tissue.LIVER: liver + (u(5, 15) if arterial else u(30, 45) if portal else 0),
        Tissue.GALLBLADDER: u(0, 15),
        Tissue.SPLEEN: spleen + (u(30, 50) if arterial else u(55, 70) if portal else 0),
        Tissue.KIDNEY_CORTEX: kidney
        if not contrast
        else (u(150, 190) if arterial else u(140, 160)),
        Tissue.KIDNEY_MEDULLA: kidney - u(0, 4)
        if not contrast
        else (u(35, 55) if arterial else u(80, 120)),
        Tissue.RENAL_SINUS: u(-90, -60),
        Tissue.PANCREAS: pancreas + (u(50, 70) if arterial else u(30, 45) if portal else 0),
        Tissue.GI_WALL: u(35, 45) + (u(40, 60) if contrast else 0),
        Tissue.GI_FLUID: u(0, 20),
        Tissue.GI_AIR: -1000.0,
        Tissue.STOOL: u(-120, 40),
        Tissue.BLADDER: u(0, 15),
        Tissue.CORTICAL_BONE: u(750, 950),
        Tissue.MARROW: u(220, 280),
        Tissue.DISC: u(70, 90),
        Tissue.CSF: u(5, 20),
    }
    # Vessels inside the liver: darker than liver without contrast, brighter with it.
    hu[Tissue.LIVER_VESSEL] = hu[Tissue.PORTAL_VEIN] if contrast else liver - u(15, 25)
    return {t: float(v) for t, v in hu.items()}


class _Texture:
    """A smooth, unit-variance random field, evaluated one slice at a time."""

    def __init__(self, rng: np.random.Generator, grid: _Grid, cell: float = 6.0) -> None:
        def weights(coords: FloatArray) -> FloatArray:
            knots = np.arange(coords[0] - 2 * cell, coords[-1] + 2 * cell + 1e-9, cell)
            w = np.exp(-0.5 * ((coords[:, None] - knots[None, :]) / (0.8 * cell)) ** 2)
            w[w < 1e-6] = 0.0  # no denormals: they make the products very slow
            w /= np.sqrt((w**2).sum(axis=1, keepdims=True))  # unit variance per point
            return w.astype(np.float32)

        self.wz, self.wy, self.wx = weights(grid.z), weights(grid.y), weights(grid.x)
        self.wxt = np.ascontiguousarray(self.wx.T)
        shape = (self.wz.shape[1], self.wy.shape[1], self.wx.shape[1])
        self.field = rng.standard_normal(shape).astype(np.float32)

    def slab(self, k0: int, k1: int) -> npt.NDArray[np.float32]:
        """The field on slices k0..k1-1, with few (large) matrix products."""
        count, (nzc, nyc, nxc) = k1 - k0, self.field.shape
        planes = self.wz[k0:k1] @ self.field.reshape(nzc, nyc * nxc)  # (count, nyc*nxc)
        along_x = planes.reshape(count * nyc, nxc) @ self.wxt  # (count*nyc, columns)
        columns = along_x.shape[1]
        stacked = along_x.reshape(count, nyc, columns).transpose(1, 0, 2).reshape(nyc, -1)
        rows = self.wy @ stacked  # (rows, count*columns)
        result: npt.NDArray[np.float32] = np.ascontiguousarray(
            rows.reshape(-1, count, columns).transpose(1, 0, 2)
        )
        return result


def _gaussian_norm(sigma: float) -> float:
    """Standard deviation left after smoothing unit white noise with a 2D Gaussian."""
    delta = np.zeros(int(8 * sigma) * 2 + 3)
    delta[len(delta) // 2] = 1.0
    kernel = ndimage.gaussian_filter1d(delta, sigma)
    # The 2D kernel is the outer product: its sum of squares is the 1D one squared,
    # and the standard deviation is the root of that.
    return float((kernel**2).sum())


# --------------------------------------------------------------------------- DICOM


_REPRESENTATIONS = (
    # (PixelRepresentation, BitsStored, RescaleIntercept)
    (0, 12, -1024.0),
    (0, 16, -1024.0),
    (1, 16, -1024.0),
    (1, 16, 0.0),
)


def _uid(seed: int, *what: object) -> str:
    return str(_generate_uid(entropy_srcs=["dicomnode-validation-ct", str(seed), *map(str, what)]))


def _stored(
    hu: npt.NDArray[np.float32], signed: int, intercept: float, bits: int
) -> npt.NDArray[Any]:
    values = np.rint(np.clip(hu, HU_MIN, HU_MAX) - intercept)
    if signed:
        return np.clip(values, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).astype("<i2")
    return np.clip(values, 0, 2**bits - 1).astype("<u2")


# --------------------------------------------------------------------------- build


def build_study(
    seed: int, *, slices: int = 120, rows: int = 256, columns: int = 256, lesions: bool = True
) -> ValidationStudy:
    """Build one validation study; the same arguments always give the same study.

    Parameters
    ----------
    seed
        Picks everything: anatomy, contrast phase, geometry, lesions, noise, UIDs.
    slices, rows, columns
        Size of the series. The field of view is that of a 512-matrix scan with
        0.6-0.9 mm pixels (enlarged to fit the body), whatever the matrix.
    lesions
        False gives a study with the same kind of anatomy and no lesion.
    """
    if slices < 2 or rows < 16 or columns < 16:
        raise ValueError("a validation study needs at least 2 slices of 16 x 16 pixels")
    rng = np.random.default_rng([seed, 0x56414C])
    noise_rng = np.random.default_rng([seed, 0x4E4F4953])
    phase = str(rng.choice(PHASES, p=[0.25, 0.3, 0.45]))
    # Body: cavity scale, wall, fat; then a field of view that holds it.
    body = {
        "sx": rng.uniform(0.85, 1.12),
        "sy": rng.uniform(0.8, 1.12),
        "sz": rng.uniform(0.9, 1.1),
        "fat": rng.uniform(6, 35),
        "muscle": rng.uniform(8, 13),
        "belly": rng.uniform(0, 0.6),
        "apex": rng.uniform(185, 225),
    }
    wall = body["muscle"] + 5
    half_width = 135 * 1.06 * body["sx"] + wall + 1.1 * body["fat"]
    front = 85 * 1.04 * body["sy"] + wall + (1 + body["belly"]) * body["fat"]
    back = 85 * body["sy"] + wall + 0.7 * body["fat"]
    fov = max(
        rng.uniform(0.6, 0.9) * 512, 2 * half_width + 24, (front + back + 40) * columns / rows
    )
    step = round(fov / columns, 4)
    # Thin enough for the series to stay within about chest to pelvis (650 mm).
    choices = [t for t in (1.25, 2.0, 2.5, 3.0, 5.0) if (slices - 1) * t <= 650] or [1.25]
    thickness = float(rng.choice(choices))
    x0 = round(-(columns - 1) / 2 * step + rng.uniform(-8, 8), 2)
    y0 = round(-(rows - 1) / 2 * step + rng.uniform(-8, 8), 2)
    # The body's centre: inside the field of view, the back resting on the table.
    body["cx"] = float(np.clip(rng.uniform(-15, 15), x0 + half_width + 4, -x0 - half_width - 4))
    y_end = y0 + (rows - 1) * step
    body["cy"] = float(min(max(rng.uniform(-25, 20), y0 + front + 6), y_end - back - 6))
    table_y = body["cy"] + back - 4.5
    # Along z: the scan covers some chest above the diaphragm and abdomen below it.
    length = (slices - 1) * thickness
    chest = min(rng.uniform(0.2, 0.45) * length, (body["apex"] - 5) * body["sz"])
    z_first = round(rng.uniform(-800, -400), 2)
    z0 = z_first + length - chest  # patient z of the right diaphragm dome
    grid = _Grid(
        x=x0 + step * np.arange(columns),
        y=y0 + step * np.arange(rows),
        z=z_first + thickness * np.arange(slices),
    )
    anatomy = _Anatomy(rng, grid, z0, body)
    anatomy.build(table_y)
    canvas = anatomy.canvas
    hu = _tissue_hu(rng, phase)
    noise_sigma = float(rng.uniform(8, 25))
    representation = _REPRESENTATIONS[int(rng.integers(len(_REPRESENTATIONS)))]
    sex, age = str(rng.choice(["F", "M", "O"])), int(rng.integers(25, 85))
    # Lesions come last, so that the lesion-free study of a seed is the same image
    # without them (it gets its own UIDs).
    labels = np.zeros(grid.shape, dtype=np.uint8)
    placed = _place_lesions(rng, canvas, labels, hu, phase, body["cx"]) if lesions else []
    pixels = _render(noise_rng, canvas, hu, placed, noise_sigma, step)
    identity = _Identity(seed, "" if lesions else "lesion-free", sex, age, phase)
    datasets = _datasets(identity, grid, pixels, representation, thickness, step)
    return ValidationStudy(
        seed=seed,
        datasets=datasets,
        lesion_labels=labels,
        lesions=[p.truth for p in placed],
        tissues=canvas.tissue,
        tissue_hu={t.name.lower(): round(v, 2) for t, v in hu.items()},
        phase=phase,
        noise_sigma=round(noise_sigma, 3),
        spacing=(thickness, step, step),
        origin=(float(x0), float(y0), float(grid.z[0])),
    )


def _render(
    rng: np.random.Generator,
    canvas: _Canvas,
    hu: dict[Tissue, float],
    placed: list[_PlacedLesion],
    sigma: float,
    step: float,
) -> list[npt.NDArray[np.float32]]:
    """HU slices: tissue values with texture, lesions, blur and correlated noise."""
    grid = canvas.grid
    lut = np.zeros(256, dtype=np.float32)
    amp = np.zeros(256, dtype=np.float32)
    for tissue, value in hu.items():
        lut[tissue] = value
        amp[tissue] = _TEXTURE.get(tissue, 0)
    texture = _Texture(rng, grid)
    blur = 0.45 / step  # in-plane point spread of ~0.45 mm (pixels)
    noise_px = float(rng.uniform(0.6, 1.0))
    noise_scale = sigma / _gaussian_norm(noise_px)
    slices = []
    slab_size = max(1, 2_000_000 // (len(grid.y) * len(grid.x)))
    for k in range(len(grid.z)):
        if k % slab_size == 0:
            slab = texture.slab(k, min(len(grid.z), k + slab_size))
        labels = canvas.tissue[k]
        field = slab[k % slab_size]
        image = lut[labels] + amp[labels] * field
        for lesion in placed:
            zs, ys, xs = lesion.box
            if not zs.start <= k < zs.stop:
                continue
            i = k - zs.start
            view = image[ys, xs]
            tex = _LESION_TEXTURE * field[ys, xs]
            core = lesion.core[i]
            view[core] = lesion.truth.core_hu + tex[core]
            if lesion.rim is not None:
                rim = lesion.rim[i]
                view[rim] = float(lesion.truth.rim_hu or 0.0) + tex[rim]
        if blur >= 0.25:
            image = ndimage.gaussian_filter(image, blur, mode="nearest")
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        image += noise_scale * ndimage.gaussian_filter(noise, noise_px, mode="wrap")
        slices.append(image.astype(np.float32, copy=False))
    return slices


@dataclass(frozen=True)
class _Identity:
    seed: int
    variant: str  # "" or "lesion-free": part of every UID
    sex: str
    age: int
    phase: str

    def uid(self, *what: object) -> str:
        return _uid(self.seed, self.variant, *what)


def _datasets(
    identity: _Identity,
    grid: _Grid,
    pixels: list[npt.NDArray[np.float32]],
    representation: tuple[int, int, float],
    thickness: float,
    step: float,
) -> list[Dataset]:
    seed, sex, age, phase = identity.seed, identity.sex, identity.age, identity.phase
    signed, bits, intercept = representation
    study_uid, series_uid = identity.uid("study"), identity.uid("series")
    frame_uid = identity.uid("frame-of-reference")
    day = 1 + seed % 28
    date = f"2024{1 + seed % 12:02d}{day:02d}"
    time_of_day = f"{8 + seed % 10:02d}{seed % 60:02d}00"
    datasets = []
    for k, image in enumerate(pixels):
        sop_uid = identity.uid("instance", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = time_of_day
        ds.ContentTime = ds.AcquisitionTime = f"{time_of_day}.{k:06d}"[:13]
        ds.AccessionNumber = f"VAL{seed}"[:16]
        ds.Modality = "CT"
        ds.Manufacturer = "dicomnode validation generator"
        ds.InstitutionName = "Validation"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT CHEST ABDOMEN (VALIDATION)"
        ds.SeriesDescription = f"VALIDATION {phase.upper()}"
        ds.ManufacturerModelName = "validation-ct"
        ds.PatientName = f"VALIDATION^CT{seed}"
        ds.PatientID = f"VALCT{seed}"[:64]
        ds.PatientBirthDate = f"{2024 - age}0101"
        ds.PatientSex = sex
        ds.PatientAge = f"{age:03d}Y"
        ds.BodyPartExamined = "CHEST"
        if phase != "none":
            ds.ContrastBolusAgent = "Iohexol 350 mgI/ml"
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = "100"
        ds.SliceThickness = _ds(thickness)
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.ReconstructionDiameter = _ds(step * len(grid.x))
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "150"
        ds.RotationDirection = "CW"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = f"V{seed}"[:16]
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(grid.x[0]), _ds(grid.y[0]), _ds(grid.z[k])]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(grid.z[k])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = image.shape
        ds.PixelSpacing = [_ds(step), _ds(step)]
        ds.BitsAllocated = 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = signed
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.add_new(0x7FE00010, "OW", _stored(image, signed, intercept, bits).tobytes())
        datasets.append(ds)
    return datasets


def build_studies(first_seed: int, count: int, **kwargs: Any) -> Iterator[ValidationStudy]:
    """Studies for seeds first_seed, first_seed + 1, ... (count of them), one at a time."""
    for seed in range(first_seed, first_seed + count):
        yield build_study(seed, **kwargs)


def write_study(study: ValidationStudy, folder: Path) -> Path:
    """Write ``<folder>/study-<seed>/``: ``<n>.dcm`` per slice, ``truth.npz``, ``truth.json``."""
    out = folder / f"study-{study.seed}"
    out.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(study.datasets, start=1):
        dcmwrite(out / f"{n}.dcm", ds, enforce_file_format=True)
    first = study.datasets[0]
    uids = np.array([str(ds.SOPInstanceUID) for ds in study.datasets])
    np.savez_compressed(
        out / "truth.npz", lesion_labels=study.lesion_labels, sop_instance_uids=uids
    )
    truth = {
        "seed": study.seed,
        "study_instance_uid": str(first.StudyInstanceUID),
        "series_instance_uid": str(first.SeriesInstanceUID),
        "frame_of_reference_uid": str(first.FrameOfReferenceUID),
        "patient_name": str(first.PatientName),
        "shape": list(study.shape),
        "spacing_mm": list(study.spacing),
        "origin_mm": list(study.origin),
        "phase": study.phase,
        "noise_sigma_hu": study.noise_sigma,
        "tissue_hu": study.tissue_hu,
        "sop_instance_uids": uids.tolist(),
        "lesions": [lesion.as_dict() for lesion in study.lesions],
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    _write_truth_seg(study, out / "truth.seg")
    return out


def _write_truth_seg(study: ValidationStudy, path: Path) -> None:
    """The lesion truth as a DICOM SEG (one segment, `lesion`), for `dicomnode evaluate`.

    Named without `.dcm` so that `storescu +sp '*.dcm'` does not send it to the node.
    """
    from dicomnode.models import codes
    from dicomnode.models.api import SegmentLabel
    from dicomnode.synth.truth import build_truth_segmentation

    label = SegmentLabel(1, "lesion", codes.MORPHOLOGICALLY_ABNORMAL, codes.LESION)
    seg = build_truth_segmentation(
        study.datasets, (study.lesion_labels > 0)[None], [label],
        series_description="Validation truth",
    )  # fmt: skip
    seg.save_as(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1000, help="first seed")
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--columns", type=int, default=256)
    parser.add_argument("--no-lesions", action="store_true", help="lesion-free studies")
    args = parser.parse_args(argv)
    kwargs = {
        "slices": args.slices,
        "rows": args.rows,
        "columns": args.columns,
        "lesions": not args.no_lesions,
    }
    for seed in range(args.seed, args.seed + args.count):
        started = time.perf_counter()
        study = build_study(seed, **kwargs)
        out = write_study(study, args.outdir)
        kinds = ", ".join(f"{x.kind} {x.organ} {x.diameter_mm:.0f} mm" for x in study.lesions)
        print(
            f"{out}: {len(study.datasets)} slices, {study.phase},"
            f" {len(study.lesions)} lesions ({kinds or 'none'}),"
            f" {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
