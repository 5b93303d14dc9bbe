"""The body wall, the table, the arms and legs, and the chest: lungs, airways, heart, vessels.

Each function appends paints to an :class:`~dicomnode.synth.ct._atlas.Atlas` in the
order they must be applied. Places and sizes are atlas millimetres (see
``_atlas.py``), jittered per patient.
"""

from __future__ import annotations

import numpy as np

from dicomnode.synth.ct._abdomen import add_plaques
from dicomnode.synth.ct._atlas import Atlas, Streak
from dicomnode.synth.ct._shapes import (
    Band,
    Capsule,
    Clipped,
    Dome,
    Section,
    Shape,
    Vec,
    aligned,
    grown,
    random_wobble,
)
from dicomnode.synth.ct._tissues import CtTissue as T

__all__ = ["add_body", "add_chest", "add_table"]


def add_table(atlas: Atlas) -> None:
    """The couch (carbon-fibre shell around foam) and the mattress under the patient."""
    rng, h = atlas.rng, atlas.habitus
    back = max(atlas.core_at(z)[2] for z in (-330.0, -100.0, 0.0, 100.0)) * h.depth
    lowest = h.centre[1] + back + 0.6 * float(atlas.fat_profile().max())
    pad = float(rng.uniform(0.0, 35.0))
    thickness = float(rng.uniform(18.0, 45.0))
    curvature = float(rng.uniform(0.0, 0.0009))
    half_width = float(rng.uniform(190.0, 240.0))
    span = (-2000.0, 2000.0)
    top = lowest + pad
    atlas.add(Band(0.0, top, curvature, thickness, half_width, span), T.TABLE)
    core = Band(0.0, top + 2.0, curvature, thickness - 4.0, half_width - 2.0, span)
    atlas.add(core, T.TABLE_PAD)
    if pad > 3.0:
        atlas.add(Band(0.0, lowest, 0.0, pad, half_width - 10.0, span), T.TABLE_PAD)


def add_body(atlas: Atlas) -> None:
    """Skin, subcutaneous fat, the muscular wall, the body cavity, arms and thighs."""
    fat = atlas.fat_profile()
    belly = fat * float(atlas.rng.uniform(0.0, 0.8))
    outer = atlas.section(fat, front=belly, back=-0.3 * fat)
    atlas.add(outer, T.SOFT_TISSUE)
    atlas.add(outer.shrunk(2.0), T.FAT)
    atlas.add(atlas.section(), T.MUSCLE)
    atlas.add(atlas.cavity(), T.FAT)
    _add_thighs(atlas)
    if atlas.habitus.arms_down:
        _add_arms(atlas)
    _add_back_muscles(atlas)


def _limb(
    atlas: Atlas, cx: float, cy: float, z: tuple[float, ...], radius: tuple[float, ...]
) -> Section:
    """A round limb section at patient (cx, cy) between atlas z values."""
    zs = [atlas.z(v) for v in z]
    return Section(zs, [(cx, cy)] * len(zs), radius, radius, radius, exponent=2.0)


def _add_thighs(atlas: Atlas) -> None:
    h = atlas.habitus
    z = (-720.0, -560.0, -430.0, -370.0)
    lean = tuple(r * atlas.iso for r in (62.0, 72.0, 82.0, 70.0))
    fat = 0.9 * atlas.fat_at(-420.0)
    for side in (-1.0, 1.0):
        cx, cy, _ = atlas.p(side * 85.0, 5.0, 0.0)
        atlas.add(_limb(atlas, cx, cy, z, tuple(r + fat for r in lean)), T.SOFT_TISSUE)
        atlas.add(_limb(atlas, cx, cy, z, tuple(r + fat - 2.0 for r in lean)), T.FAT)
        atlas.add(_limb(atlas, cx, cy, z, lean), T.MUSCLE)
    del h


