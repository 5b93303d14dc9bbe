"""Check an incoming instance's structure and read the attributes the index needs.

pydicom alone accepts some broken files silently (a value whose length runs past
the end of the file, Pixel Data shorter than Rows x Columns x ... says) and can be
made to use unbounded memory (a deflated bomb) or recurse too deep (nested
sequences). So :func:`inspect_instance` walks every element header of the received
file itself, over a memory map, with bounded depth, never reading pixel values; on
the way it picks up the few top-level attributes the index records. That single
pass is also several times faster than a pydicom parse, which matters at hundreds
of instances per second. Pixel data is never decoded here (docs/receive.md).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from dicomnode.errors import InvalidDatasetError
from dicomnode.index.attributes import MAX_RECORDED_BYTES, RawAttributes, image_plane

__all__ = ["InstanceInfo", "inspect_instance", "is_valid_uid"]

#: PS3.5 9.1: digits and dots, at most 64 characters. We accept leading zeros in a
#: component (seen in the wild) but never empty components, so ".." cannot occur.
#: Always applied with ``fullmatch``: ``$`` would also match before a final newline.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"SV",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_MAX_DEPTH = 32
#: A deflated dataset may inflate to at most this much (a bomb stops here); the
#: default of ``node.max_inflated_bytes``.
MAX_INFLATED_BYTES = 256 * 2**20
#: The most data elements, items and fragments a dataset may hold, nested ones
#: included; the default of ``node.max_elements``. An enhanced multi-frame instance
#: of a few thousand frames holds a few hundred thousand.
MAX_ELEMENTS = 1_000_000
#: The most small top-level elements kept for the index's rule attributes. A real
#: header has a few hundred; an empty-element bomb has millions, and a tuple for
#: each cost ~130 bytes (1.7 KB deflated held 8 MiB). Past this, the rest of the
#: dataset is still walked and checked, just not kept.
MAX_RECORDED_ELEMENTS = 2048
#: Inflate in steps of this much output, so memory stays flat whatever the ratio.
_INFLATE_STEP = 1 << 20
_TOO_BIG_INFLATED = "deflated data set inflates past node.max_inflated_bytes"
#: PS3.5 6.2 IS: an optional sign and digits, in -2^31 .. 2^31-1 (also the range of
#: the index's integer columns). Python's int() would also take "1_0" and " 7".
_IS = re.compile(r"[+-]?[0-9]{1,12}")
_IS_MIN, _IS_MAX = -(2**31), 2**31 - 1

_KEYWORDS = (
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyDate",
    "Modality", "StudyDescription", "SeriesDescription", "BodyPartExamined",
    "ViewPosition", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
    "InstanceNumber", "ImageOrientationPatient", "FrameOfReferenceUID", "Laterality",
    "ImageLaterality", "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames",
    "Rows", "Columns", "BitsAllocated", "AccessionNumber",
)  # fmt: skip
_WANTED = {int(tag_for_keyword(k) or 0): (k, dictionary_VR(k)) for k in _KEYWORDS}
_TEXT_VRS = {"LO", "SH", "ST", "LT", "PN", "UC", "UT"}


def is_valid_uid(value: object) -> bool:
    """True for a syntactically safe UID: digits and dots, 1-64 characters."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What the index records about an instance (no patient data)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    study_date: str | None
    study_description: str | None
    accession_number: str | None
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    frame_of_reference_uid: str | None
    instance_number: int | None
    image_type: str | None
    view_position: str | None
    laterality: str | None
    image_plane: str | None
    rows: int | None
    columns: int | None
    number_of_frames: int
    #: The raw rule attributes, decoded only for a series' representative.
    attributes: RawAttributes


