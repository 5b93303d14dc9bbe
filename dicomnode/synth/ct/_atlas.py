"""The patient's frame: habitus, the atlas-to-patient transform and the ordered paints.

Anatomy is written in *atlas* millimetres of a reference adult: the body axis at
x = y = 0, z = 0 at the top of the right diaphragm dome, LPS directions (+x to the
patient's left, +y posterior, +z superior). :class:`Atlas` maps atlas points to the
patient's coordinates (scaled by the habitus, shifted by where the patient lies on
the table) and collects the paints in the order they are applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dicomnode.synth.ct._shapes import (
    Capsule,
    Column,
    Dome,
    Ellipsoid,
    Matrix,
    Paint,
    Section,
    Shape,
    Vec,
    Wobble,
    allowed,
    tube,
)

__all__ = ["Atlas", "Habitus", "Profile", "Streak", "contains", "draw_habitus"]

#: Millimetres per z of the body table: one value for all, or one per z.
Profile = float | Sequence[float] | npt.NDArray[np.float64]

# The lean body (inside the subcutaneous fat), atlas mm: z, half-width, anterior and
# posterior half-depth. From the thighs' top to the neck.
_CORE_Z = (-420.0, -330.0, -250.0, -180.0, -100.0, 0.0, 100.0, 180.0, 240.0, 280.0, 330.0, 480.0)
_CORE_A = (150.0, 165.0, 150.0, 140.0, 138.0, 143.0, 148.0, 156.0, 168.0, 118.0, 60.0, 58.0)
_CORE_FRONT = (88.0, 95.0, 92.0, 97.0, 100.0, 103.0, 100.0, 96.0, 88.0, 70.0, 52.0, 50.0)
_CORE_BACK = (88.0, 95.0, 96.0, 98.0, 100.0, 105.0, 105.0, 100.0, 92.0, 72.0, 60.0, 58.0)
# Half-width of the rib cage (atlas mm) by z: narrow at the apex, widest low.
_CAGE_Z = (-80.0, 0.0, 100.0, 180.0, 230.0, 275.0, 310.0)
_CAGE_A = (128.0, 134.0, 135.0, 124.0, 100.0, 62.0, 45.0)
# Thickness of the body wall inside the lean body (atlas mm), per z of the body table;
# above the thoracic inlet there is no cavity.
_WALL = (12.0, 13.0, 12.0, 10.0, 9.0, 13.0, 14.0, 14.0, 14.0, 16.0, 120.0, 120.0)
# Subcutaneous fat relative to the patient's reference thickness, per z above.
_FAT_SHARE = (1.1, 1.3, 1.25, 1.25, 1.15, 0.9, 0.7, 0.7, 0.6, 0.5, 0.4, 0.4)


@dataclass(frozen=True, slots=True)
class Habitus:
    """The patient's build and place on the table.

    Attributes
    ----------
    width, depth, height
        Scale of the atlas along x, y and z.
    fat
        Reference subcutaneous fat thickness, millimetres (thicker over the belly).
    centre
        Where the body axis lies in patient coordinates (x, y), millimetres.
    arms_down
        Arms beside the body (in the field of view) rather than above the head.
    female
        Pelvic organ: uterus rather than prostate.
    """

    width: float
    depth: float
    height: float
    fat: float
    centre: tuple[float, float]
    arms_down: bool
    female: bool


def draw_habitus(rng: np.random.Generator) -> Habitus:
    """Draw a patient's build: slim to obese, short to tall, off-centre on the table."""
    width = float(rng.uniform(0.82, 1.2))
    return Habitus(
        width=width,
        depth=width * float(rng.uniform(0.85, 1.15)),
        height=float(rng.uniform(0.9, 1.1)),
        fat=3.0 + 45.0 * float(rng.beta(1.6, 3.0)),
        centre=(float(rng.uniform(-25, 25)), float(rng.uniform(-35, 30))),
        arms_down=bool(rng.random() < 0.15),
        female=bool(rng.random() < 0.5),
    )


