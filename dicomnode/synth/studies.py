"""``dicomnode demo-data``: synthetic studies on disk, each with its DICOM SEG ground truth.

Layout under the output folder (one folder per study, one patient per study)::

    ct/DEMO-CT-0001/0001.dcm ...        CT series (body, lungs, spine, lesions)
    ct/DEMO-CT-0001/truth-seg.dcm       SEG: body, lesion (body only when lesion-free)
    mg/DEMO-MG-0001/L-CC.dcm ...        four views, one series each
    mg/DEMO-MG-0001/truth-L-CC.dcm ...  SEG per view that shows a real lesion
    cxr/DEMO-CXR-0001/PA.dcm, LAT.dcm   chest PA + lateral
    cxr/DEMO-CXR-0001/truth-PA.dcm ...  SEG per view that shows a nodule

Study ``i`` of a kind uses seed ``seed + i``, so two folders made with seeds far apart
share no study (use that for held-out test sets). The same options always write the
same bytes.

CT studies come from the simple phantom (:mod:`dicomnode.synth.ct.phantom`, the
default: what the shipped ``ct-lesion-seg`` weights were trained on) or, with
``ct_anatomical``, from the anatomical generator (:mod:`dicomnode.synth.ct.anatomical`):
then slice thickness, field of view, phase, region and patient vary per study, and
``ct_thickness`` is not used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicomnode.models import codes
from dicomnode.models.api import SegmentLabel
from dicomnode.synth.ct import (
    AnatomicalCtOptions,
    build_anatomical_ct_series,
    build_ct_series,
    ct_phantom,
    draw_anatomical_ct,
    render_anatomical_ct,
)

__all__ = ["CT_TRUTH_LABELS", "DemoOptions", "write_demo_data"]

logger = logging.getLogger(__name__)

#: The CT ground-truth segments (the codes ct-lesion-seg trains on).
CT_TRUTH_LABELS = (
    SegmentLabel(1, "body", codes.ANATOMICAL_STRUCTURE, codes.BODY),
    SegmentLabel(2, "lesion", codes.MORPHOLOGICALLY_ABNORMAL, codes.LESION),
)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """How many studies of each kind, their seeds and sizes."""

    ct: int = 2
    mg: int = 2
    cxr: int = 2
    seed: int = 0
    ct_slices: int = 120
    ct_size: int = 512
    ct_thickness: float = 1.0
    ct_anatomical: bool = False
    mg_rows: int = 512
    cxr_size: int = 512

    def __post_init__(self) -> None:
        for name in ("ct", "mg", "cxr", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("ct_slices", "ct_size", "mg_rows", "cxr_size"):
            if getattr(self, name) < 16:
                raise ValueError(f"{name} must be >= 16, got {getattr(self, name)}")
        if not 0.1 <= self.ct_thickness <= 10:
            raise ValueError(f"ct_thickness must be 0.1 to 10 mm, got {self.ct_thickness}")

    @property
    def total(self) -> int:
        """Studies to write."""
        return self.ct + self.mg + self.cxr


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_truth(
    sources: Sequence[Dataset],
    masks: npt.NDArray[np.bool_],
    labels: Sequence[SegmentLabel],
    path: Path,
) -> bool:
    """Write a SEG of the non-empty label planes; False (nothing written) when all are empty."""
    from dicomnode.synth.truth import build_truth_segmentation

    keep = [i for i in range(len(labels)) if masks[i].any()]
    if not keep:
        return False
    renumbered = [
        SegmentLabel(n, labels[i].name, labels[i].category, labels[i].type)
        for n, i in enumerate(keep, start=1)
    ]
    seg = build_truth_segmentation(sources, masks[keep], renumbered)
    _save(seg, path)
    return True


def _write_ct(out: Path, seed: int, options: DemoOptions) -> None:
    patient = f"DEMO-CT-{seed:04d}"
    if options.ct_anatomical:
        _write_anatomical_ct(out / "ct" / patient, seed, options, patient)
        return
    # Keep the field of view of the 512 x 0.7 mm default whatever the matrix size.
    spacing = 0.7 * 512 / options.ct_size
    slices, size, thickness = options.ct_slices, options.ct_size, options.ct_thickness
    datasets = list(
        build_ct_series(slices=slices, rows=size, columns=size, seed=seed, patient_id=patient,
                        patient_name="Demo^CT", pixel_spacing=spacing, slice_thickness=thickness)
    )  # fmt: skip
    folder = out / "ct" / patient
    for ds in datasets:
        _save(ds, folder / f"{ds.InstanceNumber:04d}.dcm")
    phantom = ct_phantom(seed, slices, size, size, thickness, spacing)
    masks = np.stack([phantom.body_mask(), phantom.lesion_labels() > 0])
    _write_truth(datasets, masks, CT_TRUTH_LABELS, folder / "truth-seg.dcm")


def _write_anatomical_ct(folder: Path, seed: int, options: DemoOptions, patient: str) -> None:
    size = options.ct_size
    ct = draw_anatomical_ct(
        seed, AnatomicalCtOptions(slices=options.ct_slices, rows=size, columns=size)
    )
    rendered = render_anatomical_ct(ct)
    datasets = build_anatomical_ct_series(ct, rendered, patient_id=patient, patient_name="Demo^CT")
    for ds in datasets:
        _save(ds, folder / f"{ds.InstanceNumber:04d}.dcm")
    masks = np.stack([rendered.body_mask(), rendered.lesion_mask()])
    _write_truth(datasets, masks, CT_TRUTH_LABELS, folder / "truth-seg.dcm")


def _write_projections(
    folder: Path,
    images: Mapping[str, Dataset],
    masks: Mapping[str, npt.NDArray[np.bool_]],
    labels: Sequence[SegmentLabel],
) -> None:
    for view, ds in images.items():
        _save(ds, folder / f"{view}.dcm")
        if view in masks:
            _write_truth([ds], masks[view], labels, folder / f"truth-{view}.dcm")


def _write_mg(out: Path, seed: int, options: DemoOptions) -> None:
    from dicomnode.synth.mg import build_mg_study

    patient = f"DEMO-MG-{seed:04d}"
    columns = max(16, round(options.mg_rows * 416 / 512))
    study = build_mg_study(seed, rows=options.mg_rows, columns=columns, patient_id=patient)
    _write_projections(out / "mg" / patient, study.images, study.masks, study.truth_labels)


def _write_cxr(out: Path, seed: int, options: DemoOptions) -> None:
    from dicomnode.synth.cxr import build_cxr_study

    patient = f"DEMO-CXR-{seed:04d}"
    size = options.cxr_size
    study = build_cxr_study(seed, rows=size, columns=size, patient_id=patient)
    _write_projections(out / "cxr" / patient, study.images, study.masks, study.truth_labels)


def write_demo_data(
    out: Path, options: DemoOptions, advance: Callable[[], None] | None = None
) -> int:
    """Write the studies ``options`` asks for under ``out``; return how many.

    ``advance()`` is called after each study.
    """
    writers = (
        (options.ct, _write_ct),
        (options.mg, _write_mg),
        (options.cxr, _write_cxr),
    )
    written = 0
    for count, writer in writers:
        for i in range(count):
            writer(out, options.seed + i, options)
            written += 1
            if advance is not None:
                advance()
    logger.info("demo data written", extra={"action": "demo_data_written", "studies": written})
    return written
