"""demo-data on disk -> the training loader: views grouped, SEG truth back on the volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicomnode.models.api import ClassLabel, SegmentLabel, SeriesRule, ViewSpec
from dicomnode.models.codes import BODY, LESION
from dicomnode.synth.ct import ct_phantom
from dicomnode.synth.studies import DemoOptions, write_demo_data
from dicomnode.worker.training_data import load_labelled_studies

SMALL_CT = {"ct_slices": 40, "ct_size": 64}


class AxialCtViews:
    """Declares one axial CT view; loading needs only the views."""

    name = "axial-ct-views"
    version = "1"
    description = "views only"
    views = (ViewSpec("ct", SeriesRule(modality=("CT",), image_plane=("AXIAL",))),)
    labels: tuple[SegmentLabel, ...] = ()
    classes: tuple[ClassLabel, ...] = ()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out, DemoOptions(ct=3, mg=0, cxr=0, seed=5, **SMALL_CT))
    return out


def test_ct_ground_truth_reads_back_onto_the_ct_view(demo: Path) -> None:
    studies, report = load_labelled_studies(demo, AxialCtViews())
    assert report.studies == 3 and report.not_applicable == {}
    # Studies come back in UID order, not seed order: match each to its phantom.
    phantoms = [ct_phantom(s, 40, 64, 64, 1.0, 0.7 * 512 / 64) for s in range(5, 8)]
    for study in studies:
        assert study.study.views["ct"].volume.shape == (40, 64, 64)
        by_type = {(s.type.value, s.type.scheme): s.mask for s in study.segments}
        lesion = by_type[(LESION.value, LESION.scheme)]
        matching = [p for p in phantoms if np.array_equal(p.lesion_labels() > 0, lesion)]
        assert len(matching) == 1
        phantom = matching[0]
        np.testing.assert_array_equal(by_type[(BODY.value, BODY.scheme)], phantom.body_mask())


def test_patients_are_keyed_without_their_ids(demo: Path) -> None:
    studies, _ = load_labelled_studies(demo, AxialCtViews())
    keys = {s.patient_key for s in studies}
    assert len(keys) == 3
    assert not any("DEMO" in key for key in keys)


def test_non_dicom_files_are_skipped_and_unfit_studies_counted(tmp_path: Path) -> None:
    write_demo_data(tmp_path, DemoOptions(ct=1, mg=0, cxr=0, seed=9, **SMALL_CT))
    (tmp_path / "notes.txt").write_text("not DICOM")

    class SagittalMr(AxialCtViews):
        views = (ViewSpec("mr", SeriesRule(modality=("MR",))),)

    studies, report = load_labelled_studies(tmp_path, SagittalMr())
    assert studies == []
    assert sum(report.not_applicable.values()) == 1


MG_VIEWS = tuple(
    ViewSpec(f"{s}-{p}", SeriesRule(modality=("MG",), laterality=(s,), view_position=(p,)))
    for s in ("L", "R")
    for p in ("CC", "MLO")
)


class FourViewMg(AxialCtViews):
    views = MG_VIEWS


def test_mammography_truth_lands_on_the_view_of_its_image(tmp_path: Path) -> None:
    from dicomnode.synth.mg import build_mg_study

    write_demo_data(tmp_path, DemoOptions(ct=0, mg=3, cxr=0, seed=2, mg_rows=128))
    studies, report = load_labelled_studies(tmp_path, FourViewMg())
    assert report.studies == 3
    expected = {}
    for seed in range(2, 5):
        mg = build_mg_study(seed, rows=128, columns=104, patient_id=f"DEMO-MG-{seed:04d}")
        expected[mg.study_instance_uid] = mg
    for study in studies:
        truth = expected[study.study.study_instance_uid]
        for segment in study.segments:
            view_masks = truth.masks[segment.view]
            assert any(np.array_equal(segment.mask, plane) for plane in view_masks)
        breasts_with_truth = {s.view[0] for s in study.segments}
        assert breasts_with_truth == {side for side, f in truth.findings.items() if f != "normal"}
