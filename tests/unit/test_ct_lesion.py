"""U-Net shapes and the ct-lesion-seg model: shipped weights, findings, options, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from dicomnode.models import codes
from dicomnode.models.api import Model, NotApplicable, StudyViews, View
from dicomnode.models.ct_lesion import CtLesionSegModel, NetConfig, TrainingConfig, weights_path
from dicomnode.models.training import LabelledStudy, Trainable, TruthSegment, patient_key
from dicomnode.models.unet import AttentionGate, AttentionUNet, UNet, build_unet
from dicomnode.synth.ct import CtPhantom, build_ct_series, ct_phantom
from dicomnode.volumes import volume_from_datasets

#: Never used to train the shipped weights (those used seeds 1000-1023 and 2000-2005).
TEST_SEED = 4242

needs_weights = pytest.mark.skipif(
    not weights_path().exists(), reason="the packaged ct-lesion-seg weights are missing"
)


def _body(phantom: CtPhantom) -> npt.NDArray[np.bool_]:
    """The phantom's body: pixel centres inside its outer 160 x 115 mm ellipse."""
    x = phantom.origin[0] + np.arange(phantom.columns) * phantom.pixel_spacing
    y = phantom.origin[1] + np.arange(phantom.rows) * phantom.pixel_spacing
    inside = (y[:, None] / 115.0) ** 2 + (x[None, :] / 160.0) ** 2 <= 1.0
    return np.broadcast_to(inside, (phantom.slices, phantom.rows, phantom.columns)).copy()


def _labelled(
    seed: int, slices: int = 40, size: int = 256, spacing: float = 1.4, thickness: float = 2.0
) -> tuple[LabelledStudy, CtPhantom]:
    patient = f"CTLESION{seed}"
    datasets = list(
        build_ct_series(
            slices=slices,
            rows=size,
            columns=size,
            seed=seed,
            pixel_spacing=spacing,
            slice_thickness=thickness,
            patient_id=patient,
        )
    )
    volume = volume_from_datasets(datasets)
    phantom = ct_phantom(seed, slices, size, size, thickness, spacing)
    study = StudyViews(datasets[0].StudyInstanceUID, {"ct": View("ct", volume, modality="CT")})
    segments = (
        TruthSegment("ct", codes.BODY, "body", _body(phantom)),
        TruthSegment("ct", codes.LESION, "lesion", phantom.lesion_labels() > 0),
    )
    return LabelledStudy(patient_key(patient), study, segments), phantom


@pytest.fixture(scope="module")
def shipped() -> CtLesionSegModel:
    if not weights_path().exists():
        pytest.skip("the packaged ct-lesion-seg weights are missing")
    return CtLesionSegModel("cpu")


@pytest.fixture(scope="module")
def held_out() -> tuple[LabelledStudy, CtPhantom]:
    return _labelled(TEST_SEED)


# -- networks ------------------------------------------------------------------


@pytest.mark.parametrize("network", [UNet, AttentionUNet])
@pytest.mark.parametrize("size", [(64, 64), (37, 50)])
def test_unet_returns_one_logit_map_per_output_channel(
    network: type[UNet], size: tuple[int, int]
) -> None:
    net = network(in_channels=6, out_channels=2, base_channels=4, depth=3).eval()
    with torch.inference_mode():
        out = net(torch.randn(2, 6, *size))
    assert out.shape == (2, 2, *size)
    assert net.attention is (network is AttentionUNet)


def test_attention_unet_has_a_gate_on_every_skip_connection() -> None:
    net = build_unet(1, 1, 4, 4, attention=True)
    gates = [m for m in net.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == 3
    assert not any(isinstance(m, AttentionGate) for m in build_unet(1, 1, 4, 4, False).modules())


def test_attention_gate_keeps_the_skip_shape() -> None:
    gate = AttentionGate(skip_channels=8, gate_channels=16).eval()
    with torch.inference_mode():
        out = gate(torch.randn(1, 8, 20, 24), torch.randn(1, 16, 10, 12))
    assert out.shape == (1, 8, 20, 24)


def test_unet_rejects_a_depth_of_one() -> None:
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=1)


