"""Training and evaluation of ct-lesion-seg (see :mod:`~dicomnode.models.ct_lesion`).

:func:`prepare` brings a labelled study onto the network's working grid once
(:func:`prepare_volume` does the same for a volume and masks that never were DICOM,
such as a generator's: :func:`prepare_generated` takes a :data:`VolumeSource`);
:class:`Trainer` then samples 128 x 128 patches from the prepared studies (60 % near a
lesion voxel, random left-right flips), optimises BCE on both channels plus soft Dice
on the lesion channel with AdamW on a cosine rate, re-estimates the batch-norm
statistics before each validation and keeps the epoch with the best validation lesion
Dice. :func:`evaluate_studies` scores a model's predictions on the source grid.

Training on generated data: ``Trainer.run_epochs(..., refresh=...)`` replaces the
training studies before each epoch after the first with what ``refresh(epoch)``
returns (for instance freshly generated volumes, so no study is seen twice). Without
``refresh`` (the default) training is exactly what it was when the shipped weights
were made: the same studies every epoch, the same random draws.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from dicomnode.models import codes, preprocess
from dicomnode.models.api import Code, ModelResult, StudyViews, Volume
from dicomnode.models.ct_lesion_nn import (
    VIEW,
    NetConfig,
    context_offset,
    infer,
    longest_diameter,
    stack_context,
    working_image,
)
from dicomnode.models.training import LabelledStudy, Progress
from dicomnode.models.unet import UNet

__all__ = [
    "Prepared",
    "Trainer",
    "TrainingConfig",
    "VolumeSource",
    "evaluate_studies",
    "ordered",
    "prepare",
    "prepare_generated",
    "prepare_volume",
]

#: A source of generated training volumes: seed -> (volume, lesion mask, body mask or
#: None), the masks boolean on the volume's grid (e.g.
#: :func:`dicomnode.synth.ct.anatomical.anatomical_training_sample`).
VolumeSource = Callable[[int], tuple[Volume, npt.NDArray[np.bool_], npt.NDArray[np.bool_] | None]]


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Settings of :meth:`~dicomnode.models.ct_lesion.CtLesionSegModel.fit`.

    Attributes
    ----------
    max_epochs, patience
        Epoch limit, and epochs without a better validation lesion Dice before stopping.
    steps_per_epoch, batch_size, patch_size
        Optimiser steps per epoch, patches per step, patch side in working pixels.
    learning_rate, weight_decay
        AdamW settings; the rate follows a cosine over ``max_epochs``.
    lesion_fraction
        Share of patches centred near a lesion voxel (the rest anywhere).
    norm_batches
        Batches that re-estimate the batch-norm statistics before each validation.
    """

    max_epochs: int = 30
    patience: int = 6
    steps_per_epoch: int = 40
    batch_size: int = 16
    patch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    lesion_fraction: float = 0.6
    norm_batches: int = 8


@dataclass(slots=True)
class Prepared:
    """One study on the working grid, ready for the network."""

    image: npt.NDArray[np.float16]  # (slices, windows, rows, columns)
    offset: int  # slice distance of the context neighbours
    lesion: npt.NDArray[np.bool_] | None = None
    body: npt.NDArray[np.bool_] | None = None
    lesion_voxels: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros((0, 3), np.intp))


