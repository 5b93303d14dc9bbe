"""The validation CT generator (bench/validation_ct): series, geometry, HU and lesion truth.

Small studies (24 slices of 96 x 96) keep these fast; each seed is built once per module.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import CTImageStorage
from scipy import ndimage

from bench.validation_ct import evaluate, generator
from bench.validation_ct.generator import LESION_ORGANS, LesionTruth, Tissue, ValidationStudy
from dicomnode.volumes import load_volume, volume_from_datasets

SMALL = {"slices": 24, "rows": 96, "columns": 96}
SEEDS = range(12)


@functools.cache
def small_study(seed: int, lesions: bool = True) -> ValidationStudy:
    return generator.build_study(seed, lesions=lesions, **SMALL)


@functools.cache
def hu_volume(seed: int) -> np.ndarray:
    return volume_from_datasets(small_study(seed).datasets).array


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("DICOMNODE_REQUIRE_TOOLS") == "1":
            pytest.fail(f"DICOMNODE_REQUIRE_TOOLS=1 but {name} is not installed", pytrace=False)
        pytest.skip(f"{name} is not installed (Debian dicom3tools)")
    return path


def interior(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` whose in-plane neighbours are in it too."""
    return ndimage.binary_erosion(mask, np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))


# ------------------------------------------------------------------------- the series


@pytest.mark.parametrize("seed", [0, 3, 5])
def test_series_reads_back_as_one_volume_with_the_study_geometry(seed: int) -> None:
    study = small_study(seed)
    volume = volume_from_datasets(study.datasets)

    assert volume.array.shape == study.lesion_labels.shape == study.tissues.shape == (24, 96, 96)
    assert volume.spacing == pytest.approx(study.spacing, abs=1e-4)
    assert volume.origin == pytest.approx(study.origin, abs=1e-3)
    assert volume.orientation == pytest.approx((1, 0, 0, 0, 1, 0))
    # Slice k of the volume is dataset k: the labels line up with the series.
    assert volume.sop_instance_uids == tuple(str(ds.SOPInstanceUID) for ds in study.datasets)
    positions = [float(ds.ImagePositionPatient[2]) for ds in study.datasets]
    assert np.all(np.diff(positions) > 0)
    assert 1.25 <= study.spacing[0] <= 5
    # The field of view is a 0.6-0.9 mm, 512-pixel one (or larger to hold the body).
    assert study.spacing[1] * 96 >= 0.6 * 512 - 1


def test_series_is_a_ct_image_storage_series_with_seed_derived_identity() -> None:
    study = small_study(7)
    first = study.datasets[0]
    for ds in study.datasets:
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT"
        assert str(ds.PatientName) == "VALIDATION^CT7"
        assert ds.StudyInstanceUID == first.StudyInstanceUID
        assert ds.SeriesInstanceUID == first.SeriesInstanceUID
        assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
        assert ds.BitsAllocated == 16 and ds.PixelRepresentation in (0, 1)
    uids = {str(ds.SOPInstanceUID) for ds in study.datasets}
    assert len(uids) == len(study.datasets)
    assert first.StudyInstanceUID != small_study(8).datasets[0].StudyInstanceUID
    # Stored values are unsigned or signed 16-bit words, with a rescale to HU.
    stored = {
        (ds.PixelRepresentation, ds.BitsStored, float(ds.RescaleIntercept), float(ds.RescaleSlope))
        for ds in (small_study(seed).datasets[0] for seed in SEEDS)
    }
    assert {s[0] for s in stored} == {0, 1}
    assert all(slope == 1 and intercept in (0, -1024) for _, _, intercept, slope in stored)


