"""Series -> Volume: sorting, rescale, refusals and splits, codecs, multi-frame, projection."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedCTImageStorage, generate_uid

from dicomnode.errors import VolumeError
from dicomnode.synth.ct import SOFT_TISSUE_HU, build_ct_series, ct_phantom, write_ct_series
from dicomnode.volumes import load_volume, slice_order, split_volumes, volume_from_datasets
from tests.factories import short_pixel_data, truncated_pixel_data


def bundled(name: str) -> Path:
    """A file bundled with pydicom or pydicom-data, never downloaded."""
    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.skip(f"{name} is not bundled with the installed pydicom / pydicom-data")
    return Path(str(found))


def ct_paths(tmp_path: Path, slices: int = 6, seed: int = 1) -> list[Path]:
    return write_ct_series(tmp_path / "ct", slices=slices, rows=64, columns=64, seed=seed)


def rewrite(path: Path, **changes: object) -> None:
    ds = dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


# Synthetic CT: order, values, refusals, splits.


def test_load_volume_sorts_shuffled_files_along_the_normal(tmp_path: Path) -> None:
    paths = ct_paths(tmp_path, slices=8)
    in_order = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    shuffled = paths[:]
    random.Random(4).shuffle(shuffled)

    volume = load_volume(shuffled)

    assert volume.sop_instance_uids == tuple(in_order)
    assert volume.frame_numbers == (1,) * 8
    phantom = ct_phantom(1, 8, 64, 64)
    assert volume.origin == pytest.approx(phantom.image_position(0))
    assert volume.spacing == pytest.approx((1.0, 0.7, 0.7))
    assert volume.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    first = dcmread(paths[0])
    assert volume.series_instance_uid == first.SeriesInstanceUID
    assert volume.frame_of_reference_uid == first.FrameOfReferenceUID


def test_load_volume_applies_rescale_to_hounsfield_units(tmp_path: Path) -> None:
    volume = load_volume(ct_paths(tmp_path, slices=4))

    assert volume.array.dtype == np.float32
    # The 45 mm field of view lies inside the soft tissue: outside lesions it is 40 HU.
    outside_lesions = ct_phantom(1, 4, 64, 64).lesion_labels() == 0
    assert float(np.median(volume.array[outside_lesions])) == pytest.approx(SOFT_TISSUE_HU, abs=2)


def test_volume_from_datasets_matches_load_volume(tmp_path: Path) -> None:
    datasets = list(build_ct_series(slices=5, rows=64, columns=64, seed=1))
    from_files = load_volume(ct_paths(tmp_path, slices=5))

    from_memory = volume_from_datasets(datasets[::-1])

    assert np.array_equal(from_memory.array, from_files.array)
    assert from_memory.sop_instance_uids == from_files.sop_instance_uids
    assert slice_order(datasets[::-1]) == [(4, 1), (3, 1), (2, 1), (1, 1), (0, 1)]


def test_load_volume_refuses_a_series_with_a_missing_slice(tmp_path: Path) -> None:
    paths = ct_paths(tmp_path, slices=7)
    series_uid = dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    del paths[3]

    with pytest.raises(VolumeError, match="gap") as caught:
        load_volume(paths)

    assert series_uid in str(caught.value)
    assert caught.value.series_instance_uid == series_uid


def test_split_volumes_splits_a_series_at_a_missing_slice(tmp_path: Path) -> None:
    paths = ct_paths(tmp_path, slices=7)
    del paths[3]

    volumes = split_volumes(paths)

    assert [v.shape[0] for v in volumes] == [3, 3]
    assert all(v.spacing[0] == pytest.approx(1.0) for v in volumes)
    assert volumes[1].origin[2] - volumes[0].origin[2] == pytest.approx(4.0)


def test_load_volume_refuses_and_split_separates_mixed_orientation(tmp_path: Path) -> None:
    paths = ct_paths(tmp_path, slices=5)
    rewrite(paths[4], ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])

    with pytest.raises(VolumeError, match="mixed orientation"):
        load_volume(paths)
    volumes = split_volumes(paths)

    assert [v.shape[0] for v in volumes] == [4, 1]
    assert volumes[1].orientation == (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def test_load_volume_refuses_and_split_separates_mixed_sizes(tmp_path: Path) -> None:
    paths = ct_paths(tmp_path, slices=5)
    ds = dcmread(paths[4])
    cropped = ds.pixel_array[:32, :48].copy()
    ds.Rows, ds.Columns = cropped.shape
    ds.PixelData = cropped.tobytes()
    ds.save_as(paths[4], enforce_file_format=True)

    with pytest.raises(VolumeError, match="mixed rows/columns"):
        load_volume(paths)
    volumes = split_volumes(paths)

    assert [v.shape for v in volumes] == [(4, 64, 64), (1, 32, 48)]


def test_load_volume_refuses_mixed_pixel_spacing(tmp_path: Path) -> None:
    paths = ct_paths(tmp_path, slices=3)
    rewrite(paths[1], PixelSpacing=["0.8", "0.8"])

    with pytest.raises(VolumeError, match="mixed pixel spacing"):
        load_volume(paths)


def test_load_volume_refuses_duplicate_positions(tmp_path: Path) -> None:
    paths = ct_paths(tmp_path, slices=5)
    position = dcmread(paths[2], stop_before_pixels=True).ImagePositionPatient
    rewrite(paths[3], ImagePositionPatient=position)

    with pytest.raises(VolumeError, match="duplicate position"):
        load_volume(paths)


def test_load_volume_refuses_files_of_two_series(tmp_path: Path) -> None:
    paths = ct_paths(tmp_path, slices=3)
    rewrite(paths[0], SeriesInstanceUID=generate_uid())

    with pytest.raises(VolumeError, match="mixed series"):
        load_volume(paths)
    assert len(split_volumes(paths)) == 2


def test_load_volume_refuses_a_file_that_is_not_dicom(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file")

    with pytest.raises(VolumeError, match="cannot read the DICOM header"):
        load_volume([junk])


@pytest.mark.parametrize("broken", ["short", "truncated"])
def test_load_volume_refuses_pixel_data_that_cannot_be_decoded(tmp_path: Path, broken: str) -> None:
    paths = ct_paths(tmp_path, slices=3)
    ds = dcmread(paths[1])
    if broken == "short":
        short_pixel_data(ds).save_as(paths[1], enforce_file_format=True)
    else:
        paths[1].write_bytes(truncated_pixel_data(ds))

    with pytest.raises(
        VolumeError, match=f"cannot decode the pixel data of instance {ds.SOPInstanceUID}"
    ):
        load_volume(paths)


def test_load_volume_refuses_no_files() -> None:
    with pytest.raises(VolumeError, match="no instances"):
        load_volume([])


# pydicom's bundled files.


def test_load_volume_reads_the_ct5n_series_in_ascending_position() -> None:
    folder = bundled("CT_small.dcm").parent / "dicomdirtests" / "98892001" / "CT5N"
    paths = sorted(folder.iterdir())

    volume = load_volume(paths)

    assert volume.shape == (5, 16, 16)
    assert volume.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    assert volume.origin == pytest.approx((-72.199997, -143.0, -1.2375))
    numbers = {
        str(ds.SOPInstanceUID): int(ds.InstanceNumber)
        for ds in (dcmread(p, stop_before_pixels=True) for p in paths)
    }
    assert [numbers[uid] for uid in volume.sop_instance_uids] == [10, 9, 8, 7, 6]


def test_load_volume_uses_slice_thickness_for_a_single_ct_image() -> None:
    path = bundled("CT_small.dcm")
    ds = dcmread(path)

    volume = load_volume([path])

    assert volume.shape == (1, 128, 128)
    assert volume.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(volume.array[0], expected.astype(np.float32))


@pytest.mark.parametrize(
    "name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"]
)
def test_load_volume_decodes_lossless_compression_exactly(name: str) -> None:
    reference = load_volume([bundled("MR_small.dcm")])

    volume = load_volume([bundled(name)])

    assert np.array_equal(volume.array, reference.array)
    assert volume.origin == reference.origin


def test_load_volume_decodes_jpeg_2000() -> None:
    reference = load_volume([bundled("JPEG2000_UNC.dcm")])

    volume = load_volume([bundled("JPEG2000.dcm")])

    assert volume.shape == (1, 1024, 256)
    assert np.abs(volume.array - reference.array).max() <= 1


def test_load_volume_converts_colour_to_luminance() -> None:
    ds = dcmread(bundled("SC_rgb.dcm"))
    rgb = ds.pixel_array.astype(np.float32)

    volume = load_volume([bundled("SC_rgb.dcm")])

    assert volume.shape == (1, 100, 100)
    assert np.allclose(volume.array[0], rgb @ np.float32([0.299, 0.587, 0.114]), atol=1e-3)
    assert np.array_equal(load_volume([bundled("SC_rgb_rle.dcm")]).array, volume.array)


def test_load_volume_decodes_jpeg_baseline_ybr_to_luminance() -> None:
    reference = load_volume([bundled("SC_rgb.dcm")])

    volume = load_volume([bundled("SC_rgb_jpeg_dcmtk.dcm")])

    # Lossy: the luminance stays within a few grey levels of the original.
    assert float(np.abs(volume.array - reference.array).mean()) < 3


def test_load_volume_sorts_enhanced_ct_frames_from_functional_groups() -> None:
    path = bundled("eCT_Supplemental.dcm")
    ds = dcmread(path)

    volume = load_volume([path])

    # Rows run along -x, so the normal is -z: the frame at z = -149 comes first.
    assert volume.frame_numbers == (2, 1)
    assert volume.sop_instance_uids == (ds.SOPInstanceUID,) * 2
    assert volume.orientation == (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert volume.origin == pytest.approx((99.5, -301.5, -149.0))
    assert volume.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert np.array_equal(volume.array[0], ds.pixel_array[1].astype(np.float32) - 1024)


def test_load_volume_applies_per_frame_rescale_of_an_enhanced_image() -> None:
    slices = list(build_ct_series(slices=4, rows=64, columns=64, seed=2))
    reference = volume_from_datasets(slices)
    enhanced = _enhanced_ct(slices[::-1], intercepts=[-1024.0, -1050.0, -1024.0, -1100.0])

    volume = volume_from_datasets([enhanced])

    assert volume.frame_numbers == (4, 3, 2, 1)
    assert volume.origin == pytest.approx(reference.origin)
    assert volume.spacing == pytest.approx(reference.spacing)
    # Stored values absorb each frame's intercept, so only per-frame rescale gives HU back.
    assert np.array_equal(volume.array, reference.array)


def test_load_volume_keeps_stored_order_of_a_multi_frame_image_without_geometry() -> None:
    volume = load_volume([bundled("emri_small.dcm")])

    assert volume.shape == (10, 64, 64)
    assert volume.frame_numbers == tuple(range(1, 11))
    assert volume.spacing[0] == pytest.approx(1.2)  # SpacingBetweenSlices
    assert volume.origin == (0.0, 0.0, 0.0)


def test_load_volume_reads_a_projection_image_and_inverts_monochrome1() -> None:
    path = bundled("RG1_UNCR.dcm")
    ds = dcmread(path)

    volume = load_volume([path])

    assert volume.shape == (1, 1955, 1841)
    assert volume.origin == (0.0, 0.0, 0.0)
    assert volume.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    # PixelSpacing is 0\0 in this file: not a spacing, so 1 mm.
    assert volume.spacing == (1.0, 1.0, 1.0)
    assert volume.frame_of_reference_uid is None
    # 15 bits stored: bright means dense after mirroring the stored range.
    assert np.array_equal(volume.array[0], (32767 - ds.pixel_array).astype(np.float32))


def test_load_volume_takes_imager_pixel_spacing_of_a_projection(tmp_path: Path) -> None:
    ds = _small_dx()
    path = tmp_path / "dx.dcm"
    ds.save_as(path, enforce_file_format=True)

    volume = load_volume([path])

    assert volume.spacing == (1.0, 0.15, 0.1)


def test_split_volumes_keeps_projection_images_apart(tmp_path: Path) -> None:
    paths, series_uid = [], generate_uid()
    for number in (1, 2):
        ds = _small_dx()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(tmp_path / f"dx{number}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)

    with pytest.raises(VolumeError, match="without ImagePositionPatient"):
        load_volume(paths)
    assert [v.shape for v in split_volumes(paths)] == [(1, 8, 6), (1, 8, 6)]


def _small_dx() -> Dataset:
    ds = dcmread(bundled("CT_small.dcm"))
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "FrameOfReferenceUID",
    ):
        delattr(ds, keyword)
    ds.ImagerPixelSpacing = ["0.15", "0.1"]
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid()
    pixels = ds.pixel_array[:8, :6].copy()
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    return ds


def _enhanced_ct(slices: list[Dataset], intercepts: list[float]) -> Dataset:
    """One multi-frame image of `slices` with per-frame positions and rescale."""
    ds = copy.deepcopy(slices[0])
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleIntercept",
        "RescaleSlope",
    ):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.NumberOfFrames = len(slices)
    shared = Dataset()
    shared.PixelMeasuresSequence = [_item(PixelSpacing=slices[0].PixelSpacing, SliceThickness="1")]
    shared.PlaneOrientationSequence = [
        _item(ImageOrientationPatient=slices[0].ImageOrientationPatient)
    ]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, data = [], []
    for source, intercept in zip(slices, intercepts, strict=True):
        frame = Dataset()
        frame.PlanePositionSequence = [_item(ImagePositionPatient=source.ImagePositionPatient)]
        frame.PixelValueTransformationSequence = [
            _item(RescaleIntercept=str(intercept), RescaleSlope="1", RescaleType="HU")
        ]
        frames.append(frame)
        # The same HU with another intercept: stored value minus the intercept's shift.
        shift = int(intercept - float(source.RescaleIntercept))
        data.append((source.pixel_array.astype(np.int32) - shift).astype("<u2"))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = np.stack(data).tobytes()
    return ds


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item
