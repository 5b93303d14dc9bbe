"""Ingest validation: what pydicom would accept silently is refused, the rest indexed."""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomnode.errors import InvalidDatasetError
from dicomnode.index.attributes import image_plane
from dicomnode.receive.inspect import inspect_instance, is_valid_uid
from tests.factories import (
    bogus_length_element,
    encode,
    short_pixel_data,
    small_ct,
    truncated_pixel_data,
)

TEST_FILES = Path(os.path.dirname(get_testdata_file("CT_small.dcm", download=False) or ""))


def readable_bundled_files() -> list[Path]:
    """pydicom's bundled files that carry the four UIDs the index needs."""
    out = []
    for name in sorted(glob.glob(str(TEST_FILES / "**" / "*"), recursive=True)):
        path = Path(name)
        if not path.is_file() or "truncated" in path.name:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        keys = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        if "TransferSyntaxUID" in ds.file_meta and all(k in ds for k in keys):
            out.append(path)
    return out


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "in.dcm"
    path.write_bytes(data)
    return path


def test_every_bundled_file_is_indexed_with_the_values_pydicom_reads(tmp_path: Path) -> None:
    files = readable_bundled_files()
    assert len(files) > 100
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd values in some files
            ds = dcmread(path, stop_before_pixels=True)
            for element in ds:  # decode now, inside the warnings guard
                _ = element.value
        frames = ds.get("NumberOfFrames")
        if frames not in (None, "") and not str(frames).isdigit():
            # badVR.dcm: Number of Frames "1A" cannot count frames, so it is refused.
            with pytest.raises(InvalidDatasetError, match="NumberOfFrames"):
                inspect_instance(path, tmp_path)
            continue
        info = inspect_instance(path, tmp_path)
        assert info.sop_instance_uid == ds.SOPInstanceUID, path
        assert info.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID, path
        assert info.modality == (ds.get("Modality") or None), path
        assert info.rows == ds.get("Rows"), path
        assert info.series_description == (ds.get("SeriesDescription") or None), path
        assert info.number_of_frames == int(frames or 1), path


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_bundled_truncated_files_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidDatasetError, match="runs past the end"):
        inspect_instance(TEST_FILES / name, tmp_path)


def test_value_length_past_end_of_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError, match="runs past the end"):
        inspect_instance(write(tmp_path, bogus_length_element(small_ct())), tmp_path)


def test_pixel_data_cut_short_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError, match=r"\(7FE0,0010\)"):
        inspect_instance(write(tmp_path, truncated_pixel_data(small_ct())), tmp_path)


def test_pixel_data_shorter_than_rows_times_columns_is_refused(tmp_path: Path) -> None:
    data = encode(short_pixel_data(small_ct(rows=32, columns=32)))
    with pytest.raises(InvalidDatasetError, match=r"Pixel Data has 1024 bytes.*needs 2048"):
        inspect_instance(write(tmp_path, data), tmp_path)


def nested(depth: int) -> Dataset:
    ds = small_ct()
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = Sequence([inner])
    return ds


def nested_undefined_length(depth: int) -> bytes:
    """A small CT with ``depth`` nested undefined-length Content Sequences, by hand
    (pydicom itself cannot write 400 levels: it recurses once per level)."""
    sq = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"  # (0040,A730) undefined length
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    blob = (sq + item) * depth + (item_end + seq_end) * depth
    data = encode(small_ct())
    pixel = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) comes after (0040,A730)
    return data[:pixel] + blob + data[pixel:]


def test_sequences_nested_400_deep_are_refused_without_recursion_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError, match="nested deeper than 32"):
        inspect_instance(write(tmp_path, nested_undefined_length(400)), tmp_path)


def test_defined_length_sequences_nested_too_deep_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError, match="nested deeper than 32"):
        inspect_instance(write(tmp_path, encode(nested(60))), tmp_path)


