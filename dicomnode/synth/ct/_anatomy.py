"""The whole patient: every system's paints in the order they are applied."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dicomnode.synth.ct._abdomen import add_abdomen, add_bowel, add_pelvis
from dicomnode.synth.ct._atlas import Atlas, Habitus, Streak
from dicomnode.synth.ct._shapes import Ellipsoid, Paint, Shape, aligned
from dicomnode.synth.ct._skeleton import add_implants, add_skeleton
from dicomnode.synth.ct._tissues import ContrastPhase
from dicomnode.synth.ct._tissues import CtTissue as T
from dicomnode.synth.ct._trunk import add_body, add_chest, add_table

__all__ = ["Anatomy", "build_anatomy"]


@dataclass(frozen=True, slots=True)
class Anatomy:
    """A patient's anatomy, ready to render.

    Attributes
    ----------
    paints
        In the order they are applied.
    sites
        Organs lesions and cysts may grow in: site name -> shapes.
    streaks
        Sources of streak artefacts.
    implants
        Names of the metal implants, if any.
    oral_contrast
        Whether the bowel holds positive oral contrast.
    """

    paints: tuple[Paint, ...]
    sites: Mapping[str, tuple[Shape, ...]]
    streaks: tuple[Streak, ...]
    implants: tuple[str, ...]
    oral_contrast: bool


def build_anatomy(
    rng: np.random.Generator, habitus: Habitus, phase: ContrastPhase, *, implants: bool = True
) -> Anatomy:
    """Build a patient of this habitus, scanned in this contrast phase (metal if `implants`)."""
    atlas = Atlas(rng, habitus)
    add_table(atlas)
    add_body(atlas)
    dome = add_chest(atlas)
    add_abdomen(atlas, dome, phase)
    add_pelvis(atlas, phase)
    oral_contrast = bool(rng.random() < 0.35)
    add_bowel(atlas, oral_contrast)
    _add_lymph_nodes(atlas)
    vertebrae = add_skeleton(atlas)
    metal = add_implants(atlas, vertebrae) if implants else []
    return Anatomy(
        paints=tuple(atlas.paints),
        sites={name: tuple(shapes) for name, shapes in atlas.sites.items()},
        streaks=tuple(atlas.streaks),
        implants=tuple(metal),
        oral_contrast=oral_contrast,
    )


def _add_lymph_nodes(atlas: Atlas) -> None:
    """Normal lymph nodes (under 1 cm short axis) in fat: small soft-tissue ovals."""
    rng = atlas.rng
    u = rng.uniform
    places = (
        lambda: (rng.choice([-22.0, 22.0]), u(-5, 5), u(-170, -60)),  # para-aortic
        lambda: (u(-60, 60), u(-70, -10), u(-220, -110)),  # mesenteric
        lambda: (u(-25, 25), u(-30, 10), u(130, 210)),  # mediastinal
        lambda: (rng.choice([-1.0, 1.0]) * u(45, 70), u(-10, 15), u(-300, -230)),  # iliac
    )
    nodes: list[Shape] = []
    for _ in range(int(rng.integers(3, 13))):
        x, y, z = places[int(rng.integers(len(places)))]()
        short = float(u(1.5, 4.5)) * atlas.iso
        axes = (short, short * float(u(1.0, 1.3)), short * float(u(1.0, 1.8)))
        nodes.append(Ellipsoid(atlas.p(float(x), float(y), float(z)), axes, aligned(atlas.unit())))
    atlas.add(nodes, T.LYMPH_NODE, where=[T.FAT])
