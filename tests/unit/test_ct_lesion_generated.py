"""ct-lesion-seg training on generated volumes: prepared without DICOM, refreshed per epoch."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from dicomnode.models import codes
from dicomnode.models.api import StudyViews, View
from dicomnode.models.ct_lesion_nn import NetConfig, new_network
from dicomnode.models.ct_lesion_training import (
    Prepared,
    Trainer,
    TrainingConfig,
    prepare,
    prepare_generated,
    prepare_volume,
)
from dicomnode.models.training import LabelledStudy, TruthSegment
from dicomnode.synth.ct.anatomical import AnatomicalCtOptions, anatomical_training_sample

CONFIG = NetConfig(base_channels=2, depth=2, working_spacing=4.0)
SMALL = AnatomicalCtOptions(slices=8, rows=64, columns=64, lesion_free_fraction=0.0)


def test_a_generated_volume_prepares_as_the_same_study_read_from_dicom_would() -> None:
    volume, lesion, body = anatomical_training_sample(2, SMALL)
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
