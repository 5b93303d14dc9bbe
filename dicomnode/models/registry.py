"""Where models come from: built-ins, Python entry points and model files.

Three sources, in this order of precedence (a later one cannot shadow an earlier name):

1. the built-in models shipped in this package (their weights included);
2. third-party packages that declare an entry point in the ``dicomnode.models``
   group, naming a class or function called as ``factory(device=...)`` that returns
   an object following :class:`~dicomnode.models.api.Model`::

       [project.entry-points."dicomnode.models"]
       my-model = "my_package.model:MyModel"

3. model files: a TOML manifest (``*.toml``) beside a TorchScript or ONNX file, in
   any of the model folders (``[models] dirs`` in the settings, and
   ``data_dir/models``); see :mod:`dicomnode.models.manifest`.

Names are found without importing any model code, so the receiving process can check
pipelines at start without loading torch; :func:`load_model` imports and builds one.
"""

from __future__ import annotations

import importlib
import logging
import tomllib
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import cast

from dicomnode.models.api import Model

__all__ = ["ENTRY_POINT_GROUP", "available_models", "load_model", "model_sources"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dicomnode.models"

#: Built-in models: name -> "module:attribute" of the factory.
_BUILTIN = {
    "ct-lesion-seg": "dicomnode.models.ct_lesion:CtLesionSegModel",
    "mg-4view": "dicomnode.models.multiview:MgFourViewModel",
    "cxr-2view": "dicomnode.models.multiview:CxrTwoViewModel",
    "test-stats": "dicomnode.models.testing:TestStatsModel",
    "test-fail": "dicomnode.models.testing:TestFailModel",
}


def _manifests(model_dirs: Sequence[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in model_dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                name = tomllib.loads(path.read_text())["name"]
            except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
                logger.warning(
                    "model manifest unreadable",
                    extra={"action": "model_manifest_unreadable", "path": str(path),
                           "error": repr(exc)},
                )  # fmt: skip
                continue
            found.setdefault(str(name), path)
    return found


def model_sources(model_dirs: Sequence[Path] = ()) -> dict[str, str]:
    """Every model name with where it comes from: ``builtin``, ``entry point ...``, a path."""
    sources = {name: "builtin" for name in _BUILTIN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in sources:
            logger.warning(
                "model entry point shadowed",
                extra={"action": "model_shadowed", "model": ep.name, "by": sources[ep.name]},
            )
            continue
        sources[ep.name] = f"entry point {ep.value}"
    for name, path in _manifests(model_dirs).items():
        sources.setdefault(name, str(path))
    return sources


def available_models(model_dirs: Sequence[Path] = ()) -> list[str]:
    """Names of every model this installation can run."""
    return sorted(model_sources(model_dirs))


def _import(target: str) -> Callable[..., Model]:
    module, _, attribute = target.partition(":")
    return cast("Callable[..., Model]", getattr(importlib.import_module(module), attribute))


def load_model(name: str, device: str = "cpu", model_dirs: Sequence[Path] = ()) -> Model:
    """Build the model called ``name`` on ``device`` (once per worker process).

    Raises
    ------
    KeyError
        When no model has this name.
    TypeError
        When what an entry point or manifest builds is not a Model.
    """
    if name in _BUILTIN:
        model = _import(_BUILTIN[name])(device=device)
    else:
        eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        manifests = _manifests(model_dirs)
        if name in eps:
            model = eps[name].load()(device=device)
        elif name in manifests:
            from dicomnode.models.manifest import load_manifest_model

            model = load_manifest_model(manifests[name], device=device)
        else:
            raise KeyError(
                f"unknown model {name!r}; installed: {', '.join(available_models(model_dirs))}"
            )
    if not isinstance(model, Model):
        raise TypeError(
            f"model {name!r} does not provide the Model interface (dicomnode.models.api)"
        )
    return model