class _Walker:
    """Walks the element headers of one encoded dataset held in a buffer."""

    def __init__(
        self,
        buf: mmap.mmap | bytes,
        pos: int,
        explicit: bool,
        little: bool,
        max_elements: int = MAX_ELEMENTS,
    ) -> None:
        self.buf, self.pos, self.size = buf, pos, len(buf)
        self.max_elements = max_elements
        #: Elements, items and fragments still allowed before the walk gives up.
        self.left = max_elements
        self.explicit, self.little = explicit, little
        self.u16 = struct.Struct("<H" if little else ">H")
        self.u32 = struct.Struct("<I" if little else ">I")
        self.tag = struct.Struct("<HH" if little else ">HH")
        #: Raw top-level values of the attributes in ``_WANTED``.
        self.values: dict[int, bytes] = {}
        #: Pixel Data length; None when encapsulated; absent when no Pixel Data.
        self.pixel_length: int | None = -1
        #: (tag, wire VR, raw value) of the small top-level public elements: the
        #: candidates for the index's rule attributes.
        self.recorded: list[tuple[int, bytes, bytes]] = []

    def _fail(self, what: str) -> InvalidDatasetError:
        return InvalidDatasetError(f"{what} at byte {self.pos}")

    def _too_many(self) -> InvalidDatasetError:
        # An empty-element bomb (millions of 8-byte elements) costs about 1 us of CPU
        # per element here and more in every later reader: stop at the limit.
        return InvalidDatasetError(f"more than {self.max_elements} data elements")

    def _count(self) -> None:
        """Count one item, fragment or delimiter against the element limit."""
        self.left -= 1
        if self.left < 0:
            raise self._too_many()

    def _header(self) -> tuple[int, bytes, int] | None:
        pos, buf = self.pos, self.buf
        if pos + 8 > self.size:
            if pos == self.size:
                return None
            raise self._fail("truncated element header")
        group, elem = self.tag.unpack_from(buf, pos)
        tag = (group << 16) | elem
        vr = buf[pos + 4 : pos + 6]
        implicit = group == 0xFFFE or not self.explicit
        # An implicit-VR element inside an explicit-VR dataset: some writers do this
        # and pydicom tolerates it, so do we.
        if implicit or not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            self.pos = pos + 8
            return tag, b"", self.u32.unpack_from(buf, pos + 4)[0]
        if vr in _LONG_VRS:
            if pos + 12 > self.size:
                raise self._fail("truncated element header")
            self.pos = pos + 12
            return tag, vr, self.u32.unpack_from(buf, pos + 8)[0]
        self.pos = pos + 8
        return tag, vr, self.u16.unpack_from(buf, pos + 6)[0]

    def _skip(self, length: int, tag: int) -> None:
        if self.pos + length > self.size:
            raise self._fail(
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) of {length} bytes "
                "runs past the end of the data"
            )
        self.pos += length

    def walk(self, limit: int, depth: int = 0) -> int | None:
        """Walk elements until ``limit`` or a delimiter; return the delimiter tag.

        The element header is parsed inline, with locals instead of attributes: this
        loop runs once per element (hundreds per instance) and was the largest part
        of the receiving process's CPU time for small instances.
        """
        if depth > _MAX_DEPTH:
            raise self._fail(f"sequences nested deeper than {_MAX_DEPTH}")
        buf, size, explicit, top = self.buf, self.size, self.explicit, depth == 0
        unpack_tag, unpack_u16 = self.tag.unpack_from, self.u16.unpack_from
        unpack_u32 = self.u32.unpack_from
        pos, left = self.pos, self.left
        while pos < limit:
            left -= 1
            if left < 0:
                self.pos = pos
                raise self._too_many()
            if pos + 8 > size:
                self.pos = pos
                raise self._fail("truncated element header")
            group: int
            elem: int
            group, elem = unpack_tag(buf, pos)
            tag = (group << 16) | elem
            vr = b""
            if group != 0xFFFE and explicit:
                vr = buf[pos + 4 : pos + 6]
                # An implicit-VR element inside an explicit-VR dataset: some writers
                # do this and pydicom tolerates it, so do we.
                if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                    vr = b""
            if not vr:
                length = unpack_u32(buf, pos + 4)[0]
                pos += 8
            elif vr in _LONG_VRS:
                if pos + 12 > size:
                    self.pos = pos
                    raise self._fail("truncated element header")
                length = unpack_u32(buf, pos + 8)[0]
                pos += 12
            else:
                length = unpack_u16(buf, pos + 6)[0]
                pos += 8
            if tag == _ITEM_END or tag == _SEQ_END:
                self.pos, self.left = pos, left
                return tag
            if length != _UNDEFINED:
                if top:
                    if tag in _WANTED:
                        self.values[tag] = bytes(buf[pos : pos + length])
                    elif tag in _PIXEL_TAGS:
                        self.pixel_length = length
                    if (
                        length <= MAX_RECORDED_BYTES
                        and not group & 1
                        and len(self.recorded) < MAX_RECORDED_ELEMENTS
                    ):
                        self.recorded.append((tag, vr, bytes(buf[pos : pos + length])))
                end = pos + length
                if end > size:
                    self.pos = pos
                    self._skip(length, tag)  # raises: runs past the end of the data
                if vr == b"SQ" or (not vr and _is_sequence(tag)):
                    # Walk defined-length sequences too: depth matters to every
                    # later reader (pydicom recurses once per level).
                    self.pos, self.left = pos, left
                    self._walk_items(depth, end)
                    left = self.left
                pos = end
                continue
            self.pos, self.left = pos, left
            if tag in _PIXEL_TAGS:
                if top:
                    self.pixel_length = None
                self._walk_fragments()
            elif vr == b"UN" and explicit:
                # PS3.5 6.2.2: UN of undefined length holds implicit VR LE items.
                self.explicit = False
                try:
                    self._walk_items(depth)
                finally:
                    self.explicit = True
            else:
                self._walk_items(depth)
            pos, left = self.pos, self.left
        self.pos, self.left = pos, left
        if pos > limit:
            raise self._fail("an element runs past the end of its item")
        return None

    def _walk_items(self, depth: int, end: int | None = None) -> None:
        """Walk the items of a sequence: up to ``end``, or to its delimiter."""
        while end is None or self.pos < end:
            header = self._header()
            if header is None:
                raise self._fail("sequence not terminated")
            self._count()
            tag, _, length = header
            if tag == _SEQ_END:
                return
            if tag != _ITEM:
                raise self._fail("expected an item in a sequence")
            if length == _UNDEFINED:
                if self.walk(self.size, depth + 1) != _ITEM_END:
                    raise self._fail("item not terminated")
                continue
            item_end = self.pos + length
            if item_end > (self.size if end is None else end):
                raise self._fail("item runs past the end of its sequence")
            self.walk(item_end, depth + 1)
            self.pos = item_end

    def _walk_fragments(self) -> None:
        while True:
            header = self._header()
            if header is None:
                raise self._fail("encapsulated Pixel Data not terminated")
            self._count()
            tag, _, length = header
            if tag == _SEQ_END:
                return
            if tag != _ITEM or length == _UNDEFINED:
                raise self._fail("bad Pixel Data fragment")
            self._skip(length, tag)


