"""Implicit shapes, painted in order into a tissue label array, and smooth noise fields.

A shape answers :meth:`Shape.inside` for coordinate arrays that broadcast against each
other (patient coordinates, millimetres): a slab of the voxel grid passes ``x`` as
``(1, 1, columns)``, ``y`` as ``(1, rows, 1)`` and ``z`` as ``(sub_slices, 1, 1)``; a
set of points passes three ``(n,)`` arrays. The same code therefore renders the
volume and answers "which tissue is at this point" when lesions are placed, and the
two always agree.

A :class:`Paint` is one step of the painter's algorithm: the tissue a shape sets, and
optionally which tissues it may replace (a bowel loop only fills fat, a lesion only
replaces its organ). The anatomy is an ordered list of paints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "Band",
    "Capsule",
    "Clipped",
    "Column",
    "Dome",
    "Ellipsoid",
    "LatticeNoise",
    "Paint",
    "Section",
    "Shape",
    "Union",
    "Wobble",
    "aligned",
    "allowed",
    "grown",
    "paint_grid",
    "paint_points",
    "random_wobble",
    "rotation",
    "tube",
]

Coords = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]
Labels = npt.NDArray[np.uint8]
Vec = tuple[float, float, float]
Matrix = npt.NDArray[np.float64]
#: Several millimetre values (one per z of a section).
Floats = Sequence[float] | npt.NDArray[np.float64]

# Variance of cubic B-spline interpolated unit white noise, averaged over positions:
# the integral of the squared cubic B-spline kernel is 151/315 per axis.
_BSPLINE_VARIANCE_1D = 151.0 / 315.0


def rotation(about_x: float = 0.0, about_y: float = 0.0, about_z: float = 0.0) -> Matrix:
    """Rotation matrix (degrees, applied x then y then z); its columns are the new axes."""
    ax, ay, az = (math.radians(v) for v in (about_x, about_y, about_z))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def grown(axes: Sequence[float], by: float) -> Vec:
    """Semi-axes `by` millimetres longer."""
    return (float(axes[0]) + by, float(axes[1]) + by, float(axes[2]) + by)


def aligned(axis: Sequence[float]) -> Matrix:
    """A rotation whose third column (the shape's z axis) points along `axis`."""
    w = np.asarray(axis, dtype=np.float64)
    w = w / np.linalg.norm(w)
    helper = np.array([1.0, 0.0, 0.0]) if abs(w[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(helper, w)
    u /= np.linalg.norm(u)
    return np.column_stack([u, np.cross(w, u), w])


@dataclass(frozen=True, slots=True)
class Wobble:
    """A smooth relative change of a shape's radius: a sum of plane waves.

    Attributes
    ----------
    waves
        (n, 3) wave vectors, radians per millimetre.
    phases, amplitudes
        (n,) each; the amplitudes are fractions of the radius.
    """

    waves: npt.NDArray[np.float64]
    phases: npt.NDArray[np.float64]
    amplitudes: npt.NDArray[np.float64]

    @property
    def limit(self) -> float:
        """The largest relative change the waves can add up to."""
        return float(np.abs(self.amplitudes).sum())

    def at(self, dx: Coords, dy: Coords, dz: Coords) -> Coords:
        """The relative radius change at offsets (dx, dy, dz) from the shape's centre."""
        total = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
        for (kx, ky, kz), phase, amplitude in zip(
            self.waves, self.phases, self.amplitudes, strict=True
        ):
            total += np.float32(amplitude) * np.cos(kx * dx + ky * dy + kz * dz + phase)
        return total

    def stretched(self, factor: float) -> Wobble:
        """The same pattern on a shape `factor` times larger."""
        return Wobble(self.waves / factor, self.phases, self.amplitudes)


def random_wobble(
    rng: np.random.Generator, amplitude: float, wavelength: float, terms: int = 4
) -> Wobble:
    """A wobble of `terms` waves about `wavelength` mm whose amplitudes sum to `amplitude`."""
    directions = rng.standard_normal((terms, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    lengths = wavelength * rng.uniform(0.7, 1.4, terms)
    weights = rng.uniform(0.5, 1.0, terms)
    return Wobble(
        waves=directions * (2 * math.pi / lengths)[:, None],
        phases=rng.uniform(0, 2 * math.pi, terms),
        amplitudes=amplitude * weights / weights.sum(),
    )


class Shape:
    """A solid in patient coordinates: its bounding box and a membership test."""

    __slots__ = ("hi", "lo")

    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]

    def inside(self, x: Coords, y: Coords, z: Coords) -> Mask:
        """True where the point lies inside; the arrays broadcast against each other."""
        raise NotImplementedError

    def scaled(self, factor: float, about: Vec) -> Shape:
        """The shape scaled by `factor` about a point (lesion cores and rims)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be scaled")

    def _set_bounds(self, lo: Iterable[float], hi: Iterable[float]) -> None:
        self.lo = np.asarray(list(lo), dtype=np.float64)
        self.hi = np.asarray(list(hi), dtype=np.float64)


class Ellipsoid(Shape):
    """An ellipsoid, optionally rotated and with a wobbling surface.

    ``rotation`` columns are the ellipsoid's axes in patient coordinates.
    """

    __slots__ = ("axes", "centre", "rotation", "wobble")

    def __init__(
        self,
        centre: Vec,
        axes: Vec,
        rotation: Matrix | None = None,
        wobble: Wobble | None = None,
    ) -> None:
        self.centre = tuple(float(v) for v in centre)
        self.axes = tuple(max(float(v), 1e-3) for v in axes)
        self.rotation = rotation
        self.wobble = wobble
        a = np.asarray(self.axes)
        half = a if rotation is None else np.sqrt(((rotation * a[None, :]) ** 2).sum(axis=1))
        half = half * (1.0 + (wobble.limit if wobble is not None else 0.0))
        c = np.asarray(self.centre)
        self._set_bounds(c - half, c + half)

    def inside(self, x: Coords, y: Coords, z: Coords) -> Mask:
        cx, cy, cz = self.centre
        dx, dy, dz = x - np.float32(cx), y - np.float32(cy), z - np.float32(cz)
        if self.rotation is None:
            ax, ay, az = (np.float32(v) for v in self.axes)
            q = (dx / ax) ** 2 + (dy / ay) ** 2 + (dz / az) ** 2
        else:
            r = self.rotation.astype(np.float32)
            q = np.zeros((), dtype=np.float32)
            for j, axis in enumerate(self.axes):
                u = r[0, j] * dx + r[1, j] * dy + r[2, j] * dz
                q = q + (u / np.float32(axis)) ** 2
        if self.wobble is None:
            return np.asarray(q <= 1.0)
        return _wobbled(np.asarray(q), self.wobble, (dx, dy, dz))

    def scaled(self, factor: float, about: Vec) -> Ellipsoid:
        (cx, cy, cz), (ax, ay, az) = self.centre, about
        centre = (ax + factor * (cx - ax), ay + factor * (cy - ay), az + factor * (cz - az))
        axes = (factor * self.axes[0], factor * self.axes[1], factor * self.axes[2])
        wobble = None if self.wobble is None else self.wobble.stretched(factor)
        return Ellipsoid(centre, axes, self.rotation, wobble)


def _wobbled(q: Coords, wobble: Wobble, offsets: tuple[Coords, Coords, Coords]) -> Mask:
    """Inside test q <= (1 + w)^2, evaluating the waves only near the surface."""
    limit = min(wobble.limit, 0.9)
    inside = q <= (1.0 - limit) ** 2
    near = np.nonzero((q > (1.0 - limit) ** 2) & (q <= (1.0 + limit) ** 2))
    if near[0].size:
        dx, dy, dz = (np.broadcast_to(d, q.shape)[near] for d in offsets)
        inside[near] = q[near] <= (1.0 + wobble.at(dx, dy, dz)) ** 2
    return inside


class Capsule(Shape):
    """A segment from `a` to `b` swept by a radius going from `ra` to `rb`."""

    __slots__ = ("a", "d", "dd", "ra", "rb")

    def __init__(self, a: Sequence[float], b: Sequence[float], ra: float, rb: float) -> None:
        ax, ay, az = float(a[0]), float(a[1]), float(a[2])
        bx, by, bz = float(b[0]), float(b[1]), float(b[2])
        self.a = (ax, ay, az)
        self.d = (bx - ax, by - ay, bz - az)
        self.dd = self.d[0] ** 2 + self.d[1] ** 2 + self.d[2] ** 2
        self.ra, self.rb = float(ra), float(rb)
        r = max(self.ra, self.rb)
        self.lo = np.array((min(ax, bx) - r, min(ay, by) - r, min(az, bz) - r))
        self.hi = np.array((max(ax, bx) + r, max(ay, by) + r, max(az, bz) + r))

    @property
    def b(self) -> Vec:
        """The segment's other end."""
        return (self.a[0] + self.d[0], self.a[1] + self.d[1], self.a[2] + self.d[2])

    def inside(self, x: Coords, y: Coords, z: Coords) -> Mask:
        (ax, ay, az), (dx, dy, dz) = self.a, self.d
        px, py, pz = x - np.float32(ax), y - np.float32(ay), z - np.float32(az)
        if self.dd == 0.0:
            return np.asarray(px * px + py * py + pz * pz <= self.ra**2)
        t = (px * np.float32(dx) + py * np.float32(dy) + pz * np.float32(dz)) / np.float32(self.dd)
        np.clip(t, 0.0, 1.0, out=t)
        ex, ey, ez = px - t * np.float32(dx), py - t * np.float32(dy), pz - t * np.float32(dz)
        r = np.float32(self.ra) + t * np.float32(self.rb - self.ra)
        return np.asarray(ex * ex + ey * ey + ez * ez <= r * r)


# Catmull-Rom basis: a point at t is 0.5 [1 t t^2 t^3] M [p0 p1 p2 p3].
_CATMULL_ROM = 0.5 * np.array(
    [[0.0, 2.0, 0.0, 0.0], [-1.0, 0.0, 1.0, 0.0], [2.0, -5.0, 4.0, -1.0], [-1.0, 3.0, -3.0, 1.0]]
)


def tube(points: Sequence[Vec], radii: Sequence[float], step: float = 6.0) -> list[Capsule]:
    """A smooth tube through `points` (Catmull-Rom), as capsules about `step` mm long."""
    p = np.asarray(points, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    if len(p) < 2:
        raise ValueError("a tube needs at least two points")
    padded = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    counts = np.maximum(1, np.ceil(np.linalg.norm(np.diff(p, axis=0), axis=1) / step)).astype(int)
    segment = np.repeat(np.arange(len(p) - 1), counts)
    t = np.concatenate([np.arange(1, n + 1) / n for n in counts])
    powers = np.stack([np.ones_like(t), t, t**2, t**3], axis=1) @ _CATMULL_ROM  # (m, 4)
    controls = np.stack([padded[segment + k] for k in range(4)], axis=1)  # (m, 4, 3)
    samples = np.vstack([p[:1], np.einsum("mk,mkc->mc", powers, controls)]).tolist()
    sample_radii = np.concatenate([r[:1], r[segment] + (r[segment + 1] - r[segment]) * t]).tolist()
    return [
        Capsule(samples[i], samples[i + 1], sample_radii[i], sample_radii[i + 1])
        for i in range(len(samples) - 1)
    ]


class Column(Shape):
    """An elliptic cylinder along z from `z0` to `z1` (vertebral bodies, discs)."""

    __slots__ = ("axes", "centre", "z0", "z1")

    def __init__(
        self, centre: tuple[float, float], axes: tuple[float, float], z0: float, z1: float
    ) -> None:
        self.centre, self.axes = centre, axes
        self.z0, self.z1 = min(z0, z1), max(z0, z1)
        (cx, cy), (ax, ay) = centre, axes
        self._set_bounds((cx - ax, cy - ay, self.z0), (cx + ax, cy + ay, self.z1))

    def inside(self, x: Coords, y: Coords, z: Coords) -> Mask:
        (cx, cy), (ax, ay) = self.centre, self.axes
        plane = ((x - np.float32(cx)) / np.float32(ax)) ** 2 + (
            (y - np.float32(cy)) / np.float32(ay)
        ) ** 2 <= 1.0
        return np.asarray(plane & (z >= self.z0) & (z <= self.z1))


class Section(Shape):
    """A superellipse cross-section whose size and place follow z: the body and its layers.

    The semi-axis towards anterior (``y`` below the centre) and posterior may differ.
    """

    __slots__ = ("_a", "_back", "_cx", "_cy", "_front", "_z", "exponent")

    def __init__(
        self,
        z: Floats,
        centre: Sequence[tuple[float, float]],
        a: Floats,
        front: Floats,
        back: Floats,
        exponent: float = 2.4,
    ) -> None:
        self._z = np.asarray(z, dtype=np.float64)
        self._cx = np.asarray([c[0] for c in centre])
        self._cy = np.asarray([c[1] for c in centre])
        self._a = np.maximum(np.asarray(a, dtype=np.float64), 1.0)
        self._front = np.maximum(np.asarray(front, dtype=np.float64), 1.0)
        self._back = np.maximum(np.asarray(back, dtype=np.float64), 1.0)
        self.exponent = exponent
        self._set_bounds(
            (float((self._cx - self._a).min()), float((self._cy - self._front).min()), self._z[0]),
            (float((self._cx + self._a).max()), float((self._cy + self._back).max()), self._z[-1]),
        )

    def shrunk(self, by: float | Floats) -> Section:
        """The section `by` mm smaller all round (one value, or one per z)."""
        d = np.broadcast_to(np.asarray(by, dtype=np.float64), self._z.shape)
        centre = list(zip(self._cx, self._cy, strict=True))
        return Section(self._z, centre, self._a - d, self._front - d, self._back - d, self.exponent)

    def inside(self, x: Coords, y: Coords, z: Coords) -> Mask:
        zz = np.asarray(z, dtype=np.float32)
        cx = np.interp(zz, self._z, self._cx).astype(np.float32)
        cy = np.interp(zz, self._z, self._cy).astype(np.float32)
        a = np.interp(zz, self._z, self._a).astype(np.float32)
        dy = y - cy
        b = np.where(
            dy < 0,
            np.interp(zz, self._z, self._front).astype(np.float32),
            np.interp(zz, self._z, self._back).astype(np.float32),
        )
        p = np.float32(self.exponent)
        q = np.abs((x - cx) / a) ** p + np.abs(dy / b) ** p
        return np.asarray((q <= 1.0) & (zz >= self._z[0]) & (zz <= self._z[-1]))


@dataclass(frozen=True, slots=True)
class Dome:
    """A surface z = max over caps of ``top - kx (x - x0)^2 - ky (y - y0)^2`` (diaphragm).

    Each cap is ``(x0, y0, top, kx, ky)``.
    """

    caps: tuple[tuple[float, float, float, float, float], ...]

    def height(self, x: Coords, y: Coords) -> Coords:
        """Height of the surface above (x, y), millimetres."""
        out: Coords | None = None
        for x0, y0, top, kx, ky in self.caps:
            h = np.float32(top) - np.float32(kx) * (x - np.float32(x0)) ** 2
            h = h - np.float32(ky) * (y - np.float32(y0)) ** 2
            out = h if out is None else np.maximum(out, h)
        assert out is not None
        return out


class Clipped(Shape):
    """A shape cut by a dome (kept above or below it) and by planes of constant y."""

    __slots__ = ("above", "below", "inner", "y_max", "y_min")

    def __init__(
        self,
        inner: Shape,
        *,
        above: tuple[Dome, float] | None = None,
        below: tuple[Dome, float] | None = None,
        y_min: float | None = None,
        y_max: float | None = None,
    ) -> None:
        self.inner, self.above, self.below = inner, above, below
        self.y_min, self.y_max = y_min, y_max
        lo, hi = inner.lo.copy(), inner.hi.copy()
        if y_min is not None:
            lo[1] = max(lo[1], y_min)
        if y_max is not None:
            hi[1] = min(hi[1], y_max)
        self._set_bounds(lo, hi)

    def inside(self, x: Coords, y: Coords, z: Coords) -> Mask:
        mask = self.inner.inside(x, y, z)
        if self.above is not None:
            dome, offset = self.above
            mask = mask & (z > dome.height(x, y) + np.float32(offset))
        if self.below is not None:
            dome, offset = self.below
            mask = mask & (z < dome.height(x, y) - np.float32(offset))
        if self.y_min is not None:
            mask = mask & (y >= self.y_min)
        if self.y_max is not None:
            mask = mask & (y < self.y_max)
        return np.asarray(mask)

    def scaled(self, factor: float, about: Vec) -> Shape:
        return Clipped(
            self.inner.scaled(factor, about),
            above=self.above,
            below=self.below,
            y_min=self.y_min,
            y_max=self.y_max,
        )


class Band(Shape):
    """A curved plate under the patient: ``y0 + k x^2 <= y <= y0 + k x^2 + thickness``.

    It spans ``|x - cx| <= half_width`` and every z from `z0` to `z1` (the table).
    """

    __slots__ = ("curvature", "cx", "half_width", "thickness", "y0")

    def __init__(
        self,
        cx: float,
        y0: float,
        curvature: float,
        thickness: float,
        half_width: float,
        z: tuple[float, float],
    ) -> None:
        self.cx, self.y0, self.curvature = cx, y0, curvature
        self.thickness, self.half_width = thickness, half_width
        rise = curvature * half_width**2
        self._set_bounds(
            (cx - half_width, y0, z[0]), (cx + half_width, y0 + rise + thickness, z[1])
        )

    def inside(self, x: Coords, y: Coords, z: Coords) -> Mask:
        dx = x - np.float32(self.cx)
        floor = np.float32(self.y0) + np.float32(self.curvature) * dx * dx
        plate = (y >= floor) & (y <= floor + np.float32(self.thickness))
        plate = plate & (np.abs(dx) <= self.half_width)
        return np.asarray(plate & (z >= self.lo[2]) & (z <= self.hi[2]))


class Union(Shape):
    """Points inside any of the members."""

    __slots__ = ("members",)

    def __init__(self, members: Sequence[Shape]) -> None:
        if not members:
            raise ValueError("a union needs at least one member")
        self.members = tuple(members)
        self._set_bounds(
            np.min([m.lo for m in members], axis=0), np.max([m.hi for m in members], axis=0)
        )

    def inside(self, x: Coords, y: Coords, z: Coords) -> Mask:
        mask = self.members[0].inside(x, y, z)
        for member in self.members[1:]:
            mask = mask | member.inside(x, y, z)
        return np.asarray(mask)

    def scaled(self, factor: float, about: Vec) -> Union:
        return Union([m.scaled(factor, about) for m in self.members])


def allowed(tissues: Iterable[int]) -> Mask:
    """A 256-entry lookup: True for the tissues a paint may replace."""
    table = np.zeros(256, dtype=bool)
    table[list(tissues)] = True
    return table


class Paint:
    """One step of the painter's algorithm: `shapes` set `tissue` where `where` allows.

    ``where`` is a lookup from :func:`allowed`, or None to paint over anything. The
    shapes of one paint share the tissue, so their order does not matter and only
    those near a slab are visited.
    """

    __slots__ = ("box", "hi", "lo", "shapes", "tissue", "where")

    def __init__(self, shapes: Shape | Sequence[Shape], tissue: int, where: Mask | None = None):
        self.shapes = (shapes,) if isinstance(shapes, Shape) else tuple(shapes)
        if not self.shapes:
            raise ValueError("a paint needs at least one shape")
        self.tissue = int(tissue)
        self.where = where
        self.lo = np.array([s.lo for s in self.shapes])
        self.hi = np.array([s.hi for s in self.shapes])
        #: The bounds of all the shapes: (x0, y0, z0, x1, y1, z1), plain floats.
        self.box = (*self.lo.min(axis=0).tolist(), *self.hi.max(axis=0).tolist())

    def near(self, lo: Sequence[float], hi: Sequence[float]) -> list[Shape]:
        """The shapes whose bounds meet the box from `lo` to `hi`."""
        b = self.box
        if (
            b[0] > hi[0]
            or b[1] > hi[1]
            or b[2] > hi[2]
            or b[3] < lo[0]
            or b[4] < lo[1]
            or b[5] < lo[2]
        ):
            return []
        if len(self.shapes) == 1:
            return list(self.shapes)
        meets = np.all((self.lo <= np.asarray(hi)) & (self.hi >= np.asarray(lo)), axis=1)
        return [self.shapes[i] for i in np.nonzero(meets)[0]]


def paint_grid(labels: Labels, paint: Paint, x: Coords, y: Coords, z: Coords) -> None:
    """Apply `paint` to a slab of labels whose axes lie at z, y, x (ascending, 1D)."""
    for shape in paint.near((x[0], y[0], z[0]), (x[-1], y[-1], z[-1])):
        lo, hi = shape.lo, shape.hi
        k0, k1 = np.searchsorted(z, lo[2]), np.searchsorted(z, hi[2], side="right")
        i0, i1 = np.searchsorted(y, lo[1]), np.searchsorted(y, hi[1], side="right")
        j0, j1 = np.searchsorted(x, lo[0]), np.searchsorted(x, hi[0], side="right")
        if k0 >= k1 or i0 >= i1 or j0 >= j1:
            continue
        sub = labels[k0:k1, i0:i1, j0:j1]
        mask = shape.inside(x[None, None, j0:j1], y[None, i0:i1, None], z[k0:k1, None, None])
        mask = np.broadcast_to(mask, sub.shape)
        if paint.where is not None:
            mask = mask & paint.where[sub]
        sub[mask] = paint.tissue


def paint_points(labels: Labels, paint: Paint, x: Coords, y: Coords, z: Coords) -> None:
    """Apply `paint` to the labels of single points at (x, y, z) ((n,) arrays each)."""
    box = paint.box
    if (
        box[0] > x.max() or box[3] < x.min()
        or box[1] > y.max() or box[4] < y.min()
        or box[2] > z.max() or box[5] < z.min()
    ):  # fmt: skip
        return
    # Which points lie in which shape's bounds, for all shapes at once: (shapes, points).
    lo, hi = paint.lo[:, :, None], paint.hi[:, :, None]
    hits = (x >= lo[:, 0]) & (x <= hi[:, 0]) & (y >= lo[:, 1]) & (y <= hi[:, 1])
    hits &= (z >= lo[:, 2]) & (z <= hi[:, 2])
    for i in np.nonzero(hits.any(axis=1))[0]:
        near = np.nonzero(hits[i])[0]
        mask = np.broadcast_to(paint.shapes[i].inside(x[near], y[near], z[near]), near.shape)
        if paint.where is not None:
            mask = mask & paint.where[labels[near]]
        labels[near[mask]] = paint.tissue


class LatticeNoise:
    """Smooth Gaussian noise: unit white noise on a lattice, cubic B-spline interpolated.

    Evaluated separably on a grid, so a field over a whole slab costs three small
    matrix products; the values have unit variance on average and a correlation
    length of about the lattice `spacing`.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        spacing: float,
        lo: Sequence[float],
        hi: Sequence[float],
    ) -> None:
        self.spacing = float(spacing)
        self.lo = np.asarray(lo, dtype=np.float64) - 2 * spacing
        counts = np.ceil((np.asarray(hi) - self.lo) / spacing).astype(int) + 4
        # (z, y, x) order, as the volume.
        self.values = rng.standard_normal((counts[2], counts[1], counts[0]), dtype=np.float32)
        self._scale = np.float32(1.0 / math.sqrt(_BSPLINE_VARIANCE_1D**3))

    def sample(self, x: Coords, y: Coords, z: Coords) -> Coords:
        """The field on the grid of 1D axes x, y, z: an array (z, y, x)."""
        mz, my, mx = self.values.shape
        wx = _bspline_weights((x - self.lo[0]) / self.spacing, mx)
        wy = _bspline_weights((y - self.lo[1]) / self.spacing, my)
        wz = _bspline_weights((z - self.lo[2]) / self.spacing, mz)
        used = np.nonzero(wz.any(axis=0))[0]
        k0, k1 = int(used[0]), int(used[-1]) + 1
        kz = k1 - k0
        # One 2D product per axis: OpenBLAS is slow on many small stacked products
        # when its threads compete for busy cores.
        v = (self.values[k0:k1].reshape(-1, mx) @ wx.T).reshape(kz, my, len(x))
        v = (wy @ v.transpose(1, 0, 2).reshape(my, -1)).reshape(len(y), kz, len(x))
        out = np.tensordot(wz[:, k0:k1], v, axes=(1, 1))  # (nz, ny, nx)
        return np.asarray(out * self._scale, dtype=np.float32)


def _bspline_weights(u: npt.NDArray[np.floating], count: int) -> npt.NDArray[np.float32]:
    """(len(u), count) weights of cubic B-spline interpolation at lattice positions u."""
    u = np.clip(np.asarray(u, dtype=np.float64), 1.0, count - 3.0)
    i = np.floor(u).astype(int)
    f = u - i
    weights = (
        (1 - f) ** 3 / 6,
        (3 * f**3 - 6 * f**2 + 4) / 6,
        (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6,
        f**3 / 6,
    )
    out = np.zeros((len(u), count), dtype=np.float32)
    rows = np.arange(len(u))
    for k, w in enumerate(weights):
        out[rows, np.clip(i - 1 + k, 0, count - 1)] += w
    return out
