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
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from dicomnode.models import codes, preprocess
from dicomnode.models.api import Code, ModelResult, StudyViews, View, Volume
from dicomnode.models.ct_lesion_nn import (
    VIEW,
    NetConfig,
    context_offset,
    infer,
    longest_diameter,
    stack_context,
    working_image,
)
from dicomnode.models.training import LabelledStudy, Progress, TruthSegment, patient_key
from dicomnode.models.unet import UNet

__all__ = [
    "CALIBRATION_MAX_FP",
    "CALIBRATION_MIN_MM3",
    "CALIBRATION_THRESHOLDS",
    "FROC_RATES",
    "SIZE_BINS",
    "Calibration",
    "GeneratedData",
    "GeneratedPool",
    "Prepared",
    "Trainer",
    "TrainingConfig",
    "VolumeSource",
    "calibrate",
    "evaluate_studies",
    "froc",
    "generated_study",
    "ordered",
    "prepare",
    "prepare_generated",
    "prepare_volume",
]

#: A source of generated training volumes: seed -> (volume, lesion mask, body mask or
#: None, host mask or None), the masks boolean on the volume's grid (e.g.
#: :func:`dicomnode.synth.ct.anatomical.anatomical_training_sample`). The host mask is
#: the tissue lesions can grow in (see ``NetConfig.host_channel``).
VolumeSource = Callable[
    [int],
    tuple[
        Volume, npt.NDArray[np.bool_], npt.NDArray[np.bool_] | None, npt.NDArray[np.bool_] | None
    ],
]


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
    host_fraction
        Share of patches centred on host tissue (organs and lungs) of a study that has
        a host mask: the hard negatives, organ tissue that is not lesion.
    norm_batches
        Batches that re-estimate the batch-norm statistics before each validation.
    selection
        The validation metric that picks the best epoch: ``lesion_dice`` (the mean
        over studies; a lesion-free study scores 1 when nothing is found, so with
        lesion-free studies a network that finds nothing scores well) or
        ``pooled_lesion_dice`` (one Dice over every study's voxels together: finding
        nothing scores 0, false positives anywhere lower it).
    """

    max_epochs: int = 30
    patience: int = 6
    steps_per_epoch: int = 40
    batch_size: int = 16
    patch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    lesion_fraction: float = 0.6
    host_fraction: float = 0.0
    norm_batches: int = 8
    selection: Literal["lesion_dice", "pooled_lesion_dice"] = "lesion_dice"


@dataclass(slots=True)
class Prepared:
    """One study on the working grid, ready for the network."""

    image: npt.NDArray[np.float16]  # (slices, windows, rows, columns)
    offset: int  # slice distance of the context neighbours
    lesion: npt.NDArray[np.bool_] | None = None
    body: npt.NDArray[np.bool_] | None = None
    lesion_voxels: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros((0, 3), np.intp))
    host: npt.NDArray[np.bool_] | None = None
    host_voxels: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros((0, 3), np.intp))
    voxel_mm3: float = 0.0  # of the working grid


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
        key = cfg.selection
        best: dict[str, float] = {key: -1.0}
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
                f"{metrics['lesion_dice']:.4f} (pooled {metrics['pooled_lesion_dice']:.4f}), "
                f"body Dice {metrics['body_dice']:.4f} "
                f"({time.monotonic() - started:.0f} s)"
            )
            if metrics[key] > best[key]:
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
            x, y, weights = _sample_batch(data, self.config, self.training, rng)
            x_t = torch.from_numpy(x).to(self.device)
            y_t = torch.from_numpy(y).to(self.device)
            w_t = torch.from_numpy(weights).to(self.device)
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


#: Lesion sizes (longest axial diameter, mm) of the per-size sensitivities.
SIZE_BINS = ((0.0, 10.0), (10.0, 20.0), (20.0, float("inf")))
#: False positives per study at which the FROC curve is read.
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


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
        ``sensitivity_<a>_<b>mm`` and ``lesions_<a>_<b>mm`` for the bins of
        :data:`SIZE_BINS`, ``false_positives_per_study`` (predicted components touching
        no truth lesion), ``froc_<r>`` (sensitivity over all lesions when only the
        findings of at least some probability are kept, the most kept with at most
        ``r`` false positives per study, for ``r`` in :data:`FROC_RATES`),
        ``lesion_free_studies`` and ``lesion_free_clean`` (the share of them with no
        finding), and ``studies``.
    """
    found_10 = lesions_10 = false = 0
    by_size = [[0, 0] for _ in SIZE_BINS]  # found, lesions
    scored: list[tuple[float, int]] = []  # (probability, truth lesion id or -1)
    lesion_total = lesion_free = lesion_free_clean = 0
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
        counts = _lesion_counts(lesion, true_lesion, spacing, result, lesion_total)
        found_10 += counts.found_10
        lesions_10 += counts.lesions_10
        false += counts.false
        for i, (found, total) in enumerate(counts.by_size):
            by_size[i][0] += found
            by_size[i][1] += total
        scored += counts.scored
        lesion_total += counts.lesions
        if counts.lesions == 0:
            lesion_free += 1
            lesion_free_clean += int(not result.findings)
    n = max(1, len(lesion_dice))
    metrics = {
        "lesion_dice": float(np.mean(lesion_dice)) if lesion_dice else 0.0,
        "lesion_sensitivity_10mm": found_10 / max(1, lesions_10),
        "lesions_10mm": float(lesions_10),
        "false_positives_per_study": false / n,
        "body_dice": float(np.mean(body_dice)) if body_dice else float("nan"),
        "studies": float(len(lesion_dice)),
        "lesion_free_studies": float(lesion_free),
        "lesion_free_clean": lesion_free_clean / lesion_free if lesion_free else float("nan"),
    }
    for (low, high), (found, total) in zip(SIZE_BINS, by_size, strict=True):
        name = f"{low:g}_{high:g}mm" if high != float("inf") else f"{low:g}mm_up"
        metrics[f"sensitivity_{name}"] = found / total if total else float("nan")
        metrics[f"lesions_{name}"] = float(total)
    metrics |= froc(scored, lesion_total, n)
    return metrics


