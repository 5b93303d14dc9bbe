"""Ground-truth DICOM SEG for synthetic studies, built with highdicom.

A synthetic study's labels (the lesions of :mod:`dicomnode.synth.ct`, the findings of
a mammography or chest radiograph phantom) become a BINARY Segmentation of the source
images, one segment per :class:`~dicomnode.kernel.SegmentLabel`. ``dicomnode
train`` and the evaluation read it back with :func:`dicomnode.worker.labels.read_segments`.

The SEG is deterministic: its Series and SOP Instance UIDs derive from the source
series UID, the series number and the description (RFC 4122 name-based UUIDs as
"2.25." UIDs, PS3.5 B.2), so the same study always gets the same ground truth.

What the source images must carry (highdicom 0.28 and ``dciodvfy``):

- Cross-sectional images (CT, MR): ImagePositionPatient, ImageOrientationPatient,
  PixelSpacing, SliceThickness and a FrameOfReferenceUID; a multi-frame source (one
  enhanced instance) must have a FrameOfReferenceUID.
- Projection images (MG, DX, CR), one instance: either no FrameOfReferenceUID, or no
  PixelSpacing (ImagerPixelSpacing is not copied into the SEG), or a SliceThickness
  too, because a SEG with a Frame of Reference needs SliceThickness in its Pixel
  Measures. PixelSpacing, when present, must be positive. PatientOrientation is copied
  from the source (empty when it has none): the SEG needs it without a plane
  orientation (General Image Module, PS3.3 C.7.6.1, Type 2C).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode import __version__
from dicomnode.kernel import Code, SegmentLabel
from dicomnode.outputs.seg import check_source
from dicomnode.uids import derive_uid
from dicomnode.volumes import slice_order

__all__ = ["ALGORITHM_NAME", "build_truth_segmentation"]

logger = logging.getLogger(__name__)

#: Segmentation Algorithm Identification name of every ground-truth SEG.
ALGORITHM_NAME = "dicomnode synthetic ground truth"

#: The namespace of the SEG's UIDs (:func:`dicomnode.uids.derive_uid`).
_UID_NAMESPACE = "dicomnode.synth.truth"
_CONTENT_LABEL = "GROUND_TRUTH"


def build_truth_segmentation(
    sources: Sequence[Dataset],
    masks: npt.NDArray[np.bool_],
    labels: Sequence[SegmentLabel],
    *,
    series_number: int = 900,
    series_description: str = "Ground truth",
) -> hd.seg.Segmentation:
    """Build the BINARY DICOM SEG of ground-truth masks on a series.

    Parameters
    ----------
    sources
        The source images of one series (in any order): single-frame instances, or one
        multi-frame instance.
    masks
        ``bool`` array (labels, slices, rows, columns). Slices are in the order
        :func:`dicomnode.volumes.volume_from_datasets` stacks `sources`
        (sorted along the slice normal; stored frame order for images without
        patient geometry), so masks drawn on that volume fit as they are.
    labels
        One per mask plane, numbered 1, 2, ... in order; they become the segments
        (category and type codes, algorithm type MANUAL, identified as
        :data:`ALGORITHM_NAME`). A segment may be empty.
    series_number, series_description
        General Series Module values of the SEG; they enter its UIDs.

    Returns
    -------
    highdicom.seg.Segmentation
        The SEG, with UIDs derived from the source series.

    Raises
    ------
    ValueError
        If an argument does not fit the sources or the sources lack what a SEG needs;
        the message names the attribute.
    dicomnode.errors.VolumeError
        If the sources do not make one volume.
    """
    order = slice_order(sources)
    _check_masks(masks, labels, sources[0], len(order))
    first = sources[0]
    check_source(first)
    multi_frame = any(int(ds.get("NumberOfFrames") or 1) > 1 for ds in sources)
    if multi_frame and len(sources) > 1:
        raise ValueError("sources must be single-frame instances or one multi-frame instance")
    if multi_frame:
        # highdicom maps mask frames onto the source frames in stored order.
        images = list(sources)
        planes = np.zeros_like(masks)
        planes[:, [frame - 1 for _, frame in order]] = masks
    else:
        images = [sources[index] for index, _ in order]
        planes = masks
    series_uid = derive_uid(
        _UID_NAMESPACE, "truth-series", str(first.SeriesInstanceUID), str(series_number),
        series_description,
    )  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=np.moveaxis(planes, 0, -1),  # highdicom wants (frames, rows, columns, segments)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(label) for label in labels],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=derive_uid(_UID_NAMESPACE, "truth-sop", series_uid),
        instance_number=1,
        manufacturer="dicomnode",
        manufacturer_model_name="synthetic ground truth",
        software_versions=__version__,
        device_serial_number="synthetic",
        content_description=ALGORITHM_NAME,
        content_label=_CONTENT_LABEL,
    )
    seg.SeriesDescription = series_description
    if "PlaneOrientationSequence" not in seg.SharedFunctionalGroupsSequence[0]:
        # No plane orientation: General Image needs PatientOrientation (Type 2C).
        seg.PatientOrientation = first.get("PatientOrientation", "")
    logger.debug(
        "ground-truth SEG built",
        extra={
            "action": "truth_seg_built",
            "series_instance_uid": str(first.SeriesInstanceUID),
            "segments": len(labels),
            "frames": int(seg.NumberOfFrames),
        },
    )
    return seg


def _check_masks(
    masks: npt.NDArray[np.bool_], labels: Sequence[SegmentLabel], first: Dataset, slices: int
) -> None:
    if not labels:
        raise ValueError("labels must name at least one segment")
    numbers = [label.number for label in labels]
    if numbers != list(range(1, len(labels) + 1)):
        raise ValueError(f"SegmentLabel numbers must be 1, 2, ... in order, got {numbers}")
    if masks.dtype != np.bool_:
        raise ValueError(f"masks must be a bool array, got {masks.dtype}")
    expected = (len(labels), slices, int(first.Rows), int(first.Columns))
    if masks.shape != expected:
        raise ValueError(
            f"masks must have shape (labels, slices, Rows, Columns) = {expected}, got {masks.shape}"
        )


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _description(label: SegmentLabel) -> hd.seg.SegmentDescription:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.DCM.ManualProcessing, version=__version__
    )
    description = hd.seg.SegmentDescription(
        segment_number=label.number,
        segment_label=label.name,
        segmented_property_category=_concept(label.category),
        segmented_property_type=_concept(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        algorithm_identification=algorithm,
    )
    # Segment Algorithm Name is Type 1C, present only when the type is not MANUAL
    # (PS3.3 C.8.20.2); the identification sequence still names the generator.
    del description.SegmentAlgorithmName
    return description
