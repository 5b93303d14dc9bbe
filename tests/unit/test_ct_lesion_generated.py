"""ct-lesion-seg training on generated volumes: prepared without DICOM, refreshed per epoch;
the host tissue output, the calibration of the threshold and smallest lesion, the FROC."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.models import codes, preprocess
from dicomnode.models.api import StudyViews, View
from dicomnode.models.ct_lesion_nn import NetConfig, SliceWorkers, _on_source_grid, new_network
from dicomnode.models.ct_lesion_training import (
    CALIBRATION_THRESHOLDS,
    FROC_RATES,
    GeneratedData,
    GeneratedPool,
    Prepared,
    Trainer,
    TrainingConfig,
    _validate,
    calibrate,
    froc,
    prepare,
    prepare_generated,
    prepare_volume,
)
from dicomnode.models.training import LabelledStudy, TruthSegment
from dicomnode.synth.ct.anatomical import AnatomicalCtOptions, anatomical_training_sample

CONFIG = NetConfig(base_channels=2, depth=2, working_spacing=4.0)
SMALL = AnatomicalCtOptions(slices=8, rows=64, columns=64, lesion_free_fraction=0.0)


def test_a_generated_volume_prepares_as_the_same_study_read_from_dicom_would() -> None:
    volume, lesion, body, _ = anatomical_training_sample(2, SMALL)
    study = StudyViews("1.2.3", {"ct": View("ct", volume, modality="CT")})
    segments = (
        TruthSegment("ct", codes.BODY, "body", body),
        TruthSegment("ct", codes.LESION, "lesion", lesion),
    )

    from_study = prepare(LabelledStudy("key", study, segments), CONFIG)
    direct = prepare_volume(volume, lesion, body, CONFIG)

    np.testing.assert_array_equal(from_study.image, direct.image)
    assert from_study.lesion is not None and direct.lesion is not None
    np.testing.assert_array_equal(from_study.lesion, direct.lesion)
    np.testing.assert_array_equal(from_study.lesion_voxels, direct.lesion_voxels)
    assert from_study.offset == direct.offset


def test_refresh_gives_each_later_epoch_fresh_generated_studies() -> None:
    source = partial(anatomical_training_sample, options=SMALL)
    first = prepare_generated(source, [1, 2], CONFIG)
    validation = prepare_generated(source, [3], CONFIG)
    asked: list[int] = []

    def refresh(epoch: int) -> list[Prepared]:
        asked.append(epoch)
        return prepare_generated(source, [10 * epoch, 10 * epoch + 1], CONFIG)

    training = TrainingConfig(
        max_epochs=3, patience=3, steps_per_epoch=1, batch_size=2, patch_size=32, norm_batches=1
    )
    trainer = Trainer(CONFIG, training, torch.device("cpu"), batch_size=4)
    torch.manual_seed(0)
    net = new_network(CONFIG)
    rng = np.random.default_rng(0)
    _, _, history = trainer.run_epochs(net, first, validation, rng, lambda _: None, refresh)

    assert asked == [2, 3]
    assert len(history) == 3


# -- the host tissue, calibration, the pool and the metrics -------------------------


class _ImageAsProbability(torch.nn.Module):
    """A test tool, not a model: body and host certain everywhere, and the lesion
    probability is the centre slice's first window (so a test draws it as an image)."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.centre = config.context_slices * len(config.windows)
        self.outputs = config.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x[:, self.centre].clamp(1e-4, 1 - 1e-4)
        sure = torch.full_like(p, 20.0)
        return torch.stack([sure, torch.logit(p), sure][: self.outputs], dim=1)


HOSTED = NetConfig(base_channels=2, depth=2, working_spacing=4.0, host_channel=True)


def test_a_network_with_a_host_output_has_three_outputs_and_keeps_its_settings() -> None:
    net = new_network(HOSTED)
    out = net(torch.zeros(1, HOSTED.in_channels, 16, 16))
    assert out.shape[1] == 3 and new_network(CONFIG)(torch.zeros(1, 6, 16, 16)).shape[1] == 2
    saved = replace(HOSTED, lesion_threshold=0.7, min_lesion_mm3=125.0)
    assert NetConfig.from_dict(saved.to_dict()) == saved
    # Weights saved before these settings existed load with the old behaviour.
    old = {k: v for k, v in CONFIG.to_dict().items() if k not in _NEW_KEYS}
    assert NetConfig.from_dict(old) == CONFIG and not CONFIG.host_channel


_NEW_KEYS = ("host_channel", "lesion_threshold", "min_lesion_mm3")


def test_lesion_voxels_outside_the_host_tissue_are_dropped() -> None:
    probability = torch.ones((4, 3, 10, 10))
    probability[:, 2, :, 5:] = 0.0  # no host tissue in the right half
    box = preprocess.CropBox(0, 10, 0, 10)
    with SliceWorkers(torch.device("cpu"), workers=1) as workers:
        hosted = _on_source_grid(probability, box, (4, 10, 10), 0.5, workers)
        plain = _on_source_grid(probability[:, :2], box, (4, 10, 10), 0.5, workers)
    assert hosted.body.all() and plain.lesion.all()
    assert hosted.lesion[:, :, :5].all() and not hosted.lesion[:, :, 5:].any()


def _drawn_study(lesion_value: float, false_value: float, false_blobs: int) -> Prepared:
    """A prepared study whose lesion probability is drawn: one true lesion (a block of
    ``lesion_value``) and ``false_blobs`` blocks of ``false_value`` elsewhere."""
    image = np.zeros((12, 2, 40, 40), dtype=np.float16)
    lesion = np.zeros((12, 40, 40), dtype=bool)
    lesion[4:8, 5:12, 5:12] = True
    image[:, 0][lesion] = lesion_value
    for i in range(false_blobs):
        image[4:8, 0, 25:30, 2 + 12 * i : 7 + 12 * i] = false_value
    return Prepared(image, 1, lesion=lesion, voxel_mm3=8.0)