def froc(scored: Sequence[tuple[float, int]], lesions: int, studies: int) -> dict[str, float]:
    """FROC points: ``froc_<r>`` for each rate of :data:`FROC_RATES`.

    ``scored`` holds one (probability, truth lesion id or -1 for a false positive) per
    predicted component; keeping the components of probability >= p, a lesion is
    found when one of its components is kept. The point at rate r is the best
    sensitivity of any p that keeps at most r false positives per study.
    """
    points = {f"froc_{rate:g}": 0.0 for rate in FROC_RATES}
    if not lesions:
        return {key: float("nan") for key in points}
    found: set[int] = set()
    false = 0
    ordered_scores = sorted(scored, key=lambda item: -item[0])
    for index, (probability, lesion) in enumerate(ordered_scores):
        if lesion < 0:
            false += 1
        else:
            found.add(lesion)
        last_of_tie = (
            index + 1 == len(ordered_scores) or ordered_scores[index + 1][0] != probability
        )
        if not last_of_tie:
            continue
        for rate in FROC_RATES:
            if false <= rate * studies:
                key = f"froc_{rate:g}"
                points[key] = max(points[key], len(found) / lesions)
    return points


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
    host: npt.NDArray[np.bool_] | None = None,
) -> Prepared:
    """Bring a volume and its truth masks (on the volume's grid) onto the working grid."""
    if any(m is not None and m.shape != volume.shape for m in (lesion, body, host)):
        raise ValueError(f"truth masks must have the volume's shape {volume.shape}")
    image, box = working_image(volume, config)
    shape = (image.shape[2], image.shape[3])
    prepared = Prepared(image.astype(np.float16), context_offset(volume, config))
    prepared.voxel_mm3 = (
        volume.spacing[0]
        * float(np.prod(box.shape))
        * float(volume.spacing[1] * volume.spacing[2])
        / float(np.prod(shape))
    )
    prepared.lesion = preprocess.resample_mask(box.crop(lesion), shape)
    prepared.lesion_voxels = np.argwhere(prepared.lesion)
    if body is not None:
        prepared.body = preprocess.resample_mask(box.crop(body), shape)
    if host is not None:
        prepared.host = preprocess.resample_mask(box.crop(host), shape)
        where = np.argwhere(prepared.host)
        # A sample is enough to draw patch centres from (a whole liver is ~10^6 voxels).
        keep = np.random.default_rng(len(where)).permutation(len(where))[:_HOST_SAMPLE]
        prepared.host_voxels = where[np.sort(keep)]
    return prepared


