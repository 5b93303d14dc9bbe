"""The multi-view correlation networks and the shipped mg-4view / cxr-2view models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.models.api import Model, NotApplicable, StudyViews, View, Volume
from dicomnode.models.multiview import WEIGHTS_DIR, CxrTwoViewModel, MgFourViewModel
from dicomnode.models.multiview_nn import (
    BinSpec,
    MultiViewNet,
    SingleViewNet,
    nipple_distance_map,
    prepare_image,
)
from dicomnode.models.multiview_training import TrainConfig, auc
from dicomnode.models.training import LabelledStudy, Trainable, TruthSegment, patient_key
from dicomnode.synth.cxr import build_cxr_study
from dicomnode.synth.mg import build_mg_study

torch.set_num_threads(1)

MG_BINS = BinSpec(0.0, 8.0, 26)


def _view(name: str, ds: object) -> View:
    array = ds.pixel_array.astype(np.float32)[np.newaxis]  # type: ignore[attr-defined]
    sy, sx = (float(v) for v in ds.ImagerPixelSpacing)  # type: ignore[attr-defined]
    volume = Volume(
        array,
        (1.0, sy, sx),
        (0.0, 0.0, 0.0),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        (str(ds.SOPInstanceUID),),  # type: ignore[attr-defined]
        (1,),
        str(ds.SeriesInstanceUID),  # type: ignore[attr-defined]
    )
    return View(
        name,
        volume,
        modality=str(ds.Modality),  # type: ignore[attr-defined]
        laterality=ds.get("ImageLaterality"),  # type: ignore[attr-defined]
        view_position=ds.get("ViewPosition"),  # type: ignore[attr-defined]
    )


def _labelled(study: object, drop: tuple[str, ...] = ()) -> LabelledStudy:
    images = study.images  # type: ignore[attr-defined]
    views = {name: _view(name, ds) for name, ds in images.items() if name not in drop}
    segments = tuple(
        TruthSegment(name, label.type, label.name, study.masks[name][label.number - 1])  # type: ignore[attr-defined]
        for name in views
        for label in study.truth_labels  # type: ignore[attr-defined]
        if study.masks[name][label.number - 1].any()  # type: ignore[attr-defined]
    )
    return LabelledStudy(
        patient_key(study.patient_id),  # type: ignore[attr-defined]
        StudyViews(study.study_instance_uid, views, missing=drop),  # type: ignore[attr-defined]
        segments,
    )


def test_multi_view_net_masks_a_missing_view_and_its_correlations() -> None:
    torch.manual_seed(0)
    net = MultiViewNet(3, ((0, 1), (2, 3)), MG_BINS, bilateral=True).eval()
    images = torch.rand(2, 4, 1, 128, 104)
    coords = torch.rand(2, 4, 128, 104) * 150
    present = torch.tensor([[True, False, True, True], [True, True, True, True]])
    with torch.no_grad():
        logits = net(images, coords, present)
        changed = images.clone()
        changed[0, 1] = torch.rand(1, 128, 104)  # whatever the missing view holds
        again = net(changed, coords, present)
    assert logits.shape == (2, 2, 3)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits[0], again[0])


def test_two_view_net_gives_one_prediction_per_chest() -> None:
    net = MultiViewNet(2, ((0, 1),), BinSpec(0.0, 10.0, 44), bilateral=False).eval()
    with torch.no_grad():
        out = net(
            torch.rand(3, 2, 1, 128, 128),
            torch.rand(3, 2, 128, 128) * 400,
            torch.tensor([[True, True], [True, False], [True, True]]),
        )
    assert out.shape == (3, 1, 2)


def test_single_view_net_scores_every_view() -> None:
    net = SingleViewNet(3).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 4, 1, 128, 104)).shape == (2, 4, 3)


def test_auc_matches_hand_computed_values() -> None:
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], dtype=bool)) == 0.75
    assert auc(np.array([0.5, 0.5]), np.array([0, 1], dtype=bool)) == 0.5
    assert np.isnan(auc(np.array([0.5]), np.array([1], dtype=bool)))


def test_nipple_distance_is_zero_at_the_anterior_tip() -> None:
    study = build_mg_study(0, rows=256, columns=208)
    image = prepare_image(
        study.images["L-CC"].pixel_array.astype(np.float32), (128, 104), flip=False
    )
    distance = nipple_distance_map(image, (2.0, 2.0))
    _row, column = np.unravel_index(int(distance.argmin()), distance.shape)
    tissue_columns = np.flatnonzero((image > 0.2).any(axis=0))
    assert column == tissue_columns.max()
    assert distance.min() < 2.0


def test_models_implement_the_model_and_trainable_protocols() -> None:
    for model in (MgFourViewModel(pretrained=False), CxrTwoViewModel(pretrained=False)):
        assert isinstance(model, Model)
        assert isinstance(model, Trainable)
    names = [spec.name for spec in MgFourViewModel.views]
    assert names == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert [spec.required for spec in MgFourViewModel.views] == [True, False, True, False]


@pytest.mark.slow
def test_fit_save_and_load_round_trip(tmp_path: Path) -> None:
    studies = [_labelled(build_mg_study(s, rows=128, columns=104)) for s in range(6)]
    model = MgFourViewModel(pretrained=False)
    model._train_config = TrainConfig(batch_size=4)
    lines: list[str] = []
    record = model.fit(studies[:4], studies[4:], seed=0, progress=lines.append, max_epochs=1)
    assert record["train_studies"] == 4
    assert any(line.startswith("multi-view epoch 1") for line in lines)
    assert any(line.startswith("single-view epoch 1") for line in lines)
    assert not any("epoch 2" in line for line in lines)
    path = tmp_path / "mg.pt"
    model.save(path)
    loaded = MgFourViewModel(weights=path)
    metrics = loaded.evaluate(studies[4:])
    assert set(metrics) >= {"auc", "single_view_auc", "accuracy"}
    first = model.predict(studies[4].study).probabilities
    assert loaded.predict(studies[4].study).probabilities == pytest.approx(first)


def test_mg_predict_needs_both_cc_views() -> None:
    study = _labelled(build_mg_study(1, rows=128, columns=104), drop=("R-CC",))
    with pytest.raises(NotApplicable, match="R-CC"):
        MgFourViewModel(pretrained=False).predict(study.study)


shipped = pytest.mark.skipif(
    not (WEIGHTS_DIR / "mg-4view.pt").exists(), reason="mg-4view weights not trained yet"
)


@shipped
def test_shipped_mg_weights_find_the_suspicious_breast_on_held_out_seeds() -> None:
    model = MgFourViewModel()
    suspicious, normal = [], []
    for seed in range(900_000, 900_006):
        study = build_mg_study(seed, rows=256, columns=208, finding="suspicious")
        result = model.predict(_labelled(study).study)
        p = result.probabilities
        assert p["normal"] + p["benign"] + p["suspicious"] == pytest.approx(1.0, abs=1e-5)
        for side in ("L", "R"):
            per_breast = [p[f"{side}:{c}"] for c in ("normal", "benign", "suspicious")]
            assert sum(per_breast) == pytest.approx(1.0, abs=1e-5)
            target = suspicious if study.findings[side] == "suspicious" else normal
            target.append(p[f"{side}:suspicious"])
    assert auc(np.array(suspicious + normal), np.arange(12) < 6) >= 0.9


@shipped
def test_shipped_mg_weights_work_with_a_missing_mlo_view() -> None:
    study = build_mg_study(900_100, rows=256, columns=208, finding="suspicious")
    result = MgFourViewModel().predict(_labelled(study, drop=("L-MLO", "R-MLO")).study)
    assert result.summary["views_used"] == ["L-CC", "R-CC"]
    for finding in result.findings:
        assert finding.laterality in ("L", "R")
        assert all(view.endswith("CC") for view in finding.views)


@pytest.mark.skipif(
    not (WEIGHTS_DIR / "cxr-2view.pt").exists(), reason="cxr-2view weights not trained yet"
)
def test_shipped_cxr_weights_separate_nodules_on_held_out_seeds() -> None:
    model = CxrTwoViewModel()
    scores, truth = [], []
    for seed in range(900_000, 900_010):
        finding = "nodule" if seed % 2 else "normal"
        study = build_cxr_study(seed, rows=256, columns=256, finding=finding)
        p = model.predict(_labelled(study).study).probabilities
        assert p["normal"] + p["nodule"] == pytest.approx(1.0, abs=1e-6)
        scores.append(p["nodule"])
        truth.append(finding == "nodule")
    assert auc(np.array(scores), np.array(truth)) >= 0.9
