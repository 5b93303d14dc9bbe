"""Lesions, simple cysts and calcified granulomas: kinds, shapes, places and CT numbers.

A lesion is placed where the rendered anatomy really holds its organ: candidate
centres are tested against every paint of the patient (:func:`tissue_at`), and 70 %
of points on a sphere around the centre must be the organ, so a lesion never sits in
a vessel, a cyst or the neighbouring organ. Its parts (solid, core, rim, septum) are
painted with their own labels only over the organ's tissue, so the lesion label
volume lies inside the organ by construction.

Simple cysts (water density, no wall, round) are *not* lesions by default: they are
benign, common, and exactly what a lesion model must learn to leave alone. They get
the ``CYST`` tissue label; ``simple_cysts_are_lesions`` makes them lesions instead.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dicomnode.synth.ct._shapes import (
    Capsule,
    Ellipsoid,
    Paint,
    Shape,
    Union,
    Vec,
    aligned,
    allowed,
    paint_points,
    random_wobble,
)
from dicomnode.synth.ct._tissues import TISSUE_COUNT, ContrastPhase, TissueTable
from dicomnode.synth.ct._tissues import CtTissue as T

__all__ = [
    "HOSTS",
    "LESION_PARTS",
    "AnatomicalLesion",
    "LesionKind",
    "LesionShape",
    "LesionSite",
    "Placement",
    "build_lesion",
    "draw_cysts",
    "draw_granulomas",
    "draw_lesion",
    "find_centre",
    "lesion_label",
    "tissue_at",
]

#: Labels per lesion: lesion i paints labels TISSUE_COUNT + LESION_PARTS * i + part.
LESION_PARTS = 4


class LesionSite(enum.StrEnum):
    """The organ a lesion grows in."""

    LIVER = "liver"
    SPLEEN = "spleen"
    PANCREAS = "pancreas"
    KIDNEY = "kidney"
    LUNG = "lung"
    PELVIC_ORGAN = "pelvic_organ"  # uterus or prostate


class LesionKind(enum.StrEnum):
    """How a lesion looks: its parts and their attenuation against the organ."""

    HYPODENSE = "hypodense"
    HYPERDENSE = "hyperdense"
    CYSTIC = "cystic"  # complex: enhancing wall, septum or mural nodule
    RIM_ENHANCING = "rim_enhancing"
    NECROTIC = "necrotic"
    SUBSOLID = "subsolid"  # lung: ground glass, maybe a solid core
    CAVITARY = "cavitary"  # lung: thick wall around air
    SIMPLE_CYST = "simple_cyst"  # a lesion only when simple cysts are asked to be


class LesionShape(enum.StrEnum):
    """The outline of a lesion."""

    ROUND = "round"
    LOBULATED = "lobulated"
    IRREGULAR = "irregular"


#: The tissues a lesion of each site may replace; the first is its organ label.
HOSTS: Mapping[LesionSite, tuple[T, ...]] = {
    LesionSite.LIVER: (T.LIVER,),
    LesionSite.SPLEEN: (T.SPLEEN,),
    LesionSite.PANCREAS: (T.PANCREAS,),
    LesionSite.KIDNEY: (T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA),
    LesionSite.LUNG: (T.LUNG, T.PULMONARY_VESSEL),
    LesionSite.PELVIC_ORGAN: (T.PELVIC_ORGAN,),
}
_SOLID_KINDS = (
    LesionKind.HYPODENSE,
    LesionKind.HYPERDENSE,
    LesionKind.CYSTIC,
    LesionKind.RIM_ENHANCING,
    LesionKind.NECROTIC,
)
_LUNG_KINDS = (LesionKind.HYPERDENSE, LesionKind.NECROTIC, LesionKind.SUBSOLID, LesionKind.CAVITARY)
_LARGEST = {
    LesionSite.PANCREAS: 30.0,
    LesionSite.KIDNEY: 45.0,
    LesionSite.SPLEEN: 45.0,
    LesionSite.PELVIC_ORGAN: 35.0,
}
_SITE_WEIGHTS = {
    LesionSite.LIVER: 0.35,
    LesionSite.LUNG: 0.25,
    LesionSite.KIDNEY: 0.15,
    LesionSite.SPLEEN: 0.1,
    LesionSite.PANCREAS: 0.15,
    LesionSite.PELVIC_ORGAN: 0.1,
}


@dataclass(frozen=True, slots=True)
class AnatomicalLesion:
    """One lesion of an anatomical study.

    Attributes
    ----------
    site, kind, shape
        Where it grows, how it looks, its outline.
    centre
        Patient coordinates (x, y, z), millimetres.
    diameter
        Nominal diameter, millimetres (the outline lies within it; lung spicules may
        reach a little beyond).
    hu
        CT number of each part in the study's phase: the whole, then the core, the rim
        or septum where the kind has them, HU.
    """

    site: LesionSite
    kind: LesionKind
    shape: LesionShape
    centre: tuple[float, float, float]
    diameter: float
    hu: tuple[float, ...]
    paints: tuple[Paint, ...] = field(repr=False, compare=False, default=())


def lesion_label(index: int, part: int) -> int:
    """The render label of part `part` of lesion `index` (0-based)."""
    return TISSUE_COUNT + LESION_PARTS * index + part


def tissue_at(paints: Sequence[Paint], points: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    """The label each (n, 3) patient point gets from the paints, in order."""
    labels = np.zeros(len(points), dtype=np.uint8)
    x, y, z = (np.ascontiguousarray(points[:, i], dtype=np.float32) for i in range(3))
    for paint in paints:
        paint_points(labels, paint, x, y, z)
    return labels


@dataclass(frozen=True, slots=True)
class Placement:
    """What a lesion or cyst needs to be placed: the anatomy and the scanned box."""

    paints: tuple[Paint, ...]
    sites: Mapping[str, Sequence[Shape]]
    box_lo: tuple[float, float, float]
    box_hi: tuple[float, float, float]

    def present(self) -> list[LesionSite]:
        """Sites whose organ meets the scanned box."""
        out = []
        for site in LesionSite:
            for shape in self.sites.get(site.value, ()):
                if np.all(shape.lo <= self.box_hi) and np.all(shape.hi >= self.box_lo):
                    out.append(site)
                    break
        return out


def _sphere_directions() -> npt.NDArray[np.float64]:
    axes = np.eye(3)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    return np.vstack([axes, -axes, corners / math.sqrt(3.0)])


_DIRECTIONS = _sphere_directions()


def find_centre(
    rng: np.random.Generator,
    placement: Placement,
    site: LesionSite,
    radius: float,
    hosts: Sequence[int],
) -> Vec | None:
    """A centre whose surroundings (70 % of a sphere at 0.7 r) are the host tissues."""
    shapes = placement.sites.get(site.value, ())
    if not shapes:
        return None
    lo = np.max([np.min([s.lo for s in shapes], axis=0), placement.box_lo], axis=0)
    hi = np.min([np.max([s.hi for s in shapes], axis=0), placement.box_hi], axis=0)
    if np.any(lo >= hi):
        return None
    host = np.zeros(256, dtype=bool)
    host[list(hosts)] = True
    candidates = rng.uniform(lo, hi, size=(128, 3))
    candidates = candidates[host[tissue_at(placement.paints, candidates)]][:32]
    if not len(candidates):
        return None
    ring = candidates[:, None, :] + 0.7 * radius * _DIRECTIONS[None, :, :]
    inside = host[tissue_at(placement.paints, ring.reshape(-1, 3))].reshape(len(candidates), -1)
    good = np.nonzero(inside.mean(axis=1) >= 0.7)[0]
    if not len(good):
        return None
    c = candidates[int(good[0])]
    return (float(c[0]), float(c[1]), float(c[2]))


def draw_lesion(
    rng: np.random.Generator,
    placement: Placement,
    index: int,
    table: TissueTable,
    phase: ContrastPhase,
    diameters: tuple[float, float],
) -> AnatomicalLesion | None:
    """Draw lesion number `index` (0-based) in a site of the scanned range, or None.

    Sites are tried in a random order weighted by how often lesions grow there, and a
    lesion that finds no room is shrunk before the next site is tried.
    """
    sites = placement.present()
    weights = np.asarray([_SITE_WEIGHTS[s] for s in sites])
    if not sites:
        return None
    order = rng.choice(len(sites), size=len(sites), replace=False, p=weights / weights.sum())
    for choice in order:
        site = sites[int(choice)]
        kinds = _LUNG_KINDS if site is LesionSite.LUNG else _SOLID_KINDS
        kind = kinds[int(rng.integers(len(kinds)))]
        outline = list(LesionShape)[int(rng.integers(3))]
        low, high = diameters[0], min(diameters[1], _LARGEST.get(site, diameters[1]))
        # Log-uniform: small lesions are more common than large ones.
        diameter = float(math.exp(rng.uniform(math.log(low), math.log(max(high, low)))))
        for _ in range(3):
            centre = find_centre(rng, placement, site, diameter / 2, HOSTS[site])
            if centre is not None:
                return build_lesion(rng, index, site, kind, outline, centre, diameter, table, phase)
            diameter = max(low, diameter * 0.6)
    return None


def build_lesion(
    rng: np.random.Generator,
    index: int,
    site: LesionSite,
    kind: LesionKind,
    outline: LesionShape,
    centre: Vec,
    diameter: float,
    table: TissueTable,
    phase: ContrastPhase,
) -> AnatomicalLesion:
    """Lesion number `index` (0-based) of this kind and outline at `centre`."""
    body, spicules = _outline(rng, outline, centre, diameter / 2, site is LesionSite.LUNG)
    hu = _lesion_hu(rng, kind, HOSTS[site][0], table, phase)
    shapes = _parts(rng, kind, body, centre, diameter / 2)
    shapes[0] = Union([shapes[0], *spicules]) if spicules else shapes[0]
    paints: list[Paint] = []
    previous: Sequence[int] = HOSTS[site]
    for part, shape in enumerate(shapes):
        label = lesion_label(index, part)
        paints.append(Paint(shape, label, allowed(previous)))
        previous = [label] if part == 0 else [lesion_label(index, 1)]
    return AnatomicalLesion(site, kind, outline, centre, diameter, hu[: len(shapes)], tuple(paints))


def _outline(
    rng: np.random.Generator, outline: LesionShape, centre: Vec, r: float, lung: bool
) -> tuple[Shape, list[Shape]]:
    frame = aligned(tuple(rng.standard_normal(3)))
    spicules: list[Shape] = []
    if outline is LesionShape.ROUND:
        axes = (r, r * float(rng.uniform(0.8, 1.0)), r * float(rng.uniform(0.8, 1.0)))
        return Ellipsoid(centre, axes, frame, random_wobble(rng, 0.04, 2 * r)), spicules
    if outline is LesionShape.LOBULATED:
        members: list[Shape] = [
            Ellipsoid(centre, (0.72 * r,) * 3, frame, random_wobble(rng, 0.03, r))
        ]
        for _ in range(int(rng.integers(2, 5))):
            lobe = r * float(rng.uniform(0.35, 0.55))
            offset = (
                (r - lobe) * np.asarray(frame[:, int(rng.integers(3))]) * rng.choice([-1.0, 1.0])
            )
            offset = offset + 0.3 * (r - lobe) * rng.standard_normal(3)
            offset *= min(1.0, (r - lobe) / max(float(np.linalg.norm(offset)), 1e-6))
            members.append(Ellipsoid(tuple(np.asarray(centre) + offset), (lobe,) * 3))
        return Union(members), spicules
    body = Ellipsoid(
        centre,
        (0.82 * r,) * 3,
        frame,
        random_wobble(rng, 0.18, float(rng.uniform(0.6, 1.2)) * r, 6),
    )
    if lung:
        for _ in range(int(rng.integers(3, 8))):
            tip = np.asarray(centre) + r * float(rng.uniform(1.05, 1.4)) * np.asarray(_unit(rng))
            spicules.append(Capsule(centre, tuple(tip), float(rng.uniform(0.6, 1.0)), 0.4))
    return body, spicules


def _unit(rng: np.random.Generator) -> Vec:
    v = rng.standard_normal(3)
    v /= np.linalg.norm(v)
    return (float(v[0]), float(v[1]), float(v[2]))


def _parts(
    rng: np.random.Generator, kind: LesionKind, body: Shape, centre: Vec, r: float
) -> list[Shape]:
    """The lesion's part shapes: the whole first, then core, then septum or nodule."""
    if kind in (LesionKind.HYPODENSE, LesionKind.HYPERDENSE, LesionKind.SIMPLE_CYST):
        return [body]
    if kind is LesionKind.NECROTIC:
        core = Ellipsoid(
            centre,
            (r * float(rng.uniform(0.3, 0.55)),) * 3,
            None,
            random_wobble(rng, 0.3, r * 0.5, 6),
        )
        return [body, core]
    if kind is LesionKind.SUBSOLID:
        solid = r * float(rng.uniform(0.2, 0.5)) if rng.random() < 0.5 else 0.0
        return [body, Ellipsoid(centre, (solid,) * 3)] if solid > 1.0 else [body]
    wall = {LesionKind.CYSTIC: 1.8, LesionKind.RIM_ENHANCING: 3.5, LesionKind.CAVITARY: 4.0}[kind]
    wall = min(wall * float(rng.uniform(0.7, 1.4)), 0.45 * r)
    parts = [body, body.scaled(max(0.2, 1.0 - wall / r), centre)]
    if kind is LesionKind.CYSTIC and r > 6.0:
        if rng.random() < 0.5:  # a septum across the fluid
            parts.append(Ellipsoid(centre, (r, r, 0.8), aligned(_unit(rng))))
        else:  # a mural nodule on the wall
            spot = np.asarray(centre) + 0.75 * r * np.asarray(_unit(rng))
            parts.append(Ellipsoid(tuple(spot), (0.3 * r,) * 3))
    return parts


