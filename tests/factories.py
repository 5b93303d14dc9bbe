"""Datasets and encoded files for tests, well-formed and deliberately broken.

The well-formed ones come from :mod:`dicomnode.synth.ct`, so they are complete CT Image
instances; the broken ones reproduce what a receiver must reject (PITFALLS.md): a file
cut short inside Pixel Data, Pixel Data shorter than the image, and a value length far
beyond the end of the file, which pydicom alone parses without complaint.
"""

from __future__ import annotations

import copy
import hashlib
import os
import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, generate_uid

from dicomnode.synth.ct import build_ct_series

__all__ = [
    "BOGUS_LENGTH",
    "bogus_length_element",
    "dataset_bytes",
    "deflate_bomb",
    "empty_element_bomb",
    "encode",
    "sha256_file",
    "short_pixel_data",
    "small_ct",
    "truncated_pixel_data",
    "with_raw_value",
]

BOGUS_LENGTH = 0xFFFFFFF0

# Explicit VR Little Endian: these VRs have 2 reserved bytes and a 4-byte length
# (PS3.5 7.1.2); all others have a 2-byte length.
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_PREAMBLE_AND_PREFIX = 128 + 4
_PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OW\x00\x00"
# A private element in group 0009 sorts right after group 0008, near the dataset start.
_BOGUS_CREATOR_TAG = 0x00090010
_BOGUS_TAG = 0x00091001
_BOGUS_VALUE = b"\x00\x00\x00\x00"
_BOGUS_HEADER = b"\x09\x00\x01\x10OB\x00\x00" + struct.pack("<I", len(_BOGUS_VALUE))


def small_ct(
    sop_instance_uid: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    rows: int = 16,
    columns: int = 16,
    patient_name: str = "Factory^Patient",
) -> Dataset:
    """Return a small, valid one-slice CT Image Storage dataset.

    Parameters
    ----------
    sop_instance_uid, study_instance_uid, series_instance_uid
        UIDs to use; each defaults to a new random UID, so two calls never collide.
    rows, columns
        Image size in pixels.
    patient_name
        Patient's Name.

    Returns
    -------
    pydicom.dataset.Dataset
        A CT Image Storage dataset with File Meta Information (Explicit VR Little Endian).
    """
    study_uid = study_instance_uid or generate_uid()
    ds = next(
        build_ct_series(
            slices=1,
            rows=rows,
            columns=columns,
            study_instance_uid=study_uid,
            patient_name=patient_name,
        )
    )
    # The generator's UIDs are deterministic; tests want fresh ones unless told.
    sop_uid = UID(sop_instance_uid or generate_uid())
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    return ds


def encode(ds: Dataset) -> bytes:
    """Return `ds` as a DICOM Part 10 file (preamble, File Meta Information, dataset).

    Parameters
    ----------
    ds
        Dataset with ``file_meta``; missing File Meta elements are filled in.

    Returns
    -------
    bytes
        The file's content.
    """
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def dataset_bytes(path_or_bytes: str | os.PathLike[str] | bytes) -> bytes:
    """Return the encoded dataset of a Part 10 file, without the File Meta Information.

    The group 0002 elements are walked one by one rather than trusting
    (0002,0000) File Meta Information Group Length, which a sender may get wrong.

    Parameters
    ----------
    path_or_bytes
        A Part 10 file's path or its content.

    Returns
    -------
    bytes
        Everything after the last group 0002 element.

    Raises
    ------
    ValueError
        If the content has no preamble and ``DICM`` prefix.
    """
    if isinstance(path_or_bytes, bytes):
        data = path_or_bytes
    else:
        with open(path_or_bytes, "rb") as fp:
            data = fp.read()
    if data[128:_PREAMBLE_AND_PREFIX] != b"DICM":
        raise ValueError("not a DICOM Part 10 file: no 'DICM' prefix after the preamble")
    offset = _PREAMBLE_AND_PREFIX
    # File Meta Information is always Explicit VR Little Endian (PS3.10 7.1).
    while data[offset : offset + 2] == b"\x02\x00":
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_LENGTH_VRS:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            offset += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8 + length
    return data[offset:]


