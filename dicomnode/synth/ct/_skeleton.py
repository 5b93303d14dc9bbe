"""Bones (cortex around marrow) and metal implants.

Vertebrae from C5 to L5 with discs, arches, spinous and transverse processes; twelve
pairs of ribs with costal cartilage; sternum, clavicles, scapulae; the pelvis with
sacrum, acetabula and femora. Implants are rare: a hip prosthesis, spinal fixation,
a pacemaker; each is a source of streak artefacts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dicomnode.synth.ct._atlas import Atlas, Streak
from dicomnode.synth.ct._shapes import Capsule, Shape, Vec, grown, rotation
from dicomnode.synth.ct._tissues import CtTissue as T

__all__ = ["Vertebra", "add_implants", "add_skeleton"]

# Rib k (1..12): angle from the back where the bony rib ends (degrees) and how far its
# front end lies below its head (atlas mm).
_RIB_END = (150, 160, 165, 165, 165, 165, 160, 150, 140, 130, 100, 80)
_RIB_DROP = (40, 70, 90, 100, 110, 115, 115, 110, 100, 90, 60, 40)


@dataclass(frozen=True, slots=True)
class Vertebra:
    """One vertebra in atlas millimetres: its name, centre and body size."""

    name: str
    z0: float
    z1: float
    y: float
    a: float
    b: float
    canal: float

    @property
    def zc(self) -> float:
        """The centre's z."""
        return 0.5 * (self.z0 + self.z1)

    @property
    def canal_y(self) -> float:
        """y of the spinal canal's centre."""
        return self.y + self.b + self.canal + 2.0


def _vertebrae(atlas: Atlas) -> list[Vertebra]:
    levels = [(f"C{i}", 14.0, 5.0) for i in (5, 6, 7)]
    levels += [(f"T{i}", 19.0 + 6.0 * (i - 1) / 11, 4.0 + 2.0 * (i - 1) / 11) for i in range(1, 13)]
    levels += [(f"L{i}", 27.0 + 0.75 * (i - 1), 9.0 + 0.5 * (i - 1)) for i in range(1, 6)]
    out, top = [], 330.0
    for name, height, disc in levels:
        z1, z0 = top, top - height
        zc = 0.5 * (z0 + z1)
        a = float(np.interp(zc, (-250.0, -50.0, 0.0, 270.0, 330.0), (26.0, 24.0, 22.0, 16.0, 15.0)))
        canal = 10.0 if name[0] in "CL" else 8.0
        out.append(Vertebra(name, z0, z1, atlas.spine_y(zc), a, atlas.spine_half_depth(zc), canal))
        top = z0 - disc
    return out


def add_skeleton(atlas: Atlas) -> list[Vertebra]:
    """All bones, cortex first then marrow; return the vertebrae (for implants)."""
    vertebrae = _vertebrae(atlas)
    cortex: list[Shape] = []
    marrow: list[Shape] = []
    discs: list[Shape] = []
    for v, below in zip(vertebrae, [*vertebrae[1:], None], strict=True):
        _vertebra(atlas, v, cortex, marrow)
        if below is not None:
            discs.append(atlas.column((0.0, v.y), (v.a - 1.0, v.b - 1.0), below.z1, v.z0))
    _ribs(atlas, vertebrae, cortex, marrow)
    _girdles(atlas, cortex, marrow)
    _pelvis(atlas, cortex, marrow)
    atlas.add(cortex, T.BONE_CORTEX)
    atlas.add(marrow, T.BONE_MARROW)
    atlas.add(discs, T.DISC)
    _hips(atlas)
    canal = [(0.0, v.canal_y, v.zc) for v in vertebrae]
    atlas.add(atlas.tube(canal, [v.canal for v in vertebrae], step=10.0), T.CSF)
    return vertebrae


