"""Networks of the multi-view correlation models, and the input preprocessing they share.

:class:`MultiViewNet` is the founding method: one shared-weight CNN backbone applied
to every view, a lesion embedding per view, and a cross-view correlation between the
two views of a pair (CC and MLO of a breast; PA and lateral of a chest) that asks
whether the *same kind* of finding lies at the *same correspondence coordinate* in
both views. The coordinate is what a radiologist triangulates with: the distance from
the nipple in mammography, the cranio-caudal height in chest radiography.

Per view, the lesion embedding ``E`` (channels x cells) is max-pooled into a profile
over coordinate bins, widened by one bin either side, ``P[c, k]``. The correlation of
a pair is the per-bin geometric mean ``sqrt(P_a[c, k] * P_b[c, k])`` maxed over bins (a soft
AND: high only where both views show channel ``c`` at the same coordinate) and the
best per-bin cosine similarity of the two profiles. Pairs may also be compared with
each other (left vs right breast: cosine similarity of their descriptors). A missing
view is masked: its features and every correlation it takes part in are zero, and a
presence flag tells the head.

:class:`SingleViewNet` is the ablation: the same backbone and embedding with a
per-view classifier and no correlation; a pair's score is the maximum over its
views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Backbone",
    "BinSpec",
    "MultiViewNet",
    "SingleViewNet",
    "nipple_distance_map",
    "prepare_image",
    "row_height_map",
    "unsharp",
]

_EMBED = 32
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class BinSpec:
    """Bins along the correspondence coordinate: ``count`` bins of ``step`` mm from ``start``.

    ``tolerance`` neighbouring bins either side count as the same position.
    """

    start: float
    step: float
    count: int
    tolerance: int = 1


def _block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, c_out // 4), c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class Backbone(nn.Module):
    """Shared CNN: one channel in, a lesion-embedding map at 1/8 resolution out.

    ``lesion`` maps the embedding to one logit per lesion class and cell; training
    supervises it with the ground-truth masks (deep supervision), which teaches the
    backbone what a lesion looks like far faster than the study labels alone.
    """

    def __init__(self, n_lesion: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(1, 16, True),
            *_block(16, 24, True),
            *_block(24, 48, True),
            *_block(48, 64, False),
            *_block(64, 64, False),
        )
        # A non-negative embedding: "nothing here" is the zero vector.
        self.embed = nn.Sequential(nn.Conv2d(64, _EMBED, 1), nn.ReLU(inplace=True))
        self.lesion = nn.Conv2d(_EMBED, n_lesion, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) -> (N, E, H/8, W/8)."""
        out: Tensor = self.embed(self.features(x))
        return out


def _head(width: int, n_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, 64), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(64, n_classes)
    )


