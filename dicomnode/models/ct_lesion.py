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
       sigmoid outputs, body and lesion (multi-label: a lesion is also body). By
       default the fast path runs it (batch norms folded, channels-last, bfloat16 on
       a CPU that has it, float16 on CUDA; every step kept on the device): see
       :mod:`dicomnode.models.ct_lesion_nn`.
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
``weights`` (``phantom``, the default, or ``anatomical``: the U-Net trained on the
anatomical generator with a host-tissue output, see ``ct-lesion-seg-anatomical.md``),
``lesion_threshold`` (0-1; default 0.5, or what the weights were calibrated to),
``min_lesion_mm3`` (default 30, or the calibrated value), ``inference`` (``fast``, the
default, or ``reference``: the original float32 path).

The network and steps 1-6 are in :mod:`dicomnode.models.ct_lesion_nn`, training and
evaluation in :mod:`dicomnode.models.ct_lesion_training`; this module is the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicomnode.models import codes
from dicomnode.models.api import (
    ClassLabel,
    ModelResult,
    NotApplicable,
    SegmentLabel,
    SeriesRule,
    StudyViews,
    ViewSpec,
)
from dicomnode.models.ct_lesion_nn import (
    BODY_SEGMENT,
    INFERENCE_PATHS,
    LESION_SEGMENT,
    VIEW,
    InferencePath,
    NetConfig,
    NetRunner,
    Precision,
    find_lesions,
    new_network,
    segment,
    segment_fast,
)
from dicomnode.models.ct_lesion_training import (
    GeneratedData,
    GeneratedPool,
    Trainer,
    TrainingConfig,
    calibrate,
    evaluate_studies,
    generated_study,
    ordered,
    prepare,
)
from dicomnode.models.training import LabelledStudy, Progress
from dicomnode.models.unet import UNet

__all__ = ["WEIGHT_SETS", "CtLesionSegModel", "NetConfig", "TrainingConfig", "weights_path"]

logger = logging.getLogger(__name__)

_WEIGHTS_DIR = Path(__file__).parent / "weights"
_FORMAT = 1


#: The packaged weight sets, by what they were trained on (the ``weights`` option):
#: ``phantom`` (the default: the simple phantom, ``dicomnode.synth.ct.phantom``) and
#: ``anatomical`` (``dicomnode train ct-lesion-seg --generator anatomical``).
WEIGHT_SETS = ("phantom", "anatomical")


