"""TID 1500 Measurement Report of a model result, built with highdicom.

**IOD: Enhanced SR.** Every spatial reference here is a 2D SCOORD in pixel coordinates
of a referenced image: the model's regions are pixel boxes on one slice of one view,
so a SCOORD on that image is exact, while SCOORD3D would need patient geometry that
projection images (MG, DX, CR) do not have. Nothing needs by-reference relationships
either. Enhanced SR (PS3.3 A.35.2) is the smallest SR IOD that carries TID 1500 with
2D regions, numeric measurements and image/segment references (TID 1500 is defined for
Enhanced, Comprehensive and Comprehensive 3D SR), and the most widely stored and shown
of the three, so the same IOD serves CT and projection studies. If a model ever
reports SCOORD3D, switch to Comprehensive 3D SR (highdicom refuses SCOORD3D here).

**Content** (PS3.16 TID 1500):

- Observer context: a device (TID 1004), Device Observer Name ``dicomnode``,
  Manufacturer ``dicomnode``, Model Name ``<model> <version>``, and a UID derived
  from the model name and version only (:func:`~dicomnode.outputs.identity.device_uid`).
- Procedure reported from the Modality (CT, MG, plain radiography, else imaging).
- Image library (TID 1600, optional): every image of a view of at most
  :data:`LIBRARY_IMAGES_PER_VIEW` images (projection views, short series). A longer
  series (a CT) is left out: an entry repeats 16 descriptors of the image's header
  (3.8 KB a slice) that a viewer reads from the image; the regions' SCOORDs and the
  evidence name the images. A segment is referenced with its source *series*.
- At most ``max_findings`` findings (:func:`rank_findings`: most certain first), and a
  TEXT :data:`NOTE` in the Qualitative Evaluations container (row 12) saying how many
  more were found. Hundreds of false-positive components once made a 1.3 MB report
  that PixelMed's validator could not read in a 3 GB heap.
- One measurement group per reported finding, with a Tracking Identifier and UID, the finding
  code as Finding, its site and laterality, the algorithm (TID 4019), the probability
  and the measurements. A finding whose segment is in a SEG gets a TID 1411
  Volumetric ROI group referencing the segment (TID 1410 with a Referenced
  Segmentation Frame for a one-image source), one per view whose SEG has it; its
  regions follow as TID 1410 Planar ROI groups with the same tracking identifier
  and an Image Region. A finding without a segment gets a TID 1501 group whose source
  images are every image of its views, and its regions are SCOORDs that its
  probability is inferred from.
- Study-level class probabilities (``result.probabilities``, e.g. ``suspicious`` and
  per breast ``L:suspicious``): one TID 1501 group each, the class code as Finding
  (laterality as finding site), tracking identifier ``class <key>``.
- No finding: a TID 1501 group with Finding DCM 111286 "No abnormality".

**Probability.** A numeric measurement (TID 300): concept DCM 111012 "Certainty of
Finding" (the likelihood that the finding is of the type identified, as CAD SR uses
it), unit UCUM ``{ratio}``, value the model's probability in [0, 1]. A TID 1500 reader
lists every NUM of a group with its UCUM unit, so the number is shown without any
knowledge of this report; a qualitative evaluation would have to bin it into codes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as SrCode

from dicomnode.kernel import (
    ClassLabel,
    Code,
    Finding,
    ModelResult,
    Region,
    SegmentLabel,
    Volume,
)
from dicomnode.outputs.identity import MANUFACTURER, SERIES_NUMBERS, Producer, device_uid
from dicomnode.outputs.identity import series_description as describe_series
from dicomnode.outputs.seg import check_series_number

__all__ = [
    "LIBRARY_IMAGES_PER_VIEW",
    "MAX_FINDINGS",
    "MEASUREMENT_CONCEPTS",
    "NOTE",
    "NO_FINDING",
    "PROBABILITY",
    "ModelIdentity",
    "build_measurement_report",
    "rank_findings",
]

logger = logging.getLogger(__name__)

#: A view with at most this many images lists them all in the image library.
LIBRARY_IMAGES_PER_VIEW = 16

#: Findings a report names when the pipeline sets no ``max_findings`` option.
MAX_FINDINGS = 20
#: Concept name of the note that more findings were found than reported. DCM 121106
#: "Comment" is the generic remark on a report; 121073 "Impression" would make a
#: statement about the report's extent read as a clinical conclusion.
NOTE = codes.DCM.Comment
#: TID 1500 row 12; pydicom's dictionary has no keyword for this UMLS concept.
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

#: Concept name of a finding's probability (unit ``{ratio}``, value 0 to 1).
PROBABILITY = codes.DCM.CertaintyOfFinding
#: Finding of the group that says the model found nothing.
NO_FINDING = codes.DCM.NoAbnormality
#: Measurement names a model may report (``Finding.measurements``) -> concept.
MEASUREMENT_CONCEPTS = {
    "volume": codes.SCT.Volume,
    "longest_diameter": codes.SCT.LongAxis,
    "short_axis": codes.SCT.ShortAxis,
    "diameter": codes.SCT.Diameter,
    "area": codes.SCT.Area,
}

_RATIO = codes.UCUM.Ratio
_UNIT_MEANINGS = {
    "mm": "millimeter",
    "mm2": "square millimeter",
    "mm3": "cubic millimeter",
    "ml": "milliliter",
    "1": "no units",
    "%": "percent",
    "{ratio}": "ratio",
    "[hnsf'U]": "Hounsfield unit",
}
_PROCEDURES: dict[str, SrCode] = {
    "CT": codes.SCT.ComputedTomography,
    "MG": codes.SCT.Mammography,
    "DX": codes.SCT.PlainRadiography,
    "CR": codes.SCT.PlainRadiography,
}
_LATERALITY: dict[str, SrCode] = {"L": codes.SCT.Left, "R": codes.SCT.Right}
#: Factor to mm3, mm2 or mm of the units a size may come in (ranking ties only).
_SIZE_UNITS = {"mm3": 1.0, "ml": 1e3, "cm3": 1e3, "mm2": 1.0, "cm2": 1e2, "mm": 1.0, "cm": 10.0}

_Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)
_SegmentReference = hd.sr.ReferencedSegment | hd.sr.ReferencedSegmentationFrame


class ModelIdentity(Protocol):
    """What the report needs of a model (:class:`~dicomnode.models.api.Model` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def labels(self) -> tuple[SegmentLabel, ...]: ...
    @property
    def classes(self) -> tuple[ClassLabel, ...]: ...


@dataclass(frozen=True, slots=True)
class _View:
    """One view's images in volume order, its volume and its SEG (if any)."""

    name: str
    images: tuple[Dataset, ...]
    volume: Volume
    by_uid: Mapping[str, Dataset]
    segmentation: hd.seg.Segmentation | None
    segment_numbers: Mapping[int, int]
    #: The images the report names one by one (library, evidence, group sources).
    key_images: tuple[Dataset, ...] = ()


@dataclass(frozen=True, slots=True)
class _Context:
    producer: Producer
    views: Mapping[str, _View]
    labels: Mapping[int, SegmentLabel]
    anatomy: hd.sr.CodedConcept | None


def build_measurement_report(
    sources_by_view: Mapping[str, Sequence[Dataset]],
    result: ModelResult,
    model: ModelIdentity,
    *,
    volumes: Mapping[str, Volume],
    job_key: str,
    segmentations: Mapping[str, hd.seg.Segmentation] | None = None,
    segment_numbers: Mapping[str, Mapping[int, int]] | None = None,
    series_number: int = SERIES_NUMBERS["sr"] + 1,
    max_findings: int = MAX_FINDINGS,
) -> hd.sr.EnhancedSR:
    """Build the TID 1500 Measurement Report (Enhanced SR) of a model result.

    Parameters
    ----------
    sources_by_view
        View name -> the source images of that view (one series, or one image).
    result
        What the model found.
    model
        The model: name and version identify the algorithm and the device observer;
        labels and classes give the codes of segments and probabilities.
    volumes
        View name -> the volume the model saw; it places region slices on images.
    job_key
        Identifies the job; the SR's UIDs derive from it and the study.
    segmentations
        View name -> the SEG built for that view
        (:func:`~dicomnode.outputs.seg.build_segmentation`), for the views that have one.
    segment_numbers
        View name -> label number -> segment number of that view's SEG
        (:func:`~dicomnode.outputs.seg.segment_number_map`).
    series_number
        Series Number of the SR.
    max_findings
        The most findings the report names (:func:`rank_findings` picks them); a
        Comment says how many more the model found.

    Returns
    -------
    highdicom.sr.EnhancedSR
        The report, same study as the sources, in a new series.

    Raises
    ------
    ValueError
        If an argument does not fit the others; the message names the attribute.
    """
    producer = Producer(model.name, model.version, job_key)
    check_series_number(series_number)
    reported = rank_findings(result.findings)[: _check_max_findings(max_findings)]
    views = _with_key_images(
        _views(sources_by_view, volumes, segmentations or {}, segment_numbers or {}), reported
    )
    context = _Context(producer, views, {lb.number: lb for lb in model.labels}, _anatomy(views))
    groups: list[_Group] = []
    for index, finding in enumerate(reported, start=1):
        groups.extend(_finding_groups(context, index, finding))
    if not reported:
        groups.append(_no_finding_group(context))
    groups.extend(_class_groups(context, result.probabilities, model.classes))
    images = [ds for view in views.values() for ds in view.key_images]
    short = [
        ds for v in views.values() if len(v.images) <= LIBRARY_IMAGES_PER_VIEW for ds in v.images
    ]
    library = [header for header in map(_library_header, short) if header is not None]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(producer),
        procedure_reported=_procedure(images[0]),
        imaging_measurements=groups,
        referenced_images=library or None,
    )
    left_out = len(result.findings) - len(reported)
    if left_out:
        report[0].ContentSequence.append(_left_out_note(left_out, max_findings))
    return _document(context, report, images, series_number, (len(groups), left_out))