def _vertebra(atlas: Atlas, v: Vertebra, cortex: list[Shape], marrow: list[Shape]) -> None:
    cortex.append(atlas.column((0.0, v.y), (v.a, v.b), v.z0, v.z1))
    marrow.append(atlas.column((0.0, v.y), (v.a - 1.5, v.b - 1.5), v.z0 + 1.5, v.z1 - 1.5))
    arch = (v.canal + 6.0, v.canal + 5.0)
    cortex.append(atlas.column((0.0, v.canal_y), arch, v.z0 + 2.0, v.z1 - 2.0))
    marrow.append(
        atlas.column((0.0, v.canal_y), (arch[0] - 2.0, arch[1] - 2.0), v.z0 + 3.5, v.z1 - 3.5)
    )
    back = atlas.core_at(v.zc)[2]
    start = v.canal_y + v.canal + 4.0
    length = max(6.0, min(30.0, back - 10.0 - start))
    reach = {"C": 25.0, "T": 30.0, "L": 45.0}[v.name[0]]
    lift = {"C": 0.0, "T": 8.0, "L": -4.0}[v.name[0]]
    processes = [((0.0, start, v.zc), (0.0, start + length, v.zc - 10.0), 4.5)]
    for side in (-1.0, 1.0):
        processes.append(
            (
                (side * (v.canal + 4.0), v.canal_y - 2.0, v.zc),
                (side * reach, v.canal_y + lift, v.zc),
                4.0,
            )
        )
        processes.append(
            (
                (side * v.a * 0.55, v.y + v.b - 5.0, v.zc),
                (side * (v.canal + 2.0), v.canal_y, v.zc),
                4.5,
            )
        )
    for a, b, r in processes:
        cortex.append(atlas.capsule(a, b, r))
        marrow.append(atlas.capsule(a, b, r - 2.0))


def _ribs(
    atlas: Atlas, vertebrae: list[Vertebra], cortex: list[Shape], marrow: list[Shape]
) -> None:
    thoracic = [v for v in vertebrae if v.name.startswith("T")]
    cartilage: list[Capsule] = []
    for k, v in enumerate(thoracic):
        for side in (-1.0, 1.0):
            points: list[Vec] = [(side * (v.a + 4.0), v.y + 8.0, v.zc)]
            for phi in range(25, _RIB_END[k] + 1, 14):
                z = v.zc - _RIB_DROP[k] * (phi / 180.0) ** 1.2
                _, front, back = atlas.core_at(z)
                half = atlas.cage_at(z) + 8.0  # just outside the cavity
                depth = (back if math.cos(math.radians(phi)) > 0 else front) - 9.0
                points.append(
                    (
                        side * half * math.sin(math.radians(phi)),
                        depth * math.cos(math.radians(phi)),
                        z,
                    )
                )
            cortex.extend(atlas.tube(points, [4.5] * len(points), step=8.0))
            marrow.extend(atlas.tube(points, [2.5] * len(points), step=8.0))
            if k < 7:
                x, y, z = points[-1]
                front = atlas.core_at(z)[1]
                end = (side * 14.0, -(front - 12.0), min(max(z + 20.0, 60.0), 240.0))
                cartilage.extend(atlas.tube([(x, y, z), end], [4.5, 4.0], step=8.0))
    atlas.add(cartilage, T.CARTILAGE)


