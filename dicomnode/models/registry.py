"""Where models come from: built-ins now, entry points and model files in issue 4."""

from __future__ import annotations

from collections.abc import Callable

from dicomnode.models.api import Model
from dicomnode.models.testing import TestFailModel, TestStatsModel

__all__ = ["available_models", "load_model"]

_BUILTIN: dict[str, Callable[[], Model]] = {
    TestStatsModel.name: TestStatsModel,
    TestFailModel.name: TestFailModel,
}


def available_models() -> list[str]:
    """Names of every model this installation can run."""
    return sorted(_BUILTIN)


def load_model(name: str, device: str = "cpu") -> Model:
    """Build the model called ``name`` (once per worker process).

    Raises
    ------
    KeyError
        When no model has this name.
    """
    try:
        factory = _BUILTIN[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; installed: {', '.join(available_models())}"
        ) from None
    return factory()
