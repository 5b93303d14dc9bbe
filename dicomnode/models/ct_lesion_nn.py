"""The ct-lesion-seg network and its inference pipeline (see :mod:`~dicomnode.models.ct_lesion`).

:class:`NetConfig` (saved with the weights) says how a volume becomes network input:
the body crop, the working spacing, the intensity windows and the 2.5D context.
:func:`segment_fast` runs steps 1-6 of the pipeline on one volume (the default) and
:func:`find_lesions` turns the lesion mask into findings with their measurements.
Training (:mod:`~dicomnode.models.ct_lesion_training`) uses the same preprocessing,
so a network sees the same input in both.

Two inference paths compute the same steps:

``fast`` (:func:`segment_fast`, :class:`NetRunner`)
    The working image, the network's input and output and the upsampled
    probabilities stay torch tensors on the runner's device (CPU or CUDA), each step
    in chunks of slices; the network runs with its batch norms folded into the
    convolutions (:func:`~dicomnode.models.unet.fuse_batch_norm`), channels-last,
    under ``torch.inference_mode()`` and, where the device computes it natively,
    autocast to a 16-bit float (:func:`resolve_precision`: bfloat16 on a CPU with
    AVX512-BF16 or AMX, float16 on CUDA, float32 elsewhere) except the first
    convolution, which reads the image in float32. On a CPU the chunks
    run in a small pool of threads, each with single-threaded torch
    (:class:`SliceWorkers`), so that a machine shared with other processes does not
    leave OpenMP threads spinning at every operation's barrier. Lesion components
    are labelled inside the box that holds the lesion voxels only.
``reference`` (:func:`segment`)
    The original path, float32 throughout, numpy between steps, kept to check the
    fast one against (``bench/inference.py``, ``tests/unit/test_ct_lesion_fast.py``).

Why these steps: profiled on a 300 x 512 x 512 CT on a 2-core CPU, the reference
path spent about 80 % of its time in the network (folding the batch norms removes a
pass over every feature map; bfloat16 convolutions, with AMX, took a third of the
float32 time in a micro-benchmark, and halve the whole path's CPU time), the rest in
single-threaded numpy passes over the whole grid (windows, thresholds, labelling 78
million voxels). On that machine while other processes used the cores, torch's two
OpenMP threads made the forward passes 2 to 4 times slower than one thread did, hence
:class:`SliceWorkers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal, overload

import numpy as np
import numpy.typing as npt
import torch

from dicomnode.models import codes, preprocess
from dicomnode.models.api import Finding, Region, Volume
from dicomnode.models.unet import Norm, UNet, build_unet, fuse_batch_norm

__all__ = [
    "BODY_SEGMENT",
    "INFERENCE_PATHS",
    "LESION_SEGMENT",
    "VIEW",
    "InferencePath",
    "NetConfig",
    "NetRunner",
    "Precision",
    "Segmentation",
    "SliceWorkers",
    "body_box",
    "context_offset",
    "find_lesions",
    "infer",
    "longest_diameter",
    "new_network",
    "resolve_precision",
    "segment",
    "segment_fast",
    "stack_context",
    "working_image",
]

#: The model's one view, and the segment numbers of its two outputs.
VIEW = "ct"
BODY_SEGMENT = 1
LESION_SEGMENT = 2

#: ``fast`` (the default) or ``reference`` (the original path, for comparison).
InferencePath = Literal["fast", "reference"]
INFERENCE_PATHS: tuple[InferencePath, ...] = ("fast", "reference")
#: Arithmetic of the fast path's convolutions; ``auto``: see :func:`resolve_precision`.
Precision = Literal["auto", "float32", "bfloat16", "float16"]

#: Slices per step of the fast path's resampling and thresholds (bounds temporaries).
_CHUNK = 32


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
    host_channel
        A third output, the tissue lesions can grow in (the solid organs and the lungs,
        with their lesions and cysts); lesion voxels outside it are dropped. Off in
        weights trained before it existed.
    lesion_threshold, min_lesion_mm3
        Defaults of the options of the same names: the lesion probability threshold
        and the smallest lesion component kept (calibrated on the validation split by
        ``dicomnode train``, saved with the weights).
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
    host_channel: bool = False
    lesion_threshold: float = 0.5
    min_lesion_mm3: float = 30.0

    @property
    def in_channels(self) -> int:
        """Input channels: slices in the context times windows."""
        return (2 * self.context_slices + 1) * len(self.windows)

    @property
    def out_channels(self) -> int:
        """Outputs: body and lesion, and the lesion-host tissue with ``host_channel``."""
        return 3 if self.host_channel else 2

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
        config.in_channels,
        config.out_channels,
        config.base_channels,
        config.depth,
        config.attention,
        config.norm,
    )


def context_offset(volume: Volume, config: NetConfig) -> int:
    """Slices between a slice and its context neighbours: nearest to ``context_mm``."""
    return max(1, round(config.context_mm / max(volume.spacing[0], 1e-3)))


def body_box(volume: Volume, config: NetConfig) -> preprocess.CropBox:
    """Step 1, the in-plane crop to the body (both paths, and training, use it)."""
    return preprocess.find_body_box(
        volume.array,
        (volume.spacing[1], volume.spacing[2]),
        threshold=config.body_threshold,
        margin_mm=config.crop_margin_mm,
    )


def working_image(
    volume: Volume, config: NetConfig
) -> tuple[npt.NDArray[np.float32], preprocess.CropBox]:
    """Crop, resample and window a volume: (slices, windows, rows, columns) in [0, 1]."""
    pixel_spacing = (volume.spacing[1], volume.spacing[2])
    box = body_box(volume, config)
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
    """Body, lesion (and host) probabilities (slices, outputs, rows, columns), working grid."""
    net.eval()
    out = np.empty((image.shape[0], config.out_channels, *image.shape[2:]), dtype=np.float32)
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
        box.crop(lesion[start:stop])[...] = (back[:, 1] >= threshold) & _lesion_allowed(back)
        lesion_probability[start:stop] = np.rint(back[:, 1] * 255.0).astype(np.uint8)
    return Segmentation(body, lesion, lesion_probability, box)


# -- the fast path ----------------------------------------------------------------


def resolve_precision(device: torch.device, precision: Precision = "auto") -> torch.dtype:
    """The dtype the fast path's convolutions run in on ``device``.

    ``auto`` is float16 on CUDA (tensor cores; 10 mantissa bits against bfloat16's 7),
    bfloat16 on a CPU whose instruction set has it (AVX512-BF16 or AMX: oneDNN then
    runs the convolutions natively, about twice as fast as float32) and float32 on any
    other CPU, where 16-bit arithmetic would be emulated and slower.
    """
    named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if precision != "auto":
        return named[precision]
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _cpu_has_bfloat16():
        return torch.bfloat16
    return torch.float32


def _cpu_has_bfloat16() -> bool:
    # torch.cpu's capability checks are private; a torch without them gets float32.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


class SliceWorkers:
    """Run a function over chunks of slices, on a CPU in threads of single-threaded torch.

    torch parallelises each operation over its OpenMP threads, which wait for one
    another at the end of every operation by spinning (libgomp's default). On a CPU
    shared with other processes, a descheduled thread keeps its partner spinning: the
    same forward passes took 2 to 4 times as long with 2 threads as with 1 on a busy
    2-core machine, and burned 2 to 4 times the CPU time. Here each thread of a small
    pool runs whole chunks (batches of slices) with torch single-threaded inside, so no
    thread waits for another until the last chunk.

    Used as a context manager: on a CPU with ``workers`` > 1 it sets torch's
    (process-wide) thread count to 1 inside and restores it on leaving; on CUDA, or
    with one worker, chunks run one after another in the calling thread.

    Parameters
    ----------
    device
        Where the chunks' tensors are.
    workers
        Threads; torch's thread count on entering when 0.
    """

    def __init__(self, device: torch.device, workers: int = 0) -> None:
        self.device = device
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._threads = 0

    def __enter__(self) -> SliceWorkers:
        workers = self.workers or torch.get_num_threads()
        if self.device.type == "cpu" and workers > 1:
            self._threads = torch.get_num_threads()
            torch.set_num_threads(1)
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ct-lesion")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)  # after a failed chunk: skip the rest
            self._pool = None
            torch.set_num_threads(self._threads)

    def map(self, function: Callable[[int], None], starts: Iterable[int]) -> None:
        """Call ``function(start)`` for each start; the first exception is raised here."""
        if self._pool is None:
            for start in starts:
                function(start)
            return
        for _ in self._pool.map(function, starts):
            pass


class _Float32(torch.nn.Module):
    """Run a module in float32 inside an autocast region."""

    def __init__(self, module: torch.nn.Module, device_type: str) -> None:
        super().__init__()
        self.module = module
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, enabled=False):
            out: torch.Tensor = self.module(x.float())
        return out


class NetRunner:
    """The fast path's network: batch norms folded, channels-last, 16-bit where native.

    Parameters
    ----------
    net
        The trained network (not changed: the runner keeps a fused copy).
    device
        Where the copy runs; :func:`segment_fast` keeps its tensors there too.
    precision
        Autocast dtype of the convolutions, see :func:`resolve_precision`.
    batch_size
        Slices per forward pass; 32 on CUDA and 8 on a CPU when 0.
    """

    def __init__(
        self,
        net: UNet,
        device: torch.device,
        precision: Precision = "auto",
        batch_size: int = 0,
    ) -> None:
        self.device = device
        self.dtype = resolve_precision(device, precision)
        self.batch_size = batch_size or (32 if device.type == "cuda" else 8)
        fused = fuse_batch_norm(net).to(device)
        self.net = fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.dtype != torch.float32:
            # The convolution that reads the image stays float32: rounding the windowed
            # values themselves to bfloat16 (8-bit mantissa) caused a quarter (phantom
            # CT) to two thirds (anatomical CTs) of the voxels that differed from the
            # reference path; it costs little to keep (6 input channels).
            first = self.net.encoders[0]
            assert isinstance(first, torch.nn.Sequential)
            first[0] = _Float32(first[0], device.type)

    def probabilities(
        self, image: torch.Tensor, offset: int, context: int, workers: SliceWorkers
    ) -> torch.Tensor:
        """Body, lesion (and host) probabilities (slices, outputs, rows, columns), float32.

        ``image`` is the working image (slices, windows, rows, columns) on the device;
        each slice gets its neighbours +-``offset`` (clamped), ``context`` on each side,
        as channels, in the order of :func:`stack_context`. Batches run on ``workers``.
        """
        slices = image.shape[0]
        outputs = self.net.head.out_channels
        out = torch.empty(
            (slices, outputs, *image.shape[2:]), dtype=torch.float32, device=self.device
        )
        steps = torch.arange(-context, context + 1, device=self.device) * offset

        def run_batch(start: int) -> None:
            # Autocast and inference mode are per thread: set them in the worker.
            autocast = torch.autocast(
                self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
            )
            with torch.inference_mode(), autocast:
                stop = min(start + self.batch_size, slices)
                indices = torch.arange(start, stop, device=self.device)
                around = (indices[:, None] + steps[None, :]).clamp_(0, slices - 1)
                x = image[around].flatten(1, 2).contiguous(memory_format=torch.channels_last)
                out[start:stop] = torch.sigmoid(self.net(x).float())

        workers.map(run_batch, range(0, slices, self.batch_size))
        return out


def segment_fast(
    volume: Volume, runner: NetRunner, config: NetConfig, threshold: float
) -> Segmentation:
    """The fast path of :func:`segment`: the same steps, in torch on the runner's device."""
    box = body_box(volume, config)
    offset = context_offset(volume, config)
    with torch.inference_mode(), SliceWorkers(runner.device) as workers:
        image = _working_tensor(volume, box, config, runner.device, workers)
        probability = runner.probabilities(image, offset, config.context_slices, workers)
        del image
        return _on_source_grid(probability, box, volume.shape, threshold, workers)


def _working_tensor(
    volume: Volume,
    box: preprocess.CropBox,
    config: NetConfig,
    device: torch.device,
    workers: SliceWorkers,
) -> torch.Tensor:
    """:func:`working_image` as a tensor on ``device``, one chunk of slices at a time."""
    shape = preprocess.inplane_shape(
        box.shape, (volume.spacing[1], volume.spacing[2]), config.working_spacing
    )
    cropped = box.crop(np.asarray(volume.array, dtype=np.float32))
    image = torch.empty((cropped.shape[0], len(config.windows), *shape), device=device)

    def prepare_chunk(start: int) -> None:
        with torch.inference_mode():
            chunk = torch.from_numpy(cropped[start : start + _CHUNK]).to(device).contiguous()
            resized = preprocess.resize_slices(chunk[:, None], shape)[:, 0]
            for i, (centre, width) in enumerate(config.windows):
                # As preprocess.window: (value - lower edge) / width, clipped to [0, 1].
                low = np.float32(centre - width / 2)
                windowed = (resized - float(low)) / float(np.float32(width))
                image[start : start + _CHUNK, i] = windowed.clamp_(0.0, 1.0)

    workers.map(prepare_chunk, range(0, cropped.shape[0], _CHUNK))
    return image


def _on_source_grid(
    probability: torch.Tensor,
    box: preprocess.CropBox,
    shape: tuple[int, int, int],
    threshold: float,
    workers: SliceWorkers,
) -> Segmentation:
    """Step 6 of :func:`segment` on tensors: upsample, threshold, copy into numpy masks."""
    body = np.zeros(shape, dtype=bool)
    lesion = np.zeros(shape, dtype=bool)
    lesion_probability = np.empty((shape[0], *box.shape), dtype=np.uint8)

    def finish_chunk(start: int) -> None:
        stop = start + _CHUNK
        with torch.inference_mode():
            back = preprocess.resize_slices(probability[start:stop], box.shape)
            inside = back[:, 0] >= 0.5
            found = (back[:, 1] >= threshold) & _lesion_allowed(back)
            scaled = torch.round(back[:, 1] * 255.0).to(torch.uint8)
            # copy_ into tensors sharing the numpy arrays' memory (from CUDA, if there).
            torch.from_numpy(box.crop(body[start:stop])).copy_(inside)
            torch.from_numpy(box.crop(lesion[start:stop])).copy_(found)
            torch.from_numpy(lesion_probability[start:stop]).copy_(scaled)

    workers.map(finish_chunk, range(0, shape[0], _CHUNK))
    return Segmentation(body, lesion, lesion_probability, box)


@overload
def _lesion_allowed(back: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]: ...
@overload
def _lesion_allowed(back: torch.Tensor) -> torch.Tensor: ...
def _lesion_allowed(
    back: npt.NDArray[np.float32] | torch.Tensor,
) -> npt.NDArray[np.bool_] | torch.Tensor:
    """Where a lesion may be: inside the body, and inside the host tissue when there is one."""
    allowed = back[:, 0] >= 0.5
    if back.shape[1] > 2:
        allowed = allowed & (back[:, 2] >= 0.5)
    return allowed


# -- findings and measurements ------------------------------------------------


def find_lesions(
    seg: Segmentation,
    spacing: tuple[float, float, float],
    min_volume: float,
    *,
    whole_grid: bool = False,
) -> tuple[tuple[Finding, ...], npt.NDArray[np.bool_]]:
    """One finding per lesion component of at least ``min_volume``; the mask of those kept.

    Components are labelled inside the box around the lesion voxels (the same labels,
    in the same order: raster order is kept by a shift), or on the whole grid with
    ``whole_grid`` (the reference path).
    """
    origin, labels, count = _lesion_labels(seg.lesion, whole_grid)
    kept = np.zeros(seg.lesion.shape, dtype=bool)
    voxel_mm3 = float(np.prod(spacing))
    findings: list[Finding] = []
    for number, local in enumerate(preprocess.component_boxes(labels, count), start=1):
        if local is None:
            continue
        component = labels[local] == number
        where = tuple(slice(s.start + o, s.stop + o) for s, o in zip(local, origin, strict=True))
        volume_mm3 = float(component.sum()) * voxel_mm3
        if volume_mm3 < min_volume:
            continue
        kept[where] |= component
        findings.append(_finding(seg, where, component, spacing, volume_mm3))
    return tuple(findings), kept


def _lesion_labels(
    lesion: npt.NDArray[np.bool_], whole_grid: bool
) -> tuple[tuple[int, int, int], npt.NDArray[np.int32], int]:
    """Labels of the lesion components, and where their array starts on the grid."""
    if whole_grid:
        return (0, 0, 0), *preprocess.label_components(lesion)
    slices = np.flatnonzero(lesion.any(axis=(1, 2)))
    if not slices.size:
        return (0, 0, 0), np.zeros((0, 0, 0), dtype=np.int32), 0
    z0, z1 = int(slices[0]), int(slices[-1]) + 1
    plane: npt.NDArray[np.bool_] = np.any(lesion[z0:z1], axis=0)
    rows, columns = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1
    return (z0, r0, c0), *preprocess.label_components(lesion[z0:z1, r0:r1, c0:c1])


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
