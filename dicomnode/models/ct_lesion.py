"""``ct-lesion-seg``: body and lesion segmentation of CT with a 2.5D (Attention) U-Net.

Pipeline (inference and training alike)
    1. Crop in-plane to the body (:func:`~dicomnode.models.preprocess.find_body_box`:
       voxels above -500 HU, largest component of their projection, 10 mm margin).
    2. Resample every slice to the working spacing (1.4 mm, bilinear) over the same
       field of view, so any pixel spacing gives the network the same scale.
    3. Window twice, soft tissue (40 / 400 HU) and wide (-400 / 1600 HU), to [0, 1].
    4. Stack each slice with its neighbours about 2 mm above and below (the nearest
       slices to +-2 mm, at least one slice away) as channels: 2.5D input.
    5. Run the network on batches of slices under ``torch.inference_mode()``; two
       sigmoid outputs, body and lesion (multi-label: a lesion is also body).
    6. Resample the probabilities back onto the exact source grid (bilinear), threshold
       at 0.5, keep lesions inside the body, drop lesion components under
       ``min_lesion_mm3``; one :class:`~dicomnode.models.api.Finding` per component.

Why 2.5D
    Lesions are spheres whose axial cross-sections are discs brighter than soft tissue;
    within one slice the noise (sigma 10 HU) against a 60-120 HU contrast is what makes
    the edge uncertain, and the caps of a sphere are small discs that look like noise.
    The neighbouring slices give the network the third dimension where it helps (it
    averages noise along z and sees a cap continue into a larger disc) at the cost of
    only the first convolution's extra input channels, so inference stays at the speed
    of a 2D U-Net. A 3D U-Net would cost about three times the operations per voxel
    (27-tap kernels), needs the slices resampled to an isotropic grid and back, and
    gains little on round lesions that a 2-4 mm context already disambiguates. Using
    the slices nearest to +-2 mm, not the adjacent ones, keeps the context the same in
    millimetres whether the series has 1 mm or 2.5 mm slices.

Why the network draws the body
    The body is a second output channel (one 1 x 1 output filter more), so the body
    mask follows whatever the training labels call "body" (lungs and bowel gas inside,
    table outside) instead of a threshold rule's idea of it, and it needs no separate
    full-resolution hole filling. The threshold rule is kept only for the crop, which
    only has to be generous. Studies whose labels have no body segment train the lesion
    channel only.

Why 1.4 mm
    Lesions of 10 mm or more are 7+ pixels across; a cropped 512 x 512, 0.7 mm slice
    shrinks to about 250 x 180, a quarter of the work. Upsampling the probabilities
    (bilinear) before the threshold puts the edges back between working pixels.

Training (:meth:`CtLesionSegModel.fit`)
    128 x 128 patches, 60 % centred near a lesion voxel, random left-right flips;
    BCE on both channels plus soft Dice on the lesion channel; AdamW with a cosine
    rate; batch-norm statistics re-estimated before every validation; the epoch with
    the best validation lesion Dice (working grid) is kept, early stop on patience.

Pipeline options: ``attention`` (bool: the Attention U-Net instead of the U-Net),
``lesion_threshold`` (0-1, default 0.5), ``min_lesion_mm3`` (default 30).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from dicomnode.models import codes, preprocess
from dicomnode.models.api import (
    ClassLabel,
    Code,
    Finding,
    ModelResult,
    NotApplicable,
    Region,
    SegmentLabel,
    SeriesRule,
    StudyViews,
    ViewSpec,
    Volume,
)
from dicomnode.models.training import LabelledStudy, Progress
from dicomnode.models.unet import Norm, UNet, build_unet

__all__ = ["CtLesionSegModel", "NetConfig", "TrainingConfig", "weights_path"]

logger = logging.getLogger(__name__)

VIEW = "ct"
BODY_SEGMENT = 1
LESION_SEGMENT = 2
_WEIGHTS_DIR = Path(__file__).parent / "weights"
_FORMAT = 1


def weights_path(attention: bool = False) -> Path:
    """Where the packaged weights of the U-Net (or the Attention U-Net) are."""
    return _WEIGHTS_DIR / ("ct-lesion-seg-attention.pt" if attention else "ct-lesion-seg.pt")


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Network and preprocessing settings; saved with the weights.

    Attributes
    ----------
    base_channels, depth, attention, norm
        U-Net size, variant and normalisation (see :class:`~dicomnode.models.unet.UNet`).
    working_spacing
        In-plane spacing the network works at, millimetres.
    context_slices, context_mm
        Neighbours on each side given as channels, and their distance in millimetres.
    windows
        (centre, width) of each intensity window, HU.
    body_threshold, crop_margin_mm
        Threshold (HU) and margin (mm) of the body crop.
    """

    base_channels: int = 16
    depth: int = 4
    attention: bool = False
    norm: Norm = "batch"
    working_spacing: float = 1.4
    context_slices: int = 1
    context_mm: float = 2.0
    windows: tuple[tuple[float, float], ...] = ((40.0, 400.0), (-400.0, 1600.0))
    body_threshold: float = -500.0
    crop_margin_mm: float = 10.0

    @property
    def in_channels(self) -> int:
        """Input channels: slices in the context times windows."""
        return (2 * self.context_slices + 1) * len(self.windows)

    def to_dict(self) -> dict[str, object]:
        """Plain values for the weights file (``torch.load(weights_only=True)`` reads them)."""
        values = asdict(self)
        values["windows"] = [list(w) for w in self.windows]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> NetConfig:
        """Rebuild from :meth:`to_dict` output."""
        raw = dict(values)
        windows = raw.pop("windows")
        assert isinstance(windows, list)
        return cls(windows=tuple((float(c), float(w)) for c, w in windows), **raw)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Settings of :meth:`CtLesionSegModel.fit`.

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
class _Prepared:
    """One study on the working grid, ready for the network."""

    image: npt.NDArray[np.float16]  # (slices, windows, rows, columns)
    offset: int  # slice distance of the context neighbours
    lesion: npt.NDArray[np.bool_] | None = None
    body: npt.NDArray[np.bool_] | None = None
    lesion_voxels: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros((0, 3), np.intp))