class MultiViewNet(nn.Module):
    """Shared backbone + cross-view correlation + fusion, one prediction per view pair.

    Parameters
    ----------
    n_classes
        Classes per pair (3 for a breast, 2 for a chest).
    pairs
        Index pairs of views that image the same organ, e.g. ``((0, 1), (2, 3))``.
    bins
        Soft bins of the correspondence coordinate.
    bilateral
        Compare the pairs with each other (left vs right breast); needs two pairs.
    """

    def __init__(
        self,
        n_classes: int,
        pairs: tuple[tuple[int, int], ...],
        bins: BinSpec,
        bilateral: bool,
    ) -> None:
        super().__init__()
        self.pairs = pairs
        self.bilateral = bilateral and len(pairs) == 2
        self.backbone = Backbone(n_classes - 1)
        self.start, self.step, self.count = bins.start, bins.step, bins.count
        self.tolerance = 2 * bins.tolerance + 1
        self.head = _head(3 * _EMBED + 4, n_classes)

    def forward(self, images: Tensor, coords: Tensor, present: Tensor) -> Tensor:
        """Return logits (B, pairs, classes); see :meth:`forward_with_maps`."""
        logits, _ = self.forward_with_maps(images, coords, present)
        return logits

    def forward_with_maps(
        self, images: Tensor, coords: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Return logits (B, pairs, classes) and lesion logits (B, V, classes - 1, h, w).

        Parameters
        ----------
        images
            (B, V, 1, H, W) preprocessed views; missing views may hold anything.
        coords
            (B, V, H, W) correspondence coordinate of each pixel, millimetres.
        present
            (B, V) boolean: which views exist.
        """
        b, v = images.shape[:2]
        emb = self.backbone(images.flatten(0, 1))  # (B*V, E, h, w)
        mask = present.to(emb.dtype).view(b * v, 1, 1, 1)
        emb = emb * mask
        cell = F.adaptive_avg_pool2d(coords.flatten(0, 1).unsqueeze(1), emb.shape[-2:])
        flat = emb.flatten(2)  # (B*V, E, cells)
        profile = self._profile(flat, cell.flatten(1))  # (B*V, E, K)
        vector = flat.amax(-1)  # (B*V, E)
        profile = profile.view(b, v, *profile.shape[1:])
        vector = vector.view(b, v, -1)
        lesion = self.backbone.lesion(emb).view(b, v, -1, *emb.shape[-2:])
        return torch.stack(self._pair_features(profile, vector, present), 1), lesion

    def _profile(self, flat: Tensor, cell: Tensor) -> Tensor:
        """Max of each channel over the cells of each coordinate bin, +- one bin."""
        index = torch.round((cell - self.start) / self.step).long().clamp(0, self.count - 1)
        index = index.unsqueeze(1).expand_as(flat)
        profile = flat.new_zeros(*flat.shape[:2], self.count)
        profile = profile.scatter_reduce(2, index, flat, reduce="amax", include_self=True)
        # Neighbouring bins absorb the projection's and the estimate's error.
        return F.max_pool1d(profile, self.tolerance, stride=1, padding=self.tolerance // 2)

    def _pair_features(self, profile: Tensor, vector: Tensor, present: Tensor) -> list[Tensor]:
        fp = present.to(vector.dtype)
        descriptors = [torch.maximum(vector[:, i], vector[:, j]) for i, j in self.pairs]
        pair_present = [torch.maximum(fp[:, i], fp[:, j]) for i, j in self.pairs]
        out = []
        for index, (i, j) in enumerate(self.pairs):
            both = (fp[:, i] * fp[:, j]).unsqueeze(1)
            matched = torch.sqrt(profile[:, i] * profile[:, j] + _EPS).amax(-1) * both
            cosine = F.cosine_similarity(profile[:, i], profile[:, j], dim=1, eps=_EPS)
            best = cosine.amax(-1, keepdim=True) * both
            side = torch.zeros_like(best)
            side_present = torch.zeros_like(best)
            if self.bilateral:
                other = 1 - index
                side_present = (pair_present[index] * pair_present[other]).unsqueeze(1)
                side = F.cosine_similarity(
                    descriptors[index], descriptors[other], dim=1, eps=_EPS
                ).unsqueeze(1)
                side = side * side_present
            features = torch.cat(
                [vector[:, i], vector[:, j], matched, best, both, side, side_present], 1
            )
            out.append(self.head(features))
        return out


class SingleViewNet(nn.Module):
    """The ablation: the same backbone with a per-view classifier, no correlation."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.backbone = Backbone(n_classes - 1)
        self.head = _head(_EMBED, n_classes)

    def forward(self, images: Tensor) -> Tensor:
        """(B, V, 1, H, W) -> per-view logits (B, V, classes)."""
        logits, _ = self.forward_with_maps(images)
        return logits

    def forward_with_maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Per-view logits (B, V, classes) and lesion logits (B, V, classes - 1, h, w)."""
        b, v = images.shape[:2]
        emb = self.backbone(images.flatten(0, 1))
        logits: Tensor = self.head(emb.flatten(2).amax(-1))
        lesion = self.backbone.lesion(emb).view(b, v, -1, *emb.shape[-2:])
        return logits.view(b, v, -1), lesion


def prepare_image(
    array: npt.NDArray[np.float32], size: tuple[int, int], *, flip: bool
) -> npt.NDArray[np.float32]:
    """Downsample a 2D image to `size` by area averaging and scale it to about 0-1.

    Intensities are divided by the 99.5th percentile after subtracting the minimum, so
    a vendor's bit depth or window does not matter. ``flip`` mirrors left-right.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    small = F.adaptive_avg_pool2d(tensor, size)[0, 0].numpy()
    if flip:
        small = small[:, ::-1]
    low = float(small.min())
    high = float(np.percentile(small, 99.5))
    scaled = (small - low) / max(high - low, _EPS)
    return np.clip(scaled, 0.0, 2.0).astype(np.float32)


def unsharp(image: npt.NDArray[np.float32], radius: int, amount: float) -> npt.NDArray[np.float32]:
    """Unsharp masking, as chest radiographs are processed for reading.

    Adds ``amount`` times the image minus its local mean (two box blurs of
    ``2 * radius + 1`` pixels, close to a Gaussian), which lifts nodule-sized detail
    above the large, smooth shapes of the mediastinum and the diaphragm.
    """
    x = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    blurred = x
    for _ in range(2):
        blurred = F.avg_pool2d(
            F.pad(blurred, (radius,) * 4, mode="replicate"), 2 * radius + 1, stride=1
        )
    out = x + amount * (x - blurred)
    result: npt.NDArray[np.float32] = out[0, 0].numpy().astype(np.float32)
    return result


def nipple_distance_map(
    image: npt.NDArray[np.float32], spacing: tuple[float, float]
) -> npt.NDArray[np.float32]:
    """Distance of every pixel from the nipple, millimetres, on a prepared breast image.

    The image has its chest wall on the left. The nipple is taken as the anterior-most
    point of the breast outline (tissue above a fifth of the scale): the largest
    column reached, at the mean of the rows that reach it.
    """
    tissue = image > 0.2
    columns = np.arange(image.shape[1])
    extent = np.where(tissue, columns[np.newaxis, :], -1).max(axis=1)
    if extent.max() < 0:
        return np.zeros_like(image)
    tip = int(extent.max())
    rows = np.flatnonzero(extent >= tip - 1)
    nipple_row = float(rows.mean())
    r = (np.arange(image.shape[0], dtype=np.float32)[:, np.newaxis] - nipple_row) * spacing[0]
    c = (columns.astype(np.float32)[np.newaxis, :] - tip) * spacing[1]
    return np.sqrt(r**2 + c**2).astype(np.float32)


def row_height_map(shape: tuple[int, int], row_spacing: float) -> npt.NDArray[np.float32]:
    """Cranio-caudal position of every pixel: millimetres from the top row."""
    rows = (np.arange(shape[0], dtype=np.float32) + 0.5) * row_spacing
    return np.repeat(rows[:, np.newaxis], shape[1], axis=1)