def test_sequences_nested_a_few_levels_are_fine(tmp_path: Path) -> None:
    assert inspect_instance(write(tmp_path, encode(nested(5))), tmp_path).modality == "CT"
    data = nested_undefined_length(5)
    assert inspect_instance(write(tmp_path, data), tmp_path).modality == "CT"


def deflated(ds: Dataset, padding: int = 0) -> bytes:
    """A deflated Part 10 file; ``padding`` zero bytes of a private OB inflate the dataset."""
    if padding:
        ds.add_new(0x00091010, "OB", b"\0" * padding)
        ds.add_new(0x00090010, "LO", "DICOMNODE TEST")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return encode(ds)


def test_deflated_dataset_is_inflated_and_indexed(tmp_path: Path) -> None:
    ds = small_ct()
    info = inspect_instance(write(tmp_path, deflated(ds)), tmp_path)
    assert info.sop_instance_uid == ds.SOPInstanceUID
    assert info.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert list(tmp_path.glob("*.inflated")) == []


def test_deflate_bomb_stops_at_the_size_limit(tmp_path: Path) -> None:
    data = deflated(small_ct(), padding=8 * 2**20)  # 8 MiB of zeros, ~8 KiB on the wire
    assert len(data) < 100_000
    with pytest.raises(InvalidDatasetError, match=r"inflates past node\.max_inflated_bytes"):
        inspect_instance(write(tmp_path, data), tmp_path, max_inflated=2**20)
    assert list(tmp_path.glob("*.inflated")) == []


def test_corrupt_deflate_stream_is_refused(tmp_path: Path) -> None:
    data = bytearray(deflated(small_ct()))
    data[-200:] = os.urandom(200)
    with pytest.raises(InvalidDatasetError):
        inspect_instance(write(tmp_path, bytes(data)), tmp_path)


def test_file_without_dicom_meta_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError, match="no DICOM File Meta"):
        inspect_instance(write(tmp_path, b"\0" * 200), tmp_path)


def test_missing_study_uid_is_refused(tmp_path: Path) -> None:
    ds = small_ct()
    del ds.StudyInstanceUID
    with pytest.raises(InvalidDatasetError, match="StudyInstanceUID is missing"):
        inspect_instance(write(tmp_path, encode(ds)), tmp_path)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("1.2.3", True),
        ("1.02.3", True),  # leading zero: tolerated, still path-safe
        ("", False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("../../etc/passwd", False),
        ("1.2/3", False),
        ("1" * 65, False),
        ("1.2.3a", False),
        (None, False),
    ],
)
def test_uid_validation(value: object, valid: bool) -> None:
    assert is_valid_uid(value) is valid


@pytest.mark.parametrize(
    ("orientation", "plane"),
    [
        (["1", "0", "0", "0", "1", "0"], "AXIAL"),
        (["1", "0", "0", "0", "0", "-1"], "CORONAL"),
        (["0", "1", "0", "0", "0", "-1"], "SAGITTAL"),
        (["1", "0", "0", "0", "0.7071", "0.7071"], "OBLIQUE"),
        (["1", "0", "0", "0", "0.9848", "0.1736"], "AXIAL"),  # 10 degrees tilt
        (["1", "0", "0"], None),
        (["a", "0", "0", "0", "1", "0"], None),
        (None, None),
    ],
)
def test_image_plane_from_orientation(orientation: object, plane: str | None) -> None:
    assert image_plane(orientation) == plane


def test_implicit_vr_element_inside_explicit_dataset_is_tolerated(tmp_path: Path) -> None:
    info = inspect_instance(TEST_FILES / "SC_rgb_jpeg.dcm", tmp_path)
    assert info.modality == "OT"


def test_undefined_length_un_sequence_is_walked_as_implicit(tmp_path: Path) -> None:
    # The whole dataset of this file sits inside one UN sequence (pydicom reads it so
    # too): the walk gets through it, and then finds no top-level SOP Class UID.
    with pytest.raises(InvalidDatasetError, match="SOPClassUID is missing"):
        inspect_instance(TEST_FILES / "UN_sequence.dcm", tmp_path)
