"""A model file as a model: a TorchScript, torch.export or ONNX network plus a TOML manifest.

``format`` is ``torchscript`` (``torch.jit.save``), ``exported`` (``torch.export.save``,
a ``.pt2`` file; give the batch dimension a ``torch.export.Dim``) or ``onnx`` (needs
``pip install 'dicomnode[onnx]'``); by default it follows the file's suffix. The
manifest names the network file, the views, the preprocessing and the coded
labels or classes; the network does the rest. Two tasks:

``segmentation``
    One view. Its slices, preprocessed and resized to ``size``, go through the network
    ``batch`` at a time as ``(N, 1, rows, columns)`` float32; the output is
    ``(N, labels + 1, rows, columns)`` logits with background in channel 0
    (``activation = "softmax"``, argmax) or ``(N, labels, rows, columns)``
    (``"sigmoid"``, each label above 0.5). Masks are resized back to the source grid.
``classification``
    Any number of views; each view's middle slice, preprocessed and resized, is one
    input channel, in manifest order (a missing optional view is zeros):
    ``(1, views, rows, columns)`` -> ``(1, classes)`` logits.

Example (``lesions.toml`` beside ``lesions.pt``)::

    name = "site-lesion-seg"
    version = "1.0"
    description = "Our lesion segmenter"
    file = "lesions.pt"
    task = "segmentation"

    [[views]]
    name = "ct"
    modality = ["CT"]
    image_plane = ["AXIAL"]

    [preprocess]
    window = [40.0, 400.0]    # centre, width -> [0, 1]
    size = [256, 256]

    [[labels]]
    name = "lesion"
    category = ["49755003", "SCT", "Morphologically Abnormal Structure"]
    type = ["52988006", "SCT", "Lesion"]

Each ``[[views]]`` table holds a ``name``, ``required`` (default true) and the fields
of a :class:`~dicomnode.models.api.SeriesRule` (``modality``, ``laterality``,
``view_position``, ``image_plane``, ``body_part``, ``series_description``,
``image_type``, ``min_instances``), which SeriesRule checks and compiles: they read
the rule language of :mod:`dicomnode.rules` exactly as a model written in Python does
(``modality = ["DX", "re:^C"]``, ``series_description = "t1"``).

A bad manifest raises :class:`ValueError` naming the file and the key.
"""

from __future__ import annotations

import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dicomnode.models.api import (
    ClassLabel,
    Code,
    ModelResult,
    NotApplicable,
    SegmentLabel,
    SeriesRule,
    StudyViews,
    ViewSpec,
)

__all__ = ["ManifestModel", "load_manifest_model"]