def weights_path(attention: bool = False, trained_on: str = "phantom") -> Path:
    """Where the packaged weights of the U-Net (or the Attention U-Net) of a set are."""
    if trained_on not in WEIGHT_SETS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_SETS)}, got {trained_on!r}")
    stem = "ct-lesion-seg" if trained_on == "phantom" else f"ct-lesion-seg-{trained_on}"
    return _WEIGHTS_DIR / (f"{stem}-attention.pt" if attention else f"{stem}.pt")


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
    inference
        ``fast`` (default) or ``reference``; the ``inference`` option overrides per job.
    precision
        Arithmetic of the fast path's convolutions (``auto``: the device's native
        16-bit float, else float32; see :func:`~dicomnode.models.ct_lesion_nn.resolve_precision`).
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
        inference: InferencePath = "fast",
        precision: Precision = "auto",
        trained_on: str = "phantom",
    ) -> None:
        if inference not in INFERENCE_PATHS:
            raise ValueError(
                f"CtLesionSegModel inference must be fast or reference, got {inference!r}"
            )
        self.device = torch.device(device)
        self.inference: InferencePath = inference
        self.precision: Precision = precision
        self.attention = attention
        if trained_on not in WEIGHT_SETS:
            raise ValueError(f"CtLesionSegModel trained_on must be one of {WEIGHT_SETS}")
        self.trained_on = trained_on
        self.config = config or NetConfig(attention=attention)
        if self.config.attention != attention:
            raise ValueError("CtLesionSegModel config.attention must equal attention")
        self.training = training or TrainingConfig()
        self.batch_size = 32 if self.device.type == "cuda" else 8
        self._networks: dict[tuple[bool, str], tuple[NetConfig, UNet]] = {}
        self._runners: dict[tuple[bool, str], NetRunner] = {}
        path = weights or weights_path(attention, trained_on)
        if weights is not None or path.exists():
            self._networks[self._default] = self._load(path)

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
        path = _path_option(study.options, self.inference)
        key = (attention, _weights_option(study.options, self.trained_on))
        config, net = self._network(key)
        threshold = _float_option(
            study.options, "lesion_threshold", config.lesion_threshold, 0.0, 1.0
        )
        min_volume = _float_option(
            study.options, "min_lesion_mm3", config.min_lesion_mm3, 0.0, float("inf")
        )
        volume = view.volume
        if path == "fast":
            seg = segment_fast(volume, self._runner(key), config, threshold)
        else:
            seg = segment(volume, net, config, self.device, self.batch_size, threshold)
        findings, kept = find_lesions(seg, volume.spacing, min_volume, whole_grid=path != "fast")
        masks = np.stack([seg.body, kept])
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        summary: dict[str, object] = {
            "network": "attention-unet" if attention else "unet",
            "weights": key[1],
            "inference": path,
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

    @property
    def _default(self) -> tuple[bool, str]:
        """The network :meth:`fit` trains and :meth:`save` writes."""
        return self.attention, self.trained_on

    def _network(self, key: tuple[bool, str]) -> tuple[NetConfig, UNet]:
        attention, trained_on = key
        if key not in self._networks:
            path = weights_path(attention, trained_on)
            if not path.exists():
                variant = "Attention U-Net" if attention else "U-Net"
                raise RuntimeError(
                    f"ct-lesion-seg has no trained {variant} weights of the {trained_on} set"
                    f" ({path})"
                )
            self._networks[key] = self._load(path)
        return self._networks[key]

    def _runner(self, key: tuple[bool, str]) -> NetRunner:
        """The fast path's copy of a network, built once per loaded network."""
        if key not in self._runners:
            _, net = self._network(key)
            self._runners[key] = NetRunner(net, self.device, self.precision)
        return self._runners[key]

    def _load(self, path: Path) -> tuple[NetConfig, UNet]:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") != _FORMAT or saved.get("model") != self.name:
            raise ValueError(f"{path} is not a {self.name} weights file (format {_FORMAT})")
        config = NetConfig.from_dict(saved["config"])
        net = new_network(config)
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
        train_data = [prepare(s, config) for s in ordered(train)]
        val_data = [prepare(s, config) for s in ordered(validation)]
        net = new_network(config).to(self.device)
        trainer = Trainer(config, cfg, self.device, self.batch_size)
        best_epoch, best, history = trainer.run_epochs(net, train_data, val_data, rng, progress)
        self._networks[self._default] = (config, net.eval())
        self._runners.pop(self._default, None)  # the old weights' fused copy
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

    def fit_generated(
        self,
        data: GeneratedData,
        *,
        seed: int,
        progress: Progress,
        max_epochs: int | None = None,
    ) -> tuple[dict[str, object], tuple[LabelledStudy, ...]]:
        """Train from scratch on a generator's studies, made in memory; calibrate; keep the best.

        ``data`` names the generator and gives its sources (for ``dicomnode train
        --generator``: :func:`dicomnode.synth.generators.generated_data`).

        The network gets the host output (``NetConfig.host_channel``). Training draws
        patches from a pool of :data:`GENERATED_POOL` studies of which
        :data:`GENERATED_FRESH` are replaced before every epoch; validation and test
        are :data:`GENERATED_VALIDATION` and :data:`GENERATED_TEST` studies of seeds
        no training study has (see :func:`generated_seeds`). After training the lesion
        threshold and smallest lesion are calibrated on the validation studies and
        saved with the weights.

        Returns
        -------
        tuple
            The training record, and the test studies (for :meth:`evaluate`).
        """
        source = data.training
        started = time.monotonic()
        cfg = GENERATED_TRAINING
        if max_epochs is not None:
            cfg = replace(cfg, max_epochs=max_epochs)
        self.training = cfg
        config = replace(self.config, host_channel=True)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        seeds = generated_seeds(seed)
        progress(f"generating {GENERATED_VALIDATION} validation and {GENERATED_TEST} test studies")
        validation = self.generated_studies(data, seed, "validation")
        test = tuple(self.generated_studies(data, seed, "test"))
        val_data = [prepare(s, config) for s in validation]
        progress(f"generating the first {GENERATED_POOL} training studies")
        pool = GeneratedPool(source, config, seeds["train"], GENERATED_POOL, GENERATED_FRESH)
        net = new_network(config).to(self.device)
        trainer = Trainer(config, cfg, self.device, self.batch_size)
        best_epoch, best, history = trainer.run_epochs(
            net, pool.studies, val_data, rng, progress, refresh=pool
        )
        calibration = calibrate(net.eval(), val_data, config, self.device, self.batch_size)
        config = replace(
            config,
            lesion_threshold=calibration.lesion_threshold,
            min_lesion_mm3=calibration.min_lesion_mm3,
        )
        progress(
            f"calibrated on the validation studies: lesion threshold "
            f"{config.lesion_threshold}, smallest lesion {config.min_lesion_mm3:g} mm3"
        )
        self.config = config
        self._networks[self._default] = (config, net.eval())
        self._runners.pop(self._default, None)
        record = {
            "seed": seed,
            "generator": data.name,
            "epochs": len(history),
            "best_epoch": best_epoch,
            "validation": best,
            "train_studies": pool.seeds_used,
            "validation_studies": len(validation),
            "test_studies": len(test),
            "seconds": round(time.monotonic() - started, 1),
            "config": config.to_dict(),
            "training": asdict(cfg),
            "calibration": list(calibration.table),
            "history": history,
        }
        return record, test

    def generated_studies(self, data: GeneratedData, seed: int, part: str) -> list[LabelledStudy]:
        """The ``validation`` or ``test`` studies of :meth:`fit_generated` with this seed."""
        if part not in ("validation", "test"):
            raise ValueError(f"part must be validation or test, got {part!r}")
        return [generated_study(data.held_out, s) for s in generated_seeds(seed)[part]]

    def evaluate(self, studies: Sequence[LabelledStudy]) -> dict[str, float]:
        """Metrics of the current weights on the source grid of these studies.

        The metrics are those of
        :func:`dicomnode.models.ct_lesion_training.evaluate_studies`.
        """
        return evaluate_studies(self.predict, studies)

    def save(self, path: Path) -> None:
        """Write the default variant's weights and settings to ``path`` (float16 tensors)."""
        config, net = self._network(self._default)
        state = {
            k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
            for k, v in net.state_dict().items()
        }
        payload = {"format": _FORMAT, "model": self.name, "version": self.version}
        torch.save({**payload, "config": config.to_dict(), "state_dict": state}, path)


# -- options -------------------------------------------------------------------


_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


# -- generated training data ---------------------------------------------------

#: Training studies held at once, and replaced before each epoch.
GENERATED_POOL = 48
GENERATED_FRESH = 8
#: Held-out studies for validation (early stop, calibration) and test.
GENERATED_VALIDATION = 8
GENERATED_TEST = 12
#: Training settings on generated data: longer epochs (a fresh pool each), hard negatives.
GENERATED_TRAINING = TrainingConfig(
    max_epochs=18,
    patience=8,
    steps_per_epoch=150,
    lesion_fraction=0.5,
    host_fraction=0.25,
    selection="pooled_lesion_dice",
)


def generated_seeds(seed: int) -> dict[str, Any]:
    """Seeds of each part for a training seed: training from ``seed * 10^6``, then
    validation and test from ``seed * 10^6 + 900000`` and ``+ 950000`` (disjoint while
    training uses fewer than 900,000 studies)."""
    base = seed * 1_000_000
    return {
        "train": base,
        "validation": range(base + 900_000, base + 900_000 + GENERATED_VALIDATION),
        "test": range(base + 950_000, base + 950_000 + GENERATED_TEST),
    }


def _bool_option(options: Mapping[str, object], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if isinstance(value, bool):
        return value
    try:
        return _BOOLEANS[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"option {key!r} must be true or false, got {value!r}") from None


def _weights_option(options: Mapping[str, object], default: str) -> str:
    value = str(options.get("weights", default)).strip().lower()
    if value not in WEIGHT_SETS:
        raise ValueError(f"option 'weights' must be one of {', '.join(WEIGHT_SETS)}, got {value!r}")
    return value


def _path_option(options: Mapping[str, object], default: InferencePath) -> InferencePath:
    value = str(options.get("inference", default)).strip().lower()
    for path in INFERENCE_PATHS:
        if value == path:
            return path
    raise ValueError(f"option 'inference' must be fast or reference, got {value!r}")


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