#: Host voxels kept per study to centre hard-negative patches on.
_HOST_SAMPLE = 20_000


def prepare_generated(
    source: VolumeSource, seeds: Iterable[int], config: NetConfig
) -> list[Prepared]:
    """Generate a volume per seed and bring each onto the working grid."""
    prepared = []
    for seed in seeds:
        volume, lesion, body, host = source(seed)
        prepared.append(prepare_volume(volume, lesion, body, config, host))
    return prepared


@dataclass(frozen=True, slots=True)
class GeneratedData:
    """A named generator's sources: of training studies, and of held-out ones."""

    name: str
    training: VolumeSource
    held_out: VolumeSource


def generated_study(source: VolumeSource, seed: int) -> LabelledStudy:
    """One generated study as a labelled study (in memory, no DICOM), for validation or test."""
    volume, lesion, body, _ = source(seed)
    study = StudyViews(f"generated-{seed}", {VIEW: View(VIEW, volume, modality="CT")})
    segments = [TruthSegment(VIEW, codes.LESION, "lesion", lesion)]
    if body is not None:
        segments.insert(0, TruthSegment(VIEW, codes.BODY, "body", body))
    return LabelledStudy(patient_key(f"generated-{seed}"), study, tuple(segments))


class GeneratedPool:
    """Training studies for :meth:`Trainer.run_epochs` from a generator, a pool refreshed per epoch.

    The first epoch trains on ``size`` studies; before each later epoch the ``fresh``
    oldest are replaced by newly generated ones, so no study stays long and the
    generator's variety is seen without holding it all. Seeds are ``first_seed``,
    ``first_seed + 1``, ... in order; ``seeds_used`` says how many were drawn.
    """

    def __init__(
        self,
        source: VolumeSource,
        config: NetConfig,
        first_seed: int,
        size: int,
        fresh: int,
    ) -> None:
        if size < 1 or not 0 <= fresh <= size:
            raise ValueError(f"pool size must be >= 1 and 0 <= fresh <= size, got {size}, {fresh}")
        self.source, self.config, self.fresh = source, config, fresh
        self.next_seed = first_seed
        self.first_seed = first_seed
        self.studies: list[Prepared] = self._generate(size)

    @property
    def seeds_used(self) -> int:
        """How many studies were generated so far."""
        return self.next_seed - self.first_seed

    def _generate(self, count: int) -> list[Prepared]:
        seeds = range(self.next_seed, self.next_seed + count)
        self.next_seed += count
        return prepare_generated(self.source, seeds, self.config)

    def __call__(self, epoch: int) -> list[Prepared]:
        """The training studies of ``epoch`` (after the first)."""
        if self.fresh:
            self.studies = self.studies[self.fresh :] + self._generate(self.fresh)
        return self.studies


