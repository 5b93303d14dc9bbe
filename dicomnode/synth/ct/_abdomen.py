"""The abdomen and pelvis: solid organs, vessels, the bowel with its contents, the bladder.

Solid organs and the bowel only fill fat (``where``), so they never cut into one
another; vessels are painted over what they cross. Contents of the stomach, bowel
and colon vary per patient and per loop (fluid, gas above a level, oral contrast,
stool, collapsed), so fluid-filled loops in cross-section look like cysts: hard
negatives for a lesion model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dicomnode.synth.ct._atlas import Atlas
from dicomnode.synth.ct._shapes import (
    Capsule,
    Clipped,
    Dome,
    Ellipsoid,
    Shape,
    Union,
    Vec,
    aligned,
    grown,
    random_wobble,
    rotation,
    tube,
)
from dicomnode.synth.ct._tissues import ContrastPhase
from dicomnode.synth.ct._tissues import CtTissue as T

__all__ = ["add_abdomen", "add_bowel", "add_pelvis"]

_GI = (T.FAT, T.GI_WALL, T.GI_FLUID, T.GI_GAS, T.ORAL_CONTRAST, T.STOOL)
_KIDNEY = (T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA)


def add_abdomen(atlas: Atlas, dome: Dome, phase: ContrastPhase) -> None:
    """Muscles, liver, gallbladder, spleen, kidneys, pancreas and the abdominal vessels."""
    _add_abdominal_muscles(atlas)
    # Retroperitoneal organs first: liver and spleen then wrap around them.
    urine = T.EXCRETED_CONTRAST if phase is ContrastPhase.DELAYED else T.URINE
    for side in (-1.0, 1.0):
        _add_kidney(atlas, side, urine)
    _add_pancreas(atlas)
    _add_spleen(atlas, dome)
    _add_liver(atlas, dome)
    _add_abdominal_vessels(atlas)


def _add_abdominal_muscles(atlas: Atlas) -> None:
    for side in (-1.0, 1.0):
        psoas: list[Vec] = [
            (side * 25.0, 30.0, -40.0),
            (side * 35.0, 30.0, -120.0),
            (side * 45.0, 28.0, -200.0),
            (side * 62.0, 5.0, -280.0),
            (side * 72.0, -20.0, -330.0),
        ]
        atlas.add(atlas.tube(psoas, [8.0, 17.0, 22.0, 20.0, 15.0]), T.MUSCLE, where=[T.FAT])
        iliacus = atlas.ellipsoid(
            (side * 82.0, 18.0, -225.0), (30.0, 14.0, 45.0), rotation(about_z=side * 45.0)
        )
        atlas.add(iliacus, T.MUSCLE, where=[T.FAT])
        gluteus = atlas.ellipsoid((side * 95.0, 70.0, -300.0), (55.0, 40.0, 85.0))
        atlas.add(gluteus, T.MUSCLE, where=[T.FAT, T.MUSCLE])


def _add_liver(atlas: Atlas, dome: Dome) -> None:
    j, rng = atlas.jitter, atlas.rng
    size = float(rng.uniform(0.85, 1.25))
    lobes = [
        atlas.ellipsoid(
            (-65.0 + j(6), 5.0 + j(5), -65.0 + j(8)),
            (80.0 * size, 90.0, 85.0 * size),
            rotation(about_z=-10.0 + j(5)),
            random_wobble(rng, 0.06, 90.0),
        ),
        atlas.ellipsoid(
            (15.0 + j(6), -45.0 + j(5), -35.0 + j(6)),
            (65.0 * size, 38.0, 42.0),
            rotation(about_z=15.0 + j(6)),
            random_wobble(rng, 0.07, 70.0),
        ),
        atlas.ellipsoid((-15.0, 25.0, -45.0), (20.0, 18.0, 30.0)),
    ]
    liver = Clipped(Union(lobes), below=(dome, 5.0))
    atlas.add(liver, T.LIVER, where=[T.FAT])
    atlas.add_site("liver", liver)
    if rng.random() < 0.9:
        _add_gallbladder(atlas)
    else:  # cholecystectomy: surgical clips in the empty fossa
        centre = atlas.p(-50.0, -45.0, -95.0)
        clips = [
            Capsule(c, (c[0] + 6.0, c[1], c[2] + 2.0), 0.9, 0.9)
            for c in _scatter(atlas, centre, 12.0, 4)
        ]
        atlas.add(clips, T.METAL)


def _scatter(atlas: Atlas, centre: Vec, spread: float, count: int) -> list[Vec]:
    x, y, z = centre
    j = atlas.jitter
    return [(x + j(spread), y + j(spread), z + j(spread)) for _ in range(count)]


def _add_gallbladder(atlas: Atlas) -> None:
    rng = atlas.rng
    fill = float(rng.uniform(0.6, 1.2))
    centre, axes = (
        (-50.0 + atlas.jitter(6), -45.0, -100.0 + atlas.jitter(8)),
        (18.0 * fill, 15.0 * fill, 35.0 * fill),
    )
    tilt = aligned((0.2, -0.5, 1.0))
    atlas.add(
        atlas.ellipsoid(centre, grown(axes, 2.0), tilt),
        T.GI_WALL,
        where=[T.FAT, T.LIVER],
    )
    atlas.add(atlas.ellipsoid(centre, axes, tilt), T.BILE, where=[T.GI_WALL])
    if rng.random() < 0.12:  # gallstones, calcified
        stones = [
            atlas.ellipsoid(c, (r, r, r))
            for c, r in zip(
                _scatter(atlas, atlas.p(-50.0, -38.0, -110.0), 5.0, 3),
                rng.uniform(2.0, 6.0, 3),
                strict=True,
            )
        ]
        atlas.add(stones, T.CALCIFICATION, where=[T.BILE])


def _add_spleen(atlas: Atlas, dome: Dome) -> None:
    j = atlas.jitter
    size = float(atlas.rng.uniform(0.8, 1.5))
    shape = atlas.ellipsoid(
        (95.0 + j(6), 55.0 + j(6), -55.0 + j(8)),
        (30.0, 55.0 * size, 52.0 * size),
        rotation(about_x=j(8), about_z=35.0 + j(8)),
        random_wobble(atlas.rng, 0.05, 60.0),
    )
    spleen = Clipped(shape, below=(dome, 5.0))
    atlas.add(spleen, T.SPLEEN, where=[T.FAT])
    atlas.add_site("spleen", spleen)


def _add_kidney(atlas: Atlas, side: float, urine: T) -> None:
    j, rng = atlas.jitter, atlas.rng
    size = float(rng.uniform(0.85, 1.15)) * atlas.iso
    centre = np.asarray(
        atlas.p(side * 70.0 + j(5), 48.0 + j(5), (-100.0 if side < 0 else -85.0) + j(8))
    )
    frame = aligned((-side * 0.2 + j(0.05), 0.25 + j(0.05), 1.0))
    axes = np.asarray((26.0, 22.0, 55.0)) * size
    kidney = _ellipsoid(centre, axes, frame)
    atlas.add(kidney, T.KIDNEY_CORTEX, where=[T.FAT])
    atlas.add_site("kidney", kidney)
    hilum = np.asarray((-side * 0.7, -0.7, 0.0)) / np.sqrt(0.98)
    sinus = centre + hilum * axes[0] * 0.45
    pyramids: list[Shape] = []
    for t in (-0.62, -0.32, 0.0, 0.32, 0.62):
        along = frame[:, 2] * t * axes[2]
        for angle in (np.pi * 0.6, np.pi, np.pi * 1.4):
            radial = np.cos(angle) * hilum + np.sin(angle) * np.cross(frame[:, 2], hilum)
            pyramids.append(
                _ellipsoid(
                    centre + along + radial * 13.0 * size, np.asarray((7.0, 7.0, 9.0)) * size, frame
                )
            )
    atlas.add(pyramids, T.KIDNEY_MEDULLA, where=[T.KIDNEY_CORTEX])
    atlas.add(_ellipsoid(sinus, np.asarray((11.0, 11.0, 30.0)) * size, frame), T.FAT, where=_KIDNEY)
    pelvis = sinus + hilum * 4.0
    atlas.add(
        _ellipsoid(pelvis, np.asarray((7.0, 7.0, 14.0)) * size, frame),
        urine,
        where=(*_KIDNEY, T.FAT),
    )
    exit_point = pelvis + hilum * 12.0
    ureter = [
        tuple(exit_point),
        atlas.p(side * 45.0, 30.0, -150.0),
        atlas.p(side * 45.0, 30.0, -230.0),
        atlas.p(side * 40.0, 25.0, -290.0),
        atlas.p(side * 25.0, -5.0, -320.0),
    ]
    atlas.add(tube(ureter, [2.5] * 5), urine, where=[T.FAT, T.MUSCLE])


def _ellipsoid(centre: np.ndarray, axes: np.ndarray, frame: np.ndarray) -> Shape:
    return Ellipsoid(tuple(centre), tuple(axes), frame)


def _add_pancreas(atlas: Atlas) -> None:
    rng = atlas.rng
    points: list[Vec] = [
        (-28.0, -5.0, -100.0),
        (-15.0, -15.0, -88.0),
        (0.0, -25.0, -80.0),
        (30.0, -15.0, -72.0),
        (60.0, 10.0, -65.0),
        (85.0, 35.0, -58.0),
    ]
    radii = np.asarray((16.0, 13.0, 11.0, 11.0, 10.0, 9.0)) * float(rng.uniform(0.75, 1.15))
    radii *= rng.uniform(0.85, 1.15, len(radii))
    shifted = [
        (x + atlas.jitter(3), y + atlas.jitter(3), z + atlas.jitter(4)) for x, y, z in points
    ]
    pancreas = atlas.tube(shifted, list(radii), step=5.0)
    atlas.add(pancreas, T.PANCREAS, where=[T.FAT])
    atlas.add_site("pancreas", Union(pancreas))


def _add_abdominal_vessels(atlas: Atlas) -> None:
    """Veins first, then the portal system, then arteries over what they cross."""
    _add_systemic_veins(atlas)
    _add_portal_system(atlas)
    _add_mesenteric_vessels(atlas)
    _add_abdominal_arteries(atlas)


def _add_systemic_veins(atlas: Atlas) -> None:
    tube = atlas.tube  # atlas points, scaled radii
    ivc = tube(
        [(-20.0, 0.0, -190.0), (-22.0, 2.0, -100.0), (-24.0, 8.0, -40.0), (-22.0, 5.0, -20.0)],
        [11.0, 11.5, 12.5, 13.0],
    )
    atlas.add(ivc, T.BLOOD_VENOUS)
    hepatic = tube(
        [(-22.0, 5.0, -15.0), (-55.0, -2.0, -28.0), (-85.0, -5.0, -40.0)], [6.0, 4.5, 3.0]
    )
    hepatic += tube(
        [(-22.0, 5.0, -15.0), (-28.0, -20.0, -25.0), (-30.0, -40.0, -35.0)], [5.5, 4.0, 3.0]
    )
    hepatic += tube(
        [(-22.0, 5.0, -15.0), (-5.0, -25.0, -18.0), (15.0, -45.0, -25.0)], [5.0, 4.0, 2.5]
    )
    atlas.add(hepatic, T.BLOOD_VENOUS, where=[T.LIVER, T.FAT])
    renal_veins = tube(
        [(52.0, 38.0, -84.0), (20.0, 10.0, -78.0), (-20.0, 2.0, -80.0)], [5.0, 5.0, 5.5]
    )
    renal_veins += tube([(-52.0, 38.0, -98.0), (-22.0, 4.0, -95.0)], [5.0, 5.5])
    atlas.add(renal_veins, T.BLOOD_VENOUS, where=[T.FAT, *_KIDNEY])
    iliac_veins = tube(
        [
            (-20.0, 0.0, -188.0),
            (-30.0, 15.0, -230.0),
            (-55.0, 10.0, -290.0),
            (-70.0, -15.0, -340.0),
        ],
        [8.0, 7.5, 7.0, 6.5],
    )
    iliac_veins += tube(
        [(-15.0, 5.0, -188.0), (20.0, 15.0, -220.0), (50.0, 10.0, -290.0), (68.0, -15.0, -340.0)],
        [8.0, 7.5, 7.0, 6.5],
    )
    atlas.add(iliac_veins, T.BLOOD_VENOUS, where=[T.FAT, T.MUSCLE])


def _add_portal_system(atlas: Atlas) -> None:
    tube = atlas.tube
    portal = tube([(-2.0, -5.0, -85.0), (-30.0, 5.0, -65.0), (-60.0, 5.0, -58.0)], [8.0, 8.0, 6.0])
    portal += tube(
        [(-30.0, 5.0, -65.0), (-10.0, -25.0, -45.0), (25.0, -45.0, -35.0)], [6.0, 5.0, 3.0]
    )
    liver = Union(atlas.sites["liver"])
    for end, direction in (
        ((-60.0, 5.0, -58.0), (-1.0, -0.3, 0.3)),
        ((-60.0, 5.0, -58.0), (-0.5, 0.8, -0.6)),
        ((-10.0, -25.0, -45.0), (0.3, -0.6, 0.5)),
    ):
        portal += atlas.tree(liver, atlas.p(*end), [direction], 4.0 * atlas.iso, 25.0, 3)
    portal += tube(
        [(-2.0, -5.0, -85.0), (30.0, 5.0, -75.0), (60.0, 22.0, -65.0), (85.0, 40.0, -58.0)],
        [6.0, 5.5, 5.0, 4.5],
    )
    portal += tube(
        [(-2.0, -5.0, -85.0), (-8.0, -25.0, -120.0), (-12.0, -35.0, -170.0)], [7.0, 6.0, 4.0]
    )
    atlas.add(portal, T.BLOOD_PORTAL, where=[T.FAT, T.LIVER, T.PANCREAS, T.SPLEEN])


def _add_abdominal_arteries(atlas: Atlas) -> None:
    tube = atlas.tube
    aorta = tube(
        [(12.0, 8.0, -30.0), (6.0, 0.0, -80.0), (5.0, -2.0, -140.0), (4.0, -2.0, -178.0)],
        [11.0, 10.5, 9.5, 9.0],
    )
    branches = tube(
        [(8.0, -2.0, -50.0), (8.0, -18.0, -55.0), (-25.0, -10.0, -62.0)], [4.0, 3.5, 2.5]
    )
    branches += tube([(8.0, -18.0, -55.0), (50.0, 15.0, -60.0)], [3.0, 2.5])
    branches += tube(
        [(6.0, -5.0, -62.0), (5.0, -22.0, -80.0), (2.0, -30.0, -160.0)], [4.5, 4.0, 3.0]
    )
    branches += tube([(6.0, 2.0, -75.0), (-52.0, 40.0, -100.0)], [3.2, 3.0]) + tube(
        [(6.0, 2.0, -72.0), (52.0, 40.0, -85.0)], [3.2, 3.0]
    )
    for side in (-1.0, 1.0):
        branches += tube(
            [
                (4.0, -2.0, -178.0),
                (side * 18.0, 0.0, -200.0),
                (side * 40.0, 5.0, -240.0),
                (side * 62.0, -5.0, -290.0),
                (side * 75.0, -25.0, -340.0),
            ],
            [7.0, 6.5, 6.0, 5.0, 4.5],
        )
    atlas.add(aorta, T.BLOOD_ARTERIAL)
    atlas.add(
        branches,
        T.BLOOD_ARTERIAL,
        where=[T.FAT, T.MUSCLE, T.PANCREAS, *_KIDNEY, T.LIVER, T.BLOOD_VENOUS],
    )
    add_plaques(atlas, aorta)


def _add_mesenteric_vessels(atlas: Atlas) -> None:
    """Branches of the superior mesenteric artery and vein fanning out in the fat.

    In cross-section they are small round dots among the bowel loops: hard negatives.
    """
    region = atlas.ellipsoid((0.0, -40.0, -190.0), (95.0, 50.0, 95.0))
    fan = [(-1.0, -0.4, -0.5), (-0.6, -0.6, -1.0), (0.6, -0.6, -1.0), (1.0, -0.4, -0.3)]
    for tissue, root in (
        (T.BLOOD_PORTAL, (-8.0, -25.0, -120.0)),
        (T.BLOOD_ARTERIAL, (2.0, -22.0, -115.0)),
    ):
        branches = atlas.tree(region, atlas.p(*root), fan, 3.0 * atlas.iso, 35.0, 3)
        atlas.add(branches, tissue, where=[T.FAT])


def add_plaques(atlas: Atlas, vessel: Sequence[Capsule]) -> None:
    """Calcified plaques on a vessel wall: more in an older-looking patient."""
    rng = atlas.rng
    count = int(rng.integers(0, 1 + int(20 * rng.random() ** 2)))
    plaques: list[Shape] = []
    for _ in range(count):
        capsule = vessel[int(rng.integers(len(vessel)))]
        t = float(rng.random())
        axis = np.asarray(capsule.d) / max(np.sqrt(capsule.dd), 1e-6)
        radial = np.cross(axis, atlas.unit())
        radial /= max(float(np.linalg.norm(radial)), 1e-6)
        radius = capsule.ra + t * (capsule.rb - capsule.ra)
        point = np.asarray(capsule.a) + t * np.asarray(capsule.d) + radial * (radius - 0.5)
        size = float(rng.uniform(1.0, 2.5))
        plaques.append(
            _ellipsoid(point, np.asarray((size, size, size * 2.0)), aligned(tuple(axis)))
        )
    if plaques:
        atlas.add(plaques, T.CALCIFICATION, where=[T.FAT, T.BLOOD_ARTERIAL, T.SOFT_TISSUE])


def add_bowel(atlas: Atlas, oral_contrast: bool) -> None:
    """Stomach, duodenum, small bowel loops and colon, each with its contents."""
    rng = atlas.rng
    fill = float(rng.uniform(0.5, 1.1))
    stomach: list[Vec] = [
        (30.0, 5.0, -25.0),
        (55.0, 25.0, -40.0),
        (60.0, -20.0, -70.0),
        (40.0, -55.0, -90.0),
        (5.0, -60.0, -88.0),
        (-15.0, -50.0, -80.0),
    ]
    radii = [12.0 * fill, 35.0 * fill, 33.0 * fill, 26.0 * fill, 18.0 * fill, 9.0]
    _add_loop(
        atlas, stomach, radii, 4.0, _content(rng, oral_contrast), float(rng.uniform(-70.0, -20.0))
    )
    duodenum: list[Vec] = [
        (-15.0, -50.0, -80.0),
        (-40.0, -30.0, -82.0),
        (-48.0, 0.0, -95.0),
        (-45.0, 5.0, -125.0),
        (-10.0, 15.0, -135.0),
        (25.0, 5.0, -128.0),
        (35.0, -10.0, -108.0),
    ]
    _add_loop(atlas, duodenum, [11.0] * 7, 2.5, _content(rng, oral_contrast), None)
    for _ in range(int(rng.integers(4, 8))):
        points = _random_walk(atlas)
        content = _content(rng, oral_contrast)
        radius = 6.0 if content == "collapsed" else float(rng.uniform(10.0, 15.0))
        level = float(rng.uniform(-80.0, 0.0)) if rng.random() < 0.3 else None
        _add_loop(atlas, points, [radius] * len(points), 2.5, content, level)
    colon: list[Vec] = [
        (-70.0, -35.0, -230.0),
        (-78.0, -20.0, -170.0),
        (-85.0, 10.0, -110.0),
        (-70.0, -30.0, -85.0),
        (-20.0, -75.0, -120.0),
        (30.0, -75.0, -115.0),
        (85.0, 0.0, -45.0),
        (95.0, 25.0, -90.0),
        (85.0, 0.0, -170.0),
        (60.0, -25.0, -230.0),
        (10.0, -30.0, -270.0),
        (-20.0, 10.0, -280.0),
        (0.0, 60.0, -300.0),
        (0.0, 75.0, -360.0),
    ]
    shifted = [(x + atlas.jitter(6), y + atlas.jitter(6), z + atlas.jitter(8)) for x, y, z in colon]
    colon_radii = list(rng.uniform(16.0, 28.0, len(colon)))
    _add_loop(atlas, shifted, colon_radii, 2.5, "stool", float(rng.uniform(-60.0, 10.0)))


def _content(rng: np.random.Generator, oral_contrast: bool) -> str:
    choices = (
        ["fluid", "collapsed", "fluid_gas", "contrast"]
        if oral_contrast
        else ["fluid", "collapsed", "fluid_gas"]
    )
    weights = [0.25, 0.2, 0.15, 0.4] if oral_contrast else [0.45, 0.35, 0.2]
    return str(rng.choice(choices, p=weights))


_CONTENT = {
    "fluid": T.GI_FLUID,
    "fluid_gas": T.GI_FLUID,
    "collapsed": T.GI_FLUID,
    "contrast": T.ORAL_CONTRAST,
    "stool": T.STOOL,
}


def _add_loop(
    atlas: Atlas,
    points: Sequence[Vec],
    radii: Sequence[float],
    wall: float,
    content: str,
    gas_level: float | None,
) -> None:
    """A bowel segment: wall over fat, lumen with its content, gas above a level."""
    if content == "collapsed":
        radii = [min(r, 7.0) for r in radii]
    outer = atlas.tube(points, [r + wall for r in radii])
    inner = atlas.tube(points, list(radii) if content != "collapsed" else [2.0] * len(radii))
    atlas.add(outer, T.GI_WALL, where=_GI)
    tissue = _CONTENT[content]
    atlas.add(inner, tissue, where=[T.GI_WALL])
    if content == "fluid_gas" and gas_level is None:
        gas_level = float(atlas.rng.uniform(-60.0, 0.0))
    if gas_level is not None and content in ("fluid_gas", "stool", "fluid", "contrast"):
        level = atlas.p(0.0, gas_level, 0.0)[1]
        # Supine: gas rises to the anterior (smaller y) side of the lumen.
        atlas.add([Clipped(c, y_max=level) for c in inner], T.GI_GAS, where=[tissue])


def _random_walk(atlas: Atlas) -> list[Vec]:
    """A small-bowel loop: a persistent random walk kept inside the mid-abdomen."""
    rng = atlas.rng
    lo, hi = np.asarray((-95.0, -85.0, -290.0)), np.asarray((95.0, 15.0, -95.0))
    point = rng.uniform(lo, hi)
    direction = atlas.unit()
    points: list[Vec] = []
    for _ in range(int(rng.integers(25, 60))):
        points.append((float(point[0]), float(point[1]), float(point[2])))
        step = np.asarray(direction) + 0.6 * rng.standard_normal(3)
        step /= np.linalg.norm(step)
        nxt = point + 12.0 * step
        outside = (nxt < lo) | (nxt > hi)
        step[outside] *= -1.0
        direction = (float(step[0]), float(step[1]), float(step[2]))
        point = point + 12.0 * step
    return points


def add_pelvis(atlas: Atlas, phase: ContrastPhase) -> None:
    """Bladder (with layering excreted contrast when delayed) and a prostate or uterus."""
    rng = atlas.rng
    fill = float(rng.uniform(0.4, 1.3))
    centre, axes = (
        (0.0, -25.0 + atlas.jitter(5), -330.0 + atlas.jitter(8)),
        (45.0 * fill, 38.0 * fill, 38.0 * fill),
    )
    if atlas.habitus.female:
        organ = atlas.ellipsoid((0.0, 25.0, -300.0), (30.0, 25.0, 40.0), rotation(about_x=-30.0))
    else:
        organ = atlas.ellipsoid((0.0, 5.0, -372.0), (20.0, 17.0, 18.0))
    atlas.add(organ, T.PELVIC_ORGAN, where=[T.FAT])
    atlas.add_site("pelvic_organ", organ)
    atlas.add(atlas.ellipsoid(centre, grown(axes, 3.0)), T.GI_WALL, where=[T.FAT, T.MUSCLE])
    lumen = atlas.ellipsoid(centre, axes)
    atlas.add(lumen, T.URINE, where=[T.GI_WALL])
    if phase is ContrastPhase.DELAYED:
        level = atlas.p(0.0, centre[1] + axes[1] * float(rng.uniform(-0.6, 0.6)), 0.0)[1]
        # Excreted contrast is denser than urine and layers posteriorly (supine).
        atlas.add(Clipped(lumen, y_min=level), T.EXCRETED_CONTRAST, where=[T.URINE])