@dataclass(frozen=True, slots=True)
class Trainer:
    """The training loop of :meth:`~dicomnode.models.ct_lesion.CtLesionSegModel.fit`.

    Attributes
    ----------
    config
        The network's settings (its preprocessing decides the patches).
    training
        Epochs, steps, batches, patches and optimiser settings.
    device
        Where the network runs.
    batch_size
        Slices per inference batch in validation.
    """

    config: NetConfig
    training: TrainingConfig
    device: torch.device
    batch_size: int

    def run_epochs(
        self,
        net: UNet,
        train_data: Sequence[Prepared],
        val_data: Sequence[Prepared],
        rng: np.random.Generator,
        progress: Progress,
        refresh: Callable[[int], Sequence[Prepared]] | None = None,
    ) -> tuple[int, dict[str, float], list[dict[str, float | int]]]:
        """Train until the epoch limit or patience runs out; leave ``net`` at its best epoch.

        ``refresh(epoch)``, when given, supplies the training studies of each epoch
        after the first (``train_data`` is the first epoch's).
        """
        cfg, started = self.training, time.monotonic()
        optimiser = torch.optim.AdamW(
            net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, cfg.max_epochs)
        best: dict[str, float] = {"lesion_dice": -1.0}
        best_state, best_epoch, history = copy.deepcopy(net.state_dict()), 0, []
        for epoch in range(1, cfg.max_epochs + 1):
            if refresh is not None and epoch > 1:
                train_data = refresh(epoch)
            loss = self._train_epoch(net, optimiser, train_data, rng)
            schedule.step()
            self._recalibrate(net, train_data, rng)
            metrics = _validate(net, val_data, self.config, self.device, self.batch_size)
            history.append({"epoch": epoch, "loss": loss, **metrics})
            progress(
                f"epoch {epoch}/{cfg.max_epochs}: loss {loss:.4f}, validation lesion Dice "
                f"{metrics['lesion_dice']:.4f}, body Dice {metrics['body_dice']:.4f} "
                f"({time.monotonic() - started:.0f} s)"
            )
            if metrics["lesion_dice"] > best["lesion_dice"]:
                best, best_epoch = metrics, epoch
                best_state = copy.deepcopy(net.state_dict())
            elif epoch - best_epoch >= cfg.patience:
                break
        net.load_state_dict(best_state)
        return best_epoch, best, history

    def _train_epoch(
        self,
        net: UNet,
        optimiser: torch.optim.Optimizer,
        data: Sequence[Prepared],
        rng: np.random.Generator,
    ) -> float:
        net.train()
        total = 0.0
        for _ in range(self.training.steps_per_epoch):
            x, y, body_weight = _sample_batch(data, self.config, self.training, rng)
            x_t = torch.from_numpy(x).to(self.device)
            y_t = torch.from_numpy(y).to(self.device)
            w_t = torch.from_numpy(body_weight).to(self.device)
            loss = _loss(net(x_t), y_t, w_t)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += float(loss.item())
        return total / self.training.steps_per_epoch

    def _recalibrate(self, net: UNet, data: Sequence[Prepared], rng: np.random.Generator) -> None:
        """Recompute the batch-norm statistics as a plain mean over many training batches.

        The running averages that training keeps weight the last few batches most, and
        with lesion-rich and empty patches in varying mix they jitter enough to flip
        validation results between epochs ("precise BN", Wu & Johnson 2021).
        """
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        if not norms:
            return
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
        net.train()
        with torch.no_grad():
            for _ in range(self.training.norm_batches):
                x, _, _ = _sample_batch(data, self.config, self.training, rng)
                net(torch.from_numpy(x).to(self.device))
        for norm in norms:
            norm.momentum = 0.1


def evaluate_studies(
    predict: Callable[[StudyViews], ModelResult], studies: Sequence[LabelledStudy]
) -> dict[str, float]:
    """Metrics of ``predict`` (a model's) on the source grid of these studies.

    Returns
    -------
    dict
        ``lesion_dice`` and ``body_dice`` (means over studies; a study with no
        lesion and none predicted scores 1), ``lesion_sensitivity_10mm`` (truth
        lesions with a longest axial diameter of 10 mm or more that a predicted
        component overlaps, over all of them), ``lesions_10mm`` (that count),
        ``false_positives_per_study`` (predicted components touching no truth
        lesion) and ``studies``.
    """
    counts = {"found": 0, "lesions": 0, "false": 0}
    lesion_dice: list[float] = []
    body_dice: list[float] = []
    for labelled in studies:
        result = predict(labelled.study)
        body, lesion = result.masks[VIEW]
        spacing = labelled.study.views[VIEW].volume.spacing
        true_lesion = _truth(labelled, codes.LESION, lesion.shape)
        true_body = _truth(labelled, codes.BODY, lesion.shape)
        lesion_dice.append(_dice(lesion, true_lesion))
        if any(codes.same_code(s.type, codes.BODY) for s in labelled.segments):
            body_dice.append(_dice(body, true_body))
        for key, value in _lesion_counts(lesion, true_lesion, spacing).items():
            counts[key] += value
    n = max(1, len(lesion_dice))
    return {
        "lesion_dice": float(np.mean(lesion_dice)) if lesion_dice else 0.0,
        "lesion_sensitivity_10mm": counts["found"] / max(1, counts["lesions"]),
        "lesions_10mm": float(counts["lesions"]),
        "false_positives_per_study": counts["false"] / n,
        "body_dice": float(np.mean(body_dice)) if body_dice else float("nan"),
        "studies": float(len(lesion_dice)),
    }