@dataclass(frozen=True, slots=True)
class _Segmentation:
    """Masks on the source grid and the lesion probability inside the crop."""

    body: npt.NDArray[np.bool_]
    lesion: npt.NDArray[np.bool_]
    lesion_probability: npt.NDArray[np.uint8]  # 0-255, inside the crop box
    box: preprocess.CropBox


class CtLesionSegModel:
    """Body and lesion segmentation of axial CT; see the module docstring.

    Parameters
    ----------
    device
        Torch device, ``cpu`` or ``cuda:N``.
    attention
        Use the Attention U-Net by default (the ``attention`` option overrides per job).
    weights
        Weights file of the default variant; the packaged one when None. A missing
        packaged file leaves the network untrained (for :meth:`fit`).
    config
        Network settings for training from scratch; loaded weights bring their own.
    training
        Settings of :meth:`fit`.
    """

    name = "ct-lesion-seg"
    version = "1"
    description = "CT body and lesion segmentation, 2.5D U-Net / Attention U-Net at 1.4 mm"
    views = (
        ViewSpec(VIEW, SeriesRule(modality=("CT",), image_plane=("AXIAL",), min_instances=10)),
    )
    labels = (
        SegmentLabel(BODY_SEGMENT, "body", codes.ANATOMICAL_STRUCTURE, codes.BODY),
        SegmentLabel(LESION_SEGMENT, "lesion", codes.MORPHOLOGICALLY_ABNORMAL, codes.LESION),
    )
    classes: tuple[ClassLabel, ...] = ()

    def __init__(
        self,
        device: str = "cpu",
        *,
        attention: bool = False,
        weights: Path | None = None,
        config: NetConfig | None = None,
        training: TrainingConfig | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.attention = attention
        self.config = config or NetConfig(attention=attention)
        if self.config.attention != attention:
            raise ValueError("CtLesionSegModel config.attention must equal attention")
        self.training = training or TrainingConfig()
        self.batch_size = 32 if self.device.type == "cuda" else 8
        self._networks: dict[bool, tuple[NetConfig, UNet]] = {}
        path = weights or weights_path(attention)
        if weights is not None or path.exists():
            self._networks[attention] = self._load(path)

    # -- inference -------------------------------------------------------------

    def predict(self, study: StudyViews) -> ModelResult:
        """Segment body and lesions of the ``ct`` view and report each lesion.

        Raises
        ------
        NotApplicable
            When the study has no ``ct`` view.
        ValueError
            When an option has a bad value.
        """
        view = study.views.get(VIEW)
        if view is None:
            raise NotApplicable("ct-lesion-seg needs an axial CT series (view 'ct')")
        attention = _bool_option(study.options, "attention", self.attention)
        threshold = _float_option(study.options, "lesion_threshold", 0.5, 0.0, 1.0)
        min_volume = _float_option(study.options, "min_lesion_mm3", 30.0, 0.0, float("inf"))
        config, net = self._network(attention)
        volume = view.volume
        seg = _segment(volume, net, config, self.device, self.batch_size, threshold)
        findings, kept = _findings(seg, volume.spacing, min_volume)
        masks = np.stack([seg.body, kept])
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        summary: dict[str, object] = {
            "network": "attention-unet" if attention else "unet",
            "lesion_count": len(findings),
            "lesion_volume_mm3": round(float(kept.sum()) * voxel_ml * 1000.0, 1),
            "body_volume_ml": round(float(seg.body.sum()) * voxel_ml, 1),
            "crop_box": [seg.box.row0, seg.box.row1, seg.box.column0, seg.box.column1],
        }
        logger.info(
            "ct lesions segmented",
            extra={"action": "ct_lesion_segmented", "lesions": len(findings)},
        )
        return ModelResult(masks={VIEW: masks}, findings=findings, summary=summary)

    def _network(self, attention: bool) -> tuple[NetConfig, UNet]:
        if attention not in self._networks:
            path = weights_path(attention)
            if not path.exists():
                variant = "Attention U-Net" if attention else "U-Net"
                raise RuntimeError(f"ct-lesion-seg has no trained {variant} weights ({path})")
            self._networks[attention] = self._load(path)
        return self._networks[attention]

    def _load(self, path: Path) -> tuple[NetConfig, UNet]:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") != _FORMAT or saved.get("model") != self.name:
            raise ValueError(f"{path} is not a {self.name} weights file (format {_FORMAT})")
        config = NetConfig.from_dict(saved["config"])
        net = _new_network(config)
        state = {
            k: v.float() if v.is_floating_point() else v for k, v in saved["state_dict"].items()
        }
        net.load_state_dict(state)
        return config, net.to(self.device).eval()

    # -- training --------------------------------------------------------------

    def fit(
        self,
        train: Sequence[LabelledStudy],
        validation: Sequence[LabelledStudy],
        *,
        seed: int,
        progress: Progress,
        max_epochs: int | None = None,
    ) -> dict[str, object]:
        """Train the default variant from scratch; keep the epoch with the best validation Dice.

        ``max_epochs`` overrides ``TrainingConfig.max_epochs`` (and its cosine schedule).

        The result depends only on the studies (in any order: they are sorted by
        patient key and study UID) and ``seed``.

        Returns
        -------
        dict
            The training record: epochs, best epoch and its metrics, the history.
        """
        if not train or not validation:
            raise ValueError("fit needs at least one training and one validation study")
        started = time.monotonic()
        if max_epochs is not None:
            self.training = replace(self.training, max_epochs=max_epochs)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        config, cfg = self.config, self.training
        train_data = [_prepare(s, config) for s in _ordered(train)]
        val_data = [_prepare(s, config) for s in _ordered(validation)]
        net = _new_network(config).to(self.device)
        best_epoch, best, history = self._run_epochs(net, train_data, val_data, rng, progress)
        self._networks[self.attention] = (config, net.eval())
        return {
            "seed": seed,
            "epochs": len(history),
            "best_epoch": best_epoch,
            "validation": best,
            "train_studies": len(train_data),
            "validation_studies": len(val_data),
            "seconds": round(time.monotonic() - started, 1),
            "config": config.to_dict(),
            "training": asdict(cfg),
            "history": history,
        }

    def _run_epochs(
        self,
        net: UNet,
        train_data: Sequence[_Prepared],
        val_data: Sequence[_Prepared],
        rng: np.random.Generator,
        progress: Progress,
    ) -> tuple[int, dict[str, float], list[dict[str, float | int]]]:
        """Train until the epoch limit or patience runs out; leave ``net`` at its best epoch."""
        cfg, started = self.training, time.monotonic()
        optimiser = torch.optim.AdamW(
            net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, cfg.max_epochs)
        best: dict[str, float] = {"lesion_dice": -1.0}
        best_state, best_epoch, history = copy.deepcopy(net.state_dict()), 0, []
        for epoch in range(1, cfg.max_epochs + 1):
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
        data: Sequence[_Prepared],
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

    def _recalibrate(self, net: UNet, data: Sequence[_Prepared], rng: np.random.Generator) -> None:
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

    def evaluate(self, studies: Sequence[LabelledStudy]) -> dict[str, float]:
        """Metrics of the current weights on the source grid of these studies.

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
            result = self.predict(labelled.study)
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

    def save(self, path: Path) -> None:
        """Write the default variant's weights and settings to ``path`` (float16 tensors)."""
        config, net = self._network(self.attention)
        state = {
            k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
            for k, v in net.state_dict().items()
        }
        payload = {"format": _FORMAT, "model": self.name, "version": self.version}
        torch.save({**payload, "config": config.to_dict(), "state_dict": state}, path)


# -- options -------------------------------------------------------------------


_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _bool_option(options: Mapping[str, object], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if isinstance(value, bool):
        return value
    try:
        return _BOOLEANS[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"option {key!r} must be true or false, got {value!r}") from None


def _float_option(
    options: Mapping[str, object], key: str, default: float, low: float, high: float
) -> float:
    value = options.get(key, default)
    try:
        number = float(str(value))
    except ValueError:
        raise ValueError(f"option {key!r} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"option {key!r} must be between {low} and {high}, got {number}")
    return number


# -- preprocessing and inference ----------------------------------------------


def _new_network(config: NetConfig) -> UNet:
    return build_unet(
        config.in_channels, 2, config.base_channels, config.depth, config.attention, config.norm
    )


def _context_offset(volume: Volume, config: NetConfig) -> int:
    """Slices between a slice and its context neighbours: nearest to ``context_mm``."""
    return max(1, round(config.context_mm / max(volume.spacing[0], 1e-3)))


def _working_image(
    volume: Volume, config: NetConfig
) -> tuple[npt.NDArray[np.float32], preprocess.CropBox]:
    """Crop, resample and window a volume: (slices, windows, rows, columns) in [0, 1]."""
    pixel_spacing = (volume.spacing[1], volume.spacing[2])
    box = preprocess.find_body_box(
        volume.array,
        pixel_spacing,
        threshold=config.body_threshold,
        margin_mm=config.crop_margin_mm,
    )
    shape = preprocess.inplane_shape(box.shape, pixel_spacing, config.working_spacing)
    resampled = preprocess.resample_slices(box.crop(volume.array), shape)
    image = np.empty((resampled.shape[0], len(config.windows), *shape), dtype=np.float32)
    for i, (centre, width) in enumerate(config.windows):
        image[:, i] = preprocess.window(resampled, centre, width)
    return image, box


def _stack_context(
    image: npt.NDArray[np.floating], indices: npt.NDArray[np.intp], offset: int, k: int
) -> npt.NDArray[np.float32]:
    """Each slice in ``indices`` with its neighbours +-offset (clamped) as channels."""
    last = image.shape[0] - 1
    parts = [image[np.clip(indices + d * offset, 0, last)] for d in range(-k, k + 1)]
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def _infer(
    net: UNet,
    image: npt.NDArray[np.floating],
    offset: int,
    config: NetConfig,
    device: torch.device,
    batch_size: int,
) -> npt.NDArray[np.float32]:
    """Body and lesion probabilities (slices, 2, rows, columns) on the working grid."""
    net.eval()
    out = np.empty((image.shape[0], 2, *image.shape[2:]), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, image.shape[0], batch_size):
            indices = np.arange(start, min(start + batch_size, image.shape[0]))
            x = torch.from_numpy(_stack_context(image, indices, offset, config.context_slices))
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            out[indices] = torch.sigmoid(net(x)).float().cpu().numpy()
    return out


def _segment(
    volume: Volume,
    net: UNet,
    config: NetConfig,
    device: torch.device,
    batch_size: int,
    threshold: float,
) -> _Segmentation:
    """Run the pipeline on one volume and put the masks back on its grid."""
    image, box = _working_image(volume, config)
    probability = _infer(net, image, _context_offset(volume, config), config, device, batch_size)
    del image
    body = np.zeros(volume.shape, dtype=bool)
    lesion = np.zeros(volume.shape, dtype=bool)
    lesion_probability = np.zeros((volume.shape[0], *box.shape), dtype=np.uint8)
    for start in range(0, volume.shape[0], batch_size):
        stop = start + batch_size
        back = preprocess.resample_slices(probability[start:stop], box.shape)
        box.crop(body[start:stop])[...] = back[:, 0] >= 0.5
        box.crop(lesion[start:stop])[...] = (back[:, 1] >= threshold) & (back[:, 0] >= 0.5)
        lesion_probability[start:stop] = np.rint(back[:, 1] * 255.0).astype(np.uint8)
    return _Segmentation(body, lesion, lesion_probability, box)


# -- findings and measurements ------------------------------------------------


def _findings(
    seg: _Segmentation, spacing: tuple[float, float, float], min_volume: float
) -> tuple[tuple[Finding, ...], npt.NDArray[np.bool_]]:
    """One finding per lesion component of at least ``min_volume``; the mask of those kept."""
    labels, count = preprocess.label_components(seg.lesion)
    kept = np.zeros(seg.lesion.shape, dtype=bool)
    voxel_mm3 = float(np.prod(spacing))
    findings: list[Finding] = []
    for number, where in enumerate(preprocess.component_boxes(labels, count), start=1):
        if where is None:
            continue
        component = labels[where] == number
        volume_mm3 = float(component.sum()) * voxel_mm3
        if volume_mm3 < min_volume:
            continue
        kept[where] |= component
        findings.append(_finding(seg, where, component, spacing, volume_mm3))
    return tuple(findings), kept


def _finding(
    seg: _Segmentation,
    where: tuple[slice, ...],
    component: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
    volume_mm3: float,
) -> Finding:
    # The region is the component's box on its slice of largest cross-section.
    best = int(np.argmax(component.sum(axis=(1, 2))))
    rows = where[1].start + np.flatnonzero(component[best].any(axis=1))
    columns = where[2].start + np.flatnonzero(component[best].any(axis=0))
    corners = (int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1)
    region = Region(VIEW, where[0].start + best, *corners)
    # Mean probability over the component, read from the crop's 8-bit probabilities.
    box = seg.box
    local = (
        where[0],
        slice(where[1].start - box.row0, where[1].stop - box.row0),
        slice(where[2].start - box.column0, where[2].stop - box.column0),
    )
    probability = float(seg.lesion_probability[local][component].mean()) / 255.0
    return Finding(
        code=codes.LESION,
        probability=min(1.0, max(0.0, probability)),
        views=(VIEW,),
        segment_number=LESION_SEGMENT,
        measurements={
            "volume": (round(volume_mm3, 1), "mm3"),
            "longest_diameter": (round(_diameter(component, spacing), 1), "mm"),
        },
        regions=(region,),
    )


def _diameter(component: npt.NDArray[np.bool_], spacing: tuple[float, float, float]) -> float:
    return preprocess.longest_axial_diameter(component, (spacing[1], spacing[2]))


# -- training helpers -----------------------------------------------------------


def _ordered(studies: Sequence[LabelledStudy]) -> list[LabelledStudy]:
    return sorted(studies, key=lambda s: (s.patient_key, s.study.study_instance_uid))


def _truth(labelled: LabelledStudy, code: Code, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """Union of the study's truth segments of this type on the ``ct`` view."""
    mask = np.zeros(shape, dtype=bool)
    for segment in labelled.segments:
        if segment.view == VIEW and codes.same_code(segment.type, code):
            mask |= segment.mask
    return mask


def _prepare(labelled: LabelledStudy, config: NetConfig) -> _Prepared:
    """Bring a labelled study onto the working grid (images as float16)."""
    view = labelled.study.views.get(VIEW)
    if view is None:
        raise ValueError(f"a training study has no {VIEW!r} view")
    volume = view.volume
    image, box = _working_image(volume, config)
    shape = (image.shape[2], image.shape[3])
    prepared = _Prepared(image.astype(np.float16), _context_offset(volume, config))
    lesion = _truth(labelled, codes.LESION, volume.shape)
    prepared.lesion = preprocess.resample_mask(box.crop(lesion), shape)
    prepared.lesion_voxels = np.argwhere(prepared.lesion)
    if any(codes.same_code(s.type, codes.BODY) for s in labelled.segments):
        body = _truth(labelled, codes.BODY, volume.shape)
        prepared.body = preprocess.resample_mask(box.crop(body), shape)
    return prepared


def _sample_batch(
    data: Sequence[_Prepared],
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
    study: _Prepared, k: int, r: int, c: int, size: int, config: NetConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The ``size`` x ``size`` patch centred near (r, c) of slice k, padded at the edges."""
    rows, columns = study.image.shape[2:]
    r0 = min(max(0, r - size // 2), max(0, rows - size))
    c0 = min(max(0, c - size // 2), max(0, columns - size))
    window = (slice(r0, r0 + size), slice(c0, c0 + size))
    x = _stack_context(study.image, np.array([k]), study.offset, config.context_slices)[0]
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
    data: Sequence[_Prepared],
    config: NetConfig,
    device: torch.device,
    batch_size: int,
) -> dict[str, float]:
    """Lesion and body Dice on the working grid (cheaper than the source grid)."""
    lesion_dice, body_dice = [], []
    for study in data:
        probability = _infer(net, study.image, study.offset, config, device, batch_size)
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
        if _diameter(component, spacing) < 10.0:
            continue
        lesions += 1
        found += int(predicted[where][component].any())
    pred_labels, pred_count = preprocess.label_components(predicted)
    hits = np.unique(pred_labels[truth & predicted])
    false = pred_count - int(np.count_nonzero(hits))
    return {"found": found, "lesions": lesions, "false": false}