def test_tissues_read_back_at_their_hounsfield_values() -> None:
    for seed in (0, 4, 9):
        study, hu = small_study(seed), hu_volume(seed)
        tissues = study.tissues
        sigma = study.noise_sigma
        for name in ("liver", "visceral_fat", "muscle", "lung"):
            region = interior(tissues == Tissue[name.upper()])
            if region.sum() < 50:
                continue
            # Texture and correlated noise: the mean of hundreds of voxels is close.
            assert hu[region].mean() == pytest.approx(study.tissue_hu[name], abs=8 + sigma / 4)
        air = interior(tissues == Tissue.AIR)
        assert hu[air].mean() == pytest.approx(-1000, abs=10)
        assert hu.min() >= -1024 and hu.max() <= 3071
        assert hu[tissues == Tissue.CORTICAL_BONE].mean() > 400
        assert 150 < hu[tissues == Tissue.MARROW].mean() < 350
        liver = interior(tissues == Tissue.LIVER) & (study.lesion_labels == 0)
        # Noise: the standard deviation in the liver is about the study's sigma.
        assert 0.7 * sigma <= hu[liver].std() <= 1.3 * sigma + 5


def test_contrast_phases_and_hu_ranges_are_realistic() -> None:
    phases = set()
    for seed in SEEDS:
        study = small_study(seed)
        values = study.tissue_hu
        phases.add(study.phase)
        assert 8 <= study.noise_sigma <= 25
        assert values["fat"] == pytest.approx(-100, abs=10.01)
        assert values["lung"] == pytest.approx(-850, abs=20.01)
        assert 700 <= values["cortical_bone"] <= 1000
        assert values["marrow"] == pytest.approx(250, abs=30.01)
        if study.phase == "none":
            assert 55 <= values["liver"] <= 65 and 45 <= values["spleen"] <= 50
            assert 35 <= values["aorta"] <= 45 and values["kidney_cortex"] <= 34
        elif study.phase == "arterial":
            assert 150 <= values["aorta"] <= 250
            assert values["kidney_cortex"] >= 150 and values["kidney_medulla"] <= 55
        else:
            assert values["portal_vein"] > values["liver"] > 80
    assert phases == {"none", "arterial", "portal_venous"}