def _sample_batch(
    data: Sequence[Prepared],
    config: NetConfig,
    training: TrainingConfig,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Patches (inputs, targets, loss weight of each channel but the lesion one).

    Lesions are oversampled (``lesion_fraction``) and, with ``host_fraction``, so is
    the tissue they grow in. Targets are body, lesion and (``host_channel``) host.
    """
    size = training.patch_size
    xs, ys, weights = [], [], []
    with_lesions = [i for i, d in enumerate(data) if len(d.lesion_voxels)]
    with_host = [i for i, d in enumerate(data) if len(d.host_voxels)]
    for _ in range(training.batch_size):
        draw = rng.random() if with_lesions or with_host else 1.0
        if with_lesions and draw < training.lesion_fraction:
            study = data[with_lesions[int(rng.integers(len(with_lesions)))]]
            k, r, c = study.lesion_voxels[int(rng.integers(len(study.lesion_voxels)))]
            # Jitter so the lesion is anywhere in the patch, not always at its centre.
            r += int(rng.integers(-size // 3, size // 3 + 1))
            c += int(rng.integers(-size // 3, size // 3 + 1))
        elif with_host and draw < training.lesion_fraction + training.host_fraction:
            study = data[with_host[int(rng.integers(len(with_host)))]]
            k, r, c = study.host_voxels[int(rng.integers(len(study.host_voxels)))]
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
        weights.append([float(study.body is not None), float(study.host is not None)])
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
    y = np.zeros((config.out_channels, *x.shape[1:]), dtype=np.float32)
    if study.body is not None:
        y[0] = study.body[k][window]
    assert study.lesion is not None
    y[1] = study.lesion[k][window]
    if config.host_channel and study.host is not None:
        y[2] = study.host[k][window]
    pad = ((0, 0), (0, size - x.shape[1]), (0, size - x.shape[2]))
    return np.pad(x, pad, mode="edge"), np.pad(y, pad, mode="edge")


def _loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """BCE on every channel (body and host only where labelled) plus soft Dice on lesions.

    ``weights`` (batch, 2): whether each patch's body and host are labelled.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    weighted = (bce[:, 0] * weights[:, 0]).sum() / weights[:, 0].sum().clamp(min=1.0)
    if logits.shape[1] > 2:
        weighted = weighted + (bce[:, 2] * weights[:, 1]).sum() / weights[:, 1].sum().clamp(min=1.0)
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
    overlap = total = 0
    for study in data:
        probability = infer(net, study.image, study.offset, config, device, batch_size)
        assert study.lesion is not None
        body = probability[:, 0] >= 0.5
        allowed = body & (probability[:, 2] >= 0.5) if config.host_channel else body
        found = (probability[:, 1] >= 0.5) & allowed
        lesion_dice.append(_dice(found, study.lesion))
        overlap += int((found & study.lesion).sum())
        total += int(found.sum()) + int(study.lesion.sum())
        if study.body is not None:
            body_dice.append(_dice(body, study.body))
    return {
        "lesion_dice": float(np.mean(lesion_dice)),
        "pooled_lesion_dice": 2.0 * overlap / total if total else 1.0,
        "body_dice": float(np.mean(body_dice)) if body_dice else float("nan"),
    }


#: Thresholds and smallest lesion volumes (mm3) :func:`calibrate` chooses from.
CALIBRATION_THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))  # 0.30-0.95
CALIBRATION_MIN_MM3 = (30.0, 65.0, 125.0, 250.0)
#: The false positives per study a calibration may allow.
CALIBRATION_MAX_FP = 1.0


@dataclass(frozen=True, slots=True)
class Calibration:
    """What :func:`calibrate` chose, and the figures of every pair it tried."""

    lesion_threshold: float
    min_lesion_mm3: float
    table: tuple[dict[str, float], ...]


