"""Synthetic CT series: the simple phantom and the anatomical generator.

- :mod:`~dicomnode.synth.ct.phantom`: bright spheres in a plain elliptical body (the
  data the shipped ``ct-lesion-seg`` weights were trained on; unchanged so they
  stay reproducible).
- :mod:`~dicomnode.synth.ct.anatomical`: chest, abdomen and pelvis with organs,
  vessels, bowel and bones, contrast phases, lesions of many kinds, and scanner
  variety; with tissue and lesion label volumes.
"""

from __future__ import annotations

from dicomnode.synth.ct.anatomical import (
    AnatomicalCt,
    AnatomicalCtOptions,
    BodyRegion,
    ContrastPhase,
    CtTissue,
    RenderedCt,
    anatomical_volume,
    build_anatomical_ct_series,
    draw_anatomical_ct,
    render_anatomical_ct,
)
from dicomnode.synth.ct.phantom import (
    AIR_HU,
    BONE_HU,
    FAT_HU,
    LUNG_HU,
    NOISE_SIGMA_HU,
    SOFT_TISSUE_HU,
    CtLesion,
    CtPhantom,
    CtSeriesOptions,
    build_ct_series,
    ct_phantom,
    write_ct_series,
)

__all__ = [
    "AIR_HU",
    "BONE_HU",
    "FAT_HU",
    "LUNG_HU",
    "NOISE_SIGMA_HU",
    "SOFT_TISSUE_HU",
    "AnatomicalCt",
    "AnatomicalCtOptions",
    "BodyRegion",
    "ContrastPhase",
    "CtLesion",
    "CtPhantom",
    "CtSeriesOptions",
    "CtTissue",
    "RenderedCt",
    "anatomical_volume",
    "build_anatomical_ct_series",
    "build_ct_series",
    "ct_phantom",
    "draw_anatomical_ct",
    "render_anatomical_ct",
    "write_ct_series",
]