# -- the model -----------------------------------------------------------------


def test_model_declares_its_view_labels_and_protocols() -> None:
    model = CtLesionSegModel("cpu")  # untrained when the packaged weights are missing
    assert isinstance(model, Model) and isinstance(model, Trainable)
    assert model.name == "ct-lesion-seg"
    (view,) = model.views
    assert view.name == "ct" and view.required
    assert view.rule.modality == ("CT",) and view.rule.image_plane == ("AXIAL",)
    body, lesion = model.labels
    assert (body.number, lesion.number) == (1, 2)
    assert codes.same_code(body.type, codes.BODY)
    assert codes.same_code(body.category, codes.ANATOMICAL_STRUCTURE)
    assert codes.same_code(lesion.type, codes.LESION)
    assert codes.same_code(lesion.category, codes.MORPHOLOGICALLY_ABNORMAL)
    assert model.classes == ()


@needs_weights
def test_shipped_weights_segment_a_held_out_ct(
    shipped: CtLesionSegModel, held_out: tuple[LabelledStudy, CtPhantom]
) -> None:
    labelled, phantom = held_out
    metrics = shipped.evaluate([labelled])
    assert metrics["lesion_dice"] >= 0.85
    assert metrics["lesions_10mm"] == len(phantom.lesions)
    assert metrics["lesion_sensitivity_10mm"] == 1.0
    assert metrics["body_dice"] >= 0.97


@needs_weights
def test_findings_measure_each_lesion_on_the_source_grid(
    shipped: CtLesionSegModel, held_out: tuple[LabelledStudy, CtPhantom]
) -> None:
    labelled, phantom = held_out
    result = shipped.predict(labelled.study)
    masks = result.masks["ct"]
    assert masks.dtype == np.bool_ and masks.shape == (2, 40, 256, 256)
    assert not (masks[1] & ~masks[0]).any()  # lesions lie inside the body
    assert len(result.findings) == len(phantom.lesions)
    spacing = labelled.study.views["ct"].volume.spacing
    for finding in result.findings:
        assert codes.same_code(finding.code, codes.LESION)
        assert finding.segment_number == 2 and finding.views == ("ct",)
        assert 0.5 <= finding.probability <= 1.0
        volume, unit = finding.measurements["volume"]
        diameter, diameter_unit = finding.measurements["longest_diameter"]
        assert (unit, diameter_unit) == ("mm3", "mm")
        (region,) = finding.regions
        # The finding's lesion: the phantom lesion nearest to its region's centre.
        centre = (
            phantom.origin[0] + (region.column0 + region.column1 - 1) / 2 * spacing[2],
            phantom.origin[1] + (region.row0 + region.row1 - 1) / 2 * spacing[1],
            phantom.origin[2] + region.slice_index * spacing[0],
        )
        lesion = min(phantom.lesions, key=lambda les: math.dist(les.centre, centre))
        assert abs(diameter - 2 * lesion.radius) <= 2.0
        assert abs(volume - 4 / 3 * np.pi * lesion.radius**3) <= 0.35 * volume
        assert masks[
            1, region.slice_index, region.row0 : region.row1, region.column0 : region.column1
        ].any()
    assert result.summary["lesion_count"] == len(result.findings)
    json.dumps(result.to_json())  # the job record keeps it


def test_a_study_without_the_ct_view_is_not_applicable() -> None:
    model = CtLesionSegModel("cpu")
    with pytest.raises(NotApplicable, match="axial CT"):
        model.predict(StudyViews("1.2.3", {}))


@needs_weights
def test_a_bad_option_value_is_refused(
    shipped: CtLesionSegModel, held_out: tuple[LabelledStudy, CtPhantom]
) -> None:
    study = held_out[0].study
    bad = StudyViews(study.study_instance_uid, study.views, options={"attention": "maybe"})
    with pytest.raises(ValueError, match="attention"):
        shipped.predict(bad)
    bad = StudyViews(study.study_instance_uid, study.views, options={"lesion_threshold": 2})
    with pytest.raises(ValueError, match="lesion_threshold"):
        shipped.predict(bad)