CodeTriple = tuple[str, str, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _View(_Strict):
    """A ``[[views]]`` table: name, required, and the SeriesRule fields beside them."""

    name: Annotated[str, Field(min_length=1)]
    required: bool = True
    rule: SeriesRule

    @model_validator(mode="before")
    @classmethod
    def _gather_rule(cls, data: Any) -> Any:
        # The rule's fields sit in the view's table; SeriesRule itself checks them, so
        # a manifest reads the rule language exactly as a model written in Python does.
        if not isinstance(data, dict):
            return data
        own = {key: value for key, value in data.items() if key in {"name", "required"}}
        rule = {key: value for key, value in data.items() if key not in own}
        return {**own, "rule": rule}


class _Preprocess(_Strict):
    window: tuple[float, float] | None = None
    normalize: Literal["none", "zscore", "minmax"] = "none"
    size: tuple[Annotated[int, Field(ge=8)], Annotated[int, Field(ge=8)]] | None = None
    batch: Annotated[int, Field(ge=1)] = 16


class _Label(_Strict):
    name: Annotated[str, Field(min_length=1)]
    category: CodeTriple
    type: CodeTriple


class _Class(_Strict):
    name: Annotated[str, Field(min_length=1)]
    code: CodeTriple


class _Manifest(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(min_length=1)]
    description: str = ""
    file: Path
    format: Literal["torchscript", "exported", "onnx"] | None = None
    task: Literal["segmentation", "classification"]
    activation: Literal["softmax", "sigmoid"] = "softmax"
    views: Annotated[tuple[_View, ...], Field(min_length=1)]
    preprocess: _Preprocess = _Preprocess()
    labels: tuple[_Label, ...] = ()
    classes: tuple[_Class, ...] = ()


def _parse(path: Path) -> _Manifest:
    try:
        manifest = _Manifest.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = list(error["loc"])
        if loc[:1] == ["views"] and loc[2:3] == ["rule"]:
            del loc[2]  # the rule's fields are keys of the view's own table
        key = ".".join(str(p) for p in loc)
        raise ValueError(f"{path}: {key}: {error['msg']}") from None
    if manifest.task == "segmentation" and (len(manifest.views) != 1 or not manifest.labels):
        raise ValueError(f"{path}: a segmentation model needs exactly one view and >= 1 label")
    if manifest.task == "classification" and not manifest.classes:
        raise ValueError(f"{path}: classes: a classification model needs at least one class")
    return manifest


def _code(triple: CodeTriple) -> Code:
    return Code(*triple)


Runner = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


def _runner(path: Path, fmt: str, device: str) -> Runner:
    """A function array -> array around the TorchScript or ONNX network."""
    if fmt == "onnx":
        import onnxruntime  # optional dependency: pip install 'dicomnode[onnx]'

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        session = onnxruntime.InferenceSession(str(path), providers=providers)
        name = session.get_inputs()[0].name
        return lambda x: np.asarray(session.run(None, {name: x})[0], dtype=np.float32)
    import torch

    if fmt == "exported":
        module = torch.export.load(str(path)).module().to(device)
    else:
        # TorchScript is deprecated in favour of torch.export, but sites still have
        # TorchScript files; load them without failing on the deprecation warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device).eval()  # type: ignore[no-untyped-call]

    def run(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    return run


class ManifestModel:
    """A model described by a TOML manifest; see the module docstring."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        manifest = _parse(path)
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self.description = manifest.description or f"model file {manifest.file.name}"
        self.views = tuple(ViewSpec(v.name, v.rule, v.required) for v in manifest.views)
        self.labels = tuple(
            SegmentLabel(i, lb.name, _code(lb.category), _code(lb.type))
            for i, lb in enumerate(manifest.labels, start=1)
        )
        self.classes = tuple(ClassLabel(c.name, _code(c.code)) for c in manifest.classes)
        file = manifest.file if manifest.file.is_absolute() else path.parent / manifest.file
        if not file.is_file():
            raise ValueError(f"{path}: file: {file} does not exist")
        suffixes = {".onnx": "onnx", ".pt2": "exported"}
        fmt = manifest.format or suffixes.get(file.suffix, "torchscript")
        self._run = _runner(file, fmt, device)

    def _prepare(self, array: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Window / normalise, then resize slices (slices, rows, columns) -> float32."""
        pre = self.manifest.preprocess
        x = array.astype(np.float32)
        if pre.window is not None:
            centre, width = pre.window
            x = np.clip((x - (centre - width / 2)) / width, 0.0, 1.0)
        if pre.normalize == "zscore":
            x = (x - x.mean()) / (x.std() + 1e-6)
        elif pre.normalize == "minmax":
            x = (x - x.min()) / (x.max() - x.min() + 1e-6)
        if pre.size is not None:
            x = _resize(x, pre.size, order=1)
        return x.astype(np.float32)

    def predict(self, study: StudyViews) -> ModelResult:
        """Run the network on the study's views."""
        if self.manifest.task == "segmentation":
            return self._segment(study)
        return self._classify(study)

    def _segment(self, study: StudyViews) -> ModelResult:
        view = study.views[self.views[0].name]
        source = view.volume.array
        x = self._prepare(source)
        batch = self.manifest.preprocess.batch
        outs = [self._run(x[i : i + batch, np.newaxis]) for i in range(0, len(x), batch)]
        logits = np.concatenate(outs)
        if self.manifest.activation == "softmax":
            winner = logits.argmax(axis=1)
            planes = np.stack([winner == n for n in range(1, len(self.labels) + 1)])
        else:
            planes = np.moveaxis(logits > 0.0, 1, 0)  # sigmoid(x) > 0.5  <=>  x > 0
        masks = np.stack([_resize(p.astype(np.float32), source.shape[1:], order=0) > 0.5
                          for p in planes])  # fmt: skip
        return ModelResult(masks={view.name: masks})

    def _classify(self, study: StudyViews) -> ModelResult:
        size = self.manifest.preprocess.size
        channels = []
        for spec in self.views:
            view = study.views.get(spec.name)
            if view is None:
                if size is None:
                    raise NotApplicable(f"optional view {spec.name!r} missing and no size set")
                channels.append(np.zeros(size, dtype=np.float32))
                continue
            middle = view.volume.array[view.volume.shape[0] // 2][np.newaxis]
            channels.append(self._prepare(middle)[0])
        logits = self._run(np.stack(channels)[np.newaxis].astype(np.float32))[0]
        if self.manifest.activation == "softmax":
            e = np.exp(logits - logits.max())
            probs = e / e.sum()
        else:
            probs = 1.0 / (1.0 + np.exp(-logits))
        return ModelResult(
            probabilities={c.name: float(p) for c, p in zip(self.classes, probs, strict=True)}
        )


def _resize(
    x: npt.NDArray[np.float32], size: tuple[int, int], order: int
) -> npt.NDArray[np.float32]:
    """Resize each slice of (slices, rows, columns) to ``size`` (order 0 nearest, 1 linear)."""
    from scipy.ndimage import zoom

    if tuple(x.shape[1:]) == tuple(size):
        return x
    factors = (1.0, size[0] / x.shape[1], size[1] / x.shape[2])
    out = zoom(x, factors, order=order, grid_mode=True, mode="grid-constant" if order == 0
               else "nearest")  # fmt: skip
    return np.asarray(out[:, : size[0], : size[1]], dtype=np.float32)


def load_manifest_model(path: Path, device: str = "cpu") -> ManifestModel:
    """Build the model a manifest describes (the registry calls this)."""
    return ManifestModel(path, device)
