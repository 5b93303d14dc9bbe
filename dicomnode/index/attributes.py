"""Attributes the node derives from DICOM headers and records in the index.

Besides the typed columns, the index keeps each series' *rule attributes*: the
top-level attributes of one instance (the series' representative, see
:mod:`dicomnode.index.instances`) as a JSON object keyed by DICOM keyword, so that
``match`` rules are evaluated from the index alone and no stage re-reads a file to
plan work. :class:`RawAttributes` builds that object from the raw element values the
receiving stage's header walk collected; the ``rules test`` command runs the same
walk on a file, so a rule means the same thing there as in the scheduler.

What is recorded (:func:`unrecorded_reason` says why something is not):

* every top-level public data element with a dictionary keyword and a non-empty
  value of at most :data:`MAX_RECORDED_BYTES` bytes;
* except sequences, bulk binary values (OB, OW, OF, OD, OL, OV, UN, AT) and person
  names (PN), and the Patient group (0010,xxxx) other than sex, age, size and
  weight: no patient name, ID or birth date is stored (docs/receive.md, "Logs").

Text values are decoded with the dataset's Specific Character Set and stripped of
padding; a multi-valued value becomes a list. Binary numbers become numbers. An
attribute whose dictionary VR is ambiguous (``US or SS``) is recorded only from
explicit VR data, where the wire says which it is.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import lru_cache

from pydicom.charset import decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

# The vocabulary of the rule language is what the index records: one policy, kept there.
from dicomnode.rules import UNRECORDED_VRS, unrecorded_reason

__all__ = [
    "MAX_RECORDED_BYTES",
    "RawAttributes",
    "attributes_json",
    "image_plane",
    "recorded_tag",
    "unrecorded_reason",
]

#: Longer values are not recorded (a rule on them matches nothing).
MAX_RECORDED_BYTES = 1024
#: Text VRs whose value may hold several values separated by backslashes (PS3.5 6.4).
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
#: Text VRs in the dataset's character set; the others are ASCII (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset({"LO", "SH", "ST", "LT", "UC", "UT"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}


def image_plane(orientation: object) -> str | None:
    """AXIAL, CORONAL, SAGITTAL or OBLIQUE from ImageOrientationPatient (PS3.3 C.7.6.2).

    The plane is the patient axis the slice normal (row x column direction) is closest
    to; more than about 25 degrees away from every axis is OBLIQUE. Plain Python: the
    receiving process has no other use for numpy.
    """
    if not isinstance(orientation, list | tuple) or len(orientation) != 6:
        return None
    try:
        rx, ry, rz, cx, cy, cz = (float(v) for v in orientation)
    except (TypeError, ValueError):
        return None
    normal = (abs(ry * cz - rz * cy), abs(rz * cx - rx * cz), abs(rx * cy - ry * cx))
    length = math.sqrt(sum(n * n for n in normal))
    if not math.isfinite(length) or length == 0:
        return None
    axis = max(range(3), key=lambda i: normal[i])
    if normal[axis] / length < 0.9:
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]


@lru_cache(maxsize=8192)
def recorded_tag(tag: int) -> tuple[str, str] | None:
    """(keyword, dictionary VR) of a tag the index records; None for any other tag."""
    if tag >> 16 & 1:  # private (odd group): no keyword, rules cannot name it
        return None
    keyword = keyword_for_tag(tag)
    # A repeating group (60xx overlays) shares one keyword, which names its first
    # group only, as ``ds[keyword]`` does in pydicom.
    if not keyword or tag_for_keyword(keyword) != tag:
        return None
    vr = str(dictionary_VR(tag))
    if " or " in vr:  # e.g. "US or SS": resolved only by the wire VR
        vr = ""
    return None if unrecorded_reason(keyword, vr) else (keyword, vr)


def _number(value: int | float) -> int | float | str:
    # JSON has no NaN or infinity; as text they compare as "not a number" (rules.py).
    return value if math.isfinite(value) else str(value)


def _decode(vr: str, raw: bytes, little_endian: bool, encodings: list[str]) -> object:
    if vr in _NUMBERS:
        code = _NUMBERS[vr]
        size = struct.calcsize(code)
        count = len(raw) // size
        if not count:
            return None
        prefix = "<" if little_endian else ">"
        numbers = [_number(v) for v in struct.unpack(f"{prefix}{count}{code}", raw[: count * size])]
        return numbers[0] if count == 1 else numbers
    if vr in _CHARSET_VRS and not raw.isascii():
        text = decode_bytes(raw, encodings, {0x5C})
    else:
        text = raw.decode("ascii", "replace")
    values = [text] if vr in _SINGLE_VALUED else text.split("\\")
    values = [v.strip(" \0") for v in values]
    if not any(values):
        return None
    return values[0] if len(values) == 1 else list(values)


@dataclass(frozen=True, slots=True)
class RawAttributes:
    """The raw top-level elements of one dataset, decoded into rule attributes on demand.

    The receiving stage collects these for every instance (a copy of a few bytes per
    element) but decodes them only for an instance that may become its series'
    representative: decoding every instance added about 120 us of CPU to each
    (a small CT header, measured), 40 % more than the whole header check.

    Attributes
    ----------
    elements
        (tag, VR from the wire or ``b""`` for implicit VR, raw value) of the dataset's
        top-level elements; tags the index does not record are skipped on decoding.
    little_endian
        Byte order of the binary values.
    encodings
        Python codecs of the dataset's Specific Character Set
        (``pydicom.charset.convert_encodings``).
    """

    elements: tuple[tuple[int, bytes, bytes], ...]
    little_endian: bool
    encodings: tuple[str, ...]

    def to_json(self) -> str:
        """The rule attributes as compact JSON text: keyword -> value."""
        out: dict[str, object] = {}
        encodings = list(self.encodings)
        for tag, wire_vr, raw in self.elements:
            known = recorded_tag(tag)
            if known is None or len(raw) > MAX_RECORDED_BYTES:
                continue
            keyword, vr = known
            # UN on the wire for a known tag: decode it as the dictionary says, as
            # pydicom does (``config.replace_un_with_known_vr``).
            if wire_vr and wire_vr != b"UN":
                vr = wire_vr.decode("ascii")
            if not vr or vr in UNRECORDED_VRS:
                continue
            value = _decode(vr, raw, self.little_endian, encodings)
            if value is not None:
                out[keyword] = value
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def attributes_json(value: RawAttributes | str | None) -> str:
    """Rule attributes as stored in the index, from what an ingest row carries.

    None (a row built without them) records an empty object: nothing to match.
    """
    if isinstance(value, RawAttributes):
        return value.to_json()
    return "{}" if value is None else value
