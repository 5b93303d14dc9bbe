"""Tissues of the anatomical CT generator and their attenuation in each contrast phase.

The values are typical adult CT numbers at 120 kVp from the radiology literature
(unenhanced, late arterial at about 35 s, portal venous at about 70 s, delayed at 3 to
5 min after an intravenous iodine bolus). Each study jitters them, scales the iodine
enhancement (dose, cardiac output, tube voltage) and adds smooth texture, so no single
number identifies a tissue.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "TISSUE_COUNT",
    "ContrastPhase",
    "CtTissue",
    "TissueTable",
    "draw_tissue_table",
]


class ContrastPhase(enum.StrEnum):
    """When the images were taken after an intravenous contrast bolus (or never)."""

    NONE = "none"
    ARTERIAL = "arterial"
    PORTAL_VENOUS = "portal_venous"
    DELAYED = "delayed"


class CtTissue(enum.IntEnum):
    """Labels of the tissue (organ) label volume; 0 is air outside the body.

    Lesions are not tissues: a lesion voxel carries the tissue of the organ it grew in,
    and the lesion label volume says which lesion it is.
    """

    AIR = 0
    FAT = 1
    MUSCLE = 2
    SOFT_TISSUE = 3  # skin, pelvic organs, oesophagus, airway walls
    LUNG = 4
    AIRWAY = 5
    LIVER = 6
    SPLEEN = 7
    PANCREAS = 8
    KIDNEY_CORTEX = 9
    KIDNEY_MEDULLA = 10
    URINE = 11  # renal pelvis, ureters, bladder
    EXCRETED_CONTRAST = 12  # iodine in the urinary tract, delayed phase
    BILE = 13  # gallbladder
    GI_WALL = 14  # stomach, bowel and colon wall, gallbladder and bladder wall
    GI_FLUID = 15
    GI_GAS = 16
    ORAL_CONTRAST = 17
    STOOL = 18
    MYOCARDIUM = 19
    BLOOD_ARTERIAL = 20  # aorta and its branches, left heart
    BLOOD_PULMONARY = 21  # right heart, pulmonary trunk and arteries
    BLOOD_PORTAL = 22  # portal, splenic and mesenteric veins
    BLOOD_VENOUS = 23  # caval, hepatic, renal and iliac veins
    BLOOD_INFLOW = 24  # superior vena cava and arm veins: the undiluted bolus
    PULMONARY_VESSEL = 25  # vessels inside the lungs
    BONE_CORTEX = 26
    BONE_MARROW = 27
    CARTILAGE = 28
    DISC = 29
    CSF = 30  # spinal canal
    LYMPH_NODE = 31
    CYST = 32  # simple cysts: water density, no wall (not lesions unless asked)
    CALCIFICATION = 33
    METAL = 34
    TABLE = 35
    TABLE_PAD = 36
    PELVIC_ORGAN = 37  # uterus or prostate


#: Number of tissue labels; lesion parts are rendered with labels from here on.
TISSUE_COUNT = len(CtTissue)

# Per tissue: CT numbers (none, arterial, portal venous, delayed), the per-study
# jitter (standard deviation, HU), and texture amplitudes (coarse, fine; HU).
_T = CtTissue
_TABLE: dict[CtTissue, tuple[tuple[float, float, float, float], float, float, float]] = {
    _T.AIR: ((-1000, -1000, -1000, -1000), 0, 0, 0),
    _T.FAT: ((-100, -100, -100, -100), 10, 6, 6),
    _T.MUSCLE: ((50, 58, 62, 58), 6, 3, 3),
    _T.SOFT_TISSUE: ((40, 60, 75, 65), 8, 4, 4),
    _T.LUNG: ((-860, -855, -850, -850), 35, 12, 8),
    _T.AIRWAY: ((-990, -990, -990, -990), 5, 0, 0),
    _T.LIVER: ((58, 72, 110, 88), 6, 5, 2),
    _T.SPLEEN: ((48, 105, 120, 95), 5, 4, 2),
    _T.PANCREAS: ((42, 115, 100, 75), 8, 4, 9),
    _T.KIDNEY_CORTEX: ((32, 185, 170, 130), 6, 3, 2),
    _T.KIDNEY_MEDULLA: ((30, 75, 160, 150), 6, 3, 2),
    _T.URINE: ((8, 8, 12, 15), 5, 0, 1),
    _T.EXCRETED_CONTRAST: ((600, 600, 600, 600), 200, 40, 10),
    _T.BILE: ((10, 10, 10, 10), 6, 0, 1),
    _T.GI_WALL: ((42, 90, 105, 80), 8, 3, 3),
    _T.GI_FLUID: ((12, 12, 12, 12), 8, 3, 2),
    _T.GI_GAS: ((-990, -990, -990, -990), 8, 0, 0),
    _T.ORAL_CONTRAST: ((300, 300, 300, 300), 90, 25, 15),
    _T.STOOL: ((0, 0, 0, 0), 20, 15, 35),
    _T.MYOCARDIUM: ((45, 135, 110, 90), 8, 3, 3),
    _T.BLOOD_ARTERIAL: ((42, 320, 165, 120), 8, 3, 2),
    _T.BLOOD_PULMONARY: ((42, 290, 160, 120), 8, 8, 3),
    _T.BLOOD_PORTAL: ((42, 100, 175, 125), 8, 4, 2),
    _T.BLOOD_VENOUS: ((42, 85, 150, 125), 8, 10, 3),
    _T.BLOOD_INFLOW: ((42, 900, 190, 125), 8, 60, 10),
    _T.PULMONARY_VESSEL: ((40, 260, 160, 120), 8, 5, 3),
    _T.BONE_CORTEX: ((850, 850, 850, 850), 150, 40, 40),
    _T.BONE_MARROW: ((180, 185, 190, 185), 60, 25, 45),
    _T.CARTILAGE: ((110, 110, 110, 110), 15, 10, 10),
    _T.DISC: ((85, 85, 90, 90), 10, 4, 4),
    _T.CSF: ((12, 12, 12, 12), 5, 0, 2),
    _T.LYMPH_NODE: ((40, 60, 80, 70), 8, 2, 3),
    _T.CYST: ((5, 5, 5, 5), 4, 0, 1),
    _T.CALCIFICATION: ((650, 650, 650, 650), 200, 50, 50),
    _T.METAL: ((3000, 3000, 3000, 3000), 0, 0, 0),
    _T.TABLE: ((250, 250, 250, 250), 120, 0, 5),
    _T.TABLE_PAD: ((-800, -800, -800, -800), 80, 10, 10),
    _T.PELVIC_ORGAN: ((40, 75, 90, 80), 8, 4, 4),
}

_PHASES = tuple(ContrastPhase)
# Tissues whose enhancement (phase minus unenhanced) is iodine: scaled per study.
_UNENHANCED_ONLY = {_T.EXCRETED_CONTRAST, _T.ORAL_CONTRAST, _T.METAL, _T.TABLE, _T.TABLE_PAD}
# Iodine attenuates more at lower tube voltage (approximate ratios to 120 kVp).
_IODINE_AT_KVP = {80: 1.55, 100: 1.25, 120: 1.0, 140: 0.85}


@dataclass(frozen=True, slots=True)
class TissueTable:
    """One study's CT numbers and texture per tissue label (256-entry lookups).

    Attributes
    ----------
    hu
        Mean CT number of each label, HU.
    unenhanced
        The same study's CT number of each label before contrast, HU.
    coarse, fine
        Amplitude (HU) of the coarse (about 20 mm) and fine (about 5 mm) texture.
    gradient
        HU per millimetre towards posterior (the dependent lung is denser).
    """

    hu: npt.NDArray[np.float32]
    unenhanced: npt.NDArray[np.float32]
    coarse: npt.NDArray[np.float32]
    fine: npt.NDArray[np.float32]
    gradient: npt.NDArray[np.float32]

    def of(self, tissue: int) -> float:
        """Mean CT number of one label."""
        return float(self.hu[tissue])


def draw_tissue_table(
    rng: np.random.Generator, phase: ContrastPhase, kvp: int
) -> tuple[TissueTable, float]:
    """Draw one study's tissue table; also return its iodine enhancement scale."""
    column = _PHASES.index(phase)
    iodine = float(rng.uniform(0.7, 1.3)) * _IODINE_AT_KVP.get(kvp, 1.0)
    hu = np.zeros(256, dtype=np.float32)
    unenhanced = np.zeros(256, dtype=np.float32)
    coarse = np.zeros(256, dtype=np.float32)
    fine = np.zeros(256, dtype=np.float32)
    gradient = np.zeros(256, dtype=np.float32)
    for tissue in CtTissue:
        values, jitter, coarse_amp, fine_amp = _TABLE[tissue]
        base = values[0]
        enhancement = values[column] - base
        if tissue in _UNENHANCED_ONLY:
            value = values[column]
        else:
            value = base + iodine * enhancement
        if tissue in (_T.EXCRETED_CONTRAST, _T.ORAL_CONTRAST):
            value *= _IODINE_AT_KVP.get(kvp, 1.0)
        offset = jitter * float(rng.standard_normal())
        hu[tissue] = value + offset
        unenhanced[tissue] = base + offset
        coarse[tissue] = coarse_amp * float(rng.uniform(0.6, 1.4))
        fine[tissue] = fine_amp * float(rng.uniform(0.6, 1.4))
    # The arterial-phase spleen is famously heterogeneous (arciform enhancement).
    if phase is ContrastPhase.ARTERIAL:
        coarse[_T.SPLEEN] = float(rng.uniform(15, 40))
    gradient[_T.LUNG] = float(rng.uniform(0.2, 0.8))
    return TissueTable(hu, unenhanced, coarse, fine, gradient), iodine
