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
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, generate_uid

from dicomnode.synth.ct import build_ct_series

__all__ = [
    "BOGUS_LENGTH",
    "bogus_length_element",
    "dataset_bytes",
    "encode",
    "sha256_file",
    "short_pixel_data",
    "small_ct",
    "truncated_pixel_data",
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
