"""The synthetic mammograms and chest radiographs: headers, determinism, lesion geometry."""

from __future__ import annotations

import math
from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.models.codes import MORPHOLOGICALLY_ABNORMAL, NODULE, same_code
from dicomnode.synth import cxr, mg
from dicomnode.synth.cxr import CXR_VIEWS, build_cxr_study
from dicomnode.synth.mg import MG_VIEWS, build_mg_study

MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


def _round_trip(ds: object) -> object:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)  # type: ignore[arg-type]
    buffer.seek(0)
    return dcmread(buffer)


def test_mg_study_is_byte_identical_for_the_same_seed() -> None:
    a = build_mg_study(7, rows=128, columns=104)
    b = build_mg_study(7, rows=128, columns=104)
    assert a.study_instance_uid == b.study_instance_uid
    for view in MG_VIEWS:
        assert a.images[view].PixelData == b.images[view].PixelData
        assert a.images[view].SOPInstanceUID == b.images[view].SOPInstanceUID
        assert np.array_equal(a.masks[view], b.masks[view])
    c = build_mg_study(8, rows=128, columns=104)
    assert c.images["L-CC"].PixelData != a.images["L-CC"].PixelData
    assert c.study_instance_uid != a.study_instance_uid


def test_mg_headers_name_laterality_view_and_spacing() -> None:
    study = build_mg_study(3)
    uids = set()
    for number, view in enumerate(MG_VIEWS, start=1):
        ds = _round_trip(study.images[view])
        side, position = view.split("-")
        assert ds.SOPClassUID == MG_SOP_CLASS  # type: ignore[attr-defined]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # type: ignore[attr-defined]
        assert ds.Modality == "MG"  # type: ignore[attr-defined]
        assert ds.ImageLaterality == side  # type: ignore[attr-defined]
        assert ds.ViewPosition == position  # type: ignore[attr-defined]
        assert ds.SeriesNumber == number  # type: ignore[attr-defined]
        assert [float(v) for v in ds.ImagerPixelSpacing] == [0.5, 0.5]  # type: ignore[attr-defined]
        assert ds.PresentationIntentType == "FOR PRESENTATION"  # type: ignore[attr-defined]
        assert ds.ViewCodeSequence[0].CodingSchemeDesignator == "SCT"  # type: ignore[attr-defined]
        assert ds.pixel_array.shape == (512, 416)  # type: ignore[attr-defined]
        uids.add(ds.SeriesInstanceUID)  # type: ignore[attr-defined]
    assert len(uids) == 4  # each image its own series
    assert list(study.images["L-CC"].PatientOrientation) == ["A", "R"]
    assert list(study.images["R-MLO"].PatientOrientation) == ["P", "FL"]
    frames = {view: study.images[view].FrameOfReferenceUID for view in MG_VIEWS}
    assert frames["L-CC"] == frames["L-MLO"] != frames["R-CC"] == frames["R-MLO"]


def test_mg_pixel_spacing_follows_the_image_size() -> None:
    study = build_mg_study(1, rows=256, columns=208)
    assert [float(v) for v in study.images["R-CC"].ImagerPixelSpacing] == [1.0, 1.0]


def test_mg_chest_wall_is_on_the_left_for_left_breasts_and_right_for_right() -> None:
    study = build_mg_study(5, rows=128, columns=104)
    left = study.images["L-CC"].pixel_array.astype(float)
    right = study.images["R-CC"].pixel_array.astype(float)
    assert left[:, :20].mean() > left[:, -20:].mean()
    assert right[:, -20:].mean() > right[:, :20].mean()


@pytest.mark.parametrize("finding", ["benign", "suspicious"])
def test_mg_forced_finding_goes_to_one_breast(finding: str) -> None:
    study = build_mg_study(11, rows=128, columns=104, finding=finding)
    assert sorted(study.findings.values()) == sorted([finding, "normal"])
    assert study.truth_labels
    for label in study.truth_labels:
        assert same_code(label.category, MORPHOLOGICALLY_ABNORMAL)


def test_mg_normal_study_has_no_truth() -> None:
    study = build_mg_study(2, rows=128, columns=104, finding="normal")
    assert study.findings == {"L": "normal", "R": "normal"}
    assert study.truth_labels == ()
    assert all(mask.shape == (0, 1, 128, 104) for mask in study.masks.values())


def test_mg_rejects_an_unknown_finding() -> None:
    with pytest.raises(ValueError, match="finding"):
        build_mg_study(0, finding="malignant")


def _centroid_mm(mask: np.ndarray, spacing: float) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()) * spacing, float(cols.mean()) * spacing


