"""The SR a viewer can open: at most ``max_findings`` findings, a note for the rest, a
small file, and PixelMed's ``DicomSRValidator`` (tests/pixelmed.py) agreeing it is valid.

The CT case is the one of issue 13: a lesion model that reports dozens of components on
a 300-slice series. Its SR used to hold one library entry per key slice and two groups
per component (1.66 MB for 250 components), which PixelMed could not validate.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as sr_codes

from dicomnode.config import PipelineSettings, load_settings
from dicomnode.errors import ConfigError
from dicomnode.kernel import (
    ClassLabel,
    Finding,
    ModelResult,
    Region,
    SegmentLabel,
    Volume,
)
from dicomnode.models import codes
from dicomnode.outputs.seg import build_segmentation, segment_number_map
from dicomnode.outputs.sr import MAX_FINDINGS, NOTE, build_measurement_report, rank_findings
from dicomnode.outputs.validate import validate_output
from dicomnode.synth.ct import build_ct_series
from dicomnode.synth.mg import MG_VIEWS, build_mg_study
from dicomnode.volumes import volume_from_datasets
from dicomnode.worker.publish import _max_findings
from tests.pixelmed import TIME_LIMIT_S, parse_output, require_pixelmed, validate_sr

JOB = "study-1.2.3@v1/pipeline-ct"
SLICES, ROWS, COLUMNS = 300, 64, 64
COMPONENTS = 60
#: The issue's budget for the report of a 300-slice CT.
MAX_SR_BYTES = 200_000
CT_LABELS = (
    SegmentLabel(1, "body", codes.ANATOMICAL_STRUCTURE, codes.BODY),
    SegmentLabel(2, "lesion", codes.MORPHOLOGICALLY_ABNORMAL, codes.LESION),
)
MG_CLASSES = (
    ClassLabel("normal", codes.NORMAL),
    ClassLabel("benign", codes.BENIGN),
    ClassLabel("suspicious", codes.MALIGNANT),
)
_QUALITATIVE_EVALUATIONS = ("C0034375", "UMLS")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    labels: tuple[SegmentLabel, ...]
    classes: tuple[ClassLabel, ...] = ()


CT_MODEL = ModelInfo("ct-lesion-seg", "1", CT_LABELS)


@dataclass(frozen=True)
class CtCase:
    sources: list[Dataset]
    volume: Volume
    masks: npt.NDArray[np.bool_]
    findings: tuple[Finding, ...]
    seg: hd.seg.Segmentation


def lesion(k: int, slice_index: int, probability: float, volume: float) -> Finding:
    row, column = 8 + 6 * (k % 8), 8 + 6 * (k // 8 % 8)
    return Finding(
        codes.LESION,
        probability,
        views=("ct",),
        segment_number=2,
        measurements={"volume": (volume, "mm3"), "longest_diameter": (4.0, "mm")},
        regions=(Region("ct", slice_index, row, column, row + 3, column + 3),),
    )


@pytest.fixture(scope="module")
def ct_case() -> CtCase:
    """A 300-slice CT with 60 lesion components: five certainty levels, sizes distinct."""
    sources = list(build_ct_series(slices=SLICES, rows=ROWS, columns=COLUMNS, seed=3))
    volume = volume_from_datasets(sources)
    masks = np.zeros((2, SLICES, ROWS, COLUMNS), dtype=np.bool_)
    masks[0, :, 4:60, 4:60] = True
    findings = []
    for k in range(COMPONENTS):
        finding = lesion(k, 5 * k + 2, 0.5 + 0.1 * (k % 5), 30.0 + 7.0 * k)
        box = finding.regions[0]
        masks[1, box.slice_index - 1 : box.slice_index + 2, box.row0 : box.row1,
              box.column0 : box.column1] = True  # fmt: skip
        findings.append(finding)
    masks[0] &= ~masks[1]
    seg = build_segmentation(
        sources, volume, masks, CT_LABELS,
        model_name=CT_MODEL.name, model_version=CT_MODEL.version, job_key=JOB,
    )  # fmt: skip
    assert seg is not None
    return CtCase(sources, volume, masks, tuple(findings), seg)


def ct_report(case: CtCase, findings: tuple[Finding, ...], **options: int) -> hd.sr.EnhancedSR:
    return build_measurement_report(
        {"ct": case.sources},
        ModelResult(masks={"ct": case.masks}, findings=findings),
        CT_MODEL,
        volumes={"ct": case.volume},
        job_key=JOB,
        segmentations={"ct": case.seg},
        segment_numbers={"ct": segment_number_map(case.masks, CT_LABELS)},
        **options,
    )


def write_read(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path)


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not on PATH")


def notes(ds: Dataset) -> list[str]:
    """The TEXT values of the report's Qualitative Evaluations container (TID 1500 row 12)."""
    return [
        str(item.TextValue)
        for container in ds.ContentSequence
        if (code := container.ConceptNameCodeSequence[0]).CodeValue == _QUALITATIVE_EVALUATIONS[0]
        and code.CodingSchemeDesignator == _QUALITATIVE_EVALUATIONS[1]
        for item in container.ContentSequence
        if item.ValueType == "TEXT"
        and item.ConceptNameCodeSequence[0].CodeValue == NOTE.value
        and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == NOTE.scheme_designator
    ]