@pytest.mark.parametrize("seed", [1, 3])  # signed 16-bit; unsigned 12-bit with contrast
def test_written_study_passes_dciodvfy_and_loads_from_files(tmp_path: Path, seed: int) -> None:
    dciodvfy = require_tool("dciodvfy")
    study = small_study(seed)
    folder = generator.write_study(study, tmp_path)

    files = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))
    assert [p.name for p in files] == [f"{n}.dcm" for n in range(1, 25)]
    for path in (files[0], files[12]):
        result = subprocess.run(
            [dciodvfy, str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "Error" not in output, output
        assert "CTImage" in output
    volume = load_volume(files)
    assert np.array_equal(volume.array, volume_from_datasets(study.datasets).array)
    assert dcmread(files[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    truth = json.loads((folder / "truth.json").read_text())
    assert truth["study_instance_uid"] == study.datasets[0].StudyInstanceUID
    assert [x["label"] for x in truth["lesions"]] == [x.label for x in study.lesions]
    with np.load(folder / "truth.npz") as saved:
        assert np.array_equal(saved["lesion_labels"], study.lesion_labels)
        assert list(saved["sop_instance_uids"]) == truth["sop_instance_uids"]


def test_cli_writes_one_folder_per_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path), "--count", "2", "--seed", "40", "--slices", "8"]
    assert generator.main([*argv, "--rows", "48", "--columns", "48"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study-40", "study-41"]
    for seed in (40, 41):
        folder = tmp_path / f"study-{seed}"
        assert len(list(folder.glob("*.dcm"))) == 8
        assert json.loads((folder / "truth.json").read_text())["seed"] == seed
    assert "study-41" in capsys.readouterr().out


# ------------------------------------------------------------------------- lesions


def test_lesions_lie_inside_their_organ_with_a_margin() -> None:
    seen = 0
    for seed in SEEDS:
        study = small_study(seed)
        labels, tissues = study.lesion_labels, study.tissues
        assert 1 <= len(study.lesions) <= 4
        assert sorted(np.unique(labels[labels > 0])) == [x.label for x in study.lesions]
        for lesion in study.lesions:
            mask = labels == lesion.label
            grown = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1))
            members = np.array(LESION_ORGANS[lesion.organ_class], dtype=np.uint8)
            assert np.isin(tissues[grown], members).all(), (seed, lesion)
            assert mask.sum() == lesion.voxels
            assert mask[lesion.centre_voxel]
            # Sides are the patient's: left is +x in DICOM patient coordinates.
            if lesion.organ.startswith(("left_", "right_")):
                x = np.array([float(ds.ImagePositionPatient[0]) for ds in study.datasets[:1]])
                column_x = x[0] + lesion.centre_voxel[2] * study.spacing[2]
                assert column_x == pytest.approx(lesion.centre_mm[0])
            seen += 1
    assert seen >= 20


def test_lesion_centres_are_given_in_voxels_and_patient_millimetres() -> None:
    study = small_study(2)
    volume = volume_from_datasets(study.datasets)
    for lesion in study.lesions:
        k, j, i = lesion.centre_voxel
        expected = np.add(volume.origin, np.multiply((i, j, k), volume.spacing[::-1]))
        assert lesion.centre_mm == pytest.approx(tuple(expected), abs=1e-3)


def feret(points: np.ndarray) -> float:
    """Largest distance between two of the points."""
    if len(points) < 2:
        return 0.0
    d = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((d**2).sum(-1)).max())


def test_lesions_have_their_stated_size_within_a_voxel() -> None:
    shapes, sizes = set(), []
    for seed in SEEDS:
        study = small_study(seed)
        spacing = np.array(study.spacing)
        diagonal = float(np.linalg.norm(spacing))
        for lesion in study.lesions:
            assert 6 <= lesion.diameter_mm <= 35
            points = np.argwhere(study.lesion_labels == lesion.label) * spacing
            # Centre-sampled voxels reach to within half a voxel of each end.
            assert lesion.diameter_mm - diagonal <= feret(points) <= lesion.diameter_mm + 1e-6
            if lesion.shape == "sphere":
                expected = np.pi / 6 * lesion.diameter_mm**3 / np.prod(spacing)
                if expected > 40:
                    assert lesion.voxels == pytest.approx(expected, rel=0.3)
            shapes.add(lesion.shape)
            sizes.append(lesion.diameter_mm)
    assert shapes == {"sphere", "ellipsoid", "lobulated"}
    assert min(sizes) < 10 and max(sizes) > 25


def test_lesion_free_study_has_no_label() -> None:
    study = small_study(5, lesions=False)
    assert study.lesions == []
    assert not study.lesion_labels.any()
    assert study.lesion_labels.shape == (24, 96, 96)
    # The lesion-free study of a seed is the same image without the lesions, under
    # UIDs of its own.
    with_lesions = small_study(5)
    assert np.array_equal(study.tissues, with_lesions.tissues)
    assert study.tissue_hu == with_lesions.tissue_hu
    assert study.noise_sigma == with_lesions.noise_sigma
    near = ndimage.binary_dilation(with_lesions.lesion_labels > 0, iterations=2)
    assert np.array_equal(hu_volume(5)[~near], volume_from_datasets(study.datasets).array[~near])
    a, b = study.datasets[0], with_lesions.datasets[0]
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert a.PatientName == b.PatientName


def test_same_seed_gives_the_same_study() -> None:
    a = generator.build_study(3, **SMALL)
    b = small_study(3)
    assert a.lesions == b.lesions
    assert np.array_equal(a.lesion_labels, b.lesion_labels)
    for x, y in zip(a.datasets, b.datasets, strict=True):
        assert x == y
        assert x.PixelData == y.PixelData
    other = small_study(4)
    assert other.datasets[0].PixelData != b.datasets[0].PixelData
    studies = list(generator.build_studies(3, 2, **SMALL))
    assert [s.seed for s in studies] == [3, 4]
    assert studies[0].datasets[5].PixelData == b.datasets[5].PixelData


def check_truth_contrast(lesion: LesionTruth) -> None:
    """The lesion's HU (before noise) are what its kind says."""
    delta = lesion.core_hu - lesion.organ_hu
    lung = lesion.organ_class == "lung"
    if lesion.kind == "hypodense":
        assert not lung and -60 <= delta <= -20
    elif lesion.kind == "hyperdense":
        assert (10 <= lesion.core_hu <= 50) if lung else (30 <= delta <= 70)
    elif lesion.kind == "cystic":
        assert 0 <= lesion.core_hu <= 10
    else:
        assert lesion.kind == "rim_enhancing" and lesion.rim_hu is not None
        assert lesion.rim_hu > lesion.organ_hu + 30 or lung
        assert lesion.core_hu < lesion.rim_hu - 50
        assert lesion.core_hu < lesion.organ_hu


def test_lesion_contrast_is_what_the_kind_says() -> None:
    kinds = set()
    for seed in SEEDS:
        study, hu = small_study(seed), hu_volume(seed)
        sigma = study.noise_sigma
        for lesion in study.lesions:
            kinds.add(lesion.kind)
            check_truth_contrast(lesion)
            mask = study.lesion_labels == lesion.label
            members = np.array(LESION_ORGANS[lesion.organ_class], dtype=np.uint8)
            ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
            ring &= np.isin(study.tissues, members) & (study.lesion_labels == 0)
            if lesion.kind == "rim_enhancing":
                # The outermost voxels are the rim: brighter than the middle.
                middle = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))
                if middle.sum() >= 4:
                    assert hu[mask & ~middle].mean() > hu[middle].mean() + 20
                continue
            if mask.sum() < 8:
                continue
            measured = hu[mask].mean()
            tolerance = 6 + 3 * sigma * 2 / np.sqrt(mask.sum())  # noise is correlated
            assert measured == pytest.approx(lesion.core_hu, abs=tolerance), (seed, lesion)
            if ring.sum() >= 8 and lesion.organ_class != "lung":
                contrast = measured - hu[ring].mean()
                if lesion.kind == "hypodense":
                    assert contrast < -20 + tolerance
                elif lesion.kind == "hyperdense":
                    assert contrast > 30 - tolerance
    assert kinds == {"hypodense", "hyperdense", "cystic", "rim_enhancing"}