def ordered(studies: Sequence[LabelledStudy]) -> list[LabelledStudy]:
    """The studies by patient key and study UID, so training ignores the order given."""
    return sorted(studies, key=lambda s: (s.patient_key, s.study.study_instance_uid))


def _truth(labelled: LabelledStudy, code: Code, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """Union of the study's truth segments of this type on the ``ct`` view."""
    mask = np.zeros(shape, dtype=bool)
    for segment in labelled.segments:
        if segment.view == VIEW and codes.same_code(segment.type, code):
            mask |= segment.mask
    return mask


def prepare(labelled: LabelledStudy, config: NetConfig) -> Prepared:
    """Bring a labelled study onto the working grid (images as float16)."""
    view = labelled.study.views.get(VIEW)
    if view is None:
        raise ValueError(f"a training study has no {VIEW!r} view")
    volume = view.volume
    lesion = _truth(labelled, codes.LESION, volume.shape)
    body = None
    if any(codes.same_code(s.type, codes.BODY) for s in labelled.segments):
        body = _truth(labelled, codes.BODY, volume.shape)
    return prepare_volume(volume, lesion, body, config)


def prepare_volume(
    volume: Volume,
    lesion: npt.NDArray[np.bool_],
    body: npt.NDArray[np.bool_] | None,
    config: NetConfig,
) -> Prepared:
    """Bring a volume and its truth masks (on the volume's grid) onto the working grid."""
    if lesion.shape != volume.shape or (body is not None and body.shape != volume.shape):
        raise ValueError(f"truth masks must have the volume's shape {volume.shape}")
    image, box = working_image(volume, config)
    shape = (image.shape[2], image.shape[3])
    prepared = Prepared(image.astype(np.float16), context_offset(volume, config))
    prepared.lesion = preprocess.resample_mask(box.crop(lesion), shape)
    prepared.lesion_voxels = np.argwhere(prepared.lesion)
    if body is not None:
        prepared.body = preprocess.resample_mask(box.crop(body), shape)
    return prepared


def prepare_generated(
    source: VolumeSource, seeds: Iterable[int], config: NetConfig
) -> list[Prepared]:
    """Generate a volume per seed and bring each onto the working grid."""
    return [prepare_volume(*source(seed), config) for seed in seeds]


def _sample_batch(
    data: Sequence[Prepared],
    config: NetConfig,
    training: TrainingConfig,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Patches (inputs, body + lesion targets, body loss weight), lesions oversampled."""
    size = training.patch_size
    xs, ys, weights = [], [], []
    with_lesions = [i for i, d in enumerate(data) if len(d.lesion_voxels)]
    for _ in range(training.batch_size):
        if with_lesions and rng.random() < training.lesion_fraction:
            study = data[with_lesions[int(rng.integers(len(with_lesions)))]]
            k, r, c = study.lesion_voxels[int(rng.integers(len(study.lesion_voxels)))]
            # Jitter so the lesion is anywhere in the patch, not always at its centre.
            r += int(rng.integers(-size // 3, size // 3 + 1))
            c += int(rng.integers(-size // 3, size // 3 + 1))
        else:
            study = data[int(rng.integers(len(data)))]
            k = int(rng.integers(study.image.shape[0]))
            r = int(rng.integers(study.image.shape[2]))
            c = int(rng.integers(study.image.shape[3]))
        x, y = _patch(study, int(k), int(r), int(c), size, config)
        if rng.random() < 0.5:  # left-right flip; the phantom is symmetric, patients nearly
            x, y = x[..., ::-1], y[..., ::-1]
        xs.append(x)
        ys.append(y)
        weights.append(1.0 if study.body is not None else 0.0)
    return (
        np.ascontiguousarray(np.stack(xs)),
        np.ascontiguousarray(np.stack(ys)),
        np.asarray(weights, dtype=np.float32),
    )


def _patch(
    study: Prepared, k: int, r: int, c: int, size: int, config: NetConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The ``size`` x ``size`` patch centred near (r, c) of slice k, padded at the edges."""
    rows, columns = study.image.shape[2:]
    r0 = min(max(0, r - size // 2), max(0, rows - size))
    c0 = min(max(0, c - size // 2), max(0, columns - size))
    window = (slice(r0, r0 + size), slice(c0, c0 + size))
    x = stack_context(study.image, np.array([k]), study.offset, config.context_slices)[0]
    x = x[(slice(None), *window)]
    y = np.zeros((2, *x.shape[1:]), dtype=np.float32)
    if study.body is not None:
        y[0] = study.body[k][window]
    assert study.lesion is not None
    y[1] = study.lesion[k][window]
    pad = ((0, 0), (0, size - x.shape[1]), (0, size - x.shape[2]))
    return np.pad(x, pad, mode="edge"), np.pad(y, pad, mode="edge")


def _loss(logits: torch.Tensor, target: torch.Tensor, body_weight: torch.Tensor) -> torch.Tensor:
    """BCE on both channels (body only where labelled) plus soft Dice on the lesion channel."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    weighted = (bce[:, 0] * body_weight).sum() / body_weight.sum().clamp(min=1.0)
    lesion_p = torch.sigmoid(logits[:, 1])
    overlap = (lesion_p * target[:, 1]).sum()
    dice = 1.0 - (2.0 * overlap + 1.0) / (lesion_p.sum() + target[:, 1].sum() + 1.0)
    return weighted + bce[:, 1].mean() + dice


def _validate(
    net: UNet,
    data: Sequence[Prepared],
    config: NetConfig,
    device: torch.device,
    batch_size: int,
) -> dict[str, float]:
    """Lesion and body Dice on the working grid (cheaper than the source grid)."""
    lesion_dice, body_dice = [], []
    for study in data:
        probability = infer(net, study.image, study.offset, config, device, batch_size)
        assert study.lesion is not None
        body = probability[:, 0] >= 0.5
        lesion_dice.append(_dice((probability[:, 1] >= 0.5) & body, study.lesion))
        if study.body is not None:
            body_dice.append(_dice(body, study.body))
    return {
        "lesion_dice": float(np.mean(lesion_dice)),
        "body_dice": float(np.mean(body_dice)) if body_dice else float("nan"),
    }


def _dice(predicted: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float:
    """Dice coefficient; 1 when both are empty."""
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((predicted & truth).sum()) / total


def _lesion_counts(
    predicted: npt.NDArray[np.bool_],
    truth: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
) -> dict[str, int]:
    """Truth lesions >= 10 mm, those found (overlapped), predicted components overlapping none."""
    true_labels, true_count = preprocess.label_components(truth)
    found = lesions = 0
    for number, where in enumerate(preprocess.component_boxes(true_labels, true_count), start=1):
        if where is None:
            continue
        component = true_labels[where] == number
        if longest_diameter(component, spacing) < 10.0:
            continue
        lesions += 1
        found += int(predicted[where][component].any())
    pred_labels, pred_count = preprocess.label_components(predicted)
    hits = np.unique(pred_labels[truth & predicted])
    false = pred_count - int(np.count_nonzero(hits))
    return {"found": found, "lesions": lesions, "false": false}