def _add_arms(atlas: Atlas) -> None:
    """Arms beside the body: skin, fat, muscle, humerus, radius and ulna."""
    fat = 0.6 * atlas.fat_at(0.0)
    lean = 38.0 * atlas.iso
    for side in (-1.0, 1.0):
        a = atlas.core_at(0.0)[0] * atlas.habitus.width + atlas.fat_at(0.0)
        cx = atlas.habitus.centre[0] + side * (a + 12.0 + lean + fat)
        cy = atlas.habitus.centre[1] + 10.0
        z = (-330.0, -60.0, 240.0)
        atlas.add(_limb(atlas, cx, cy, z, (lean * 0.8 + fat,) * 2 + (lean + fat,)), T.SOFT_TISSUE)
        atlas.add(_limb(atlas, cx, cy, z, (lean * 0.8 + fat - 2,) * 2 + (lean + fat - 2,)), T.FAT)
        atlas.add(_limb(atlas, cx, cy, z, (lean * 0.8,) * 2 + (lean,)), T.MUSCLE)
        top, elbow, wrist = atlas.z(245.0), atlas.z(-60.0), atlas.z(-320.0)
        humerus = Capsule((cx, cy, top), (cx, cy + 5, elbow), 11.0, 9.0)
        bones = [humerus, Capsule((cx - 8, cy, elbow - 10), (cx - 10, cy - 8, wrist), 7.0, 6.0)]
        bones.append(Capsule((cx + 8, cy + 4, elbow - 10), (cx + 10, cy, wrist), 6.0, 7.0))
        atlas.add(bones, T.BONE_CORTEX)
        marrow = [Capsule(b.a, b.b, b.ra - 3, b.rb - 3) for b in bones]
        atlas.add(marrow, T.BONE_MARROW)


def _add_back_muscles(atlas: Atlas) -> None:
    """Paraspinal muscles along the whole spine, beside the spinous processes."""
    for side in (-1.0, 1.0):
        points: list[Vec] = []
        radii: list[float] = []
        for z in (-330.0, -250.0, -150.0, -50.0, 50.0, 150.0, 250.0, 330.0):
            back = atlas.core_at(z)[2]
            r = float(np.interp(z, (-330.0, -150.0, 100.0, 330.0), (18.0, 30.0, 24.0, 15.0)))
            points.append((side * (r + 10.0), back - r - 3.0, z))
            radii.append(r)
        atlas.add(atlas.tube(points, radii, step=15.0), T.MUSCLE)


def add_chest(atlas: Atlas) -> Dome:
    """Diaphragm, lungs, airways, lung vessels, heart, great vessels; return the dome."""
    j = atlas.jitter
    left_drop = -15.0 + j(6.0)
    dome = atlas.dome([(-70.0, 10.0, 0.0, 0.0045, 0.003), (75.0, 10.0, left_drop, 0.0045, 0.003)])
    cavity = atlas.cavity()
    atlas.add(Clipped(cavity, above=(dome, -5.0), below=(dome, 0.0)), T.MUSCLE, where=[T.FAT])
    lungs: list[tuple[float, Shape]] = []
    for side, x in ((-1.0, -80.0), (1.0, 82.0)):
        shape = atlas.ellipsoid(
            (x + j(4), 5.0 + j(4), 130.0 + j(6)),
            (66.0 + j(4), 95.0 + j(4), 180.0 + j(6)),
            wobble=random_wobble(atlas.rng, 0.03, 120.0),
        )
        lung: Shape = Clipped(shape, above=(dome, 0.0))
        atlas.add(lung, T.LUNG, where=[T.FAT])
        atlas.add_site("lung", lung)
        lungs.append((side, lung))
    _add_airways(atlas, lungs)
    for side, lung in lungs:
        for root in ((side * 55.0, 12.0, 130.0), (side * 52.0, 26.0, 100.0)):
            _add_vessel_tree(atlas, lung, atlas.p(*root), side)
    _add_heart(atlas)
    _add_thoracic_vessels(atlas)
    return dome