@pytest.mark.parametrize("seed", range(6))
def test_mg_real_lesion_shows_in_both_views_at_the_same_nipple_distance(seed: int) -> None:
    study = build_mg_study(seed, rows=256, columns=208, finding="suspicious")
    side = next(s for s, f in study.findings.items() if f == "suspicious")
    other = "R" if side == "L" else "L"
    for label in study.truth_labels:
        plane = label.number - 1
        distances = []
        for position in ("CC", "MLO"):
            mask = study.masks[f"{side}-{position}"][plane, 0]
            assert mask.any(), f"{label.name} missing on {side}-{position}"
            assert not study.masks[f"{other}-{position}"][plane].any()
            if side == "R":
                mask = mask[:, ::-1]
            y, x = _centroid_mm(mask, 1.0)
            shape = mg._breast_shapes(seed, side)[position]
            distances.append(math.hypot(y - shape.nipple_y, x - shape.depth))
        assert abs(distances[0] - distances[1]) < 10.0


@pytest.mark.parametrize("seed", range(20))
def test_mg_pseudo_lesions_lie_in_one_view_only(seed: int) -> None:
    findings = mg._draw_findings(seed, None)
    lesions, labels = mg._plan_lesions(seed, findings)
    for side in ("L", "R"):
        cc = [lesion for lesion in lesions[f"{side}-CC"]]
        mlo = [lesion for lesion in lesions[f"{side}-MLO"]]
        real_cc = sorted(les.label for les in cc if les.label is not None)
        real_mlo = sorted(les.label for les in mlo if les.label is not None)
        # Real lesions: the same labels on both views; pseudo-lesions have none.
        assert real_cc == real_mlo
        assert (findings[side] == "normal") == (not real_cc)
    assert len(labels) == len({les.label for v in lesions.values() for les in v} - {None})


def test_mg_findings_are_balanced_as_documented() -> None:
    drawn = [f for seed in range(2000) for f in mg._draw_findings(seed, None).values()]
    share = {f: drawn.count(f) / len(drawn) for f in ("normal", "benign", "suspicious")}
    assert abs(share["normal"] - 0.5) < 0.03
    assert abs(share["benign"] - 0.25) < 0.03
    assert abs(share["suspicious"] - 0.25) < 0.03


def test_cxr_study_is_byte_identical_for_the_same_seed() -> None:
    a = build_cxr_study(4, rows=128, columns=128)
    b = build_cxr_study(4, rows=128, columns=128)
    for view in CXR_VIEWS:
        assert a.images[view].PixelData == b.images[view].PixelData
        assert a.images[view].SOPInstanceUID == b.images[view].SOPInstanceUID


def test_cxr_headers_name_view_position_and_spacing() -> None:
    study = build_cxr_study(1)
    positions = {"PA": "PA", "LAT": "LL"}
    for view in CXR_VIEWS:
        ds = _round_trip(study.images[view])
        assert ds.SOPClassUID == DX_SOP_CLASS  # type: ignore[attr-defined]
        assert ds.Modality == "DX"  # type: ignore[attr-defined]
        assert ds.ViewPosition == positions[view]  # type: ignore[attr-defined]
        assert ds.ImageLaterality == "U"  # type: ignore[attr-defined]
        spacing = [float(v) for v in ds.ImagerPixelSpacing]  # type: ignore[attr-defined]
        assert spacing == pytest.approx([430 / 512] * 2, abs=1e-5)
        assert ds.pixel_array.shape == (512, 512)  # type: ignore[attr-defined]
    assert study.images["PA"].SeriesInstanceUID != study.images["LAT"].SeriesInstanceUID


@pytest.mark.parametrize("seed", range(5))
def test_cxr_nodule_shows_on_both_views_at_the_same_height(seed: int) -> None:
    study = build_cxr_study(seed, rows=256, columns=256, finding="nodule")
    assert len(study.truth_labels) == 1
    assert same_code(study.truth_labels[0].type, NODULE)
    spacing = 430 / 256
    heights = [_centroid_mm(study.masks[view][0, 0], spacing)[0] for view in CXR_VIEWS]
    assert abs(heights[0] - heights[1]) < 8.0


@pytest.mark.parametrize("seed", range(20))
def test_cxr_pseudo_nodules_lie_on_one_view_only(seed: int) -> None:
    chest = cxr._draw_chest(seed)
    blobs, _ = cxr._plan_nodules(seed, chest, nodule=False)
    pseudo = {view: [b for b, real in blobs[view] if not real] for view in CXR_VIEWS}
    assert all(not real for view in CXR_VIEWS for _, real in blobs[view])
    # Pseudo-nodules on different views never share a height (they never mimic one).
    for a in pseudo["PA"]:
        for b in pseudo["LAT"]:
            assert abs(a.centre[0] - b.centre[0]) > 25.0


def test_cxr_normal_study_has_no_truth() -> None:
    study = build_cxr_study(9, rows=128, columns=128, finding="normal")
    assert study.finding == "normal"
    assert study.truth_labels == ()
    assert study.masks["PA"].shape == (0, 1, 128, 128)
