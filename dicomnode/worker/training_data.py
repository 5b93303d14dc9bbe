"""Read a folder of DICOM images and DICOM SEG labels into labelled studies for training.

This is the I/O half of ``dicomnode train`` / ``dicomnode evaluate`` (the models do the
rest): every file under the folder is read once for its header; images are grouped
into studies and each study into the model's views exactly as the worker groups
received studies (:mod:`dicomnode.worker.views`); each view's series becomes a volume;
every SEG that references a chosen series is mapped onto that view's volume. Files
that are not DICOM are skipped, studies the model does not apply to are counted and
skipped, and nothing about a patient is logged (the PatientID only keys the split,
hashed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.errors import VolumeError
from dicomnode.index.attributes import image_plane
from dicomnode.index.instances import StudyImage
from dicomnode.models.api import Model, NotApplicable, StudyViews, View
from dicomnode.models.training import LabelledStudy, TruthSegment, patient_key
from dicomnode.volumes import load_volume
from dicomnode.worker.labels import read_segments
from dicomnode.worker.views import find_candidates, group_views

__all__ = ["FolderScan", "LoadReport", "load_labelled_studies", "scan_folder"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class FolderScan:
    """What a folder holds: images by study, SEG files by the series they label."""

    images: dict[str, list[StudyImage]] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)  # study UID -> patient key
    segmentations: dict[str, list[Path]] = field(default_factory=dict)  # series UID -> SEGs
    skipped_files: int = 0


@dataclass(slots=True)
class LoadReport:
    """Counts of what loading found, for the command's summary line."""

    studies: int = 0
    not_applicable: dict[str, int] = field(default_factory=dict)
    segments: int = 0


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _image(ds: Dataset, path: Path) -> StudyImage:
    return StudyImage(
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        path=str(path),
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        instance_number=_int(ds, "InstanceNumber"),
        image_type=_text(ds, "ImageType"),
        view_position=_text(ds, "ViewPosition"),
        laterality=_text(ds, "ImageLaterality") or _text(ds, "Laterality"),
        image_plane=image_plane(list(ds.get("ImageOrientationPatient") or [])),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
    )


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    yield from sorted(p for p in root.rglob("*") if p.is_file())


def scan_folder(root: Path) -> FolderScan:
    """Read every file's header under ``root`` (a file or folder); skip what is not DICOM."""
    scan = FolderScan()
    for path in _files(root):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            study_uid = str(ds.StudyInstanceUID)
            ds.SeriesInstanceUID  # noqa: B018 - every object we use has one
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            scan.skipped_files += 1
            continue
        scan.patients.setdefault(study_uid, patient_key(str(ds.get("PatientID", ""))))
        if ds.get("Modality") == "SEG":
            for ref in ds.get("ReferencedSeriesSequence", []):
                scan.segmentations.setdefault(str(ref.SeriesInstanceUID), []).append(path)
            continue
        scan.images.setdefault(study_uid, []).append(_image(ds, path))
    for images in scan.images.values():
        images.sort(key=lambda i: (i.series_number or 0, i.series_instance_uid,
                                   i.instance_number or 0, i.path))  # fmt: skip
    return scan


def _segments(scan: FolderScan, view: View) -> list[TruthSegment]:
    out = []
    for seg_path in scan.segmentations.get(view.volume.series_instance_uid, []):
        try:
            masks = read_segments(seg_path, view.volume)
        except (VolumeError, ValueError) as exc:
            logger.warning(
                "segmentation not usable",
                extra={"action": "truth_seg_skipped", "path": str(seg_path), "error": str(exc)},
            )
            continue
        out += [TruthSegment(view.name, m.type, m.label, m.mask) for m in masks]
    return out


def _study(scan: FolderScan, study_uid: str, model: Model) -> LabelledStudy:
    groups = group_views(model.views, find_candidates(scan.images[study_uid]))
    views = {}
    for name, candidate in groups.chosen.items():
        try:
            volume = load_volume([Path(p) for p in candidate.paths])
        except VolumeError as exc:
            raise NotApplicable(f"view {name!r}: {exc}") from exc
        views[name] = View(name, volume, candidate.modality, candidate.laterality,
                           candidate.view_position, candidate.series_description)  # fmt: skip
    segments = [s for view in views.values() for s in _segments(scan, view)]
    return LabelledStudy(
        patient_key=scan.patients[study_uid],
        study=StudyViews(study_uid, views, groups.missing),
        segments=tuple(segments),
    )


def load_labelled_studies(
    root: Path, model: Model, progress: Callable[[int, int], None] | None = None
) -> tuple[list[LabelledStudy], LoadReport]:
    """Every study under ``root`` the model applies to, grouped into its views, labelled.

    ``progress(done, total)`` is called after each study.
    """
    scan = scan_folder(root)
    report = LoadReport()
    studies = []
    uids = sorted(scan.images)
    for number, study_uid in enumerate(uids, start=1):
        try:
            study = _study(scan, study_uid, model)
        except NotApplicable as exc:
            reason = str(exc).split(";")[0]
            report.not_applicable[reason] = report.not_applicable.get(reason, 0) + 1
        else:
            studies.append(study)
            report.studies += 1
            report.segments += len(study.segments)
        if progress is not None:
            progress(number, len(uids))
    logger.info(
        "labelled studies loaded",
        extra={"action": "training_data_loaded", "studies": report.studies,
               "segments": report.segments, "skipped_files": scan.skipped_files},
    )  # fmt: skip
    return studies, report