def certainty(group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations) -> float:
    [measured] = group.get_measurements(name=sr_codes.DCM.CertaintyOfFinding)
    return float(measured.value)


# -- ranking and the cap ----------------------------------------------------------


def test_findings_rank_by_certainty_then_size_in_any_unit() -> None:
    def sized(probability: float, **measurements: tuple[float, str]) -> Finding:
        return Finding(codes.LESION, probability, measurements=measurements)

    small, large_ml = sized(0.7, volume=(400.0, "mm3")), sized(0.7, volume=(0.5, "ml"))
    boxed = Finding(codes.LESION, 0.7, regions=(Region("ct", 0, 0, 0, 4, 4),))
    sure = sized(0.9, volume=(1.0, "mm3"))
    unsure = sized(0.2, volume=(9e9, "mm3"))
    assert rank_findings([unsure, boxed, small, sure, large_ml]) == (
        sure, large_ml, small, boxed, unsure,
    )  # fmt: skip
    twins = (sized(0.5), sized(0.5))
    assert rank_findings(twins) == twins  # full ties keep the model's order


def test_report_of_a_300_slice_ct_names_the_20_most_certain_and_notes_the_rest(
    ct_case: CtCase, tmp_path: Path
) -> None:
    path = tmp_path / "sr.dcm"
    ds = write_read(ct_report(ct_case, ct_case.findings), path)
    assert path.stat().st_size < MAX_SR_BYTES
    assert notes(ds) == [
        f"{COMPONENTS - MAX_FINDINGS} further findings not reported (max_findings = {MAX_FINDINGS})"
    ]
    report = hd.sr.MeasurementReport.from_sequence([ds])
    volumetric = report.get_volumetric_roi_measurement_groups()
    expected = rank_findings(ct_case.findings)[:MAX_FINDINGS]
    assert [g.tracking_identifier for g in volumetric] == [
        f"finding {n}: Lesion" for n in range(1, MAX_FINDINGS + 1)
    ]
    assert [certainty(g) for g in volumetric] == [pytest.approx(f.probability) for f in expected]
    planar = report.get_planar_roi_measurement_groups()
    assert {g.tracking_uid for g in planar} == {g.tracking_uid for g in volumetric}
    # The SEG keeps every segment: the references name segments it has.
    segments = {int(s.SegmentNumber) for s in ct_case.seg.SegmentSequence}
    for group in volumetric:
        assert group.referenced_segment is not None
        sop = group.referenced_segment[0].ReferencedSOPSequence[0]
        assert sop.ReferencedSOPInstanceUID == ct_case.seg.SOPInstanceUID
        assert int(sop.ReferencedSegmentNumber) in segments
    # A long series has no image library; the evidence names the slices regions lie on.
    assert "111028" not in {i.ConceptNameCodeSequence[0].CodeValue for i in ds.ContentSequence}
    evidence = ds.CurrentRequestedProcedureEvidenceSequence
    listed = {
        sop.ReferencedSOPInstanceUID
        for study in evidence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    on_slices = {ct_case.volume.sop_instance_uids[f.regions[0].slice_index] for f in expected}
    assert listed == on_slices | {ct_case.seg.SOPInstanceUID}


def test_report_of_a_300_slice_ct_passes_the_gate(ct_case: CtCase, tmp_path: Path) -> None:
    need("dciodvfy")
    need("dsrdump")
    path = tmp_path / "sr.dcm"
    ds = write_read(ct_report(ct_case, ct_case.findings), path)
    report = validate_output(ds, path)
    assert report.errors == []
    assert report.ok
    dump = subprocess.run(
        ["dsrdump", "-v", "+Pt", str(path)], capture_output=True, text=True, timeout=60
    )
    assert dump.returncode == 0
    assert dump.stderr == ""


def test_report_within_the_cap_has_no_note(ct_case: CtCase, tmp_path: Path) -> None:
    few = ct_case.findings[:3]
    ds = write_read(ct_report(ct_case, few), tmp_path / "sr.dcm")
    assert notes(ds) == []
    report = hd.sr.MeasurementReport.from_sequence([ds])
    assert len(report.get_volumetric_roi_measurement_groups()) == 3


def test_one_finding_left_out_is_said_in_the_singular(ct_case: CtCase, tmp_path: Path) -> None:
    ds = write_read(ct_report(ct_case, ct_case.findings[:3], max_findings=2), tmp_path / "sr.dcm")
    assert notes(ds) == ["1 further finding not reported (max_findings = 2)"]


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "3"])
def test_report_refuses_a_max_findings_that_is_not_a_positive_whole_number(
    ct_case: CtCase, value: object
) -> None:
    with pytest.raises(ValueError, match="max_findings"):
        ct_report(ct_case, ct_case.findings[:1], max_findings=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "true", "2.5", "'20'"])
