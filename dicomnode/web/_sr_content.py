"""Reading a TID 1500 Measurement Report's content tree into table rows.

Private to the web stage: :mod:`dicomnode.web.previews` is the API
(:func:`~dicomnode.web.previews.sr_findings`). Only content items are read, by their
concept names (PS3.16 TID 1500, 1501, 1410, 1411), so nothing of the patient or study
modules can reach a row. Every item :mod:`dicomnode.outputs.sr` writes into a
measurement group has a field: tracking identifier and UID, finding and its category,
finding site with laterality (or a laterality evaluation), Certainty of Finding, the
other measurements, the algorithm, the referenced segment, the image regions and the
source images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from pydicom.dataset import Dataset

__all__ = [
    "FindingRow",
    "ImageRegion",
    "Measurement",
    "SegmentReference",
    "finding_rows",
    "first_value",
]


def first_value(value: Any) -> Any:
    """The first value of a possibly multi-valued element (None stays None)."""
    if value is None or isinstance(value, str | bytes):
        return value
    try:
        return next(iter(value), None)
    except TypeError:
        return value


_Key = tuple[str, str]  # (coding scheme, code value)

_MEASUREMENT_GROUP: _Key = ("DCM", "125007")
_TRACKING_ID: _Key = ("DCM", "112039")
_TRACKING_UID: _Key = ("DCM", "112040")
_FINDING: _Key = ("DCM", "121071")
_CATEGORY: _Key = ("SCT", "276214006")
_SITE: _Key = ("SCT", "363698007")
_LATERALITY: _Key = ("SCT", "272741003")
_CERTAINTY: _Key = ("DCM", "111012")
_ALGORITHM_NAME: _Key = ("DCM", "111001")
_ALGORITHM_VERSION: _Key = ("DCM", "111003")
_ALGORITHM_FAMILY: _Key = ("DCM", "111000")
_SEGMENT_REFERENCES = frozenset({("DCM", "121191"), ("DCM", "121214")})
#: Source (TID 1501 group), Source of Measurement, Source Image for Segmentation (TID 1410).
_SOURCE_IMAGES = frozenset({("SCT", "260753009"), ("DCM", "121112"), ("DCM", "121233")})
_SOURCE_SERIES: _Key = ("DCM", "121232")
_SR_DEPTH = 4  # measurement groups lie two levels down, their regions two more


class Measurement(NamedTuple):
    """One numeric measurement of a group: concept meaning, value, UCUM unit code."""

    name: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class ImageRegion:
    """A 2D region (SCOORD) on one image.

    Attributes
    ----------
    graphic_type
        POINT, MULTIPOINT, POLYLINE, POLYGON, CIRCLE or ELLIPSE (PS3.3 C.18.6.1.2).
    points
        (column, row) pairs in the image's pixel space, 0.0 at the top left corner of
        the top left pixel (PS3.3 C.18.6.1.1).
    sop_instance_uid, frame_number
        The image the region is selected from (frame None: a single-frame image).
    label
        The finding's meaning, for a legend or a colour.
    """

    graphic_type: str
    points: tuple[tuple[float, float], ...]
    sop_instance_uid: str
    frame_number: int | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class SegmentReference:
    """The segment a measurement group is about (TID 1411, or TID 1410 frame)."""

    sop_instance_uid: str
    segment_number: int | None
    frame_numbers: tuple[int, ...] = ()
    #: Source Series for Segmentation (TID 1411 names the series, not each slice).
    source_series_instance_uid: str | None = None


@dataclass(frozen=True, slots=True)
class FindingRow:
    """One measurement group of a TID 1500 report, as a table row.

    Attributes
    ----------
    tracking_identifier, tracking_uid
        Tracking Identifier and Tracking Unique Identifier (groups about one finding
        share them).
    finding, finding_category
        Code meanings of Finding and Finding category ("" / None when absent).
    finding_site, laterality
        Finding Site meaning and its Laterality (from the site's modifier or a
        Laterality evaluation), e.g. "Breast", "Left".
    certainty
        Certainty of Finding (DCM 111012), 0 to 1 as dicomnode writes it.
    measurements
        The other numeric measurements, in report order.
    evaluations
        Other coded items (name meaning, value meaning).
    algorithm
        Algorithm Name and Version, e.g. "ct-lesion-seg 1".
    segment
        The referenced segment, if any.
    regions
        The group's image regions, its measurements' included.
    source_images
        SOP Instance UIDs of the group's source images.
    """

    tracking_identifier: str
    tracking_uid: str | None
    finding: str
    finding_category: str | None = None
    finding_site: str | None = None
    laterality: str | None = None
    certainty: float | None = None
    measurements: tuple[Measurement, ...] = ()
    evaluations: tuple[tuple[str, str], ...] = ()
    algorithm: str | None = None
    segment: SegmentReference | None = None
    regions: tuple[ImageRegion, ...] = ()
    source_images: tuple[str, ...] = ()


def _code_of(item: Dataset, keyword: str) -> tuple[str, str, str] | None:
    """(scheme, value, meaning) of a code sequence's first item; SRT read as SCT."""
    codes = item.get(keyword)
    if not codes:
        return None
    code = codes[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue") or ""
    scheme = str(code.get("CodingSchemeDesignator", ""))
    scheme = "SCT" if scheme == "SRT" else scheme
    return scheme, str(value), str(code.get("CodeMeaning", value))


def _key(item: Dataset) -> _Key | None:
    code = _code_of(item, "ConceptNameCodeSequence")
    return None if code is None else (code[0], code[1])


def _meaning(item: Dataset) -> str:
    """The meaning of a CODE item's value."""
    code = _code_of(item, "ConceptCodeSequence")
    return code[2] if code is not None else ""


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


def _groups(root: Dataset) -> Iterator[Dataset]:
    """Measurement group containers: under the report's containers (TID 1500
    Imaging Measurements, or any other top-level container)."""
    for container in _children(root):
        if container.get("ValueType") != "CONTAINER":
            continue
        for item in _children(container):
            if item.get("ValueType") == "CONTAINER" and _key(item) == _MEASUREMENT_GROUP:
                yield item


def _scoords(item: Dataset, depth: int) -> Iterator[Dataset]:
    for child in _children(item):
        if child.get("ValueType") == "SCOORD":
            yield child
        elif depth > 0:
            yield from _scoords(child, depth - 1)


def _region(scoord: Dataset, label: str) -> ImageRegion | None:
    """The region of a SCOORD item and the image it is selected from."""
    data = [float(v) for v in (scoord.get("GraphicData") or [])]
    images = [c for c in _children(scoord) if c.get("ReferencedSOPSequence")]
    if len(data) < 2 or not images:
        return None
    reference = images[0].ReferencedSOPSequence[0]
    frame = first_value(reference.get("ReferencedFrameNumber"))
    return ImageRegion(
        graphic_type=str(scoord.get("GraphicType", "")),
        points=tuple(zip(data[0::2], data[1::2], strict=False)),
        sop_instance_uid=str(reference.get("ReferencedSOPInstanceUID", "")),
        frame_number=int(frame) if frame is not None else None,
        label=label,
    )


def _number(item: Dataset) -> Measurement | None:
    values = item.get("MeasuredValueSequence") or []
    if not values or values[0].get("NumericValue") is None:
        return None  # no value (a NumericValueQualifier says why)
    unit = _code_of(values[0], "MeasurementUnitsCodeSequence")
    name = _code_of(item, "ConceptNameCodeSequence")
    return Measurement(
        name[2] if name else "", float(first_value(values[0].NumericValue)), unit[1] if unit else ""
    )


def _segment(item: Dataset) -> SegmentReference | None:
    references = item.get("ReferencedSOPSequence") or []
    if not references:
        return None
    reference = references[0]
    number = first_value(reference.get("ReferencedSegmentNumber"))
    frames = reference.get("ReferencedFrameNumber")
    frames = [] if frames is None else [frames] if isinstance(frames, int | str) else frames
    return SegmentReference(
        str(reference.get("ReferencedSOPInstanceUID", "")),
        int(number) if number is not None else None,
        tuple(int(f) for f in frames),
    )


def _with_series(segment: SegmentReference | None, series: str | None) -> SegmentReference | None:
    if segment is None or series is None:
        return segment
    return replace(segment, source_series_instance_uid=series)


def _site_laterality(site: Dataset) -> str | None:
    for modifier in _children(site):
        if _key(modifier) == _LATERALITY:
            return _meaning(modifier)
    return None


@dataclass
class _Found:
    """What one measurement group's items said, as they are read."""

    tracking: str = ""
    tracking_uid: str | None = None
    codes: dict[_Key, str] = field(default_factory=dict)  # finding, category, laterality
    site: str | None = None
    site_laterality: str | None = None
    certainty: float | None = None
    measurements: list[Measurement] = field(default_factory=list)
    evaluations: list[tuple[str, str]] = field(default_factory=list)
    algorithm: dict[_Key, str] = field(default_factory=dict)
    segment: SegmentReference | None = None
    source_series: str | None = None
    sources: list[str] = field(default_factory=list)


def _take(found: _Found, item: Dataset) -> None:
    """Note one item of a group, by its concept name (PS3.16 TID 1500, 1501, 1410,
    1411); an item of another kind is a qualitative evaluation if coded, else left."""
    key, kind = _key(item), item.get("ValueType")
    if key == _TRACKING_ID:
        found.tracking = str(item.get("TextValue", ""))
    elif key == _TRACKING_UID:
        found.tracking_uid = str(item.get("UID", ""))
    elif kind == "CODE" and key in (_FINDING, _CATEGORY, _LATERALITY):
        found.codes[key] = _meaning(item)
    elif kind == "CODE" and key == _SITE:
        found.site, found.site_laterality = _meaning(item), _site_laterality(item)
    elif kind == "NUM":
        number = _number(item)
        if key == _CERTAINTY:
            found.certainty = number.value if number is not None else None
        elif number is not None:
            found.measurements.append(number)
    elif key in (_ALGORITHM_NAME, _ALGORITHM_VERSION):
        found.algorithm[key] = str(item.get("TextValue", ""))
    elif key in _SEGMENT_REFERENCES:
        found.segment = _segment(item)
    elif key == _SOURCE_SERIES:
        found.source_series = str(item.get("UID", ""))
    elif key in _SOURCE_IMAGES and item.get("ReferencedSOPSequence"):
        uid = item.ReferencedSOPSequence[0].get("ReferencedSOPInstanceUID", "")
        found.sources.append(str(uid))
    elif kind == "CODE" and key != _ALGORITHM_FAMILY:
        name = _code_of(item, "ConceptNameCodeSequence")
        found.evaluations.append((name[2] if name else "", _meaning(item)))


def _row(group: Dataset) -> FindingRow:
    """One group's row."""
    found = _Found()
    for item in _children(group):
        _take(found, item)
    finding = found.codes.get(_FINDING, "")
    regions = (_region(s, finding) for s in _scoords(group, _SR_DEPTH - 2))
    names = [found.algorithm[k] for k in (_ALGORITHM_NAME, _ALGORITHM_VERSION)
             if k in found.algorithm]  # fmt: skip
    return FindingRow(
        tracking_identifier=found.tracking,
        tracking_uid=found.tracking_uid,
        finding=finding,
        finding_category=found.codes.get(_CATEGORY),
        finding_site=found.site,
        laterality=found.site_laterality or found.codes.get(_LATERALITY),
        certainty=found.certainty,
        measurements=tuple(found.measurements),
        evaluations=tuple(found.evaluations),
        algorithm=" ".join(names) or None,
        segment=_with_series(found.segment, found.source_series),
        regions=tuple(r for r in regions if r is not None),
        source_images=tuple(found.sources),
    )


def finding_rows(root: Dataset) -> list[FindingRow]:
    """One row per measurement group of an SR document's root, in report order."""
    return [_row(group) for group in _groups(root)]
