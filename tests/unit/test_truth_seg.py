"""Ground-truth SEG: build, write, dcmread, read back onto the volume, compare."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from dicomnode.errors import VolumeError
from dicomnode.kernel import Code, SegmentLabel, Volume
from dicomnode.models import codes
from dicomnode.synth.ct import build_ct_series, ct_phantom, write_ct_series
from dicomnode.synth.truth import ALGORITHM_NAME, build_truth_segmentation
from dicomnode.volumes import load_volume, volume_from_datasets
from dicomnode.worker.labels import read_segments

SLICES, ROWS, COLUMNS, SEED = 10, 64, 64, 1


def lesion_labels(count: int) -> list[SegmentLabel]:
    return [
        SegmentLabel(n, f"lesion {n}", codes.MORPHOLOGICALLY_ABNORMAL, codes.LESION)
        for n in range(1, count + 1)
    ]


def ct_truth() -> tuple[list[Dataset], npt.NDArray[np.bool_], list[SegmentLabel]]:
    sources = list(build_ct_series(slices=SLICES, rows=ROWS, columns=COLUMNS, seed=SEED))
    phantom = ct_phantom(SEED, SLICES, ROWS, COLUMNS)
    label_map = phantom.lesion_labels()
    masks = np.stack([label_map == n for n in range(1, len(phantom.lesions) + 1)])
    return sources, masks, lesion_labels(len(phantom.lesions))


def write_and_read(seg: hd.seg.Segmentation, path: Path) -> Dataset:
    seg.save_as(path)
    return dcmread(path)


def assert_dciodvfy_clean(path: Path) -> None:
    """dicom3tools' validator prints ``Error - ...`` lines for an invalid object."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not on PATH")
    done = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]
    assert errors == []


def test_ct_truth_round_trips_through_a_written_seg(tmp_path: Path) -> None:
    sources, masks, labels = ct_truth()
    assert masks.any(axis=(1, 2, 3)).all()
    paths = write_ct_series(tmp_path / "ct", slices=SLICES, rows=ROWS, columns=COLUMNS, seed=SEED)
    random.Random(2).shuffle(paths)
    volume = load_volume(paths)

    seg = build_truth_segmentation(sources[::-1], masks, labels)
    ds = write_and_read(seg, tmp_path / "seg.dcm")
    segments = read_segments(ds, volume)

    assert [s.number for s in segments] == [label.number for label in labels]
    assert [s.label for s in segments] == [label.name for label in labels]
    assert all(codes.same_code(s.type, codes.LESION) for s in segments)
    for segment, mask in zip(segments, masks, strict=True):
        assert segment.mask.shape == volume.shape
        assert np.array_equal(segment.mask, mask)
    assert ds.SeriesNumber == 900
    assert ds.SeriesDescription == "Ground truth"
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == ALGORITHM_NAME


def test_ct_truth_seg_passes_dciodvfy(tmp_path: Path) -> None:
    sources, masks, labels = ct_truth()
    path = tmp_path / "seg.dcm"
    build_truth_segmentation(sources, masks, labels).save_as(path)

    assert_dciodvfy_clean(path)


def test_truth_seg_uids_derive_from_the_source_series() -> None:
    sources, masks, labels = ct_truth()

    first = build_truth_segmentation(sources, masks, labels)
    again = build_truth_segmentation(sources, masks, labels)
    other = build_truth_segmentation(sources, masks, labels, series_number=901)

    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        again.SOPInstanceUID,
        again.SeriesInstanceUID,
    )
    assert first.SOPInstanceUID.startswith("2.25.")
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID


def test_truth_seg_keeps_an_empty_segment(tmp_path: Path) -> None:
    sources, masks, labels = ct_truth()
    masks = np.concatenate([masks, np.zeros_like(masks[:1])])
    labels = lesion_labels(len(labels) + 1)

    ds = write_and_read(build_truth_segmentation(sources, masks, labels), tmp_path / "seg.dcm")
    segments = read_segments(Path(tmp_path / "seg.dcm"), volume_from_datasets(sources))

    assert len(ds.SegmentSequence) == len(labels)
    assert not segments[-1].mask.any()
    assert np.array_equal(segments[0].mask, masks[0])


def test_read_segments_places_frames_by_position_without_references(tmp_path: Path) -> None:
    sources, masks, labels = ct_truth()
    ds = write_and_read(build_truth_segmentation(sources, masks, labels), tmp_path / "seg.dcm")
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence

    segments = read_segments(ds, volume_from_datasets(sources))

    for segment, mask in zip(segments, masks, strict=True):
        assert np.array_equal(segment.mask, mask)


def test_read_segments_refuses_a_seg_of_another_series(tmp_path: Path) -> None:
    sources, masks, labels = ct_truth()
    ds = write_and_read(build_truth_segmentation(sources, masks, labels), tmp_path / "seg.dcm")
    other = volume_from_datasets(
        list(build_ct_series(slices=SLICES, rows=ROWS, columns=COLUMNS, seed=SEED + 1))
    )

    with pytest.raises(VolumeError, match="references none of the instances"):
        read_segments(ds, other)


