"""The model interface the worker calls (the typed view/label API grows in issue 4).

A model has a ``name`` and ``version``, is built once per worker process (weights
stay loaded between jobs) and turns one study into a JSON-able result. A study it
cannot process (a required view is missing) raises :class:`NotApplicable` with the
reason; that ends the job as ``not_applicable``, which is not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["Model", "NotApplicable", "SeriesInput", "StudyInput"]


class NotApplicable(Exception):
    """The model does not apply to this study; the message says why."""


@dataclass(frozen=True, slots=True)
class SeriesInput:
    """One series of the study, as the index knows it."""

    series_instance_uid: str
    modality: str | None
    series_description: str | None
    files: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class StudyInput:
    """A study handed to a model."""

    study_instance_uid: str
    series: tuple[SeriesInput, ...]
    options: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Model(Protocol):
    """What the worker needs from a model."""

    name: str
    version: str

    def predict(self, study: StudyInput) -> dict[str, object]:
        """Process one study; raise NotApplicable when it does not apply."""
        ...