def truncated_pixel_data(ds: Dataset) -> bytes:
    """Return `ds` encoded, cut short inside Pixel Data by half of the pixel bytes.

    The Pixel Data header still declares the full length, so the file ends early.

    Parameters
    ----------
    ds
        Uncompressed dataset whose last element is Pixel Data (OW).

    Returns
    -------
    bytes
        The truncated Part 10 file.
    """
    data = encode(ds)
    pixels = ds.PixelData
    start = len(data) - len(pixels) - 12
    # Refuse datasets where something follows Pixel Data: cutting would remove it instead.
    if data[start : start + 8] != _PIXEL_DATA_HEADER or data[start + 12 :] != pixels:
        raise ValueError("truncated_pixel_data needs Pixel Data (OW) as the last element")
    return data[: len(data) - len(pixels) // 2]


def short_pixel_data(ds: Dataset) -> Dataset:
    """Return a copy of `ds` whose Pixel Data holds only half of the image's bytes.

    The element is consistent in itself (its length matches its value), but shorter
    than Rows x Columns x SamplesPerPixel x BitsAllocated / 8.

    Parameters
    ----------
    ds
        Uncompressed dataset.

    Returns
    -------
    pydicom.dataset.Dataset
        The modified copy; `ds` is left unchanged.
    """
    short = copy.deepcopy(ds)
    # Values are padded to an even length (PS3.5 7.1.1), so keep the half even.
    half = (len(ds.PixelData) // 2) & ~1
    short.PixelData = ds.PixelData[:half]
    return short


def bogus_length_element(ds: Dataset) -> bytes:
    """Return `ds` encoded with a 4-byte element that declares a length of 0xFFFFFFF0.

    A private (0009,1001) OB element is added near the start of the dataset; only
    long-length VRs can carry such a length in Explicit VR Little Endian.

    Parameters
    ----------
    ds
        Dataset to encode; it is not modified.

    Returns
    -------
    bytes
        The Part 10 file with the bogus length in place.
    """
    patched = copy.deepcopy(ds)
    patched.add_new(_BOGUS_CREATOR_TAG, "LO", "DICOMNODE TEST")
    patched.add_new(_BOGUS_TAG, "OB", _BOGUS_VALUE)
    data = encode(patched)
    start = data.index(_BOGUS_HEADER)
    bogus = _BOGUS_HEADER[:8] + struct.pack("<I", BOGUS_LENGTH)
    return data[:start] + bogus + data[start + len(_BOGUS_HEADER) :]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file's content as lower-case hex.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    with open(path, "rb") as fp:
        return hashlib.file_digest(fp, "sha256").hexdigest()


def _split_at_pixel_data(data: bytes) -> tuple[bytes, bytes, bytes]:
    """File Meta, the dataset before Pixel Data, and the rest (explicit VR LE)."""
    dataset = dataset_bytes(data)
    meta = data[: len(data) - len(dataset)]
    pixel = dataset.index(_PIXEL_DATA_HEADER)
    return meta, dataset[:pixel], dataset[pixel:]


def empty_element_bomb(ds: Dataset, count: int, nested: bool = False) -> bytes:
    """Return `ds` encoded with `count` empty elements added before Pixel Data.

    Each element is 8 bytes: a header with a zero length (LO in odd, private groups
    0009, 000B, ..., tags ascending). With `nested`, they sit in the one item of a
    private sequence instead of at the top level. Such a file is small for what it
    costs a reader that visits every element (pydicom builds an object per element).

    Parameters
    ----------
    ds
        Dataset to encode (Explicit VR Little Endian, Pixel Data last); not modified.
    count
        How many empty elements to add.
    nested
        Put them in a sequence item rather than at the top level.

    Returns
    -------
    bytes
        The Part 10 file.
    """
    meta, before, rest = _split_at_pixel_data(encode(ds))
    # Element numbers 0x0100-0xFFFF of a private group: 0xFF00 per group. Built as one
    # array of headers: millions of struct.pack calls would take seconds.
    headers = np.zeros(
        count, dtype=[("group", "<u2"), ("element", "<u2"), ("vr", "S2"), ("length", "<u2")]
    )
    index = np.arange(count)
    headers["group"] = 0x0009 + 2 * (index // 0xFF00)
    headers["element"] = 0x0100 + index % 0xFF00
    headers["vr"] = b"LO"
    elements = headers.tobytes()
    if nested:
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(elements)) + elements
        # (7FDF,0010) private creator, then (7FDF,1000) SQ holding the one item.
        creator = struct.pack("<HH2sH", 0x7FDF, 0x0010, b"LO", 14) + b"DICOMNODE TEST"
        sequence = struct.pack("<HH2s2xI", 0x7FDF, 0x1000, b"SQ", len(item)) + item
        return meta + before + creator + sequence + rest
    return meta + before + elements + rest


def deflate_bomb(ds: Dataset, path: Path, inflated_bytes: int) -> int:
    """Write `ds` to `path` deflated, with `inflated_bytes` of zeros in a private OB.

    Each MiB of zeros is deflated once by a fresh compressor and flushed with
    ``Z_FULL_FLUSH``, so its blocks refer to nothing before them and the same bytes
    can be written again for every MiB: 1 GiB becomes about 1 MiB on disk in well
    under a second, and no process ever holds the zeros.

    Parameters
    ----------
    ds
        Dataset to encode (Pixel Data last); not modified.
    path
        Where to write the Part 10 file (Deflated Explicit VR Little Endian).
    inflated_bytes
        Length of the private (0009,1010) OB value: a multiple of 1 MiB.

    Returns
    -------
    int
        The size of the file written.
    """
    step = 1 << 20
    if inflated_bytes % step:
        raise ValueError("inflated_bytes must be a multiple of 1 MiB")
    deflated = copy.deepcopy(ds)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    # Encoded deflated only for its File Meta; the dataset is rebuilt from the plain one.
    meta = encode(deflated)
    meta = meta[: len(meta) - len(dataset_bytes(meta))]
    _, before, rest = _split_at_pixel_data(encode(ds))
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 14) + b"DICOMNODE TEST"
    header = struct.pack("<HH2s2xI", 0x0009, 0x1010, b"OB", inflated_bytes)

    def blocks(data: bytes, last: bool = False) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return compressor.compress(data) + compressor.flush(
            zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH
        )

    zeros = blocks(bytes(step))
    with path.open("wb") as fp:
        fp.write(meta + blocks(before + creator + header))
        for _ in range(inflated_bytes // step):
            fp.write(zeros)
        fp.write(blocks(rest, last=True))
    return path.stat().st_size


def with_raw_value(ds: Dataset, keyword: str, raw: bytes) -> bytes:
    """Return `ds` encoded with `keyword`'s value replaced by exactly `raw`.

    pydicom strips or refuses invalid values when they are set (a UID ending in a
    newline, a Number of Frames of "1A"), so the encoded element is rewritten.

    Parameters
    ----------
    ds
        Dataset (Explicit VR Little Endian) that has `keyword`; not modified.
    keyword
        The top-level attribute to rewrite (a VR with a 2-byte length).
    raw
        Its new value, padded to even length (PS3.5 7.1.1).

    Returns
    -------
    bytes
        The Part 10 file.
    """
    tag = int(tag_for_keyword(keyword) or 0)
    vr = dictionary_VR(keyword)
    data = encode(ds)
    header = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
    meta_end = len(data) - len(dataset_bytes(data))
    at = data.index(header, meta_end)
    (length,) = struct.unpack_from("<H", data, at + 6)
    value = raw + (b"\0" if vr == "UI" else b" ") * (len(raw) % 2)
    return data[:at] + header + struct.pack("<H", len(value)) + value + data[at + 8 + length :]
