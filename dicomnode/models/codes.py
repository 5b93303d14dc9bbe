"""Coded concepts the built-in models and the synthetic ground truth share.

Every code is taken from pydicom's SNOMED CT / DCM dictionary (``pydicom.sr.codedict``),
never invented. Segment categories follow PS3.16 CID 7150 (Segmentation Property
Categories); types CID 7151 and CID 6014/6016-style breast findings.

The synthetic studies' DICOM SEG ground truth uses these as Segmented Property Type,
and ``dicomnode train`` maps SEG segments back to labels and classes through them, so
a user's own SEG labels train a model when they use the same codes.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes

from dicomnode.models.api import Code

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "BENIGN",
    "BODY",
    "CALCIFICATION_CLUSTER",
    "LESION",
    "MALIGNANT",
    "MASS",
    "MORPHOLOGICALLY_ABNORMAL",
    "NODULE",
    "NORMAL",
    "SPICULATED_LESION",
    "TISSUE",
    "code_of",
    "same_code",
]


def code_of(value: object) -> Code:
    """Turn a pydicom/highdicom code (``value``, ``scheme_designator``, ``meaning``) into a Code."""
    return Code(
        str(value.value),  # type: ignore[attr-defined]
        str(value.scheme_designator),  # type: ignore[attr-defined]
        str(value.meaning),  # type: ignore[attr-defined]
    )


def same_code(a: Code, b: Code) -> bool:
    """Codes are equal when value and scheme are (meanings vary in wording)."""
    return a.value == b.value and a.scheme == b.scheme


# Segment categories (CID 7150).
TISSUE = code_of(codes.SCT.Tissue)
ANATOMICAL_STRUCTURE = code_of(codes.SCT.AnatomicalStructure)
MORPHOLOGICALLY_ABNORMAL = code_of(codes.SCT.MorphologicallyAbnormalStructure)

# Segment types and findings.
BODY = code_of(codes.SCT.EntireBody)
LESION = code_of(codes.SCT.Lesion)
MASS = code_of(codes.SCT.Mass)
NODULE = code_of(codes.SCT.Nodule)
CALCIFICATION_CLUSTER = code_of(codes.SCT.CalcificationCluster)
SPICULATED_LESION = code_of(codes.SCT.SpiculatedLesion)

# Study / breast level classes.
NORMAL = code_of(codes.SCT.Normal)
BENIGN = code_of(codes.SCT.Benign)
MALIGNANT = code_of(codes.SCT.Malignant)
