"""Multi-view correlation classifiers: ``mg-4view`` (mammography) and ``cxr-2view`` (chest).

Both models run one shared-weight CNN backbone on every view and correlate the views
of each organ before a fused classification (:mod:`dicomnode.models.multiview_nn`):

``mg-4view``
    Views L-CC, R-CC (required) and L-MLO, R-MLO (optional; a missing MLO is masked).
    Right breasts are mirrored so every chest wall is on the left. Correlation: CC
    with MLO of a breast along the distance from the nipple, and left breast with
    right. Classes per breast: normal, benign, suspicious; study-level probabilities
    combine the breasts as independent: the study is suspicious when any breast is,
    normal when both are, benign otherwise. ``probabilities`` has ``normal``,
    ``benign``, ``suspicious`` (study) and ``L:normal`` ... ``R:suspicious``.
``cxr-2view``
    Views PA (required; ViewPosition PA or AP) and LAT (optional; LL, RL or
    LATERAL). Correlation: PA with lateral along the cranio-caudal height. Classes:
    normal, nodule.

Weights ship in ``dicomnode/models/weights/<name>.pt``; they hold the multi-view
network and the single-view ablation used for the model card's comparison. Both are
trained by :meth:`fit`, the only training entry point.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from dicomnode.models.api import (
    ClassLabel,
    Finding,
    ModelResult,
    NotApplicable,
    Region,
    SegmentLabel,
    SeriesRule,
    StudyViews,
    View,
    ViewSpec,
)
from dicomnode.models.codes import (
    BENIGN,
    CALCIFICATION_CLUSTER,
    MALIGNANT,
    MASS,
    NODULE,
    NORMAL,
    SPICULATED_LESION,
    same_code,
)
from dicomnode.models.multiview_nn import (
    BinSpec,
    MultiViewNet,
    SingleViewNet,
    nipple_distance_map,
    prepare_image,
    row_height_map,
    unsharp,
)
from dicomnode.models.multiview_training import (
    TrainConfig,
    ViewBatch,
    auc,
    pair_probabilities,
    single_view_scores,
    train_network,
)
from dicomnode.models.training import LabelledStudy, Progress, TruthSegment

__all__ = ["WEIGHTS_DIR", "CxrTwoViewModel", "MgFourViewModel"]

logger = logging.getLogger(__name__)

#: Folder of the shipped weights and model cards.
WEIGHTS_DIR = Path(__file__).parent / "weights"
_FORMAT = 1


class _MultiViewModel:
    """What the two models share: preprocessing, training, evaluation, saving."""

    name: str
    version: str
    description: str
    views: tuple[ViewSpec, ...]
    labels: tuple[SegmentLabel, ...] = ()
    classes: tuple[ClassLabel, ...]
    _pairs: tuple[tuple[int, int], ...]
    _bins: BinSpec
    _size: tuple[int, int]
    _bilateral: bool
    _train_config: TrainConfig

    def __init__(
        self, device: str = "cpu", *, weights: Path | None = None, pretrained: bool = True
    ) -> None:
        """Build the networks and load their weights.

        Parameters
        ----------
        device
            Torch device, e.g. ``cpu`` or ``cuda:0``.
        weights
            Weights file; by default the shipped ``weights/<name>.pt``.
        pretrained
            False builds untrained networks (what :meth:`fit` starts from).

        Raises
        ------
        FileNotFoundError
            When ``pretrained`` and the weights file does not exist.
        """
        self.device = torch.device(device)
        self.net = self._new_net()
        self.single = SingleViewNet(len(self.classes)).to(self.device)
        self.has_single = False
        if pretrained:
            self._load(weights or WEIGHTS_DIR / f"{self.name}.pt")

    def _new_net(self) -> MultiViewNet:
        net = MultiViewNet(len(self.classes), self._pairs, self._bins, self._bilateral)
        return net.to(self.device).eval()

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("format") != _FORMAT or state.get("name") != self.name:
            raise ValueError(f"{path} does not hold {self.name} weights (format {_FORMAT})")
        self.net.load_state_dict(state["multi_view"])
        if state.get("single_view"):
            self.single.load_state_dict(state["single_view"])
            self.has_single = True
        self.net.eval()
        self.single.eval()

    def save(self, path: Path) -> None:
        """Write both networks' weights to ``path`` (one ``torch.save`` file)."""
        state = {
            "format": _FORMAT,
            "name": self.name,
            "version": self.version,
            "multi_view": self.net.state_dict(),
            "single_view": self.single.state_dict() if self.has_single else {},
        }
        torch.save(state, path)

    # Preprocessing ---------------------------------------------------------------

    def _view_arrays(
        self, views: Mapping[str, View]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_], list[bool]]:
        """(V, 1, H, W) images, (V, H, W) coordinates, (V,) presence, flips of a study."""
        v = len(self.views)
        images = np.zeros((v, 1, *self._size), dtype=np.float32)
        coords = np.zeros((v, *self._size), dtype=np.float32)
        present = np.zeros(v, dtype=np.bool_)
        flips = [False] * v
        for index, spec in enumerate(self.views):
            view = views.get(spec.name)
            if view is None:
                continue
            image, coord, flips[index] = self._prepare(view)
            images[index, 0], coords[index], present[index] = image, coord, True
        return images, coords, present, flips

    def _prepare(self, view: View) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], bool]:
        raise NotImplementedError

    def _lesion_targets(self, study: LabelledStudy, flips: list[bool]) -> npt.NDArray[np.float32]:
        """Ground-truth masks per view and abnormal class on the backbone's 1/8 grid."""
        grid = (self._size[0] // 8, self._size[1] // 8)
        out = np.zeros((len(self.views), len(self.classes) - 1, *grid), dtype=np.float32)
        names = [spec.name for spec in self.views]
        for segment in study.segments:
            channel = self._lesion_channel(segment)
            if channel is None or segment.view not in names or not segment.mask.any():
                continue
            index = names.index(segment.view)
            mask = torch.from_numpy(segment.mask[:1].astype(np.float32))[None]
            small = F.adaptive_max_pool2d(mask, grid)[0, 0].numpy()
            if flips[index]:
                small = small[:, ::-1]
            out[index, channel] = np.maximum(out[index, channel], small)
        return out

    def _lesion_channel(self, segment: TruthSegment) -> int | None:
        raise NotImplementedError

    def _scaled_spacing(self, view: View) -> tuple[float, float]:
        _, rows, columns = view.volume.shape
        return (
            view.volume.spacing[1] * rows / self._size[0],
            view.volume.spacing[2] * columns / self._size[1],
        )

    def _batch(self, studies: Sequence[LabelledStudy]) -> ViewBatch:
        images, coords, present, labels, lesions = [], [], [], [], []
        for study in studies:
            image, coord, here, flips = self._view_arrays(study.study.views)
            images.append(image)
            coords.append(coord)
            present.append(here)
            labels.append(self._truth(study))
            lesions.append(self._lesion_targets(study, flips))
        return ViewBatch(
            torch.from_numpy(np.stack(images)),
            torch.from_numpy(np.stack(coords)),
            torch.from_numpy(np.stack(present)),
            torch.from_numpy(np.stack(labels)),
            torch.from_numpy(np.stack(lesions)),
        )

    def _truth(self, study: LabelledStudy) -> npt.NDArray[np.int64]:
        raise NotImplementedError

    def _metric(self, scores: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
        raise NotImplementedError

    # Training and evaluation -----------------------------------------------------

    def fit(
        self,
        train: Sequence[LabelledStudy],
        validation: Sequence[LabelledStudy],
        *,
        seed: int,
        progress: Progress,
        max_epochs: int | None = None,
    ) -> dict[str, object]:
        """Train the multi-view network and the single-view ablation from scratch.

        Each stops early on the validation AUC (see :meth:`evaluate`); the best
        epoch's weights are kept. ``max_epochs`` caps the model's own limit (40).

        Returns
        -------
        dict
            Studies used, and per network the epochs, best epoch, best validation
            AUC and seconds.
        """
        if not train or not validation:
            raise ValueError("fit needs at least one training and one validation study")
        train_batch, val_batch = self._batch(train), self._batch(validation)
        torch.manual_seed(seed)
        self.net = self._new_net()
        self.single = SingleViewNet(len(self.classes)).to(self.device)
        config = self._train_config
        if max_epochs is not None:
            limit = max(1, min(max_epochs, config.max_epochs))
            config = replace(config, max_epochs=limit, min_epochs=min(config.min_epochs, limit))
        common = {
            "metric": self._metric,
            "pairs": self._pairs,
            "config": config,
            "seed": seed,
            "progress": progress,
        }
        multi = train_network(self.net, train_batch, val_batch, tag="multi-view", **common)  # type: ignore[arg-type]
        single = train_network(self.single, train_batch, val_batch, tag="single-view", **common)  # type: ignore[arg-type]
        self.has_single = True
        logger.info(
            "multi-view model trained",
            extra={"action": "model_trained", "model": self.name, "studies": len(train)},
        )
        return {
            "train_studies": len(train),
            "validation_studies": len(validation),
            "seed": seed,
            "multi_view": multi,
            "single_view": single,
        }

    def evaluate(self, studies: Sequence[LabelledStudy]) -> dict[str, float]:
        """Metrics of the current weights; ``auc`` is this model's primary AUC."""
        batch = self._batch(studies)
        probs = pair_probabilities(self.net, batch).numpy()
        single = None
        if self.has_single:
            single = single_view_scores(self.single, batch, self._pairs).numpy()
        return self._metrics(probs, single, batch.labels.numpy())

    def _metrics(
        self,
        probs: npt.NDArray[np.float32],
        single: npt.NDArray[np.float32] | None,
        labels: npt.NDArray[np.int64],
    ) -> dict[str, float]:
        known = labels >= 0
        out = {
            "auc": self._metric(probs, labels),
            "accuracy": float((probs.argmax(-1) == labels)[known].mean()),
            "cases": float(known.sum()),
        }
        if single is not None:
            out["single_view_auc"] = self._metric(single, labels)
        return out

    # Inference -------------------------------------------------------------------

    def _forward(
        self, study: StudyViews
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Pair probabilities (P, C), evidence maps (V, h, w) and presence (V,)."""
        for spec in self.views:
            if spec.required and spec.name not in study.views:
                raise NotApplicable(f"{self.name} needs the {spec.name} view")
        images, coords, present, _ = self._view_arrays(study.views)
        x = torch.from_numpy(images)[None].to(self.device)
        c = torch.from_numpy(coords)[None].to(self.device)
        p = torch.from_numpy(present)[None].to(self.device)
        with torch.no_grad():
            probs = torch.softmax(self.net(x, c, p), -1)[0]
            evidence = self.net.backbone.lesion(self.net.backbone(x[0])).amax(1)
        return probs.cpu().numpy(), evidence.cpu().numpy(), present

    def _region(self, view: View, evidence: npt.NDArray[np.float32], flipped: bool) -> Region:
        """Box of the most lesion-like backbone cell, on the view's source pixels."""
        h, w = evidence.shape
        row, column = divmod(int(evidence.argmax()), w)
        if flipped:
            column = w - 1 - column
        _, rows, columns = view.volume.shape
        r0, r1 = math.floor(row * rows / h), math.ceil((row + 1) * rows / h)
        c0, c1 = math.floor(column * columns / w), math.ceil((column + 1) * columns / w)
        return Region(view.name, 0, r0, c0, min(r1, rows), min(c1, columns))


def _needs_flip(image: npt.NDArray[np.float32]) -> bool:
    """Whether the breast's chest wall is on the right (more tissue in the right half)."""
    half = image.shape[1] // 2
    return float(image[:, half:].sum()) > float(image[:, :half].sum())


def _mg_views() -> tuple[ViewSpec, ...]:
    specs = []
    for side in ("L", "R"):
        for position, required in (("CC", True), ("MLO", False)):
            rule = SeriesRule(modality=("MG",), laterality=(side,), view_position=(position,))
            specs.append(ViewSpec(f"{side}-{position}", rule, required=required))
    return tuple(specs)


_SUSPICIOUS_TYPES = (SPICULATED_LESION, CALCIFICATION_CLUSTER)


def _severity(segment: TruthSegment) -> int:
    """Breast class a segment implies: 2 suspicious, 1 benign (a mass), 0 none."""
    if any(same_code(segment.type, code) for code in _SUSPICIOUS_TYPES):
        return 2
    return 1 if same_code(segment.type, MASS) else 0


class MgFourViewModel(_MultiViewModel):
    """``mg-4view``: normal / benign / suspicious per breast from the four screening views.

    Primary metric (``auc``): per-breast suspicious-vs-rest ROC AUC, the recall
    decision a screening reader makes for each breast (BI-RADS 4-5 versus 1-3).
    ``abnormal_auc`` is benign-or-suspicious versus normal per breast,
    ``study_auc`` suspicious-vs-rest per study.
    """

    name = "mg-4view"
    version = "1"
    description = "Four-view mammography: normal / benign / suspicious per breast (synthetic)"
    views: tuple[ViewSpec, ...] = _mg_views()
    classes: tuple[ClassLabel, ...] = (
        ClassLabel("normal", NORMAL),
        ClassLabel("benign", BENIGN),
        ClassLabel("suspicious", MALIGNANT),
    )
    _pairs = ((0, 1), (2, 3))
    _bins = BinSpec(start=0.0, step=8.0, count=26, tolerance=1)
    _size = (128, 104)
    _bilateral = True
    _train_config = TrainConfig()

    def _prepare(self, view: View) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], bool]:
        raw = prepare_image(view.volume.array[0], self._size, flip=False)
        flip = _needs_flip(raw)
        image = raw[:, ::-1].copy() if flip else raw
        return image, nipple_distance_map(image, self._scaled_spacing(view)), flip

    def _lesion_channel(self, segment: TruthSegment) -> int | None:
        severity = _severity(segment)
        return None if severity == 0 else severity - 1

    def _truth(self, study: LabelledStudy) -> npt.NDArray[np.int64]:
        labels = np.full(2, -1, dtype=np.int64)
        for index, side in enumerate(("L", "R")):
            if any(v.startswith(side) for v in study.study.views):
                labels[index] = 0
        for segment in study.segments:
            view = study.study.views.get(segment.view)
            side = (view.laterality if view and view.laterality else segment.view[:1]).upper()
            if segment.mask.any() and side in ("L", "R"):
                index = 0 if side == "L" else 1
                labels[index] = max(labels[index], _severity(segment))
        return labels

    def _metric(self, scores: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
        known = labels >= 0
        return auc(scores[..., 2][known], labels[known] == 2)

    def _metrics(
        self,
        probs: npt.NDArray[np.float32],
        single: npt.NDArray[np.float32] | None,
        labels: npt.NDArray[np.int64],
    ) -> dict[str, float]:
        out = super()._metrics(probs, single, labels)
        known = labels >= 0
        out["abnormal_auc"] = auc(1 - probs[..., 0][known], labels[known] > 0)
        study_score = 1 - np.prod(1 - np.where(known, probs[..., 2], 0.0), axis=1)
        out["study_auc"] = auc(study_score, (labels == 2).any(axis=1))
        if single is not None:
            out["single_view_abnormal_auc"] = auc(1 - single[..., 0][known], labels[known] > 0)
            single_study = 1 - np.prod(1 - np.where(known, single[..., 2], 0.0), axis=1)
            out["single_view_study_auc"] = auc(single_study, (labels == 2).any(axis=1))
        return out

    def predict(self, study: StudyViews) -> ModelResult:
        """Classify each breast and the study; a finding per abnormal breast."""
        probs, evidence, present = self._forward(study)
        probabilities = _study_probabilities(probs)
        findings = []
        names = [spec.name for spec in self.views]
        for index, side in enumerate(("L", "R")):
            for key, value in zip(("normal", "benign", "suspicious"), probs[index], strict=True):
                probabilities[f"{side}:{key}"] = float(value)
            cls = int(probs[index].argmax())
            if cls == 0 or probs[index, cls] < 0.5:
                continue
            used = [n for k, n in enumerate(names) if n.startswith(side) and present[k]]
            regions = tuple(
                self._region(
                    study.views[n], evidence[names.index(n)], self._flipped(study.views[n])
                )
                for n in used
            )
            findings.append(
                Finding(
                    self.classes[cls].code,
                    float(probs[index, cls]),
                    laterality=side,
                    views=tuple(used),
                    regions=regions,
                )
            )
        return ModelResult(
            probabilities=probabilities,
            findings=tuple(findings),
            summary={"views_used": [n for k, n in enumerate(names) if present[k]]},
        )

    def _flipped(self, view: View) -> bool:
        return _needs_flip(prepare_image(view.volume.array[0], self._size, flip=False))


def _study_probabilities(probs: npt.NDArray[np.float32]) -> dict[str, float]:
    """Study-level classes from two independent breasts: the worse breast decides."""
    normal = float(probs[0, 0] * probs[1, 0])
    suspicious = float(1 - (1 - probs[0, 2]) * (1 - probs[1, 2]))
    return {"normal": normal, "benign": max(0.0, 1 - normal - suspicious), "suspicious": suspicious}


class CxrTwoViewModel(_MultiViewModel):
    """``cxr-2view``: pulmonary nodule vs none from the PA and (optional) lateral chest.

    Primary metric (``auc``): nodule-vs-normal ROC AUC per study.
    """

    name = "cxr-2view"
    version = "1"
    description = "Two-view chest radiograph: pulmonary nodule vs none (synthetic)"
    views: tuple[ViewSpec, ...] = (
        ViewSpec("PA", SeriesRule(modality=("DX", "CR"), view_position=("PA", "AP"))),
        ViewSpec(
            "LAT",
            SeriesRule(modality=("DX", "CR"), view_position=("LL", "RL", "LATERAL")),
            required=False,
        ),
    )
    classes: tuple[ClassLabel, ...] = (ClassLabel("normal", NORMAL), ClassLabel("nodule", NODULE))
    _pairs = ((0, 1),)
    _bins = BinSpec(start=0.0, step=10.0, count=44, tolerance=1)
    _size = (128, 128)
    _bilateral = False
    # A nodule covers 1-4 of the 256 backbone cells: weigh them up, and give the lesion
    # maps time to find them before early stopping may end the run.
    _train_config = TrainConfig(vertical_flip=False, lesion_pos_weight=20.0, min_epochs=15)

    def _prepare(self, view: View) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], bool]:
        image = unsharp(prepare_image(view.volume.array[0], self._size, flip=False), 4, 3.0)
        return image, row_height_map(self._size, self._scaled_spacing(view)[0]), False

    def _lesion_channel(self, segment: TruthSegment) -> int | None:
        return 0 if same_code(segment.type, NODULE) else None

    def _truth(self, study: LabelledStudy) -> npt.NDArray[np.int64]:
        nodule = any(s.mask.any() and same_code(s.type, NODULE) for s in study.segments)
        return np.array([1 if nodule else 0], dtype=np.int64)

    def _metric(self, scores: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
        known = labels >= 0
        return auc(scores[..., 1][known], labels[known] == 1)

    def predict(self, study: StudyViews) -> ModelResult:
        """Probability of a nodule; a finding when it is 0.5 or more."""
        probs, evidence, present = self._forward(study)
        p = float(probs[0, 1])
        findings: tuple[Finding, ...] = ()
        names = [spec.name for spec in self.views]
        used = tuple(n for k, n in enumerate(names) if present[k])
        if p >= 0.5:
            regions = tuple(
                self._region(study.views[n], evidence[names.index(n)], False) for n in used
            )
            findings = (Finding(NODULE, p, views=used, regions=regions),)
        return ModelResult(
            probabilities={"normal": 1.0 - p, "nodule": p},
            findings=findings,
            summary={"views_used": list(used)},
        )