def test_calibration_chooses_the_best_dice_with_at_most_one_false_positive_per_study() -> None:
    studies = [_drawn_study(0.9, 0.42, 3), _drawn_study(0.8, 0.37, 2)]
    net = _ImageAsProbability(HOSTED)

    chosen = calibrate(net, studies, HOSTED, torch.device("cpu"), batch_size=4)  # type: ignore[arg-type]

    assert 0.42 < chosen.lesion_threshold <= 0.8
    row = next(
        r
        for r in chosen.table
        if (r["lesion_threshold"], r["min_lesion_mm3"])
        == (chosen.lesion_threshold, chosen.min_lesion_mm3)
    )
    assert row["false_positives"] == 0 and row["lesion_dice"] == 1.0
    low = next(r for r in chosen.table if r["lesion_threshold"] == 0.3)
    assert low["false_positives"] == 2.5  # 5 blobs over 2 studies are counted


def test_calibration_without_an_allowed_pair_takes_the_fewest_false_positives() -> None:
    # Three large false blobs more certain than any threshold: none can be removed.
    studies = [_drawn_study(0.9, 0.97, 3)]
    chosen = calibrate(_ImageAsProbability(HOSTED), studies, HOSTED, torch.device("cpu"), 4)  # type: ignore[arg-type]
    assert all(r["false_positives"] == 3.0 for r in chosen.table)
    # Then the best Dice: a threshold that keeps the lesion.
    assert chosen.lesion_threshold <= 0.9


def test_the_pool_replaces_its_oldest_studies_with_new_seeds_each_epoch() -> None:
    seeds: list[int] = []

    def source(seed: int) -> tuple[object, ...]:
        seeds.append(seed)
        return anatomical_training_sample(seed, SMALL)

    pool = GeneratedPool(source, HOSTED, first_seed=100, size=3, fresh=1)  # type: ignore[arg-type]
    first = list(pool.studies)
    second = pool(2)

    assert seeds == [100, 101, 102, 103] and pool.seeds_used == 4
    assert second[:2] == first[1:] and second[2] is not first[0]
    assert all(p.host is not None for p in second) and any(len(p.host_voxels) for p in second)


def test_froc_reads_the_best_sensitivity_within_each_false_positive_rate() -> None:
    scored = [(0.9, 0), (0.8, -1), (0.7, 1), (0.6, -1), (0.6, 2), (0.5, -1)]

    points = froc(scored, lesions=4, studies=2)

    assert points["froc_0.125"] == 0.25  # no false positive allowed (0.25 of 2 studies)
    assert points["froc_0.5"] == 0.5  # one: down to 0.7
    assert points["froc_1"] == 0.75  # two: down to 0.6 (both of the tie)
    assert points["froc_8"] == 0.75  # the fourth lesion is never found
    assert set(points) == {f"froc_{r:g}" for r in FROC_RATES}


def test_pooled_dice_gives_a_network_that_finds_nothing_no_credit_for_lesion_free_studies() -> None:
    free = _drawn_study(0.0, 0.0, 0)
    free.lesion = np.zeros_like(free.lesion)
    blind = [free, _drawn_study(0.0, 0.0, 0)]  # the lesion is not drawn: nothing found
    seeing = [free, _drawn_study(0.9, 0.9, 1)]  # found, with one false blob
    net = _ImageAsProbability(HOSTED)

    nothing = _validate(net, blind, HOSTED, torch.device("cpu"), 4)  # type: ignore[arg-type]
    something = _validate(net, seeing, HOSTED, torch.device("cpu"), 4)  # type: ignore[arg-type]

    # The mean over studies prefers finding nothing; the pooled Dice does not.
    assert nothing["lesion_dice"] == 0.5 and nothing["pooled_lesion_dice"] == 0.0
    assert something["pooled_lesion_dice"] > nothing["pooled_lesion_dice"]


def test_fit_generated_trains_calibrates_and_saves_the_calibration_with_the_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dicomnode.models.ct_lesion as ct_lesion

    for name, value in (("POOL", 2), ("FRESH", 1), ("VALIDATION", 1), ("TEST", 1)):
        monkeypatch.setattr(ct_lesion, f"GENERATED_{name}", value)
    short = TrainingConfig(
        max_epochs=2, patience=2, steps_per_epoch=1, batch_size=2, patch_size=32,
        norm_batches=1, host_fraction=0.25, selection="pooled_lesion_dice",
    )  # fmt: skip
    monkeypatch.setattr(ct_lesion, "GENERATED_TRAINING", short)
    source = partial(anatomical_training_sample, options=SMALL)
    model = ct_lesion.CtLesionSegModel(config=CONFIG)
    lines: list[str] = []

    record, test = model.fit_generated(
        GeneratedData("small", source, source), seed=3, progress=lines.append
    )
    model.save(tmp_path / "w.pt")
    loaded = ct_lesion.CtLesionSegModel(weights=tmp_path / "w.pt")

    assert record["generator"] == "small" and record["epochs"] == 2
    assert record["train_studies"] == 3  # a pool of 2, then 1 fresh
    assert any(line.startswith("calibrated on the validation studies") for line in lines)
    config, _ = loaded._network((False, "phantom"))
    assert config.host_channel and config.lesion_threshold in CALIBRATION_THRESHOLDS
    assert config.lesion_threshold == record["config"]["lesion_threshold"]  # type: ignore[index]
    assert len(test) == 1 and set(loaded.evaluate(test)) >= {"froc_1", "lesion_free_clean"}