def test_read_segments_thresholds_a_fractional_seg_at_one_half(tmp_path: Path) -> None:
    sources = list(build_ct_series(slices=3, rows=16, columns=16, seed=SEED))
    probabilities = np.zeros((3, 16, 16), dtype=np.float32)
    probabilities[1, 2:6, 3:9] = 0.75
    probabilities[1, 8:10, 3:9] = 0.25
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=concept(codes.MORPHOLOGICALLY_ABNORMAL),
        segmented_property_type=concept(codes.LESION),
        algorithm_type="MANUAL",
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=probabilities,
        segmentation_type="FRACTIONAL",
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dicomnode",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )

    segments = read_segments(
        write_and_read(seg, tmp_path / "seg.dcm"), volume_from_datasets(sources)
    )

    assert np.array_equal(segments[0].mask, probabilities >= 0.5)


def test_enhanced_ct_truth_references_source_frames(tmp_path: Path) -> None:
    source = dcmread(get_testdata_file("eCT_Supplemental.dcm", download=False))
    volume = volume_from_datasets([source])
    masks = np.zeros((1, *volume.shape), dtype=np.bool_)
    masks[0, 0, 10:50, 10:60] = True
    masks[0, 1, 100:120, 5:9] = True

    ds = write_and_read(
        build_truth_segmentation([source], masks, lesion_labels(1)), tmp_path / "seg.dcm"
    )

    assert np.array_equal(read_segments(ds, volume)[0].mask, masks[0])


@pytest.mark.parametrize("frame_of_reference", [False, True])
def test_projection_truth_round_trips_and_passes_dciodvfy(
    tmp_path: Path, frame_of_reference: bool
) -> None:
    source = dx_image(frame_of_reference)
    source.save_as(tmp_path / "dx.dcm", enforce_file_format=True)
    volume = load_volume([tmp_path / "dx.dcm"])
    masks = np.zeros((2, *volume.shape), dtype=np.bool_)
    masks[0, 0, 5:20, 10:30] = True
    masks[1, 0, 30:40, 2:8] = True

    seg = build_truth_segmentation([source], masks, lesion_labels(2))
    path = tmp_path / "seg.dcm"
    segments = read_segments(write_and_read(seg, path), volume)

    assert [s.mask.sum() for s in segments] == [masks[0].sum(), masks[1].sum()]
    assert all(np.array_equal(s.mask, m) for s, m in zip(segments, masks, strict=True))
    assert_dciodvfy_clean(path)


def test_cr_chest_truth_round_trips(tmp_path: Path) -> None:
    source = dcmread(get_testdata_file("RG1_UNCR.dcm", download=False))
    # Its PixelSpacing is 0\0, which a SEG must not copy: without it there is no measure.
    del source.PixelSpacing
    volume = volume_from_datasets([source])
    masks = np.zeros((1, *volume.shape), dtype=np.bool_)
    masks[0, 0, 400:900, 300:800] = True

    ds = write_and_read(
        build_truth_segmentation([source], masks, lesion_labels(1)), tmp_path / "seg.dcm"
    )

    assert np.array_equal(read_segments(ds, volume)[0].mask, masks[0])


def test_truth_seg_refuses_a_source_with_zero_pixel_spacing() -> None:
    source = dcmread(get_testdata_file("RG1_UNCR.dcm", download=False), stop_before_pixels=True)
    masks = np.zeros((1, 1, source.Rows, source.Columns), dtype=np.bool_)

    with pytest.raises(ValueError, match="PixelSpacing must be positive"):
        build_truth_segmentation([source], masks, lesion_labels(1))


def test_truth_seg_refuses_a_projection_with_frame_of_reference_and_no_thickness() -> None:
    source = dx_image(frame_of_reference=True)
    source.PixelSpacing = ["0.1", "0.1"]
    masks = np.zeros((1, 1, source.Rows, source.Columns), dtype=np.bool_)

    with pytest.raises(ValueError, match="needs SliceThickness"):
        build_truth_segmentation([source], masks, lesion_labels(1))


def test_truth_seg_refuses_masks_that_do_not_fit_the_sources() -> None:
    sources, masks, labels = ct_truth()

    with pytest.raises(ValueError, match="masks must have shape"):
        build_truth_segmentation(sources, masks[:, 1:], labels)
    with pytest.raises(ValueError, match="bool array"):
        build_truth_segmentation(sources, masks.astype(np.uint8), labels)
    with pytest.raises(ValueError, match="numbers must be 1, 2"):
        build_truth_segmentation(sources, masks, labels[::-1])


def concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def dx_image(frame_of_reference: bool) -> Dataset:
    """A small DX For Presentation image: no patient geometry, ImagerPixelSpacing."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DX^Test", "DX1", "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20200101", "120000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.Manufacturer = "dicomnode"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = ["0.2", "0.2"]
    if frame_of_reference:
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 48, 40
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(48 * 40, dtype="<u2").reshape(48, 40).tobytes()
    return ds


def test_volume_of_a_projection_has_one_slice_for_masks() -> None:
    volume: Volume = volume_from_datasets([dx_image(frame_of_reference=False)])

    assert volume.shape == (1, 48, 40)
    assert volume.spacing == (1.0, 0.2, 0.2)
