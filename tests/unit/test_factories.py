"""The test factories and the synthetic CT generator produce what they promise."""

from __future__ import annotations

import shutil
import struct
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble

from dicomnode.synth.ct import CtSeriesOptions, build_ct_series, ct_phantom, write_ct_series
from tests.factories import (
    BOGUS_LENGTH,
    bogus_length_element,
    dataset_bytes,
    encode,
    sha256_file,
    short_pixel_data,
    small_ct,
    truncated_pixel_data,
)

# Small enough to be quick, large enough (179 mm field of view) to hold lesions.
SMALL_SERIES: CtSeriesOptions = {
    "slices": 40,
    "rows": 96,
    "columns": 96,
    "pixel_spacing": 1.9,
    "seed": 7,
}


def test_small_ct_round_trips_through_pydicom() -> None:
    ds = small_ct(rows=8, columns=12, patient_name="Round^Trip")

    read = pydicom.dcmread(BytesIO(encode(ds)))

    assert read.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert read.SOPClassUID == pydicom.uid.CTImageStorage
    assert read.SOPInstanceUID == ds.SOPInstanceUID == read.file_meta.MediaStorageSOPInstanceUID
    assert read.PatientName == "Round^Trip"
    assert read.pixel_array.shape == (8, 12)
    np.testing.assert_array_equal(read.pixel_array, ds.pixel_array)


def test_small_ct_uids_are_unique_unless_given() -> None:
    first, second = small_ct(), small_ct()
    given = small_ct(sop_instance_uid="1.2.3", study_instance_uid="1.2", series_instance_uid="1.3")

    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert (given.SOPInstanceUID, given.StudyInstanceUID, given.SeriesInstanceUID) == (
        "1.2.3",
        "1.2",
        "1.3",
    )


def test_dataset_bytes_starts_where_pydicom_ends_the_file_meta(tmp_path: Path) -> None:
    data = encode(small_ct())
    fp = BytesIO(data)
    read_preamble(fp, force=False)
    _read_file_meta_info(fp)
    path = tmp_path / "x.dcm"
    path.write_bytes(data)

    assert dataset_bytes(data) == data[fp.tell() :]
    assert dataset_bytes(path) == dataset_bytes(data)
    assert dataset_bytes(data)[:4] == b"\x08\x00\x05\x00"  # (0008,0005) comes first


def test_dataset_bytes_rejects_content_without_dicm_prefix() -> None:
    with pytest.raises(ValueError, match="DICM"):
        dataset_bytes(b"\x00" * 200)


def test_truncated_pixel_data_ends_before_its_declared_length() -> None:
    ds = small_ct()
    full = encode(ds)

    data = truncated_pixel_data(ds)

    header = data.rindex(b"\xe0\x7f\x10\x00OW\x00\x00")
    (declared,) = struct.unpack_from("<I", data, header + 8)
    assert declared == len(ds.PixelData)
    assert len(data) == header + 12 + declared // 2
    assert full.startswith(data)


def test_short_pixel_data_is_consistent_but_too_short_for_the_image() -> None:
    ds = small_ct()

    short = pydicom.dcmread(BytesIO(encode(short_pixel_data(ds))))

    expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    assert len(short.PixelData) == expected // 2
    assert len(ds.PixelData) == expected  # the original is untouched
    with pytest.raises(ValueError, match="less than expected"):
        _ = short.pixel_array


def test_bogus_length_element_is_parsed_silently_by_pydicom() -> None:
    data = bogus_length_element(small_ct())

    assert struct.pack("<HH2sHI", 0x0009, 0x1001, b"OB", 0, BOGUS_LENGTH) in data
    # pydicom swallows the rest of the file into the private element, without an error:
    # the reason a receiver has to check lengths itself.
    read = pydicom.dcmread(BytesIO(data))
    assert "PixelData" not in read


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")

    assert sha256_file(path) == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_ct_series_positions_step_by_slice_thickness_along_the_normal() -> None:
    datasets = list(build_ct_series(slices=5, rows=16, columns=16, slice_thickness=2.5))

    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=float)
    np.testing.assert_allclose(np.diff(positions, axis=0), np.tile(2.5 * normal, (4, 1)))
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3, 4, 5]
    assert {ds.SeriesInstanceUID for ds in datasets} == {datasets[0].SeriesInstanceUID}
    assert len({ds.SOPInstanceUID for ds in datasets}) == 5


@pytest.mark.parametrize(
    ("argument", "value"),
    [("seed", -1), ("rows", 0), ("slice_thickness", 0.0), ("study_instance_uid", "1.02")],
)
def test_build_ct_series_rejects_a_bad_argument_at_the_call(argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=argument):
        build_ct_series(**{argument: value})  # type: ignore[arg-type]


def test_ct_series_with_the_same_seed_is_byte_identical(tmp_path: Path) -> None:
    first = write_ct_series(tmp_path / "a", **SMALL_SERIES)
    second = write_ct_series(tmp_path / "b", **SMALL_SERIES)
    other_seed = write_ct_series(tmp_path / "c", **(SMALL_SERIES | {"seed": 8}))

    assert [p.name for p in first] == [f"{i:04d}.dcm" for i in range(1, 41)]
    assert [sha256_file(p) for p in first] == [sha256_file(p) for p in second]
    assert sha256_file(first[0]) != sha256_file(other_seed[0])


def test_ct_lesion_centre_is_brighter_than_the_tissue_around_it() -> None:
    phantom = ct_phantom(seed=7, slices=40, rows=96, columns=96, pixel_spacing=1.9)
    datasets = list(build_ct_series(**SMALL_SERIES))
    assert phantom.lesions, "the phantom should hold lesions"

    for lesion in phantom.lesions:
        x, y, z = lesion.centre
        x0, y0, z0 = phantom.origin
        k = round((z - z0) / phantom.slice_thickness)
        i = round((y - y0) / phantom.pixel_spacing)
        j = round((x - x0) / phantom.pixel_spacing)
        hu = datasets[k].pixel_array.astype(float) + float(datasets[k].RescaleIntercept)
        rows, columns = np.indices(hu.shape)
        distance = np.hypot(rows - i, columns - j) * phantom.pixel_spacing
        ring = hu[(distance > lesion.radius + 2) & (distance < lesion.radius + 6)]
        centre = hu[i - 1 : i + 2, j - 1 : j + 2].mean()
        assert centre == pytest.approx(lesion.hu, abs=15)
        assert centre > np.median(ring) + 40


def test_ct_lesion_labels_mark_the_lesion_centres() -> None:
    phantom = ct_phantom(seed=3, slices=30, rows=64, columns=64, pixel_spacing=4.0)

    labels = phantom.lesion_labels()

    assert labels.shape == (30, 64, 64)
    assert set(np.unique(labels)) == set(range(len(phantom.lesions) + 1))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
def test_ct_slice_passes_dciodvfy(tmp_path: Path) -> None:
    (path,) = write_ct_series(tmp_path, slices=1, rows=32, columns=32)

    result = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, check=False
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Error" not in output
