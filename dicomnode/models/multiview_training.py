"""Training loop and metrics of the multi-view correlation models.

The models turn their labelled studies into one :class:`ViewBatch` (every view
preprocessed once, kept in memory) and train both networks here: the multi-view
network and the single-view ablation, each from the same seed, each with early
stopping on the validation AUC (ties broken by the validation loss).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dicomnode.models.multiview_nn import MultiViewNet, SingleViewNet
from dicomnode.models.training import Progress

__all__ = [
    "TrainConfig",
    "ViewBatch",
    "auc",
    "pair_probabilities",
    "single_view_scores",
    "train_network",
]

#: Scores a model's pair probabilities (N, P, C) against labels (N, P); higher is better.
Metric = Callable[[npt.NDArray[np.float32], npt.NDArray[np.int64]], float]


@dataclass(frozen=True, slots=True)
class ViewBatch:
    """Preprocessed studies: every view of every study, and the labels per view pair.

    Attributes
    ----------
    images
        (N, V, 1, H, W) float32.
    coords
        (N, V, H, W) correspondence coordinate, millimetres.
    present
        (N, V) boolean.
    labels
        (N, P) class index per pair, -1 where the pair has no view.
    lesions
        (N, V, C - 1, h, w) float: the ground-truth masks of each abnormal class,
        max-pooled to the backbone's 1/8 grid.
    """

    images: Tensor
    coords: Tensor
    present: Tensor
    labels: Tensor
    lesions: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, index: Tensor) -> ViewBatch:
        """The studies at `index`."""
        return ViewBatch(
            self.images[index],
            self.coords[index],
            self.present[index],
            self.labels[index],
            self.lesions[index],
        )


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Optimiser and stopping settings (the same for both networks)."""

    max_epochs: int = 40
    min_epochs: int = 12
    patience: int = 8
    decay_patience: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    drop_view: float = 0.15
    vertical_flip: bool = True
    lesion_weight: float = 1.0
    lesion_pos_weight: float = 5.0


def auc(scores: npt.NDArray[np.floating], positive: npt.NDArray[np.bool_]) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged).

    Returns NaN when either class is absent.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=np.bool_).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average the ranks of tied scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pair_probabilities(net: nn.Module, batch: ViewBatch, chunk: int = 32) -> Tensor:
    """Class probabilities (N, P, C) of a multi-view network, in evaluation mode."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(batch), chunk):
            part = batch.take(torch.arange(start, min(start + chunk, len(batch))))
            out.append(F.softmax(net(part.images, part.coords, part.present), -1))
    return torch.cat(out)


def single_view_scores(
    net: SingleViewNet, batch: ViewBatch, pairs: tuple[tuple[int, int], ...], chunk: int = 32
) -> Tensor:
    """Per-pair scores (N, P, C) of the ablation: max over the pair's views per class.

    Class 0 (normal) takes the minimum instead, so every column reads "the evidence
    of the most abnormal-looking view". These are scores for ROC analysis, not a
    probability distribution.
    """
    net.eval()
    views = []
    with torch.no_grad():
        for start in range(0, len(batch), chunk):
            images = batch.images[start : start + chunk]
            views.append(F.softmax(net(images), -1))
    probs = torch.cat(views)  # (N, V, C)
    present = batch.present.unsqueeze(-1)
    out = []
    for i, j in pairs:
        pair = probs[:, [i, j]]
        mask = present[:, [i, j]]
        high = torch.where(mask, pair, torch.full_like(pair, -1.0)).amax(1)
        low = torch.where(mask, pair, torch.full_like(pair, 2.0)).amin(1)
        out.append(torch.cat([low[:, :1], high[:, 1:]], -1))
    return torch.stack(out, 1)


def _augment(batch: ViewBatch, rng: np.random.Generator, config: TrainConfig) -> ViewBatch:
    """Drop a view now and then, jitter intensities, flip views up-down (with their coords)."""
    images, coords, lesions = batch.images.clone(), batch.coords.clone(), batch.lesions.clone()
    present = batch.present.clone()
    n, v = present.shape
    drop = torch.from_numpy(rng.uniform(size=(n, v)) < config.drop_view / 2)
    # Never drop both views of a pair: keep a view if its partner is dropped too.
    for k in range(0, v - 1, 2):
        both = drop[:, k] & drop[:, k + 1]
        drop[both, k + 1] = False
    present &= ~drop
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, size=(n, v, 1, 1, 1)).astype(np.float32))
    images = images * gain
    if config.vertical_flip:
        flip = torch.from_numpy(rng.uniform(size=(n, v)) < 0.5)
        images[flip] = images[flip].flip(-2)
        coords[flip] = coords[flip].flip(-2)
        lesions[flip] = lesions[flip].flip(-2)
    return ViewBatch(images, coords, present, batch.labels, lesions)


def _loss(net: MultiViewNet | SingleViewNet, batch: ViewBatch, config: TrainConfig) -> Tensor:
    """Cross-entropy of the classes plus the lesion maps' BCE on the present views."""
    if isinstance(net, SingleViewNet):
        logits, lesion = net.forward_with_maps(batch.images)  # each view: its pair's label
        labels = _view_labels(batch)
    else:
        logits, lesion = net.forward_with_maps(batch.images, batch.coords, batch.present)
        labels = batch.labels
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-1)
    if config.lesion_weight <= 0:
        return loss
    # Down-sampled masks may not match a grid rounded differently: crop to the common part.
    h = min(lesion.shape[-2], batch.lesions.shape[-2])
    w = min(lesion.shape[-1], batch.lesions.shape[-1])
    per_cell = F.binary_cross_entropy_with_logits(
        lesion[..., :h, :w],
        batch.lesions[..., :h, :w],
        pos_weight=torch.tensor(config.lesion_pos_weight),
        reduction="none",
    )
    weight = batch.present.to(per_cell.dtype)[..., None, None, None]
    lesion_loss = (per_cell * weight).sum() / (weight.sum() * per_cell[0, 0].numel()).clamp(min=1)
    return loss + config.lesion_weight * lesion_loss