def test_lesions_vary_in_organ_number_and_kind() -> None:
    organs, counts = set(), set()
    for seed in SEEDS:
        study = small_study(seed)
        organs |= {x.organ_class for x in study.lesions}
        counts.add(len(study.lesions))
    # Small studies near the diaphragm hold liver, spleen and lung lesions.
    assert {"liver", "lung", "spleen"} <= organs
    assert counts >= {1, 2, 3, 4}


def test_kidney_lesions_appear_in_studies_that_cover_the_kidneys() -> None:
    organs: set[str] = set()
    for seed in range(104, 112):
        study = generator.build_study(seed, slices=60, rows=64, columns=64)
        for lesion in study.lesions:
            mask = study.lesion_labels == lesion.label
            members = np.array(LESION_ORGANS[lesion.organ_class], dtype=np.uint8)
            assert np.isin(study.tissues[mask], members).all()
            organs.add(lesion.organ)
        if organs & {"left_kidney", "right_kidney"}:
            break
    assert organs & {"left_kidney", "right_kidney"}


# ------------------------------------------------------------------------- evaluate.py


def lesion_seg(study: ValidationStudy, mask: np.ndarray) -> Dataset:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=study.datasets,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=90,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )


def test_evaluate_scores_a_seg_against_the_truth(tmp_path: Path) -> None:
    truth_dir, seg_dir = tmp_path / "truth", tmp_path / "segs"
    seg_dir.mkdir()
    perfect, partial = small_study(2), small_study(8)
    for study in (perfect, partial):
        generator.write_study(study, truth_dir)
    lesion_seg(perfect, perfect.lesion_labels > 0).save_as(seg_dir / "a.dcm")
    # The second SEG finds lesion 1 only and marks one voxel of healthy tissue.
    predicted = partial.lesion_labels == 1
    healthy = np.argwhere((partial.tissues == Tissue.MUSCLE) & (partial.lesion_labels == 0))[0]
    predicted[tuple(healthy)] = True
    lesion_seg(partial, predicted).save_as(seg_dir / "b.dcm")

    scores = {s.seed: s for s in evaluate.evaluate(truth_dir, seg_dir, "lesion", 1e-9)}

    assert scores[2].dice == 1.0 and scores[2].found == len(perfect.lesions)
    assert scores[2].false_positives == 0 and scores[2].lesion_dice == [1.0] * len(perfect.lesions)
    assert scores[8].found == 1 and scores[8].missed == len(partial.lesions) - 1
    assert scores[8].false_positives == 1
    assert 0 < scores[8].dice < 1
    assert "total: 2 studies" in evaluate.report(list(scores.values()))