def _lesion_hu(
    rng: np.random.Generator, kind: LesionKind, host: T, table: TissueTable, phase: ContrastPhase
) -> tuple[float, ...]:
    """CT numbers of the parts: the whole, then the core, then a septum or nodule."""
    u = rng.uniform
    h, h0 = table.of(host), float(table.unenhanced[host])
    e = max(h - h0, 0.0)  # the organ's enhancement in this phase
    soft = max(table.of(T.SOFT_TISSUE) - float(table.unenhanced[T.SOFT_TISSUE]), 0.0)
    arterial = phase is ContrastPhase.ARTERIAL
    if host is T.LUNG:
        return {
            LesionKind.HYPERDENSE: (u(15, 60) + soft * u(0.1, 0.5),),
            LesionKind.NECROTIC: (u(20, 50) + soft * u(0.1, 0.5), u(0, 25)),
            LesionKind.SUBSOLID: (u(-700, -350), u(0, 50)),
            LesionKind.CAVITARY: (u(20, 60) + soft * u(0.1, 0.5), u(-990, -900)),
        }[kind]
    wall = h0 + e * u(0.7, 1.2) + u(5, 25)
    values = {
        LesionKind.HYPODENSE: (min(h0 - u(10, 25) + e * u(0.15, 0.5), h - u(18, 35)),),
        LesionKind.HYPERDENSE: (h + (u(30, 90) if arterial else u(20, 60)),),
        LesionKind.CYSTIC: (wall, u(5, 30), wall),
        LesionKind.RIM_ENHANCING: (wall + u(5, 30), u(10, 35)),
        LesionKind.NECROTIC: (min(h0 - u(5, 20) + e * u(0.3, 0.7), h - u(18, 35)), u(5, 30)),
        LesionKind.SIMPLE_CYST: (u(0, 12),),
    }
    return values[kind]