def rank_findings(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """The findings most certain first; of equally certain ones the larger first.

    Size is the volume, then the area, then the diameter (in mm units where the UCUM
    unit is known), then the pixel area of the regions. Full ties keep model order.

    Parameters
    ----------
    findings
        What the model found.

    Returns
    -------
    tuple of Finding
        The same findings in report order.
    """
    return tuple(sorted(findings, key=lambda f: (f.probability, *_size(f)), reverse=True))


def _size(finding: Finding) -> tuple[float, float, float, float]:
    def measured(*names: str) -> float:
        for name in names:
            if name in finding.measurements:
                value, unit = finding.measurements[name]
                size = float(value) * _SIZE_UNITS.get(unit, 1.0)
                # A non-finite value is refused when the finding is reported, not here.
                return size if np.isfinite(size) else 0.0
        return 0.0

    pixels = sum((r.row1 - r.row0) * (r.column1 - r.column0) for r in finding.regions)
    return measured("volume"), measured("area"), measured("longest_diameter", "diameter"), pixels


def _check_max_findings(max_findings: int) -> int:
    if isinstance(max_findings, bool) or not isinstance(max_findings, int) or max_findings < 1:
        raise ValueError(f"max_findings must be a whole number of at least 1, got {max_findings!r}")
    return max_findings


def _left_out_note(left_out: int, max_findings: int) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: Qualitative Evaluations, with a TEXT (row 14) saying what was left out.

    Row 6 (Imaging Measurements) holds only measurement groups (TID 1501, 1410, 1411);
    row 14's TEXT takes any concept name.
    """
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    findings = "finding" if left_out == 1 else "findings"
    text = f"{left_out} further {findings} not reported (max_findings = {max_findings})"
    container = hd.sr.ContainerContentItem(_QUALITATIVE_EVALUATIONS, relationship_type=contains)
    container.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(NOTE, text, relationship_type=contains)]
    )
    return container


def _document(
    context: _Context,
    report: hd.sr.MeasurementReport,
    images: list[Dataset],
    series_number: int,
    counts: tuple[int, int],
) -> hd.sr.EnhancedSR:
    producer = context.producer
    study_uid = str(images[0].StudyInstanceUID)
    segs = [v.segmentation for v in context.views.values() if v.segmentation is not None]
    sr = hd.sr.EnhancedSR(
        evidence=[*images, *segs],  # what the content references (key images and SEGs)
        content=report,
        series_instance_uid=producer.uid("sr-series", study_uid),
        series_number=series_number,
        sop_instance_uid=producer.uid("sr", study_uid),
        instance_number=1,
        manufacturer=MANUFACTURER,
        # An algorithm's report is complete but unverified and preliminary.
        is_complete=True,
        is_final=False,
        is_verified=False,
        manufacturer_model_name=producer.model_name,
        software_versions=list(producer.software_versions),
        device_serial_number=str(device_uid(producer.model_name, producer.model_version)),
        series_description=describe_series("sr", producer.model_name),
    )
    logger.info(
        "SR built",
        extra={
            "action": "sr_built",
            "study_instance_uid": study_uid,
            "sop_instance_uid": str(sr.SOPInstanceUID),
            "groups": counts[0],
            "findings_left_out": counts[1],
        },
    )
    return sr


# -- views and references -----------------------------------------------------


def _views(
    sources_by_view: Mapping[str, Sequence[Dataset]],
    volumes: Mapping[str, Volume],
    segmentations: Mapping[str, hd.seg.Segmentation],
    segment_numbers: Mapping[str, Mapping[int, int]],
) -> dict[str, _View]:
    if not sources_by_view:
        raise ValueError("sources_by_view must name at least one view")
    for name in (*segmentations, *segment_numbers):
        if name not in sources_by_view:
            raise ValueError(f"segmentations/segment_numbers name view {name!r} with no sources")
    views: dict[str, _View] = {}
    study = None
    for name, sources in sources_by_view.items():
        if name not in volumes:
            raise ValueError(f"volumes has no volume for view {name!r}")
        volume = volumes[name]
        by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
        missing = [uid for uid in volume.sop_instance_uids if uid not in by_uid]
        if not sources or missing:
            raise ValueError(f"sources_by_view[{name!r}] lacks the images of volumes[{name!r}]")
        for ds in sources:
            study = study or str(ds.StudyInstanceUID)
            if str(ds.StudyInstanceUID) != study:
                raise ValueError("sources_by_view must hold the images of one study")
        seg = segmentations.get(name)
        numbers = dict(segment_numbers.get(name, {}))
        if (seg is None) != (not numbers):
            raise ValueError(
                f"segmentations and segment_numbers must both have view {name!r} or neither"
            )
        images = tuple(by_uid[uid] for uid in dict.fromkeys(volume.sop_instance_uids))
        views[name] = _View(name, images, volume, by_uid, seg, numbers)
    return views


def _with_key_images(views: dict[str, _View], findings: Sequence[Finding]) -> dict[str, _View]:
    """Each view with the images the report names: all of a short view, else the
    images the regions lie on (the first image when no region does)."""
    out = {}
    for name, view in views.items():
        if len(view.images) <= LIBRARY_IMAGES_PER_VIEW:
            key = view.images
        else:
            uids = dict.fromkeys(
                view.volume.sop_instance_uids[r.slice_index]
                for f in findings
                for r in f.regions
                if r.view == name and 0 <= r.slice_index < view.volume.shape[0]
            )
            key = tuple(view.by_uid[u] for u in uids) or view.images[:1]
        out[name] = _View(view.name, view.images, view.volume, view.by_uid,
                          view.segmentation, view.segment_numbers, key)  # fmt: skip
    return out


def _anatomy(views: Mapping[str, _View]) -> hd.sr.CodedConcept | None:
    """Anatomic Region of the first image that has one, for finding sites."""
    for view in views.values():
        region = view.images[0].get("AnatomicRegionSequence")
        if region:
            item = region[0]
            return hd.sr.CodedConcept(
                value=str(item.CodeValue),
                scheme_designator=str(item.CodingSchemeDesignator),
                meaning=str(item.CodeMeaning),
            )
    return None


_GEOMETRY = (
    ("PixelMeasuresSequence", "PixelSpacing"),
    ("PixelMeasuresSequence", "SliceThickness"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PlanePositionSequence", "ImagePositionPatient"),
)
_HEADER = ("SOPClassUID", "SOPInstanceUID", "Modality", "FrameOfReferenceUID", "Rows", "Columns")


def _library_header(ds: Dataset) -> Dataset | None:
    """The image as the image library (TID 1601) reads it, or None to leave it out.

    highdicom reads PixelSpacing, orientation and position at the top level; an
    enhanced multi-frame image keeps them in its functional groups, so its entry gets
    a header with the first frame's values. An image whose descriptors cannot be
    made is left out of the library (TID 1600 is optional); its groups still
    reference it.
    """
    header = ds
    if "PerFrameFunctionalGroupsSequence" in ds and "PixelSpacing" not in ds:
        header = Dataset()
        for keyword in _HEADER:
            if keyword in ds:
                setattr(header, keyword, ds[keyword].value)
        groups = [
            ds.PerFrameFunctionalGroupsSequence[0],
            *ds.get("SharedFunctionalGroupsSequence", []),
        ]
        for macro, keyword in _GEOMETRY:
            for group in groups:
                items = group.get(macro)
                if items and keyword in items[0]:
                    setattr(header, keyword, items[0][keyword].value)
                    break
    try:
        hd.sr.ImageLibraryEntryDescriptors(header)
    except (AttributeError, ValueError, KeyError) as exc:
        logger.warning(
            "image left out of the SR image library",
            extra={
                "action": "sr_library_skipped",
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "reason": type(exc).__name__,
            },
        )
        return None
    return header


def _frames(ds: Dataset, frame: int) -> list[int] | None:
    """Referenced Frame Number only for multi-frame images."""
    return [frame] if int(ds.get("NumberOfFrames") or 1) > 1 else None


def _group_sources(
    context: _Context, names: Sequence[str]
) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [
        hd.sr.SourceImageForMeasurementGroup(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        for name in names
        for ds in context.views[name].key_images
    ]


def _region_source(context: _Context, region: Region) -> hd.sr.SourceImageForRegion:
    view = context.views.get(region.view)
    if view is None:
        raise ValueError(f"Finding.regions names view {region.view!r} with no sources")
    slices, rows, columns = view.volume.shape
    if not 0 <= region.slice_index < slices:
        raise ValueError(f"Region.slice_index {region.slice_index} is outside 0..{slices - 1}")
    if not (
        0 <= region.row0 < region.row1 <= rows and 0 <= region.column0 < region.column1 <= columns
    ):
        raise ValueError(f"Region box {region} does not fit the {rows}x{columns} image")
    ds = view.by_uid[view.volume.sop_instance_uids[region.slice_index]]
    frame = view.volume.frame_numbers[region.slice_index]
    return hd.sr.SourceImageForRegion(
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), _frames(ds, frame)
    )


def _box(region: Region) -> np.ndarray:
    """Closed polyline round the box, (column, row) pixel coordinates.

    SCOORD pixel coordinates put 0.0 at the top-left corner of the top-left pixel
    (PS3.3 C.18.6.1.1), so the box edges are the slice bounds themselves.
    """
    c0, r0, c1, r1 = region.column0, region.row0, region.column1, region.row1
    return np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=np.float64)


# -- groups ---------------------------------------------------------------------


def _tracking(context: _Context, key: str, text: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=context.producer.uid("tracking", key), identifier=text[:64])


def _finding_groups(context: _Context, index: int, finding: Finding) -> list[_Group]:
    names = tuple(finding.views) or tuple(context.views)
    for name in names:
        if name not in context.views:
            raise ValueError(f"Finding.views names view {name!r} with no sources")
    tracking = (f"finding {index}", f"finding {index}: {finding.code.meaning}")
    references = _segment_references(context, finding, names)
    if not references:
        return [_image_finding_group(context, tracking, finding, names)]
    groups: list[_Group] = []
    for number, reference in enumerate(references):
        # Measurements describe the finding once; later views carry the probability.
        measurements = _measurements(finding, with_values=number == 0)
        groups.append(_roi_group(context, tracking, finding, reference, measurements))
    for region in finding.regions:
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(context, *tracking),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=_box(region),
                    source_image=_region_source(context, region),
                ),
                finding_type=_concept(finding.code),
                finding_sites=_sites(context, finding.laterality),
                algorithm_id=context.producer.algorithm_template(),
                qualitative_evaluations=_laterality(context, finding.laterality),
            )
        )
    return groups


def _image_finding_group(
    context: _Context, tracking: tuple[str, str], finding: Finding, names: Sequence[str]
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    coordinates = [
        hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_box(region),
            source_image=_region_source(context, region),
        )
        for region in finding.regions
    ]
    probability = hd.sr.Measurement(
        name=PROBABILITY,
        value=float(finding.probability),
        unit=_RATIO,
        referenced_coordinates=coordinates or None,
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(context, *tracking),
        finding_type=_concept(finding.code),
        finding_sites=_sites(context, finding.laterality),
        algorithm_id=context.producer.algorithm_template(),
        measurements=[probability, *_measurements(finding, with_values=True)[1:]],
        qualitative_evaluations=_laterality(context, finding.laterality),
        source_images=_group_sources(context, names),
    )


def _roi_group(
    context: _Context,
    tracking: tuple[str, str],
    finding: Finding,
    reference: _SegmentReference,
    measurements: list[hd.sr.Measurement],
) -> _Group:
    label = context.labels.get(finding.segment_number or 0)
    category = _concept(label.category) if label is not None else None
    identifier = _tracking(context, *tracking)
    sites = _sites(context, finding.laterality)
    evaluations = _laterality(context, finding.laterality)
    algorithm = context.producer.algorithm_template()
    if isinstance(reference, hd.sr.ReferencedSegment):
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=identifier,
            referenced_segment=reference,
            finding_type=_concept(finding.code),
            finding_category=category,
            finding_sites=sites,
            algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=evaluations,
        )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=identifier,
        referenced_segment=reference,
        finding_type=_concept(finding.code),
        finding_category=category,
        finding_sites=sites,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _no_finding_group(context: _Context) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(context, "no finding", "no finding"),
        finding_type=NO_FINDING,
        algorithm_id=context.producer.algorithm_template(),
        source_images=_group_sources(context, tuple(context.views)),
    )


def _class_groups(
    context: _Context, probabilities: Mapping[str, float], classes: Sequence[ClassLabel]
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    by_name = {c.name: c for c in classes}
    groups = []
    for key, value in probabilities.items():
        side, _, name = key.rpartition(":")
        if name not in by_name or side not in ("", *_LATERALITY):
            raise ValueError(
                f"result.probabilities key {key!r} is not a class of the model"
                f" ({sorted(by_name)}), optionally prefixed 'L:' or 'R:'"
            )
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"result.probabilities[{key!r}] must be in [0, 1], got {value}")
        laterality = side or None
        views = _lateral_views(context, laterality)
        probability = hd.sr.Measurement(
            name=PROBABILITY,
            value=float(value),
            unit=_RATIO,
            referenced_coordinates=_whole_images(context, views) or None,
        )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(context, f"class {key}", f"class {key}"),
                finding_type=_concept(by_name[name].code),
                finding_sites=_sites(context, laterality),
                algorithm_id=context.producer.algorithm_template(),
                measurements=[probability],
                qualitative_evaluations=_laterality(context, laterality),
                source_images=_group_sources(context, views),
            )
        )
    return groups


def _whole_images(context: _Context, names: Sequence[str]) -> list[hd.sr.CoordinatesForMeasurement]:
    """The whole of each image of the short views a class probability is inferred from.

    A classifier infers a class probability from its input images as a whole: a SCOORD
    outlining each image (TID 300 INFERRED FROM TID 320) says so as exactly as an IMAGE
    reference, and viewers need it. OHIF Viewer 3.13 reads every measurement group as
    an annotation and fails to load a report whose group has no SCOORD ("Something
    went wrong"; docs/outputs.md). A long series (a CT) is not outlined slice by slice.
    """
    coordinates = []
    for name in names:
        view = context.views[name]
        if len(view.images) > LIBRARY_IMAGES_PER_VIEW:
            continue
        for index, uid in enumerate(view.volume.sop_instance_uids):
            rows, columns = view.volume.shape[1:]
            ds = view.by_uid[uid]
            coordinates.append(
                hd.sr.CoordinatesForMeasurement(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=_box(Region(name, index, 0, 0, rows, columns)),
                    source_image=hd.sr.SourceImageForRegion(
                        str(ds.SOPClassUID),
                        str(ds.SOPInstanceUID),
                        _frames(ds, view.volume.frame_numbers[index]),
                    ),
                )
            )
    return coordinates


def _lateral_views(context: _Context, laterality: str | None) -> tuple[str, ...]:
    """The views of one side (ImageLaterality or Laterality), or every view."""
    if laterality is None:
        return tuple(context.views)
    side = tuple(
        name
        for name, view in context.views.items()
        if (view.images[0].get("ImageLaterality") or view.images[0].get("Laterality")) == laterality
    )
    return side or tuple(context.views)


# -- content items --------------------------------------------------------------


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _unit(unit: str) -> hd.sr.CodedConcept:
    if not unit or len(unit) > 16:
        raise ValueError(f"Finding.measurements unit must be a UCUM code, got {unit!r}")
    return hd.sr.CodedConcept(
        value=unit, scheme_designator="UCUM", meaning=_UNIT_MEANINGS.get(unit, unit)
    )


def _measurements(finding: Finding, *, with_values: bool) -> list[hd.sr.Measurement]:
    """The probability, then (if `with_values`) the finding's measurements."""
    out = [hd.sr.Measurement(name=PROBABILITY, value=float(finding.probability), unit=_RATIO)]
    if not with_values:
        return out
    for name, (value, unit) in finding.measurements.items():
        if name not in MEASUREMENT_CONCEPTS:
            raise ValueError(
                f"Finding.measurements key {name!r} has no concept; known keys are"
                f" {sorted(MEASUREMENT_CONCEPTS)}"
            )
        if not np.isfinite(value):
            raise ValueError(f"Finding.measurements[{name!r}] must be finite, got {value}")
        out.append(
            hd.sr.Measurement(name=MEASUREMENT_CONCEPTS[name], value=float(value), unit=_unit(unit))
        )
    return out


def _sites(context: _Context, laterality: str | None) -> list[hd.sr.FindingSite] | None:
    if laterality is None or context.anatomy is None:
        return None
    return [hd.sr.FindingSite(context.anatomy, laterality=_side(laterality))]


def _laterality(
    context: _Context, laterality: str | None
) -> list[hd.sr.QualitativeEvaluation] | None:
    """Laterality as an evaluation when there is no anatomic region to qualify."""
    if laterality is None or context.anatomy is not None:
        return None
    return [hd.sr.QualitativeEvaluation(codes.SCT.Laterality, _side(laterality))]


def _side(laterality: str) -> SrCode:
    if laterality not in _LATERALITY:
        raise ValueError(f"Finding.laterality must be 'L', 'R' or None, got {laterality!r}")
    return _LATERALITY[laterality]


def _segment_references(
    context: _Context, finding: Finding, names: Sequence[str]
) -> list[_SegmentReference]:
    if finding.segment_number is None:
        return []
    if finding.segment_number not in context.labels:
        raise ValueError(
            f"Finding.segment_number {finding.segment_number} is no label of the model"
        )
    references: list[_SegmentReference] = []
    for name in names:
        view = context.views[name]
        segment = view.segment_numbers.get(finding.segment_number)
        if view.segmentation is None or segment is None:
            continue
        references.append(_segment_reference(view, view.segmentation, segment))
    return references


def _segment_reference(view: _View, seg: hd.seg.Segmentation, segment: int) -> _SegmentReference:
    """Reference one segment, built from the SEG's UIDs and its source images.

    ``ReferencedSegment.from_segmentation`` fails on a one-segment SEG in highdicom
    0.28 (its Segment Identification is in the shared functional groups).
    """
    frames = _segment_frames(seg, segment)
    if not frames:
        raise ValueError(f"segment {segment} of the SEG of view {view.name!r} has no frame")
    if view.volume.shape[0] == 1:
        _, (class_uid, instance_uid, source_frame) = frames[0]
        source = hd.sr.SourceImageForSegmentation(
            class_uid, instance_uid, _frames(view.by_uid[instance_uid], source_frame)
        )
        reference = hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            frame_number=frames[0][0],
            segment_number=segment,
            source_image=source,
        )
        # A frame of a BINARY SEG holds one segment; Referenced Segment Number shall
        # not be present with Referenced Frame Number (PS3.3 Table 10-3), as highdicom
        # writes it.
        del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
        return reference
    # A volume's segment names its source series, not each of its (many) slices.
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=segment,
        source_series=hd.sr.SourceSeriesForSegmentation(view.volume.series_instance_uid),
    )


def _segment_frames(seg: Dataset, segment: int) -> list[tuple[int, tuple[str, str, int]]]:
    """(SEG frame number, (source class, source instance, source frame)) of one segment."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    out = []
    for number, group in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        identification = group.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if int(identification[0].ReferencedSegmentNumber) != segment:
            continue
        derivation = group.get("DerivationImageSequence") or shared.get("DerivationImageSequence")
        source = derivation[0].SourceImageSequence[0]
        frame = int(source.get("ReferencedFrameNumber") or 1)
        out.append(
            (
                number,
                (str(source.ReferencedSOPClassUID), str(source.ReferencedSOPInstanceUID), frame),
            )
        )
    return out


def _observation_context(producer: Producer) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(producer.model_name, producer.model_version),
        name=MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=f"{producer.model_name} {producer.model_version}"[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _procedure(image: Dataset) -> SrCode:
    fallback: SrCode = codes.SCT.ImagingProcedure
    return _PROCEDURES.get(str(image.get("Modality", "")), fallback)