@lru_cache(maxsize=4096)
def _is_sequence(tag: int) -> bool:
    """Whether the data dictionary says ``tag`` is a sequence (for implicit VR)."""
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def _dataset_offset(buf: mmap.mmap | bytes) -> tuple[int, str]:
    """Offset of the dataset after the File Meta, and the Transfer Syntax UID."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise InvalidDatasetError("no DICOM File Meta Information")
    pos, syntax, size = 132, "", len(buf)
    while pos + 8 <= size and struct.unpack_from("<H", buf, pos)[0] == 0x0002:
        elem = struct.unpack_from("<H", buf, pos + 2)[0]
        if buf[pos + 4 : pos + 6] in _LONG_VRS:
            if pos + 12 > size:
                raise InvalidDatasetError(f"File Meta element header cut short at byte {pos}")
            length, start = struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", buf, pos + 6)[0], pos + 8
        if start + length > size:
            raise InvalidDatasetError(f"File Meta element at byte {pos} runs past the end")
        if elem == 0x0010:
            syntax = bytes(buf[start : start + length]).rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    if not is_valid_uid(syntax):
        raise InvalidDatasetError("File Meta has no valid Transfer Syntax UID")
    if not UID(syntax).is_transfer_syntax:
        # A UID pydicom does not know as a transfer syntax has no known encoding
        # (byte order, VR form): nothing after the File Meta can be read.
        raise InvalidDatasetError("File Meta names an unknown Transfer Syntax UID")
    return pos, syntax


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap | bytes]:
    with path.open("rb") as fp:
        if os.fstat(fp.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield buf


def _inflate(buf: mmap.mmap | bytes, start: int, folder: Path, limit: int) -> Path:
    """Inflate a deflated dataset into a bare explicit VR LE dataset, with a size cap.

    zlib gives at most ``_INFLATE_STEP`` bytes per call (``max_length``) and keeps
    the input it has not used in ``unconsumed_tail``, so memory stays at a few MiB
    whatever the ratio, and a bomb stops as soon as ``limit`` bytes have come out.
    """
    fd, name = tempfile.mkstemp(suffix=".inflated", dir=folder)
    out = Path(name)
    try:
        with os.fdopen(fd, "wb") as dst:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            total = 0
            for offset in range(start, len(buf), _INFLATE_STEP):
                pending = buf[offset : offset + _INFLATE_STEP]
                while pending and not inflater.eof:
                    data = inflater.decompress(pending, _INFLATE_STEP)
                    pending = inflater.unconsumed_tail
                    total += len(data)
                    if total > limit:
                        raise InvalidDatasetError(_TOO_BIG_INFLATED)
                    dst.write(data)
            # Output zlib still holds once all input is in: drained in steps too.
            while not inflater.eof and (data := inflater.decompress(b"", _INFLATE_STEP)):
                total += len(data)
                if total > limit:
                    raise InvalidDatasetError(_TOO_BIG_INFLATED)
                dst.write(data)
    except zlib.error as exc:
        out.unlink(missing_ok=True)
        # zlib's own text says nothing useful to a sender; keep the comment ours.
        raise InvalidDatasetError("deflated data is corrupt") from exc
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def inspect_instance(
    path: Path,
    scratch: Path,
    max_inflated: int = MAX_INFLATED_BYTES,
    max_elements: int = MAX_ELEMENTS,
) -> InstanceInfo:
    """Validate a received Part 10 file and read its index attributes.

    Parameters
    ----------
    path
        The spooled file (File Meta written by pynetdicom, dataset as received).
    scratch
        A folder for inflating deflated datasets (same filesystem as ``path``).
    max_inflated
        The most bytes a deflated dataset may inflate to.
    max_elements
        The most data elements (items and fragments included) the dataset may hold,
        nested ones included.

    Raises
    ------
    InvalidDatasetError
        Unparseable, truncated, nested too deep, over a limit, a required UID is
        invalid or Number of Frames is not a positive integer.
    """
    with _mapped(path) as buf:
        start, syntax = _dataset_offset(buf)
        if syntax == DeflatedExplicitVRLittleEndian:
            inflated = _inflate(buf, start, scratch, max_inflated)
            try:
                with _mapped(inflated) as plain:
                    walker = _walk(plain, 0, UID(ExplicitVRLittleEndian), max_elements)
            finally:
                inflated.unlink(missing_ok=True)
        else:
            walker = _walk(buf, start, UID(syntax), max_elements)
    values, encodings = _decode(walker)
    if walker.pixel_length is not None and walker.pixel_length >= 0:
        expected = _expected_pixel_bytes(values)
        if expected is not None and walker.pixel_length < expected:
            raise InvalidDatasetError(
                f"Pixel Data has {walker.pixel_length} bytes, Rows x Columns x ... needs {expected}"
            )
    attributes = RawAttributes(tuple(walker.recorded), walker.little, tuple(encodings))
    return _info(values, syntax, attributes)


def _walk(buf: mmap.mmap | bytes, start: int, syntax: UID, max_elements: int) -> _Walker:
    walker = _Walker(buf, start, not syntax.is_implicit_VR, syntax.is_little_endian, max_elements)
    if walker.walk(len(buf)) is not None:
        raise InvalidDatasetError("stray delimiter at the top level of the dataset")
    return walker


def _decode(walker: _Walker) -> tuple[dict[str, object], list[str]]:
    """Turn the raw top-level values into Python values (text, ints, floats).

    Also returns the Python codecs of the dataset's Specific Character Set.
    """
    out: dict[str, object] = {}
    charset = walker.values.get(0x00080005, b"")  # Specific Character Set
    terms = [v for v in charset.decode("ascii", "replace").strip(" \0").split("\\") if v]
    try:
        encodings = convert_encodings(terms or [""])
    except (ValueError, LookupError) as exc:
        # pydicom warns on an unknown term and falls back, but a term Python cannot
        # even look up (a NUL inside: "embedded null character") raises. Our words,
        # not the library's: its message would quote the value.
        raise InvalidDatasetError("Specific Character Set is not valid") from exc
    for tag, raw in walker.values.items():
        keyword, vr = _WANTED[tag]
        if vr == "US":
            if len(raw) >= 2:
                out[keyword] = walker.u16.unpack_from(raw)[0]
            continue
        if vr in _TEXT_VRS:
            text = decode_bytes(raw, encodings, {0x5C})
        else:
            text = raw.decode("ascii", "replace")
        values = [v.strip(" \0") for v in text.split("\\")]
        out[keyword] = values if len(values) > 1 else values[0]
    return out, encodings


def _text(values: dict[str, object], keyword: str, limit: int) -> str | None:
    value = values.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list):
        value = "\\".join(str(v) for v in value)
    return str(value)[:limit]


def _int(values: dict[str, object], keyword: str) -> int | None:
    """A single integer value (US, or IS within its range); None otherwise."""
    value = values.get(keyword)
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or _IS.fullmatch(value) is None:
        return None
    number = int(value)
    return number if _IS_MIN <= number <= _IS_MAX else None


def _number_of_frames(values: dict[str, object]) -> int:
    """Number of Frames: 1 when absent or empty, else a positive integer.

    PS3.3 C.7.6.6: it counts the frames in Pixel Data, so a -5 or a "1A" cannot
    describe the data (and a negative count would reach the index as it is).
    """
    if values.get("NumberOfFrames") in (None, ""):
        return 1
    frames = _int(values, "NumberOfFrames")
    if frames is None or frames < 1:
        raise InvalidDatasetError("NumberOfFrames is not a positive integer")
    return frames


def _expected_pixel_bytes(values: dict[str, object]) -> int | None:
    rows, cols = _int(values, "Rows"), _int(values, "Columns")
    bits = _int(values, "BitsAllocated")
    if not rows or not cols or not bits:
        return None
    samples = _int(values, "SamplesPerPixel") or 1
    frames = _number_of_frames(values)
    total = (rows * cols * samples * frames * bits + 7) // 8
    if values.get("PhotometricInterpretation") == "YBR_FULL_422":
        # PS3.3 C.7.6.3.1.2: two chroma samples per two pixels, so 2/3 of full size.
        total = total * 2 // 3
    return total


def _info(values: dict[str, object], syntax: str, attributes: RawAttributes) -> InstanceInfo:
    uids = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = values.get(keyword)
        if not is_valid_uid(value):
            raise InvalidDatasetError(f"{keyword} is missing or not a valid UID")
        uids[keyword] = str(value)
    frame_of_ref = _text(values, "FrameOfReferenceUID", 64)
    return InstanceInfo(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=syntax,
        study_date=_text(values, "StudyDate", 8),
        study_description=_text(values, "StudyDescription", 64),
        accession_number=_text(values, "AccessionNumber", 16),
        modality=_text(values, "Modality", 16),
        series_number=_int(values, "SeriesNumber"),
        series_description=_text(values, "SeriesDescription", 64),
        body_part_examined=_text(values, "BodyPartExamined", 16),
        frame_of_reference_uid=frame_of_ref if is_valid_uid(frame_of_ref) else None,
        instance_number=_int(values, "InstanceNumber"),
        image_type=_text(values, "ImageType", 128),
        view_position=_text(values, "ViewPosition", 16),
        laterality=_text(values, "ImageLaterality", 2) or _text(values, "Laterality", 2),
        image_plane=image_plane(values.get("ImageOrientationPatient")),
        rows=_int(values, "Rows"),
        columns=_int(values, "Columns"),
        number_of_frames=_number_of_frames(values),
        attributes=attributes,
    )