def draw_granulomas(rng: np.random.Generator, placement: Placement) -> list[Paint]:
    """Calcified granulomas in lungs, liver and spleen: small, dense, not lesions."""
    paints: list[Paint] = []
    for site in placement.present():
        if site not in (LesionSite.LUNG, LesionSite.LIVER, LesionSite.SPLEEN):
            continue
        for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.4 else 0):
            radius = float(rng.uniform(1.0, 3.0))
            centre = find_centre(rng, placement, site, radius, HOSTS[site])
            if centre is not None:
                shape = Ellipsoid(centre, (radius, radius, radius))
                paints.append(Paint(shape, T.CALCIFICATION, allowed(HOSTS[site])))
    return paints


def draw_cysts(
    rng: np.random.Generator, placement: Placement, count: int
) -> list[tuple[LesionSite, Vec, float, Paint]]:
    """Simple cysts in liver, kidneys or spleen, painted as the CYST tissue."""
    out: list[tuple[LesionSite, Vec, float, Paint]] = []
    sites = [
        s
        for s in placement.present()
        if s in (LesionSite.LIVER, LesionSite.KIDNEY, LesionSite.SPLEEN)
    ]
    for _ in range(count if sites else 0):
        site = sites[int(rng.integers(len(sites)))]
        diameter = float(math.exp(rng.uniform(math.log(5.0), math.log(30.0))))
        centre = find_centre(rng, placement, site, diameter / 2, HOSTS[site])
        if centre is None:
            continue
        axes = (diameter / 2, diameter / 2 * float(rng.uniform(0.85, 1.0)), diameter / 2)
        shape = Ellipsoid(centre, axes, aligned(_unit(rng)))
        out.append((site, centre, diameter, Paint(shape, T.CYST, allowed(HOSTS[site]))))
    return out
