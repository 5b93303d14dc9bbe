"""Outputs: SEG, SR and SC built, written, read back with pydicom and highdicom, validated."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as sr_codes

from dicomnode import __version__
from dicomnode.kernel import (
    ClassLabel,
    Finding,
    ModelResult,
    Region,
    SegmentLabel,
    Volume,
)
from dicomnode.models import codes
from dicomnode.outputs.identity import device_uid, output_uid
from dicomnode.outputs.sc import BANNER, banner_mask, build_overlay_capture, key_slices
from dicomnode.outputs.seg import build_segmentation, segment_number_map
from dicomnode.outputs.sr import build_measurement_report
from dicomnode.outputs.validate import ValidationReport, validate_output
from dicomnode.synth.ct import build_ct_series, ct_phantom
from dicomnode.synth.mg import MG_VIEWS, build_mg_study
from dicomnode.volumes import volume_from_datasets

SLICES, ROWS, COLUMNS, SEED = 20, 64, 64, 1
JOB = "study-1.2.3@v1/pipeline-ct"
CT_LABELS = (
    SegmentLabel(1, "body", codes.ANATOMICAL_STRUCTURE, codes.BODY),
    SegmentLabel(2, "lesion", codes.MORPHOLOGICALLY_ABNORMAL, codes.LESION),
)
MG_CLASSES = (
    ClassLabel("normal", codes.NORMAL),
    ClassLabel("benign", codes.BENIGN),
    ClassLabel("suspicious", codes.MALIGNANT),
)


@dataclass(frozen=True)
class ModelInfo:
    """What the outputs need of a model (name, version, labels, classes)."""

    name: str
    version: str
    labels: tuple[SegmentLabel, ...]
    classes: tuple[ClassLabel, ...] = ()


CT_MODEL = ModelInfo("ct-lesion-seg", "1", CT_LABELS)


@dataclass(frozen=True)
class Ct:
    sources: list[Dataset]
    volume: Volume
    masks: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Mg:
    images: dict[str, Dataset]
    volumes: dict[str, Volume]
    masks: dict[str, npt.NDArray[np.bool_]]
    labels: tuple[SegmentLabel, ...]
    side: str


@pytest.fixture(scope="module")
def ct() -> Ct:
    sources = list(build_ct_series(slices=SLICES, rows=ROWS, columns=COLUMNS, seed=SEED))
    phantom = ct_phantom(SEED, SLICES, ROWS, COLUMNS)
    lesions = phantom.lesion_labels() > 0
    masks = np.stack([phantom.body_mask() & ~lesions, lesions])
    masks[:, :3] = False  # a few empty slices, so frames are omitted
    return Ct(sources, volume_from_datasets(sources), masks)


@pytest.fixture(scope="module")
def mg() -> Mg:
    study = build_mg_study(5, rows=128, columns=104, finding="suspicious")
    volumes = {view: volume_from_datasets([study.images[view]]) for view in MG_VIEWS}
    side = next(v for v in MG_VIEWS if study.masks[v].any())[0]
    return Mg(study.images, volumes, study.masks, study.truth_labels, side)


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not on PATH")


def assert_valid(report: ValidationReport) -> None:
    need("dciodvfy")
    assert report.errors == []
    assert report.ok
    assert "dciodvfy" in report.validator


def dsrdump_stderr(path: Path) -> str:
    need("dsrdump")
    done = subprocess.run(
        ["dsrdump", "-v", "+Pt", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    return done.stderr


def ct_seg(ct: Ct, job_key: str = JOB) -> hd.seg.Segmentation:
    seg = build_segmentation(
        ct.sources[::-1],
        ct.volume,
        ct.masks,
        CT_LABELS,
        model_name=CT_MODEL.name,
        model_version=CT_MODEL.version,
        job_key=job_key,
    )
    assert seg is not None
    return seg


def lesion_finding(ct: Ct) -> Finding:
    areas = ct.masks[1].sum(axis=(1, 2))
    k = int(areas.argmax())
    rows = np.flatnonzero(ct.masks[1, k].any(axis=1))
    cols = np.flatnonzero(ct.masks[1, k].any(axis=0))
    region = Region("ct", k, int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    return Finding(
        codes.LESION,
        0.87,
        views=("ct",),
        segment_number=2,
        measurements={"volume": (523.6, "mm3"), "longest_diameter": (12.5, "mm")},
        regions=(region,),
    )


def ct_report(ct: Ct, seg: hd.seg.Segmentation | None, result: ModelResult) -> hd.sr.EnhancedSR:
    return build_measurement_report(
        {"ct": ct.sources},
        result,
        CT_MODEL,
        volumes={"ct": ct.volume},
        job_key=JOB,
        segmentations={"ct": seg} if seg is not None else None,
        segment_numbers={"ct": segment_number_map(ct.masks, CT_LABELS)} if seg else None,
    )


def write_read(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path)


# -- identity -------------------------------------------------------------------


def test_output_uid_is_a_deterministic_valid_uid_per_job_and_kind() -> None:
    uid = output_uid(JOB, "seg", "1.2.3")
    assert uid == output_uid(JOB, "seg", "1.2.3")
    assert uid.is_valid and uid.startswith("2.25.") and len(uid) <= 64
    assert uid != output_uid("other job", "seg", "1.2.3")
    assert uid != output_uid(JOB, "sr", "1.2.3")
    assert output_uid(JOB, "a", "bc") != output_uid(JOB, "ab", "c")
    assert device_uid("m", "1") == device_uid("m", "1") != device_uid("m", "2")


def test_output_uid_without_a_job_key_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="job_key"):
        output_uid("", "seg")


# -- SEG --------------------------------------------------------------------------


def test_ct_seg_round_trips_with_the_masks_on_the_source_slices(ct: Ct, tmp_path: Path) -> None:
    seg = ct_seg(ct)
    ds = write_read(seg, tmp_path / "seg.dcm")
    assert_valid(validate_output(ds, tmp_path / "seg.dcm", masks=ct.masks, volume=ct.volume))

    read = hd.seg.Segmentation.from_dataset(ds)
    assert read.number_of_segments == 2
    described = read.get_segment_description(2)
    assert described.segmented_property_type.value == codes.LESION.value
    assert described.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert described.algorithm_identification[0].AlgorithmName == CT_MODEL.name
    assert described.algorithm_identification[0].AlgorithmVersion == CT_MODEL.version
    family = described.algorithm_identification[0].AlgorithmFamilyCodeSequence[0]
    assert family.CodeValue == sr_codes.DCM.ArtificialIntelligence.value
    # Empty (slice, segment) frames are omitted.
    assert int(ds.NumberOfFrames) == int(ct.masks.any(axis=(2, 3)).sum())
    assert ds.StudyInstanceUID == ct.sources[0].StudyInstanceUID
    assert ds.PatientID == ct.sources[0].PatientID
    assert ds.SeriesInstanceUID != ct.sources[0].SeriesInstanceUID
    assert (ds.Manufacturer, ds.ManufacturerModelName) == ("dicomnode", CT_MODEL.name)
    assert list(ds.SoftwareVersions) == [__version__, CT_MODEL.version]
    referenced = {
        i.ReferencedSOPInstanceUID
        for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced <= {str(s.SOPInstanceUID) for s in ct.sources}


def test_seg_leaves_out_empty_labels_and_renumbers_the_rest(ct: Ct, tmp_path: Path) -> None:
    masks = ct.masks.copy()
    masks[0] = False
    assert segment_number_map(masks, CT_LABELS) == {2: 1}
    seg = build_segmentation(
        ct.sources, ct.volume, masks, CT_LABELS, model_name="m", model_version="1", job_key=JOB
    )
    assert seg is not None
    ds = write_read(seg, tmp_path / "seg.dcm")
    read = hd.seg.Segmentation.from_dataset(ds)
    assert read.number_of_segments == 1
    assert read.get_segment_description(1).segment_label == "lesion"
    assert_valid(validate_output(ds, tmp_path / "seg.dcm", masks=masks, volume=ct.volume))


def test_seg_is_none_when_every_mask_is_empty(ct: Ct) -> None:
    empty = np.zeros_like(ct.masks)
    assert segment_number_map(empty, CT_LABELS) == {}
    args = {"model_name": "m", "model_version": "1", "job_key": JOB}
    assert build_segmentation(ct.sources, ct.volume, empty, CT_LABELS, **args) is None


def test_seg_on_a_single_mammogram_validates(mg: Mg, tmp_path: Path) -> None:
    view = f"{mg.side}-CC"
    seg = build_segmentation(
        [mg.images[view]],
        mg.volumes[view],
        mg.masks[view],
        mg.labels,
        model_name="mg-4view",
        model_version="1",
        job_key=JOB,
    )
    assert seg is not None
    ds = write_read(seg, tmp_path / "seg.dcm")
    assert list(ds.PatientOrientation) == list(mg.images[view].PatientOrientation)
    report = validate_output(
        ds, tmp_path / "seg.dcm", masks=mg.masks[view], volume=mg.volumes[view]
    )
    assert_valid(report)


# -- SR ---------------------------------------------------------------------------


def test_ct_sr_references_the_seg_segment_with_probability_and_measurements(
    ct: Ct, tmp_path: Path
) -> None:
    seg = ct_seg(ct)
    finding = lesion_finding(ct)
    sr = ct_report(ct, seg, ModelResult(masks={"ct": ct.masks}, findings=(finding,)))
    path = tmp_path / "sr.dcm"
    ds = write_read(sr, path)
    assert_valid(validate_output(ds, path))
    assert dsrdump_stderr(path) == ""
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    assert ds.StudyInstanceUID == ct.sources[0].StudyInstanceUID

    report = hd.sr.MeasurementReport.from_sequence([ds])
    [volumetric] = report.get_volumetric_roi_measurement_groups()
    assert volumetric.finding_type.value == codes.LESION.value
    reference = volumetric.referenced_segment
    assert reference is not None
    assert reference[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == 2
    values = {m.name.meaning: (m.value, m.unit.value) for m in volumetric.get_measurements()}
    assert values == {
        "Certainty of Finding": (pytest.approx(0.87), "{ratio}"),
        "Volume": (pytest.approx(523.6), "mm3"),
        "Long axis": (pytest.approx(12.5), "mm"),
    }
    [planar] = report.get_planar_roi_measurement_groups()
    assert planar.tracking_uid == volumetric.tracking_uid
    region = finding.regions[0]
    assert planar.roi is not None
    source = planar.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == ct.volume.sop_instance_uids[region.slice_index]
    corners = planar.roi.value.tolist()
    assert corners[0] == [region.column0, region.row0]
    assert corners[2] == [region.column1, region.row1]
    [observer] = report.get_observer_contexts()
    attributes = observer.observer_identifying_attributes
    assert attributes.uid == device_uid(CT_MODEL.name, CT_MODEL.version)
    assert attributes.model_name == "ct-lesion-seg 1"


def test_multi_view_sr_lists_every_view_and_the_class_probabilities(mg: Mg, tmp_path: Path) -> None:
    segs, numbers = {}, {}
    for view in MG_VIEWS:
        if mg.masks[view].any():
            seg = build_segmentation(
                [mg.images[view]],
                mg.volumes[view],
                mg.masks[view],
                mg.labels,
                model_name="mg-4view",
                model_version="1",
                job_key=JOB,
            )
            assert seg is not None
            segs[view], numbers[view] = seg, segment_number_map(mg.masks[view], mg.labels)
    other = "R" if mg.side == "L" else "L"
    probabilities = {"normal": 0.05, "benign": 0.02, "suspicious": 0.93}
    probabilities |= {f"{mg.side}:suspicious": 0.9, f"{other}:normal": 0.97}
    findings = (
        Finding(
            codes.MALIGNANT,
            0.93,
            laterality=mg.side,
            views=(f"{mg.side}-CC", f"{mg.side}-MLO"),
            segment_number=1,
        ),
        Finding(
            codes.MASS,
            0.6,
            laterality=other,
            views=(f"{other}-CC", f"{other}-MLO"),
            regions=(
                Region(f"{other}-CC", 0, 5, 6, 20, 21),
                Region(f"{other}-MLO", 0, 7, 8, 22, 23),
            ),
        ),
    )
    sr = build_measurement_report(
        {view: [mg.images[view]] for view in MG_VIEWS},
        ModelResult(probabilities=probabilities, findings=findings),
        ModelInfo("mg-4view", "1", mg.labels, MG_CLASSES),
        volumes=mg.volumes,
        job_key=JOB,
        segmentations=segs,
        segment_numbers=numbers,
    )
    path = tmp_path / "sr.dcm"
    ds = write_read(sr, path)
    assert_valid(validate_output(ds, path))
    assert dsrdump_stderr(path) == ""

    library = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    listed = {
        image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in library[0].ContentSequence
        for image in group.ContentSequence
    }
    assert listed == {str(mg.images[v].SOPInstanceUID) for v in MG_VIEWS}
    report = hd.sr.MeasurementReport.from_sequence([ds])
    planar = report.get_planar_roi_measurement_groups()
    by_segment = [g for g in planar if g.referenced_segmentation_frame is not None]
    assert len(by_segment) == len(segs)
    image_groups = report.get_image_measurement_groups()
    by_name = {g.tracking_identifier: g for g in image_groups}
    mass = by_name["finding 2: Mass"]
    [certainty] = mass.get_measurements(name=sr_codes.DCM.CertaintyOfFinding)
    assert certainty.value == pytest.approx(0.6)
    assert len(certainty.referenced_coordinates) == 2
    assert {s.referenced_sop_instance_uid for s in mass.source_images} == {
        str(mg.images[f"{other}-CC"].SOPInstanceUID),
        str(mg.images[f"{other}-MLO"].SOPInstanceUID),
    }
    for key, value in probabilities.items():
        group = by_name[f"class {key}"]
        [measured] = group.get_measurements(name=sr_codes.DCM.CertaintyOfFinding)
        assert measured.value == pytest.approx(value)
    lateral = by_name[f"class {mg.side}:suspicious"]
    assert lateral.finding_type.value == codes.MALIGNANT.value
    [site] = lateral.finding_sites
    assert site.value.meaning == "Breast"


def test_sr_without_findings_says_no_abnormality_and_references_no_seg(
    ct: Ct, tmp_path: Path
) -> None:
    sr = ct_report(ct, None, ModelResult())
    path = tmp_path / "sr.dcm"
    ds = write_read(sr, path)
    assert_valid(validate_output(ds, path))
    assert dsrdump_stderr(path) == ""
    report = hd.sr.MeasurementReport.from_sequence([ds])
    [group] = report.get_image_measurement_groups()
    assert group.finding_type.value == sr_codes.DCM.NoAbnormality.value
    assert report.get_volumetric_roi_measurement_groups() == []
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {s.SeriesInstanceUID for s in evidence} == {ct.sources[0].SeriesInstanceUID}


# -- SC ---------------------------------------------------------------------------


def test_overlay_capture_burns_outlines_and_the_banner_into_key_slices(
    ct: Ct, tmp_path: Path
) -> None:
    images = build_overlay_capture(
        ct.sources, ct.volume, ct.masks, CT_LABELS, model_name="m", model_version="1", job_key=JOB
    )
    assert len(images) == len(key_slices(ct.masks)) >= 1
    for number, image in enumerate(images):
        path = tmp_path / f"sc{number}.dcm"
        ds = write_read(image, path)
        assert_valid(validate_output(ds, path))
        assert ds.BurnedInAnnotation == "YES"
        assert ds.StudyInstanceUID == ct.sources[0].StudyInstanceUID
        assert ds.SeriesInstanceUID not in {ct.sources[0].SeriesInstanceUID}
        pixels = ds.pixel_array
        assert pixels.shape[2] == 3 and pixels.shape[1] >= 512
        text = banner_mask(BANNER, pixels.shape[1])
        band = pixels[4 : 4 + text.shape[0]]
        yellow = (band == (255, 255, 0)).all(axis=2)
        assert yellow.sum() == text.sum() > 0
        shown = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        assert shown in ct.volume.sop_instance_uids
        # The outline colour of each label on the slice appears in the image.
        index = ct.volume.sop_instance_uids.index(shown)
        for colour, plane in zip(((255, 48, 48), (48, 255, 48)), ct.masks[:, index], strict=True):
            assert (pixels == colour).all(axis=2).any() == bool(plane.any())


def test_overlay_capture_of_a_mammogram_validates(mg: Mg, tmp_path: Path) -> None:
    view = f"{mg.side}-MLO"
    [image] = build_overlay_capture(
        [mg.images[view]],
        mg.volumes[view],
        mg.masks[view],
        mg.labels,
        model_name="mg-4view",
        model_version="1",
        job_key=JOB,
    )
    ds = write_read(image, tmp_path / "sc.dcm")
    assert_valid(validate_output(ds, tmp_path / "sc.dcm"))
    assert list(ds.PatientOrientation) == list(mg.images[view].PatientOrientation)
    assert ds.Laterality == mg.side


def test_overlay_capture_is_empty_when_nothing_was_found(ct: Ct) -> None:
    empty = np.zeros_like(ct.masks)
    args = {"model_name": "m", "model_version": "1", "job_key": JOB}
    assert build_overlay_capture(ct.sources, ct.volume, empty, CT_LABELS, **args) == []


# -- reruns -----------------------------------------------------------------------


def test_a_rerun_of_the_same_job_gives_the_same_uids(ct: Ct) -> None:
    def uids(job_key: str) -> list[tuple[str, str]]:
        seg = ct_seg(ct, job_key)
        sr = build_measurement_report(
            {"ct": ct.sources},
            ModelResult(findings=(lesion_finding(ct),)),
            CT_MODEL,
            volumes={"ct": ct.volume},
            job_key=job_key,
            segmentations={"ct": seg},
            segment_numbers={"ct": segment_number_map(ct.masks, CT_LABELS)},
        )
        sc = build_overlay_capture(
            ct.sources,
            ct.volume,
            ct.masks,
            CT_LABELS,
            model_name="m",
            model_version="1",
            job_key=job_key,
        )
        return [(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in (seg, sr, *sc)]

    first = uids(JOB)
    assert uids(JOB) == first
    assert len({sop for _, sop in first}) == len(first)
    assert not set(uids("another job")) & set(first)


# -- bad arguments ----------------------------------------------------------------


def seg_call(ct: Ct, **change: object) -> None:
    args: dict[str, object] = {
        "sources": ct.sources,
        "volume": ct.volume,
        "masks": ct.masks,
        "labels": CT_LABELS,
        "model_name": "m",
        "model_version": "1",
        "job_key": JOB,
    }
    args.update(change)
    build_segmentation(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "attribute"),
    [
        ({"masks": "uint8"}, "masks must be a bool"),
        ({"masks": "shape"}, r"masks must have shape"),
        ({"labels": "numbers"}, "SegmentLabel numbers"),
        ({"job_key": ""}, "job_key"),
        ({"model_name": ""}, "model_name"),
        ({"sources": "missing"}, "volume.sop_instance_uids"),
        ({"series_number": -1}, "series_number"),
    ],
)
def test_seg_with_a_bad_argument_raises_naming_it(
    ct: Ct, change: dict[str, object], attribute: str
) -> None:
    value = next(iter(change.values()))
    key = next(iter(change))
    if value == "uint8":
        change = {key: ct.masks.astype(np.uint8)}
    elif value == "shape":
        change = {key: ct.masks[:, 1:]}
    elif value == "numbers":
        change = {key: CT_LABELS[::-1]}
    elif value == "missing":
        change = {key: ct.sources[1:]}
    with pytest.raises(ValueError, match=attribute):
        seg_call(ct, **change)


@pytest.mark.parametrize(
    ("result", "attribute"),
    [
        (ModelResult(probabilities={"nodule": 0.5}), "result.probabilities"),
        (ModelResult(probabilities={"X:normal": 0.5}), "result.probabilities"),
        (
            ModelResult(
                findings=(Finding(codes.LESION, 0.5, regions=(Region("ct", 0, 0, 0, 99, 5),)),)
            ),
            "Region box",
        ),
        (
            ModelResult(
                findings=(Finding(codes.LESION, 0.5, regions=(Region("mr", 0, 0, 0, 1, 1),)),)
            ),
            "Finding.regions",
        ),
        (ModelResult(findings=(Finding(codes.LESION, 0.5, views=("mr",)),)), "Finding.views"),
        (
            ModelResult(
                findings=(Finding(codes.LESION, 0.5, measurements={"weight": (1.0, "g")}),)
            ),
            "Finding.measurements",
        ),
        (ModelResult(findings=(Finding(codes.LESION, 0.5, laterality="X"),)), "Finding.laterality"),
        (
            ModelResult(findings=(Finding(codes.LESION, 0.5, segment_number=7),)),
            "Finding.segment_number",
        ),
    ],
)
def test_sr_with_a_bad_argument_raises_naming_it(
    ct: Ct, result: ModelResult, attribute: str
) -> None:
    model = ModelInfo("m", "1", CT_LABELS, (ClassLabel("normal", codes.NORMAL),))
    with pytest.raises(ValueError, match=attribute):
        build_measurement_report(
            {"ct": ct.sources}, result, model, volumes={"ct": ct.volume}, job_key=JOB
        )


def test_sr_without_a_volume_for_a_view_raises_naming_volumes(ct: Ct) -> None:
    with pytest.raises(ValueError, match="volumes"):
        build_measurement_report(
            {"ct": ct.sources}, ModelResult(), CT_MODEL, volumes={}, job_key=JOB
        )


# -- the validation gate ----------------------------------------------------------


def test_gate_fails_a_seg_whose_pixels_differ_from_the_masks(ct: Ct) -> None:
    changed = ct.masks.copy()
    changed[1, 10, 0, 0] = ~changed[1, 10, 0, 0]
    report = validate_output(ct_seg(ct), masks=changed, volume=ct.volume, require_dciodvfy=False)
    assert not report.ok
    assert any("differ" in e for e in report.errors)


def test_gate_fails_an_object_dciodvfy_rejects(ct: Ct) -> None:
    need("dciodvfy")
    seg = ct_seg(ct)
    del seg.ContentLabel  # Type 1 in the Segmentation Image Module
    report = validate_output(seg)
    assert not report.ok
    assert any(e.startswith("dciodvfy: Error") and "ContentLabel" in e for e in report.errors)


def test_gate_without_dciodvfy_fails_unless_told_it_may(
    ct: Ct, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no validator on PATH
    seg = ct_seg(ct)
    strict = validate_output(seg, masks=ct.masks, volume=ct.volume)
    assert not strict.ok
    assert any("dciodvfy" in e and "not on PATH" in e for e in strict.errors)
    lenient = validate_output(seg, masks=ct.masks, volume=ct.volume, require_dciodvfy=False)
    assert lenient.ok and lenient.validator == "highdicom"
    assert any("not on PATH" in w for w in lenient.warnings)


def test_gate_checks_the_round_trip_of_every_kind(ct: Ct) -> None:
    seg = ct_seg(ct)
    sr = ct_report(ct, seg, ModelResult(findings=(lesion_finding(ct),)))
    [*sc] = build_overlay_capture(
        ct.sources, ct.volume, ct.masks, CT_LABELS, model_name="m", model_version="1", job_key=JOB
    )
    outputs: Sequence[Dataset] = [seg, sr, sc[0]]
    for output in outputs:
        report = validate_output(output, require_dciodvfy=False)
        assert report.ok, report.errors
        assert report.validator.endswith("highdicom")


# -- other sources ----------------------------------------------------------------


def enhanced_ct(ct: Ct) -> Dataset:
    """The CT as one enhanced multi-frame instance, frames in reverse slice order."""
    return hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=ct.sources[::-1],
        series_instance_uid=output_uid(JOB, "test-enhanced-series"),
        series_number=2,
        sop_instance_uid=output_uid(JOB, "test-enhanced"),
        instance_number=1,
    )


def test_outputs_on_a_multi_frame_source_validate(ct: Ct, tmp_path: Path) -> None:
    source = enhanced_ct(ct)
    volume = volume_from_datasets([source])
    # Same slices along the normal, stored in reverse: the masks fit as they are.
    assert volume.frame_numbers == tuple(range(SLICES, 0, -1))
    assert np.array_equal(volume.array, ct.volume.array)
    masks = ct.masks
    seg = build_segmentation(
        [source], volume, masks, CT_LABELS, model_name="m", model_version="1", job_key=JOB
    )
    assert seg is not None
    assert_valid(validate_output(seg, masks=masks, volume=volume))
    finding = Finding(codes.LESION, 0.5, segment_number=2, regions=(Region("ct", 5, 1, 1, 9, 9),))
    sr = build_measurement_report(
        {"ct": [source]},
        ModelResult(findings=(finding,)),
        CT_MODEL,
        volumes={"ct": volume},
        job_key=JOB,
        segmentations={"ct": seg},
        segment_numbers={"ct": segment_number_map(masks, CT_LABELS)},
    )
    path = tmp_path / "sr.dcm"
    ds = write_read(sr, path)
    assert_valid(validate_output(ds, path))
    assert dsrdump_stderr(path) == ""
    [planar] = hd.sr.MeasurementReport.from_sequence([ds]).get_planar_roi_measurement_groups()
    assert planar.roi is not None
    source_item = planar.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert source_item.ReferencedFrameNumber == volume.frame_numbers[5]
    [sc, *_] = build_overlay_capture(
        [source], volume, masks, CT_LABELS, model_name="m", model_version="1", job_key=JOB
    )
    assert_valid(validate_output(sc))


def test_seg_refuses_a_multi_frame_source_without_plane_positions(ct: Ct) -> None:
    source = enhanced_ct(ct)
    volume = volume_from_datasets([source])
    for group in source.PerFrameFunctionalGroupsSequence:
        del group.PlanePositionSequence
    with pytest.raises(ValueError, match="PlanePositionSequence"):
        build_segmentation(
            [source], volume, ct.masks, CT_LABELS, model_name="m", model_version="1", job_key=JOB
        )


def test_outputs_on_chest_radiographs_validate(tmp_path: Path) -> None:
    from dicomnode.synth.cxr import CXR_VIEWS, build_cxr_study

    study = build_cxr_study(3, rows=128, columns=128, finding="nodule")
    volumes = {v: volume_from_datasets([study.images[v]]) for v in CXR_VIEWS}
    args = {"model_name": "cxr-2view", "model_version": "1", "job_key": JOB}
    segs, numbers = {}, {}
    for view in CXR_VIEWS:
        image, masks = study.images[view], study.masks[view]
        seg = build_segmentation([image], volumes[view], masks, study.truth_labels, **args)
        assert seg is not None
        assert_valid(validate_output(seg, masks=masks, volume=volumes[view]))
        segs[view], numbers[view] = seg, segment_number_map(masks, study.truth_labels)
        for sc in build_overlay_capture([image], volumes[view], masks, study.truth_labels, **args):
            assert_valid(validate_output(sc))
    model = ModelInfo(
        "cxr-2view",
        "1",
        study.truth_labels,
        (ClassLabel("normal", codes.NORMAL), ClassLabel("nodule", codes.NODULE)),
    )
    result = ModelResult(
        probabilities={"normal": 0.2, "nodule": 0.8},
        findings=(Finding(codes.NODULE, 0.8, views=tuple(CXR_VIEWS), segment_number=1),),
    )
    sr = build_measurement_report(
        {v: [study.images[v]] for v in CXR_VIEWS},
        result,
        model,
        volumes=volumes,
        job_key=JOB,
        segmentations=segs,
        segment_numbers=numbers,
    )
    path = tmp_path / "sr.dcm"
    write_read(sr, path)
    assert_valid(validate_output(sr, path))
    assert dsrdump_stderr(path) == ""