def test_pipeline_option_max_findings_is_checked_at_start(tmp_path: Path, value: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        f"[[pipelines]]\nname = 'ct'\nmodel = 'ct-lesion-seg'\n"
        f"[pipelines.options]\nmax_findings = {value}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="max_findings must be a whole number"):
        load_settings(path)


def test_pipeline_option_max_findings_reaches_the_report_builder(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        "[[pipelines]]\nname = 'ct'\nmodel = 'ct-lesion-seg'\n"
        "[pipelines.options]\nmax_findings = 5\n",
        encoding="utf-8",
    )
    pipeline = load_settings(path).pipelines[0]
    assert _max_findings(pipeline) == 5  # what the worker passes to the SR
    assert _max_findings(PipelineSettings(name="ct", model="m")) == MAX_FINDINGS
    assert _max_findings(None) == MAX_FINDINGS


# -- PixelMed -----------------------------------------------------------------------


def test_pixelmed_output_is_parsed_into_errors_and_known_false_ones() -> None:
    out = (
        "Found EnhancedSR IOD\n"
        'Error: Template 1500 MeasurementReport/[Row 4] CODE (121058,DCM,"Procedure reported"):'
        ' 1.7: /CONTAINER (126000,DCM,"Imaging Measurement Report")/CODE (121058,DCM,'
        '"Procedure reported"): Code (71651007,SCT,"Mammography") not found in context group 100\n'
        "Error: 1.8.1: Missing conditional content item\n"
        "Warning: 1.8.1.5: Content Item not in template\n"
        "IOD validation complete\n"
    )
    errors, warnings, ignored = parse_output(out)
    assert errors == ["Error: 1.8.1: Missing conditional content item"]
    assert warnings == ["Warning: 1.8.1.5: Content Item not in template"]
    assert len(ignored) == 1
    # PixelMed exits 0 having printed nothing when the JDK refuses its stylesheet.
    assert parse_output("") == (
        ["the validator did not finish ('IOD validation complete' missing)"],
        [],
        [],
    )


@pytest.mark.slow
def test_pixelmed_validates_the_300_slice_ct_report_within_a_minute(
    ct_case: CtCase, tmp_path: Path
) -> None:
    jar = require_pixelmed()
    path = tmp_path / "sr.dcm"
    ct_report(ct_case, ct_case.findings).save_as(path, enforce_file_format=True)
    report = validate_sr(path, jar=jar)
    assert report.errors == ()
    assert report.seconds < TIME_LIMIT_S


@pytest.fixture(scope="module")
def mg_report() -> hd.sr.EnhancedSR:
    """The 4-view mammography report: class probabilities, a SEG finding and a boxed one."""
    study = build_mg_study(5, rows=128, columns=104, finding="suspicious")
    volumes = {view: volume_from_datasets([study.images[view]]) for view in MG_VIEWS}
    side = next(v for v in MG_VIEWS if study.masks[v].any())[0]
    other = "R" if side == "L" else "L"
    segs, numbers = {}, {}
    for view in MG_VIEWS:
        if study.masks[view].any():
            seg = build_segmentation(
                [study.images[view]], volumes[view], study.masks[view], study.truth_labels,
                model_name="mg-4view", model_version="1", job_key=JOB,
            )  # fmt: skip
            assert seg is not None
            segs[view] = seg
            numbers[view] = segment_number_map(study.masks[view], study.truth_labels)
    findings = (
        Finding(codes.MALIGNANT, 0.93, laterality=side, views=(f"{side}-CC", f"{side}-MLO"),
                segment_number=1),
        Finding(codes.MASS, 0.6, laterality=other, views=(f"{other}-CC", f"{other}-MLO"),
                regions=(Region(f"{other}-CC", 0, 5, 6, 20, 21),)),
    )  # fmt: skip
    probabilities = {"normal": 0.05, "benign": 0.02, "suspicious": 0.93, f"{side}:suspicious": 0.9}
    return build_measurement_report(
        {view: [study.images[view]] for view in MG_VIEWS},
        ModelResult(probabilities=probabilities, findings=findings),
        ModelInfo("mg-4view", "1", study.truth_labels, MG_CLASSES),
        volumes=volumes,
        job_key=JOB,
        segmentations=segs,
        segment_numbers=numbers,
    )


def test_pixelmed_tid_1410_errors_count_only_on_planar_groups(
    mg_report: hd.sr.EnhancedSR,
) -> None:
    # PixelMed checks every group as TID 1410 once one group is (tests/pixelmed.py).
    [measurements] = [
        n for n, item in enumerate(mg_report.ContentSequence, start=1)
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]  # fmt: skip
    groups = mg_report.ContentSequence[measurements - 1].ContentSequence
    kinds = {
        n: {c.ConceptNameCodeSequence[0].CodeValue for c in group.ContentSequence}
        for n, group in enumerate(groups, start=1)
    }
    planar = next(n for n, names in kinds.items() if "121214" in names)
    image = next(n for n, names in kinds.items() if not names & {"121214", "111030"})

    def line(group: int) -> str:
        return (
            'Error: Template 1410 PlanarROIMeasurements/[Row 1] CONTAINER (125007,DCM,"Measurement'
            ' Group")/[Row 5] SCOORD (111030,DCM,"Image Region"): within'
            f' 1.{measurements}.{group}: /CONTAINER (126000,DCM,"Imaging Measurement Report")'
            ": Missing conditional content item"
        )

    out = f"{line(planar)}\n{line(image)}\nIOD validation complete\n"
    errors, _, ignored = parse_output(out, mg_report)
    assert errors == [line(planar)]
    assert ignored == [line(image)]


@pytest.mark.slow
def test_pixelmed_validates_the_mammography_report(
    mg_report: hd.sr.EnhancedSR, tmp_path: Path
) -> None:
    jar = require_pixelmed()
    path = tmp_path / "sr.dcm"
    mg_report.save_as(path, enforce_file_format=True)
    report = validate_sr(path, jar=jar)
    assert report.errors == ()
    assert report.seconds < TIME_LIMIT_S