def _add_airways(atlas: Atlas, lungs: list[tuple[float, Shape]]) -> None:
    trachea: list[Vec] = [
        (0.0, -15.0, 340.0),
        (0.0, -12.0, 280.0),
        (1.0, -6.0, 230.0),
        (2.0, 6.0, 190.0),
    ]
    right: list[Vec] = [(2.0, 6.0, 190.0), (-25.0, 12.0, 175.0), (-50.0, 15.0, 160.0)]
    left: list[Vec] = [(2.0, 6.0, 190.0), (30.0, 14.0, 178.0), (55.0, 18.0, 155.0)]
    walls = atlas.tube(trachea, [11.0] * 4) + atlas.tube(right, [8.5, 8.0, 7.0])
    walls += atlas.tube(left, [8.0, 7.5, 6.5])
    lumen = atlas.tube(trachea, [9.0] * 4) + atlas.tube(right, [7.0, 6.5, 5.5])
    lumen += atlas.tube(left, [6.5, 6.0, 5.0])
    atlas.add(walls, T.SOFT_TISSUE)
    atlas.add(lumen, T.AIRWAY)
    branch_walls: list[Capsule] = []
    branch_lumen: list[Capsule] = []
    for (side, lung), end in zip(lungs, (right[-1], left[-1]), strict=True):
        for capsule in atlas.tree(lung, atlas.p(*end), _lobes(side), 4.5, 28.0, 3):
            branch_lumen.append(capsule)
            branch_walls.append(Capsule(capsule.a, capsule.b, capsule.ra + 1.2, capsule.rb + 1.2))
    atlas.add(branch_walls, T.SOFT_TISSUE, where=[T.LUNG])
    atlas.add(branch_lumen, T.AIRWAY, where=[T.SOFT_TISSUE])


def _lobes(side: float) -> list[Vec]:
    """Directions of the upper, middle and lower lobe trunks from a hilum."""
    return [(side * 0.3, -0.2, 1.0), (side * 0.8, -0.6, -0.2), (side * 0.3, 0.5, -1.0)]


def _add_vessel_tree(atlas: Atlas, lung: Shape, root: Vec, side: float) -> None:
    radius, length = 5.5 * atlas.iso, 34.0 * atlas.iso
    capsules = atlas.tree(lung, root, _lobes(side), radius, length, 6)
    atlas.add(capsules, T.PULMONARY_VESSEL, where=[T.LUNG])


def _add_heart(atlas: Atlas) -> None:
    j = atlas.jitter
    centre = (22.0 + j(5), -28.0 + j(5), 55.0 + j(6))
    long_axis = aligned((0.6 + j(0.1), -0.5 + j(0.1), -0.6 + j(0.1)))
    size = float(atlas.rng.uniform(0.85, 1.2))
    axes = (48.0 * size, 45.0 * size, 62.0 * size)
    fat = atlas.ellipsoid(centre, grown(axes, 5.0), long_axis)
    atlas.add(fat, T.FAT, where=[T.FAT, T.LUNG])
    atlas.add(atlas.ellipsoid(centre, axes, long_axis), T.MYOCARDIUM, where=[T.FAT, T.LUNG])
    cx, cy, cz = centre
    atria = [
        ((cx - 10, cy + 40, cz + 30), (30.0, 20.0, 22.0)),
        ((cx - 54, cy + 16, cz + 7), (26.0, 25.0, 30.0)),
    ]
    for c, a in atria:
        atlas.add(atlas.ellipsoid(c, grown(a, 2.5)), T.MYOCARDIUM, where=[T.FAT, T.LUNG])
    left = [
        atlas.ellipsoid(
            (cx + 18, cy + 10, cz - 15), (24.0 * size, 22.0 * size, 34.0 * size), long_axis
        )
    ]
    left.append(atlas.ellipsoid(*atria[0]))
    right = [
        atlas.ellipsoid(
            (cx - 17, cy - 22, cz - 10), (26.0 * size, 14.0 * size, 32.0 * size), long_axis
        )
    ]
    right.append(atlas.ellipsoid(*atria[1]))
    atlas.add(left, T.BLOOD_ARTERIAL, where=[T.MYOCARDIUM])
    atlas.add(right, T.BLOOD_PULMONARY, where=[T.MYOCARDIUM])


def _add_thoracic_vessels(atlas: Atlas) -> None:
    """Oesophagus, aorta and arch branches, caval veins, pulmonary trunk and veins."""
    _add_oesophagus(atlas)
    _add_thoracic_aorta(atlas)
    _add_caval_veins(atlas)
    _add_pulmonary_vessels(atlas)


def _add_oesophagus(atlas: Atlas) -> None:
    tube = atlas.tube
    oesophagus: list[Vec] = [
        (0.0, 0.0, 340.0),
        (2.0, 6.0, 230.0),
        (6.0, 10.0, 150.0),
        (14.0, 12.0, 80.0),
        (20.0, 10.0, 10.0),
        (30.0, 5.0, -25.0),
    ]
    atlas.add(tube(oesophagus, [8.0] * 6), T.SOFT_TISSUE)
    if atlas.rng.random() < 0.4:
        atlas.add(tube(oesophagus, [2.5] * 6), T.GI_GAS)


