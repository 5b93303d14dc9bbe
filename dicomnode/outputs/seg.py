"""DICOM SEG of a model's masks on one source series, built with highdicom.

One BINARY Segmentation per source series (PS3.3 A.51): a CT series (single-frame
instances or one enhanced multi-frame instance) or one projection image (MG, DX, CR).
Mask slice ``k`` lies on ``volume.sop_instance_uids[k]`` / ``volume.frame_numbers[k]``
(:class:`~dicomnode.kernel.Volume`), so the sources are reordered to follow the
volume. Frames where a segment is empty are omitted (highdicom ``omit_empty_frames``),
and the segments are AUTOMATIC, identified by the model's name and version with the
algorithm family "Artificial Intelligence".

**Segment numbers.** highdicom requires the segments of a BINARY SEG to be numbered
1, 2, ... without gaps (stricter than PS3.3 C.8.20.2, which only requires uniqueness),
and a segment whose mask is empty everywhere is left out, because it has no frame to
carry and a reader would show an empty entry. So the labels that have a mask are
renumbered 1..n in label order; :func:`segment_number_map` gives the mapping
(label number -> segment number) that the SR needs to reference the segments. A
result with no mask at all has no SEG (:func:`build_segmentation` returns None).

What the source images must carry (highdicom 0.28 and ``dciodvfy``):

- Cross-sectional images: ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
  SliceThickness and a FrameOfReferenceUID (a multi-frame SEG needs it).
- Projection images: no FrameOfReferenceUID, or no PixelSpacing (ImagerPixelSpacing is
  not copied into the SEG), or a SliceThickness too, because a SEG with a Frame of
  Reference needs SliceThickness in its Pixel Measures. PatientOrientation is copied
  from the source (empty when it has none): the SEG needs it when it has no plane
  orientation (General Image Module, PS3.3 C.7.6.1, Type 2C).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicomnode.kernel import Code, SegmentLabel, Volume
from dicomnode.outputs.identity import (
    MANUFACTURER,
    SERIES_NUMBERS,
    Producer,
    device_uid,
)
from dicomnode.outputs.identity import series_description as describe_series

__all__ = [
    "CONTENT_LABEL",
    "build_segmentation",
    "check_masks",
    "check_series_number",
    "check_source",
    "segment_number_map",
    "source_planes",
]

logger = logging.getLogger(__name__)

#: Content Label of every SEG dicomnode makes (CS, 16 characters at most).
CONTENT_LABEL = "AI_SEGMENTATION"


def segment_number_map(
    masks: npt.NDArray[np.bool_], labels: Sequence[SegmentLabel]
) -> dict[int, int]:
    """Map label numbers to the SEG's segment numbers: labels with a mask, 1..n in order.

    Parameters
    ----------
    masks
        ``bool`` array (labels, slices, rows, columns), one plane per label.
    labels
        The model's segment labels, in mask order.

    Returns
    -------
    dict of int to int
        Label number -> segment number, for the labels whose mask is not empty.

    Raises
    ------
    ValueError
        If `masks` does not have one plane per label.
    """
    if masks.ndim != 4 or masks.shape[0] != len(labels):
        raise ValueError(
            f"masks must have shape (labels, slices, rows, columns) with {len(labels)} labels,"
            f" got {masks.shape}"
        )
    present = [bool(plane.any()) for plane in masks]
    kept = [label.number for label, has in zip(labels, present, strict=True) if has]
    return {number: segment for segment, number in enumerate(kept, start=1)}


def build_segmentation(
    sources: Sequence[Dataset],
    volume: Volume,
    masks: npt.NDArray[np.bool_],
    labels: Sequence[SegmentLabel],
    *,
    model_name: str,
    model_version: str,
    job_key: str,
    series_number: int = SERIES_NUMBERS["seg"] + 1,
    series_description: str | None = None,
) -> hd.seg.Segmentation | None:
    """Build the BINARY DICOM SEG of a model's masks on one source series.

    Parameters
    ----------
    sources
        The images of the series `volume` was built from (any order): single-frame
        instances, or one multi-frame instance.
    volume
        The volume the masks were drawn on; its ``sop_instance_uids`` and
        ``frame_numbers`` place each mask slice on a source frame.
    masks
        ``bool`` array (labels, slices, rows, columns) on the volume's grid.
    labels
        One per mask plane, with increasing numbers (``Model.labels``).
    model_name, model_version
        Identify the algorithm (equipment and Segmentation Algorithm Identification).
    job_key
        Identifies the job; the SEG's UIDs derive from it and the source series.
    series_number
        Series Number of the SEG.
    series_description
        Series Description; by default the model name and "segmentation".

    Returns
    -------
    highdicom.seg.Segmentation or None
        The SEG, with only the labels that have a mask (:func:`segment_number_map`),
        or None when every mask is empty.

    Raises
    ------
    ValueError
        If an argument does not fit the others or the sources lack what a SEG needs;
        the message names the attribute.
    """
    producer = Producer(model_name, model_version, job_key)
    check_masks(masks, labels, volume)
    check_series_number(series_number)
    images, planes = source_planes(sources, volume, masks)
    numbers = segment_number_map(masks, labels)
    if not numbers:
        logger.info(
            "no segment to write: every mask is empty",
            extra={"action": "seg_skipped", "series_instance_uid": volume.series_instance_uid},
        )
        return None
    check_source(images[0])
    kept = [i for i, label in enumerate(labels) if label.number in numbers]
    seg = _segmentation(
        images,
        planes[kept],
        [(labels[i], numbers[labels[i].number]) for i in kept],
        producer,
        (volume.series_instance_uid, series_number),
    )
    seg.SeriesDescription = series_description or describe_series("seg", model_name)
    if "PlaneOrientationSequence" not in seg.SharedFunctionalGroupsSequence[0]:
        # No plane orientation: General Image needs PatientOrientation (Type 2C).
        seg.PatientOrientation = images[0].get("PatientOrientation", "")
    logger.info(
        "SEG built",
        extra={
            "action": "seg_built",
            "series_instance_uid": volume.series_instance_uid,
            "sop_instance_uid": str(seg.SOPInstanceUID),
            "segments": len(kept),
            "frames": int(seg.NumberOfFrames),
        },
    )
    return seg


def _segmentation(
    images: list[Dataset],
    planes: npt.NDArray[np.bool_],
    segments: list[tuple[SegmentLabel, int]],
    producer: Producer,
    series: tuple[str, int],
) -> hd.seg.Segmentation:
    """The highdicom SEG of the non-empty planes, with UIDs from the source series."""
    source_series, series_number = series
    series_uid = producer.uid("seg-series", source_series)
    name, version = producer.model_name, producer.model_version
    return hd.seg.Segmentation(
        source_images=images,
        # highdicom wants (frames, rows, columns, segments).
        pixel_array=np.moveaxis(planes, 0, -1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _description(label, number, producer, series_uid) for label, number in segments
        ],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=producer.uid("seg", source_series),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=name,
        # pydicom takes a list for a multi-valued LO (highdicom's hint says tuple).
        software_versions=list(producer.software_versions),  # type: ignore[arg-type]
        device_serial_number=str(device_uid(name, version)),
        content_description=f"{name} {version}"[:64],
        content_label=CONTENT_LABEL,
        omit_empty_frames=True,
    )


def source_planes(
    sources: Sequence[Dataset], volume: Volume, masks: npt.NDArray[np.bool_]
) -> tuple[list[Dataset], npt.NDArray[np.bool_]]:
    """Order the sources and the mask planes the way highdicom maps frames onto sources.

    Parameters
    ----------
    sources
        Single-frame instances of one series, or one multi-frame instance.
    volume
        Places each mask slice on a source instance and frame.
    masks
        ``bool`` array (labels, slices, rows, columns) on the volume's grid.

    Returns
    -------
    list of Dataset, numpy.ndarray
        Single-frame sources: the instances in volume order and `masks` as they are.
        A multi-frame source: that instance and the masks moved to its stored frame
        order (frames the volume does not use stay empty).

    Raises
    ------
    ValueError
        If the sources and the volume do not name the same images.
    """
    if not sources:
        raise ValueError("sources must hold at least one image")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    if len(by_uid) != len(sources):
        raise ValueError("sources must not hold the same SOPInstanceUID twice")
    for ds in sources:
        if str(ds.get("SeriesInstanceUID", "")) != volume.series_instance_uid:
            raise ValueError(
                "sources must belong to volume.series_instance_uid; instance"
                f" {ds.SOPInstanceUID} has SeriesInstanceUID {ds.get('SeriesInstanceUID')}"
            )
    missing = [uid for uid in volume.sop_instance_uids if uid not in by_uid]
    if missing:
        raise ValueError(
            f"volume.sop_instance_uids names {len(missing)} instances that are not in sources"
            f" (first {missing[0]})"
        )
    frames = int(sources[0].get("NumberOfFrames") or 1)
    if frames > 1 or any(number != 1 for number in volume.frame_numbers):
        return _multi_frame_planes(sources, volume, masks, frames)
    if len(set(volume.sop_instance_uids)) != len(volume.sop_instance_uids):
        raise ValueError("volume.sop_instance_uids must name each single-frame instance once")
    if len(sources) != len(volume.sop_instance_uids):
        raise ValueError(
            f"sources has {len(sources)} instances, the volume uses"
            f" {len(volume.sop_instance_uids)}: give exactly the volume's instances"
        )
    return [by_uid[uid] for uid in volume.sop_instance_uids], masks


def _multi_frame_planes(
    sources: Sequence[Dataset], volume: Volume, masks: npt.NDArray[np.bool_], frames: int
) -> tuple[list[Dataset], npt.NDArray[np.bool_]]:
    if len(sources) != 1 or len(set(volume.sop_instance_uids)) != 1:
        raise ValueError("sources must be single-frame instances or one multi-frame instance")
    source = sources[0]
    if "FrameOfReferenceUID" not in source:
        raise ValueError("a multi-frame source needs a FrameOfReferenceUID for its SEG")
    groups = [
        *source.get("SharedFunctionalGroupsSequence", []),
        *source.get("PerFrameFunctionalGroupsSequence", [])[:1],
    ]
    if not any("PlanePositionSequence" in group for group in groups):
        # highdicom places the SEG frames by the source's per-frame geometry.
        raise ValueError(
            "a multi-frame source needs PlanePositionSequence in its functional groups"
            " (PS3.3 C.7.6.16) for its SEG"
        )
    if not all(1 <= number <= frames for number in volume.frame_numbers):
        raise ValueError(f"volume.frame_numbers must lie in 1..NumberOfFrames ({frames})")
    if len(set(volume.frame_numbers)) != len(volume.frame_numbers):
        raise ValueError("volume.frame_numbers must name each frame once")
    planes = np.zeros((masks.shape[0], frames, *masks.shape[2:]), dtype=np.bool_)
    # highdicom maps SEG frames onto the source frames in stored order.
    planes[:, [number - 1 for number in volume.frame_numbers]] = masks
    return [source], planes


def check_masks(
    masks: npt.NDArray[np.bool_], labels: Sequence[SegmentLabel], volume: Volume
) -> None:
    """Check that `masks` has one bool plane per label on the volume's grid.

    Parameters
    ----------
    masks
        ``bool`` array (labels, slices, rows, columns).
    labels
        The model's segment labels, in mask order, with increasing numbers.
    volume
        The volume the masks were drawn on.

    Raises
    ------
    ValueError
        If they do not fit; the message names the attribute.
    """
    if not labels:
        raise ValueError("labels must name at least one segment")
    numbers = [label.number for label in labels]
    if any(n < 1 for n in numbers) or numbers != sorted(set(numbers)):
        raise ValueError(f"SegmentLabel numbers must be positive and increasing, got {numbers}")
    if not isinstance(masks, np.ndarray) or masks.dtype != np.bool_:
        raise ValueError(f"masks must be a bool numpy array, got {getattr(masks, 'dtype', masks)}")
    expected = (len(labels), *volume.shape)
    if masks.shape != expected:
        raise ValueError(
            f"masks must have shape (labels, slices, rows, columns) = {expected}, got {masks.shape}"
        )


def check_series_number(series_number: int) -> None:
    """Raise ValueError unless `series_number` fits an IS value (PS3.5 6.2)."""
    if not 0 <= series_number <= 2**31 - 1:
        raise ValueError(f"series_number must fit an IS value, got {series_number}")


def check_source(first: Dataset) -> None:
    """Check that a series' first image carries what its SEG needs (see the module notes).

    Parameters
    ----------
    first
        The first source image.

    Raises
    ------
    ValueError
        If PixelSpacing is not positive, or a projection image has a
        FrameOfReferenceUID and PixelSpacing but no SliceThickness.
    """
    spacing = first.get("PixelSpacing")
    if spacing is not None and not all(float(v) > 0 for v in spacing):
        raise ValueError(f"source PixelSpacing must be positive, got {list(spacing)}")
    projection = "ImageOrientationPatient" not in first or "ImagePositionPatient" not in first
    if (
        projection
        and "FrameOfReferenceUID" in first
        and spacing is not None
        and not first.get("SliceThickness")
    ):
        raise ValueError(
            "a projection source with FrameOfReferenceUID and PixelSpacing needs SliceThickness"
            " (Pixel Measures of a SEG with a Frame of Reference); give SliceThickness, or"
            " ImagerPixelSpacing instead of PixelSpacing"
        )


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _description(
    label: SegmentLabel, number: int, producer: Producer, series_uid: str
) -> hd.seg.SegmentDescription:
    # The tracking UID names the segment for SR references and later versions.
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label.name[:64],
        segmented_property_category=_concept(label.category),
        segmented_property_type=_concept(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=producer.algorithm_sequence(),
        tracking_uid=producer.uid("segment", series_uid, str(label.number)),
        tracking_id=label.name[:64],
    )