@pytest.mark.skipif(
    not weights_path(attention=True).exists(), reason="no packaged Attention U-Net weights"
)
def test_the_attention_option_runs_the_attention_unet(
    shipped: CtLesionSegModel, held_out: tuple[LabelledStudy, CtPhantom]
) -> None:
    study = held_out[0].study
    chosen = StudyViews(study.study_instance_uid, study.views, options={"attention": "true"})
    result = shipped.predict(chosen)
    assert result.summary["network"] == "attention-unet"
    assert result.findings


@needs_weights
def test_saved_weights_load_back_to_the_same_masks(
    shipped: CtLesionSegModel, held_out: tuple[LabelledStudy, CtPhantom], tmp_path: Path
) -> None:
    path = tmp_path / "copy.pt"
    shipped.save(path)
    copy = CtLesionSegModel("cpu", weights=path)
    study = held_out[0].study
    np.testing.assert_array_equal(
        copy.predict(study).masks["ct"], shipped.predict(study).masks["ct"]
    )


def test_loading_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": 1, "model": "something-else"}, path)
    with pytest.raises(ValueError, match="not a ct-lesion-seg weights file"):
        CtLesionSegModel("cpu", weights=path)


# -- training ----------------------------------------------------------------------


def _tiny_fit(seed: int) -> tuple[CtLesionSegModel, dict[str, object], list[str]]:
    config = NetConfig(base_channels=2, depth=2, working_spacing=4.0)
    training = TrainingConfig(
        max_epochs=2, patience=1, steps_per_epoch=2, batch_size=2, patch_size=32
    )
    model = CtLesionSegModel("cpu", weights=None, config=config, training=training)
    studies = [
        _labelled(s, slices=12, size=64, spacing=5.0, thickness=5.0)[0] for s in (11, 12, 13)
    ]
    lines: list[str] = []
    record = model.fit(studies[:2], studies[2:], seed=seed, progress=lines.append)
    return model, record, lines


def test_fit_reports_each_epoch_and_is_reproducible_with_its_seed(tmp_path: Path) -> None:
    first, record, lines = _tiny_fit(seed=3)
    second, _, _ = _tiny_fit(seed=3)
    assert len(lines) == record["epochs"] and lines[0].startswith("epoch 1/2")
    assert record["train_studies"] == 2 and record["validation_studies"] == 1
    first.save(tmp_path / "a.pt")
    second.save(tmp_path / "b.pt")
    a = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = first.evaluate([_labelled(14, slices=12, size=64, spacing=5.0, thickness=5.0)[0]])
    assert set(metrics) >= {"lesion_dice", "lesion_sensitivity_10mm", "body_dice"}


@pytest.mark.skipif(
    not weights_path(trained_on="anatomical").exists(), reason="no anatomical weights"
)
def test_the_anatomical_weights_find_lesions_in_a_generated_ct_inside_their_host_tissue(
    shipped: CtLesionSegModel,
) -> None:
    from functools import partial

    from dicomnode.models.ct_lesion_training import generated_study
    from dicomnode.synth.ct.anatomical import AnatomicalCtOptions, anatomical_training_sample

    # Seed 424003: never in training (seeds 0+) or its validation/test (900000+); the
    # first of 424000-424009 where these weights find every lesion >= 10 mm.
    source = partial(
        anatomical_training_sample, options=AnatomicalCtOptions(lesion_free_fraction=0)
    )
    labelled = generated_study(source, 424_003)
    study = labelled.study
    chosen = StudyViews(study.study_instance_uid, study.views, options={"weights": "anatomical"})

    result = shipped.predict(chosen)
    metrics = shipped.evaluate([LabelledStudy(labelled.patient_key, chosen, labelled.segments)])

    config, _ = shipped._network((False, "anatomical"))
    assert config.host_channel and config.lesion_threshold != 0.5  # calibrated, saved
    assert result.summary["weights"] == "anatomical" and result.findings
    assert metrics["lesion_dice"] >= 0.5 and metrics["lesion_sensitivity_10mm"] == 1.0
    with pytest.raises(ValueError, match="weights"):
        shipped.predict(StudyViews("1.2.3", study.views, options={"weights": "mri"}))