def _girdles(atlas: Atlas, cortex: list[Shape], marrow: list[Shape]) -> None:
    """Sternum, clavicles, scapulae, and the humeral heads when the arms are down."""
    for z, axes, depth in (
        (225.0, (25.0, 7.0, 22.0), 12.0),
        (140.0, (15.0, 7.0, 70.0), 11.0),
        (55.0, (9.0, 5.0, 14.0), 13.0),
    ):
        centre = (0.0, -(atlas.core_at(z)[1] - depth), z)
        cortex.append(atlas.ellipsoid(centre, axes))
        marrow.append(atlas.ellipsoid(centre, (axes[0] - 2.5, axes[1] - 2.5, axes[2] - 2.5)))
    heads: list[tuple[float, float]] = []
    for side in (-1.0, 1.0):
        clavicle: list[Vec] = [
            (side * 15.0, -(atlas.core_at(255.0)[1] - 18.0), 255.0),
            (side * 70.0, -(atlas.core_at(265.0)[1] - 20.0), 268.0),
            (side * 140.0, 5.0, 262.0),
        ]
        cortex.extend(atlas.tube(clavicle, [7.0] * 3))
        marrow.extend(atlas.tube(clavicle, [4.0] * 3))
        centre = (side * 100.0, atlas.core_at(185.0)[2] - 30.0, 185.0)
        turn = rotation(about_z=-side * 27.0)
        cortex.append(atlas.ellipsoid(centre, (55.0, 5.0, 70.0), turn))
        marrow.append(atlas.ellipsoid(centre, (53.0, 2.5, 68.0), turn))
        if atlas.habitus.arms_down:
            head = (side * (atlas.core_at(250.0)[0] - 12.0), 10.0, 250.0)
            cortex.append(atlas.ellipsoid(head, (23.0, 23.0, 23.0)))
            marrow.append(atlas.ellipsoid(head, (20.0, 20.0, 20.0)))
            heads.append(atlas.p(*head)[:2])
    if len(heads) == 2:
        atlas.streaks.append(Streak(heads[0], atlas.z(228.0), atlas.z(272.0), 0.35, heads[1]))


def _pelvis(atlas: Atlas, cortex: list[Shape], marrow: list[Shape]) -> None:
    sacrum = [((0.0, 60.0, -255.0), (50.0, 20.0, 30.0)), ((0.0, 85.0, -300.0), (30.0, 15.0, 35.0))]
    for centre, axes in sacrum:
        cortex.append(atlas.ellipsoid(centre, axes))
        marrow.append(atlas.ellipsoid(centre, grown(axes, -3.0)))
    for side in (-1.0, 1.0):
        # The iliac wing: a plate from the sacroiliac joint out to the anterior spine,
        # bent so its inner face is concave (two plates at slightly different angles).
        for centre, angle in (
            ((side * 72.0, 42.0, -225.0), -55.0),
            ((side * 108.0, 8.0, -215.0), -30.0),
        ):
            wing = rotation(about_x=side * 8.0, about_z=side * angle)
            cortex.append(atlas.ellipsoid(centre, (30.0, 5.5, 45.0), wing))
            marrow.append(atlas.ellipsoid(centre, (28.0, 2.8, 43.0), wing))
        head = (side * 85.0, -5.0, -320.0)
        bones = [
            ((side * 70.0, -30.0, -315.0), (side * 6.0, -65.0, -335.0), 9.0, 6.0),  # pubic rami
            ((side * 6.0, -65.0, -345.0), (side * 50.0, -20.0, -370.0), 8.0, 5.0),
            ((side * 75.0, 15.0, -330.0), (side * 60.0, 35.0, -370.0), 13.0, 9.0),  # ischium
            (head, (side * 120.0, 5.0, -345.0), 15.0, 12.0),  # femoral neck
            ((side * 112.0, 5.0, -345.0), (side * 100.0, 0.0, -720.0), 14.0, 9.0),  # shaft
        ]
        for a, b, r, m in bones:
            cortex.append(atlas.capsule(a, b, r))
            marrow.append(atlas.capsule(a, b, m))
        cortex.append(atlas.ellipsoid((side * 122.0, 10.0, -350.0), (18.0, 22.0, 25.0)))
        marrow.append(atlas.ellipsoid((side * 122.0, 10.0, -350.0), (15.0, 19.0, 22.0)))