def _add_thoracic_aorta(atlas: Atlas) -> None:
    tube = atlas.tube
    aorta: list[Vec] = [
        (8.0, -12.0, 75.0),
        (4.0, -25.0, 130.0),
        (0.0, -20.0, 175.0),
        (8.0, -5.0, 200.0),
        (22.0, 12.0, 192.0),
        (28.0, 18.0, 160.0),
        (28.0, 15.0, 90.0),
        (22.0, 12.0, 20.0),
        (12.0, 8.0, -30.0),
    ]
    radii = [14.0, 15.0, 14.0, 13.0, 12.5, 12.0, 12.0, 11.5, 11.0]
    grow = float(atlas.rng.uniform(0.9, 1.25))  # older patients have wider aortas
    arch = tube(aorta, [r * grow for r in radii])
    arteries = list(arch)
    arteries += tube(
        [(-2.0, -10.0, 198.0), (-15.0, -15.0, 240.0), (-30.0, -10.0, 290.0)], [7.0, 6.5, 6.0]
    )
    arteries += tube([(8.0, -8.0, 203.0), (12.0, -10.0, 300.0)], [4.0, 4.0])
    arteries += tube([(20.0, 8.0, 198.0), (40.0, 5.0, 250.0), (70.0, 0.0, 275.0)], [5.0, 5.0, 4.5])
    atlas.add(arteries, T.BLOOD_ARTERIAL)
    add_plaques(atlas, arch)


def _add_caval_veins(atlas: Atlas) -> None:
    """Superior vena cava and arm veins (the injected side holds the bolus), upper IVC."""
    tube = atlas.tube
    inflow_right = atlas.rng.random() < 0.7  # the arm the contrast was injected in
    svc = tube(
        [(-32.0, -12.0, 85.0), (-30.0, -10.0, 130.0), (-28.0, -8.0, 175.0)], [10.0, 10.0, 9.5]
    )
    right_bc = tube(
        [(-28.0, -8.0, 175.0), (-40.0, -5.0, 240.0), (-60.0, 0.0, 280.0)], [8.0, 8.0, 7.0]
    )
    left_bc = tube(
        [(-28.0, -8.0, 175.0), (0.0, -22.0, 205.0), (40.0, -20.0, 235.0), (70.0, -5.0, 270.0)],
        [7.0] * 4,
    )
    injected, other = (right_bc, left_bc) if inflow_right else (left_bc, right_bc)
    atlas.add(other, T.BLOOD_VENOUS)
    atlas.add(svc + injected, T.BLOOD_INFLOW)
    centre = svc[len(svc) // 2].a
    atlas.streaks.append(
        Streak((centre[0], centre[1]), atlas.z(90.0), atlas.z(240.0), 0.5, bolus=True)
    )
    atlas.add(tube([(-22.0, 5.0, -20.0), (-30.0, -8.0, 35.0)], [13.0, 13.0]), T.BLOOD_VENOUS)


def _add_pulmonary_vessels(atlas: Atlas) -> None:
    tube = atlas.tube
    trunk = tube(
        [(5.0, -52.0, 80.0), (12.0, -35.0, 110.0), (8.0, -10.0, 125.0)], [14.0, 14.0, 13.0]
    )
    trunk += tube(
        [(8.0, -10.0, 125.0), (-25.0, 0.0, 128.0), (-55.0, 10.0, 130.0)], [12.0, 11.0, 9.0]
    )
    trunk += tube([(8.0, -10.0, 125.0), (30.0, 0.0, 135.0), (55.0, 15.0, 128.0)], [12.0, 11.0, 9.0])
    atlas.add(trunk, T.BLOOD_PULMONARY)
    veins: list[Capsule] = []
    for a, b in (
        ((-55.0, 22.0, 110.0), (-10.0, 15.0, 85.0)),
        ((-50.0, 25.0, 80.0), (-5.0, 15.0, 78.0)),
        ((50.0, 25.0, 115.0), (30.0, 15.0, 88.0)),
        ((50.0, 28.0, 82.0), (28.0, 18.0, 78.0)),
    ):
        veins.append(atlas.capsule(a, b, 6.0, 7.0))
    atlas.add(veins, T.BLOOD_ARTERIAL, where=[T.FAT, T.LUNG, T.PULMONARY_VESSEL, T.MYOCARDIUM])