@dataclass(frozen=True, slots=True)
class Streak:
    """A source of streak artefacts: metal, a dense bolus, or a pair of dense bones.

    Attributes
    ----------
    centre
        (x, y) of the object, millimetres.
    z0, z1
        The z range it spans.
    strength
        Relative strength (1 for a hip prosthesis).
    partner
        For a pair of bones, the other one's (x, y): a dark band joins them.
    bolus
        The source is undiluted contrast in a vein: only there in the arterial phase.
    """

    centre: tuple[float, float]
    z0: float
    z1: float
    strength: float
    partner: tuple[float, float] | None = None
    bolus: bool = False


class Atlas:
    """Builds the patient's paints from atlas coordinates.

    Parameters
    ----------
    rng
        The anatomy's random stream (sizes, places, contents).
    habitus
        The patient's build.
    """

    def __init__(self, rng: np.random.Generator, habitus: Habitus) -> None:
        self.rng = rng
        self.habitus = habitus
        self.iso = (habitus.width * habitus.depth * habitus.height) ** (1 / 3)
        self.paints: list[Paint] = []
        #: Where lesions and cysts may grow: site name -> shapes (patient coordinates).
        self.sites: dict[str, list[Shape]] = {}
        self.streaks: list[Streak] = []
        self._fat = np.asarray(_FAT_SHARE) * habitus.fat

    # -- transforms ---------------------------------------------------------

    def p(self, x: float, y: float, z: float) -> Vec:
        """Patient coordinates of an atlas point."""
        h = self.habitus
        return (h.width * x + h.centre[0], h.depth * y + h.centre[1], h.height * z)

    def z(self, z: float) -> float:
        """Patient z of an atlas z."""
        return float(self.habitus.height * z)

    def r(self, radius: float) -> float:
        """A radius scaled with the patient's overall size."""
        return float(radius * self.iso)

    def jitter(self, sd: float) -> float:
        """A normal random offset, millimetres."""
        return float(self.rng.normal(0.0, sd))

    def core_at(self, z: float) -> tuple[float, float, float]:
        """Atlas half-width, anterior and posterior half-depth of the lean body at z."""
        return (
            float(np.interp(z, _CORE_Z, _CORE_A)),
            float(np.interp(z, _CORE_Z, _CORE_FRONT)),
            float(np.interp(z, _CORE_Z, _CORE_BACK)),
        )

    def cage_at(self, z: float) -> float:
        """Atlas half-width of the rib cage at z (the lungs stay inside it)."""
        return float(np.interp(z, _CAGE_Z, _CAGE_A))

    def cavity(self) -> Section:
        """The body cavity: the lean body less its wall, and in the chest the rib cage."""
        h = self.habitus
        wall = np.asarray(_WALL) * self.iso
        a = np.asarray(_CORE_A) * h.width - wall
        cage = np.asarray([self.cage_at(z) for z in _CORE_Z]) * h.width + 4.0
        a = np.where(np.asarray(_CORE_Z) > -80.0, np.minimum(a, cage), a)
        return Section(
            [self.z(v) for v in _CORE_Z],
            [h.centre] * len(_CORE_Z),
            a,
            np.asarray(_CORE_FRONT) * h.depth - wall,
            np.asarray(_CORE_BACK) * h.depth - wall,
        )

    def fat_at(self, z: float) -> float:
        """Subcutaneous fat thickness at atlas z, millimetres."""
        return float(np.interp(z, _CORE_Z, self._fat))

    # -- shapes in patient coordinates ---------------------------------------

    def ellipsoid(
        self,
        centre: Vec,
        axes: Vec,
        rotation: Matrix | None = None,
        wobble: Wobble | None = None,
    ) -> Ellipsoid:
        """An ellipsoid at an atlas centre; axes scale per axis, or overall when rotated."""
        h = self.habitus
        if rotation is None:
            scaled = (axes[0] * h.width, axes[1] * h.depth, axes[2] * h.height)
        else:
            scaled = (axes[0] * self.iso, axes[1] * self.iso, axes[2] * self.iso)
        return Ellipsoid(self.p(*centre), scaled, rotation, wobble)

    def tube(
        self, points: Sequence[Vec], radii: Sequence[float], step: float | None = None
    ) -> list[Capsule]:
        """A smooth tube through atlas points; radii scale with the patient.

        Capsules are about `step` mm long: by default 0.8 of the mean radius (4 to 20
        mm), smooth enough while wide tubes do not overlap themselves many times.
        """
        if step is None:
            step = min(max(0.8 * self.r(float(np.mean(radii))), 4.0), 20.0)
        return tube([self.p(*q) for q in points], [self.r(v) for v in radii], step)

    def capsule(self, a: Vec, b: Vec, ra: float, rb: float | None = None) -> Capsule:
        """One straight capsule between atlas points."""
        return Capsule(self.p(*a), self.p(*b), self.r(ra), self.r(ra if rb is None else rb))

    def column(
        self, centre: tuple[float, float], axes: tuple[float, float], z0: float, z1: float
    ) -> Column:
        """An elliptic cylinder along z between atlas z0 and z1."""
        x, y, _ = self.p(centre[0], centre[1], 0.0)
        h = self.habitus
        return Column((x, y), (axes[0] * h.width, axes[1] * h.depth), self.z(z0), self.z(z1))

    def section(
        self,
        grow: Profile = 0.0,
        *,
        front: Profile = 0.0,
        back: Profile = 0.0,
    ) -> Section:
        """The lean body's section grown by `grow` mm (negative: shrunk), per atlas z.

        `front` and `back` add to the growth towards anterior and posterior.
        """
        h = self.habitus

        def per_z(value: Profile) -> npt.NDArray[np.float64]:
            return np.broadcast_to(np.asarray(value, dtype=np.float64), (len(_CORE_Z),))

        g = per_z(grow)
        return Section(
            [self.z(v) for v in _CORE_Z],
            [h.centre] * len(_CORE_Z),
            np.asarray(_CORE_A) * h.width + g,
            np.asarray(_CORE_FRONT) * h.depth + g + per_z(front),
            np.asarray(_CORE_BACK) * h.depth + g + per_z(back),
        )

    def fat_profile(self) -> np.ndarray:
        """Subcutaneous fat thickness at each z of the body table, millimetres."""
        return self._fat.copy()

    def spine_y(self, z: float) -> float:
        """Atlas y of the vertebral bodies' centre at atlas z (shallower in the neck)."""
        depth_to_spine = float(np.interp(z, (260.0, 330.0), (62.0, 40.0)))
        return self.core_at(z)[2] - depth_to_spine

    def spine_half_depth(self, z: float) -> float:
        """Atlas anteroposterior half-depth of the vertebral body at atlas z."""
        return float(np.interp(z, (-250.0, -50.0, 270.0, 330.0), (21.0, 20.0, 14.0, 12.0)))

    def dome(self, caps: Sequence[tuple[float, float, float, float, float]]) -> Dome:
        """A dome from atlas caps ``(x0, y0, top, kx, ky)``."""
        h = self.habitus
        return Dome(
            tuple(
                (
                    h.width * x0 + h.centre[0],
                    h.depth * y0 + h.centre[1],
                    h.height * top,
                    kx * h.height / h.width**2,
                    ky * h.height / h.depth**2,
                )
                for x0, y0, top, kx, ky in caps
            )
        )

    # -- paints ---------------------------------------------------------------

    def add(
        self, shapes: Shape | Sequence[Shape], tissue: int, where: Sequence[int] | None = None
    ) -> None:
        """Paint `tissue` with these shapes, over anything or only over `where` tissues."""
        self.paints.append(Paint(shapes, tissue, None if where is None else allowed(where)))

    def add_site(self, name: str, shape: Shape) -> None:
        """Record a region lesions or cysts of `name` may grow in."""
        self.sites.setdefault(name, []).append(shape)

    def tree(
        self,
        region: Shape,
        root: Vec,
        directions: Sequence[Vec],
        radius: float,
        length: float,
        depth: int,
    ) -> list[Capsule]:
        """A branching tree (vessels, airways) from patient point `root` inside `region`.

        One trunk per direction, then each branch forks in two, turned 18 to 40 degrees
        and thinner by about Murray's law, until `depth` forks or a radius under
        0.9 mm; a branch that would leave the region is shortened or dropped. Grown
        level by level, so each level's ends are tested against the region at once.
        """
        rng = self.rng
        count = len(directions)
        starts = np.tile(np.asarray(root, dtype=np.float64), (count, 1))
        heads = np.asarray(directions, dtype=np.float64) + 0.3 * rng.standard_normal((count, 3))
        radii = np.full(count, float(radius))
        lengths = np.full(count, float(length))
        out: list[Capsule] = []
        for level in range(depth + 1):
            heads /= np.linalg.norm(heads, axis=1, keepdims=True)
            ends, kept = self._fit(region, starts, heads, lengths)
            out.extend(
                Capsule(starts[i], ends[i], radii[i], radii[i] * 0.9) for i in np.nonzero(kept)[0]
            )
            grow = kept & (radii >= 0.9)
            if level == depth or not grow.any():
                break
            starts, heads, radii, lengths = self._fork(
                ends[grow], heads[grow], radii[grow], lengths[grow]
            )
        return out

    def _fit(
        self,
        region: Shape,
        starts: np.ndarray,
        heads: np.ndarray,
        lengths: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ends inside the region, shortening a branch up to three times; which fit."""
        ends = starts + heads * lengths[:, None]
        kept = np.zeros(len(starts), dtype=bool)
        for _ in range(3):
            kept |= _inside_all(region, ends)
            if kept.all():
                break
            lengths = np.where(kept, lengths, lengths * 0.6)
            ends = starts + heads * lengths[:, None]
        return ends, kept

    def _fork(
        self,
        ends: np.ndarray,
        heads: np.ndarray,
        radii: np.ndarray,
        lengths: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Two children per branch, turned either way about a random perpendicular axis."""
        rng = self.rng
        n = len(ends)
        axis = np.cross(heads, rng.standard_normal((n, 3)))
        axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-9)
        angle = np.radians(rng.uniform(18.0, 40.0, (n, 2))) * np.array([-1.0, 1.0])
        cos, sin = np.cos(angle)[..., None], np.sin(angle)[..., None]
        # Rodrigues' rotation of each parent direction about its perpendicular axis.
        turned = heads[:, None, :] * cos + np.cross(axis, heads)[:, None, :] * sin
        children = (
            np.repeat(ends, 2, axis=0),
            turned.reshape(-1, 3),
            (radii[:, None] * rng.uniform(0.72, 0.84, (n, 2))).ravel(),
            (lengths[:, None] * rng.uniform(0.7, 0.9, (n, 2))).ravel(),
        )
        return children

    def unit(self) -> Vec:
        """A random unit vector."""
        v = self.rng.standard_normal(3)
        v /= math.sqrt(float(v @ v))
        return (float(v[0]), float(v[1]), float(v[2]))


def _inside_all(shape: Shape, points: np.ndarray) -> np.ndarray:
    """Whether each of (n, 3) patient points lies inside `shape`."""
    x, y, z = (np.ascontiguousarray(points[:, i], dtype=np.float32) for i in range(3))
    return np.broadcast_to(np.asarray(shape.inside(x, y, z)), (len(points),)).copy()


def contains(shape: Shape, point: Vec) -> bool:
    """Whether one patient point lies inside `shape`."""
    x, y, z = (np.asarray([v], dtype=np.float32) for v in point)
    return bool(np.asarray(shape.inside(x, y, z)).ravel()[0])
