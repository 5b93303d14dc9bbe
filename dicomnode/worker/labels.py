"""Read the segments of a DICOM SEG onto the grid of a :class:`~dicomnode.models.api.Volume`.

Each SEG frame is one segment on one source frame. It is placed on the volume slice
it was derived from: the ReferencedSOPInstanceUID (and ReferencedFrameNumber for
multi-frame sources) of its Derivation Image Sequence (PS3.3 C.7.6.16.2.6). A frame
without such a reference is placed by its Plane Position along the volume's normal,
when the SEG shares the volume's Frame of Reference and lies on its pixel grid.
FRACTIONAL segments are thresholded at 0.5 of the Maximum Fractional Value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicomnode.errors import VolumeError
from dicomnode.models.api import Code, Volume
from dicomnode.models.codes import code_of

__all__ = ["SegmentMask", "read_segments"]

logger = logging.getLogger(__name__)

# A SEG frame may sit this fraction of a slice spacing off a slice and still be on it.
_POSITION_TOLERANCE = 0.1
_IN_PLANE_TOLERANCE = 1e-2  # millimetres


@dataclass(frozen=True, slots=True)
class SegmentMask:
    """One segment of a SEG on a volume's grid.

    Attributes
    ----------
    number
        Segment Number.
    label
        Segment Label.
    type
        Segmented Property Type.
    mask
        ``bool`` array of the volume's shape (slices, rows, columns).
    """

    number: int
    label: str
    type: Code
    mask: npt.NDArray[np.bool_]


def read_segments(seg: Dataset | Path, volume: Volume) -> list[SegmentMask]:
    """Return the segments of a DICOM SEG as masks on `volume`, in segment-number order.

    Parameters
    ----------
    seg
        A Segmentation Storage dataset, or the path of its file.
    volume
        The volume of the segmented series (or of a series sharing its instances).

    Returns
    -------
    list of SegmentMask
        Every segment the SEG describes; a segment with no frame on the volume has an
        all-False mask.

    Raises
    ------
    VolumeError
        If the SEG's frames have another size than the volume's slices, or none of
        its frames lies on the volume.
    ValueError
        If `seg` is not a valid Segmentation.
    """
    segmentation = hd.seg.segread(seg) if isinstance(seg, Path) else _from_dataset(seg)
    sop_uid = str(segmentation.SOPInstanceUID)
    _, rows, columns = volume.shape
    if (int(segmentation.Rows), int(segmentation.Columns)) != (rows, columns):
        raise VolumeError(
            f"SEG {sop_uid} frames are {segmentation.Rows}x{segmentation.Columns},"
            f" the volume's slices {rows}x{columns}",
            volume.series_instance_uid,
        )
    masks = {n: np.zeros(volume.shape, dtype=np.bool_) for n in segmentation.segment_numbers}
    threshold = _threshold(segmentation)
    placed = 0
    for number, (segment, slot) in enumerate(_frame_slots(segmentation, volume), start=1):
        if slot is None or segment not in masks:
            continue
        masks[segment][slot] |= segmentation.get_stored_frame(number) >= threshold
        placed += 1
    if placed == 0:
        raise VolumeError(
            f"SEG {sop_uid} references none of the instances of series"
            f" {volume.series_instance_uid} and none of its frames lies on the volume",
            volume.series_instance_uid,
        )
    logger.debug(
        "SEG read onto volume",
        extra={"action": "seg_read", "sop_instance_uid": sop_uid, "frames": placed},
    )
    return [_segment_mask(segmentation, n, masks[n]) for n in sorted(masks)]


def _from_dataset(ds: Dataset) -> hd.seg.Segmentation:
    if isinstance(ds, hd.seg.Segmentation):
        return ds
    try:
        return hd.seg.Segmentation.from_dataset(ds)
    except (AttributeError, KeyError) as exc:
        raise ValueError(f"not a valid Segmentation dataset: {exc}") from exc


def _threshold(segmentation: hd.seg.Segmentation) -> float:
    if segmentation.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        return 0.5 * float(segmentation.MaximumFractionalValue)
    return 0.5  # BINARY frames hold 0 and 1


def _segment_mask(
    segmentation: hd.seg.Segmentation, number: int, mask: npt.NDArray[np.bool_]
) -> SegmentMask:
    description = segmentation.get_segment_description(number)
    return SegmentMask(
        number=number,
        label=str(description.segment_label),
        type=code_of(description.segmented_property_type),
        mask=mask,
    )


def _frame_slots(segmentation: hd.seg.Segmentation, volume: Volume) -> list[tuple[int, int | None]]:
    """Per SEG frame: its segment number and the volume slice it lies on (or None)."""
    slots = {
        (uid, frame): index
        for index, (uid, frame) in enumerate(
            zip(volume.sop_instance_uids, volume.frame_numbers, strict=True)
        )
    }
    shared = _item(segmentation, "SharedFunctionalGroupsSequence")
    per_frame = segmentation.get("PerFrameFunctionalGroupsSequence") or []
    same_frame_of_reference = (
        volume.frame_of_reference_uid is not None
        and segmentation.get("FrameOfReferenceUID") == volume.frame_of_reference_uid
    )
    result: list[tuple[int, int | None]] = []
    for item in per_frame:
        # One segment SEGs keep the Segment Identification in the shared groups.
        identification = _item(item, "SegmentIdentificationSequence") or _item(
            shared, "SegmentIdentificationSequence"
        )
        segment = int(identification.ReferencedSegmentNumber) if identification else 1
        slot = _slot_by_reference(item, slots)
        if slot is None and same_frame_of_reference:
            slot = _slot_by_position(item, shared, volume)
        result.append((segment, slot))
    return result


def _item(ds: Dataset | None, keyword: str) -> Dataset | None:
    seq = ds.get(keyword) if ds is not None else None
    return seq[0] if seq else None


def _slot_by_reference(item: Dataset, slots: dict[tuple[str, int], int]) -> int | None:
    for derivation in item.get("DerivationImageSequence") or []:
        for source in derivation.get("SourceImageSequence") or []:
            uid = str(source.get("ReferencedSOPInstanceUID", ""))
            frames = source.get("ReferencedFrameNumber")
            if frames is None:
                numbers = [1]
            elif isinstance(frames, int | str):
                numbers = [int(frames)]
            else:
                numbers = [int(f) for f in frames]
            for number in numbers:
                if (uid, number) in slots:
                    return slots[(uid, number)]
    return None


def _slot_by_position(item: Dataset, shared: Dataset | None, volume: Volume) -> int | None:
    plane = _item(item, "PlanePositionSequence") or _item(shared, "PlanePositionSequence")
    orientation = _item(item, "PlaneOrientationSequence") or _item(
        shared, "PlaneOrientationSequence"
    )
    if plane is None or orientation is None:
        return None
    if not np.allclose(
        [float(v) for v in orientation.ImageOrientationPatient], volume.orientation, atol=1e-4
    ):
        return None
    offset = np.asarray([float(v) for v in plane.ImagePositionPatient]) - volume.origin
    row, column = np.asarray(volume.orientation[:3]), np.asarray(volume.orientation[3:])
    # The frame must start where the volume's slices start, or it lies on another grid.
    if abs(offset @ row) > _IN_PLANE_TOLERANCE or abs(offset @ column) > _IN_PLANE_TOLERANCE:
        return None
    steps = float(offset @ volume.normal) / volume.spacing[0]
    index = round(steps)
    if abs(steps - index) > _POSITION_TOLERANCE or not 0 <= index < volume.shape[0]:
        return None
    return index
