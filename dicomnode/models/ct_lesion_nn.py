"""The ct-lesion-seg network and its inference pipeline (see :mod:`~dicomnode.models.ct_lesion`).

:class:`NetConfig` (saved with the weights) says how a volume becomes network input:
the body crop, the working spacing, the intensity windows and the 2.5D context.
:func:`segment` runs steps 1-6 of the pipeline on one volume and
:func:`find_lesions` turns the lesion mask into findings with their measurements.
Training (:mod:`~dicomnode.models.ct_lesion_training`) uses the same preprocessing,
so a network sees the same input in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import torch

from dicomnode.models import codes, preprocess
from dicomnode.models.api import Finding, Region, Volume
from dicomnode.models.unet import Norm, UNet, build_unet

__all__ = [
    "BODY_SEGMENT",
    "LESION_SEGMENT",
    "VIEW",
    "NetConfig",
    "Segmentation",
    "context_offset",
    "find_lesions",
    "infer",
    "longest_diameter",
    "new_network",
    "segment",
    "stack_context",
    "working_image",
]

#: The model's one view, and the segment numbers of its two outputs.
VIEW = "ct"
BODY_SEGMENT = 1
LESION_SEGMENT = 2


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
class Segmentation:
    """Masks on the source grid and the lesion probability inside the crop."""

    body: npt.NDArray[np.bool_]
    lesion: npt.NDArray[np.bool_]
    lesion_probability: npt.NDArray[np.uint8]  # 0-255, inside the crop box
    box: preprocess.CropBox


def new_network(config: NetConfig) -> UNet:
    """The untrained U-Net (or Attention U-Net) that ``config`` describes."""
    return build_unet(
        config.in_channels, 2, config.base_channels, config.depth, config.attention, config.norm
    )


def context_offset(volume: Volume, config: NetConfig) -> int:
    """Slices between a slice and its context neighbours: nearest to ``context_mm``."""
    return max(1, round(config.context_mm / max(volume.spacing[0], 1e-3)))


def working_image(
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


def stack_context(
    image: npt.NDArray[np.floating], indices: npt.NDArray[np.intp], offset: int, k: int
) -> npt.NDArray[np.float32]:
    """Each slice in ``indices`` with its neighbours +-offset (clamped) as channels."""
    last = image.shape[0] - 1
    parts = [image[np.clip(indices + d * offset, 0, last)] for d in range(-k, k + 1)]
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def infer(
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
            x = torch.from_numpy(stack_context(image, indices, offset, config.context_slices))
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            out[indices] = torch.sigmoid(net(x)).float().cpu().numpy()
    return out


def segment(
    volume: Volume,
    net: UNet,
    config: NetConfig,
    device: torch.device,
    batch_size: int,
    threshold: float,
) -> Segmentation:
    """Run the pipeline on one volume and put the masks back on its grid."""
    image, box = working_image(volume, config)
    probability = infer(net, image, context_offset(volume, config), config, device, batch_size)
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
    return Segmentation(body, lesion, lesion_probability, box)


# -- findings and measurements ------------------------------------------------


def find_lesions(
    seg: Segmentation, spacing: tuple[float, float, float], min_volume: float
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
    seg: Segmentation,
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
            "longest_diameter": (round(longest_diameter(component, spacing), 1), "mm"),
        },
        regions=(region,),
    )


def longest_diameter(
    component: npt.NDArray[np.bool_], spacing: tuple[float, float, float]
) -> float:
    """Longest axial diameter of a component, millimetres, on the grid of ``spacing``."""
    return preprocess.longest_axial_diameter(component, (spacing[1], spacing[2]))