def _view_labels(batch: ViewBatch) -> Tensor:
    pairs = batch.labels.shape[1]
    per_view = batch.labels.repeat_interleave(batch.present.shape[1] // pairs, dim=1)
    return torch.where(batch.present, per_view, torch.full_like(per_view, -1))


def _validation(
    net: MultiViewNet | SingleViewNet,
    batch: ViewBatch,
    metric: Metric,
    pairs: tuple[tuple[int, int], ...],
    config: TrainConfig,
) -> tuple[float, float]:
    """(metric, loss) on the validation batch."""
    if isinstance(net, SingleViewNet):
        scores = single_view_scores(net, batch, pairs)
    else:
        scores = pair_probabilities(net, batch)
    with torch.no_grad():
        loss = float(_loss(net, batch, config))
    return metric(scores.numpy(), batch.labels.numpy()), loss


def train_network(
    net: MultiViewNet | SingleViewNet,
    train: ViewBatch,
    validation: ViewBatch,
    *,
    metric: Metric,
    pairs: tuple[tuple[int, int], ...],
    config: TrainConfig,
    seed: int,
    progress: Progress,
    tag: str,
) -> dict[str, object]:
    """Train `net` in place with Adam and early stopping; keep the best epoch's weights.

    Returns
    -------
    dict
        ``epochs`` run, ``best_epoch``, ``best_validation`` metric and ``seconds``.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(
        net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    # Lower the learning rate when the validation AUC stalls; stop when it stays put.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="max", factor=0.3, patience=config.decay_patience
    )
    best: tuple[float, float] = (-1.0, 0.0)
    best_state = copy.deepcopy(net.state_dict())
    best_epoch, epoch, started = 0, 0, time.monotonic()
    for epoch in range(1, config.max_epochs + 1):
        train_loss = _epoch(net, train, optimiser, rng, config)
        score, val_loss = _validation(net, validation, metric, pairs, config)
        # One-class validation data has no AUC: then only the loss decides.
        score = -1.0 if math.isnan(score) else score
        progress(
            f"{tag} epoch {epoch}: train loss {train_loss:.4f}, "
            f"validation loss {val_loss:.4f}, validation auc {score:.4f}"
        )
        scheduler.step(score)
        if (score, -val_loss) > best:
            best, best_epoch = (score, -val_loss), epoch
            best_state = copy.deepcopy(net.state_dict())
        elif epoch >= config.min_epochs and epoch - best_epoch >= config.patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    return {
        "epochs": epoch,
        "best_epoch": best_epoch,
        "best_validation": round(best[0], 6),
        "seconds": round(time.monotonic() - started, 1),
    }


def _epoch(
    net: MultiViewNet | SingleViewNet,
    data: ViewBatch,
    optimiser: torch.optim.Optimizer,
    rng: np.random.Generator,
    config: TrainConfig,
) -> float:
    net.train()
    order = torch.from_numpy(rng.permutation(len(data)))
    total, count = 0.0, 0
    for start in range(0, len(data), config.batch_size):
        batch = _augment(data.take(order[start : start + config.batch_size]), rng, config)
        optimiser.zero_grad()
        loss = _loss(net, batch, config)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        total += float(loss.detach()) * len(batch)
        count += len(batch)
    return total / max(count, 1)