def calibrate(
    net: UNet,
    data: Sequence[Prepared],
    config: NetConfig,
    device: torch.device,
    batch_size: int,
) -> Calibration:
    """Choose the lesion threshold and smallest lesion on validation studies (working grid).

    For every pair of :data:`CALIBRATION_THRESHOLDS` and :data:`CALIBRATION_MIN_MM3`:
    the lesion Dice of all studies' voxels together (pooled: finding nothing scores
    0, false positives in lesion-free studies lower it) and the false positives per
    study (kept components touching no true lesion). The pair with the best Dice among
    those with at most :data:`CALIBRATION_MAX_FP` false positives per study wins; when
    none has so few, the pair with the fewest false positives (then the best Dice).
    """
    # (overlap voxels, predicted + truth voxels, false positives) per pair
    sums = {(t, m): [0, 0, 0] for t in CALIBRATION_THRESHOLDS for m in CALIBRATION_MIN_MM3}
    for study in data:
        assert study.lesion is not None
        probability = infer(net, study.image, study.offset, config, device, batch_size)
        allowed = probability[:, 0] >= 0.5
        if config.host_channel:
            allowed &= probability[:, 2] >= 0.5
        for threshold in CALIBRATION_THRESHOLDS:
            labels, count = preprocess.label_components((probability[:, 1] >= threshold) & allowed)
            sizes = np.bincount(labels.ravel(), minlength=count + 1) * study.voxel_mm3
            touching = np.zeros(count + 1, dtype=bool)
            touching[np.unique(labels[study.lesion])] = True
            for smallest in CALIBRATION_MIN_MM3:
                keep = sizes >= smallest
                keep[0] = False
                found = keep[labels]
                entry = sums[(threshold, smallest)]
                entry[0] += int((found & study.lesion).sum())
                entry[1] += int(found.sum()) + int(study.lesion.sum())
                entry[2] += int((keep & ~touching).sum())
    n = max(1, len(data))
    table = tuple(
        {
            "lesion_threshold": t,
            "min_lesion_mm3": m,
            "lesion_dice": 2.0 * o / v if v else 1.0,
            "false_positives": f / n,
        }
        for (t, m), (o, v, f) in sums.items()
    )
    allowed_rows = [row for row in table if row["false_positives"] <= CALIBRATION_MAX_FP]
    if allowed_rows:
        best = max(allowed_rows, key=lambda row: (row["lesion_dice"], -row["false_positives"]))
    else:
        best = min(table, key=lambda row: (row["false_positives"], -row["lesion_dice"]))
    return Calibration(best["lesion_threshold"], best["min_lesion_mm3"], table)


def _dice(predicted: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float:
    """Dice coefficient; 1 when both are empty."""
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((predicted & truth).sum()) / total


@dataclass(frozen=True, slots=True)
class _Counts:
    """One study's lesion counts (see :func:`evaluate_studies`)."""

    found_10: int
    lesions_10: int
    false: int
    lesions: int
    by_size: tuple[tuple[int, int], ...]
    scored: tuple[tuple[float, int], ...]


def _lesion_counts(
    predicted: npt.NDArray[np.bool_],
    truth: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
    result: ModelResult | None = None,
    first_id: int = 0,
) -> _Counts:
    """Truth lesions (found when a predicted component overlaps them) and predicted ones.

    Each predicted component is scored with the probability of its finding (the
    findings follow the components in raster order, as ``find_lesions`` makes them;
    1 when ``result`` is not given or does not match) and the id (``first_id`` on)
    of the truth lesion it overlaps most, or -1.
    """
    true_labels, true_count = preprocess.label_components(truth)
    found_10 = lesions_10 = 0
    by_size = [[0, 0] for _ in SIZE_BINS]
    for number, where in enumerate(preprocess.component_boxes(true_labels, true_count), start=1):
        if where is None:
            continue
        component = true_labels[where] == number
        diameter = longest_diameter(component, spacing)
        hit = bool(predicted[where][component].any())
        for i, (low, high) in enumerate(SIZE_BINS):
            if low <= diameter < high:
                by_size[i][0] += int(hit)
                by_size[i][1] += 1
        if diameter >= 10.0:
            lesions_10 += 1
            found_10 += int(hit)
    pred_labels, pred_count = preprocess.label_components(predicted)
    findings = result.findings if result is not None else ()
    probabilities = (
        [f.probability for f in findings] if len(findings) == pred_count else [1.0] * pred_count
    )
    scored: list[tuple[float, int]] = []
    false = 0
    for number, where in enumerate(preprocess.component_boxes(pred_labels, pred_count), start=1):
        if where is None:
            continue
        overlap = true_labels[where][pred_labels[where] == number]
        overlap = overlap[overlap > 0]
        if overlap.size:
            lesion = first_id + int(np.bincount(overlap).argmax()) - 1
        else:
            lesion, false = -1, false + 1
        scored.append((probabilities[number - 1], lesion))
    return _Counts(
        found_10,
        lesions_10,
        false,
        true_count,
        tuple((f, t) for f, t in by_size),
        tuple(scored),
    )