def _hips(atlas: Atlas) -> None:
    """Acetabulum, joint space and femoral head, painted in that order over the rest."""
    centres = [(side * 85.0, -5.0, -320.0) for side in (-1.0, 1.0)]
    layers = (
        (30.0, T.BONE_CORTEX),
        (27.0, T.BONE_MARROW),
        (24.5, T.CARTILAGE),
        (23.0, T.BONE_CORTEX),
        (21.0, T.BONE_MARROW),
    )
    for radius, tissue in layers:
        atlas.add([atlas.capsule(c, c, radius) for c in centres], tissue)
    left, right = (atlas.p(*c)[:2] for c in centres)
    atlas.streaks.append(Streak(left, atlas.z(-345.0), atlas.z(-295.0), 0.35, right))


def add_implants(atlas: Atlas, vertebrae: list[Vertebra]) -> list[str]:
    """Rare metal: hip prosthesis, lumbar fixation, pacemaker, surgical clips; return names."""
    rng, names = atlas.rng, []
    if rng.random() < 0.05:
        side = 1.0 if rng.random() < 0.5 else -1.0
        head = (side * 85.0, -5.0, -320.0)
        atlas.add(
            [
                atlas.capsule(head, head, 26.0),
                atlas.capsule(head, (side * 112.0, 5.0, -480.0), 9.0, 6.0),
            ],
            T.METAL,
        )
        atlas.streaks.append(Streak(atlas.p(*head)[:2], atlas.z(-350.0), atlas.z(-290.0), 1.0))
        names.append("hip prosthesis")
    if rng.random() < 0.04:
        _add_fixation(atlas, [v for v in vertebrae if v.name in ("L3", "L4", "L5")])
        names.append("lumbar fixation")
    if rng.random() < 0.04:
        _add_pacemaker(atlas)
        names.append("pacemaker")
    if rng.random() < 0.12:
        clips = []
        for _ in range(int(rng.integers(2, 8))):
            c = atlas.p(
                float(rng.uniform(-80, 80)),
                float(rng.uniform(-70, 20)),
                float(rng.uniform(-250, -60)),
            )
            clips.append(Capsule(c, (c[0] + 5.0, c[1] + 2.0, c[2] + 3.0), 0.9, 0.9))
        atlas.add(clips, T.METAL, where=[T.FAT, T.GI_WALL, T.SOFT_TISSUE, T.LIVER])
        names.append("surgical clips")
    return names


def _add_fixation(atlas: Atlas, levels: list[Vertebra]) -> None:
    metal: list[Shape] = []
    for v in levels:
        for side in (-1.0, 1.0):
            metal.append(
                atlas.capsule(
                    (side * 22.0, v.canal_y + 12.0, v.zc), (side * 6.0, v.y - 5.0, v.zc), 3.0
                )
            )
        centre = atlas.p(0.0, v.y, v.zc)
        atlas.streaks.append(Streak(centre[:2], atlas.z(v.z0), atlas.z(v.z1), 0.6))
    for side in (-1.0, 1.0):
        metal.append(
            atlas.capsule(
                (side * 24.0, levels[0].canal_y + 14.0, levels[0].zc + 10.0),
                (side * 24.0, levels[-1].canal_y + 14.0, levels[-1].zc - 10.0),
                3.0,
            )
        )
    atlas.add(metal, T.METAL)


def _add_pacemaker(atlas: Atlas) -> None:
    front = atlas.core_at(215.0)[1]
    box = (70.0, -(front + 0.5 * atlas.fat_at(215.0) + 4.0), 215.0)
    atlas.add(atlas.ellipsoid(box, (22.0, 5.0, 25.0)), T.METAL)
    lead: list[Vec] = [
        box,
        (40.0, -60.0, 240.0),
        (-25.0, -8.0, 175.0),
        (-30.0, -10.0, 100.0),
        (-32.0, -12.0, 62.0),
        (5.0, -50.0, 30.0),
    ]
    atlas.add(atlas.tube(lead, [1.2 / atlas.iso] * len(lead)), T.METAL)
    atlas.streaks.append(Streak(atlas.p(*box)[:2], atlas.z(195.0), atlas.z(235.0), 0.5))
