"""The header walk's limits: elements, inflation, and values that must be whole."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from dicomnode.errors import InvalidDatasetError
from dicomnode.receive.inspect import inspect_instance, is_valid_uid
from tests.factories import deflate_bomb, empty_element_bomb, encode, small_ct, with_raw_value

MiB = 2**20


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "in.dcm"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "in-a-sequence"])
def test_element_limit_counts_every_element_nested_ones_included(
    tmp_path: Path, nested: bool
) -> None:
    path = write(tmp_path, empty_element_bomb(small_ct(), 5000, nested=nested))
    with pytest.raises(InvalidDatasetError, match="more than 5000 data elements"):
        inspect_instance(path, tmp_path, max_elements=5000)
    assert inspect_instance(path, tmp_path, max_elements=5100).modality == "CT"


def test_element_limit_counts_pixel_data_fragments(tmp_path: Path) -> None:
    data = encode(small_ct())
    pixel = data.index(b"\xe0\x7f\x10\x00")
    # Encapsulated Pixel Data of 3000 empty fragments (a bomb of items, PS3.5 A.4).
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    fragments = (
        struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF)
        + item * 3000
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    path = write(tmp_path, data[:pixel] + fragments)
    with pytest.raises(InvalidDatasetError, match="more than 2000 data elements"):
        inspect_instance(path, tmp_path, max_elements=2000)


def test_inflation_stops_at_the_limit_and_leaves_no_scratch_file(tmp_path: Path) -> None:
    path = tmp_path / "bomb.dcm"
    deflate_bomb(small_ct(), path, 64 * MiB)
    with pytest.raises(InvalidDatasetError, match=r"inflates past node\.max_inflated_bytes"):
        inspect_instance(path, tmp_path, max_inflated=8 * MiB)
    assert list(tmp_path.glob("*.inflated")) == []
    assert inspect_instance(path, tmp_path, max_inflated=65 * MiB).modality == "CT"


@pytest.mark.parametrize("value", ["1.2.3\n", "1.2.3\r", "1.2.3\x00", "\n1.2.3", "1.2\n.3"])
def test_uid_must_be_valid_as_a_whole_string(value: str) -> None:
    assert is_valid_uid(value) is False


@pytest.mark.parametrize(
    ("raw", "frames"),
    [(b"1", 1), (b"+3", 3), (b" 2", 2), (b"", 1)],
    ids=["1", "+3", "pad", "empty"],
)
def test_positive_number_of_frames_is_indexed(tmp_path: Path, raw: bytes, frames: int) -> None:
    ds = small_ct(rows=4, columns=4)
    ds.PixelData = ds.PixelData * 3  # room for three frames
    ds.NumberOfFrames = 1
    info = inspect_instance(write(tmp_path, with_raw_value(ds, "NumberOfFrames", raw)), tmp_path)
    assert info.number_of_frames == frames


@pytest.mark.parametrize("raw", [b"-5", b"0", b"1A", b"2147483648", b"1_0", b"1\\2"])
def test_number_of_frames_that_is_not_a_positive_integer_is_refused(
    tmp_path: Path, raw: bytes
) -> None:
    ds = small_ct()
    ds.NumberOfFrames = 1
    with pytest.raises(InvalidDatasetError, match="NumberOfFrames is not a positive integer"):
        inspect_instance(write(tmp_path, with_raw_value(ds, "NumberOfFrames", raw)), tmp_path)


def test_instance_number_outside_the_is_range_is_not_indexed(tmp_path: Path) -> None:
    ds = small_ct()
    data = with_raw_value(ds, "InstanceNumber", b"99999999999")
    assert inspect_instance(write(tmp_path, data), tmp_path).instance_number is None
