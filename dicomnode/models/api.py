"""The model interface the worker calls: views in, a typed result out.

A model declares the *views* it takes (:class:`ViewSpec`: a named series rule, required
or optional, with a preference when several series fit), the segment labels it draws
and the classes it scores, each with a coded concept. The worker groups a study's
series into those views, builds one :class:`Volume` per view and calls
:meth:`Model.predict` with a :class:`StudyViews`. The model answers a
:class:`ModelResult`: label masks on the source geometry, class probabilities,
findings with measurements and image regions. A study it cannot process raises
:class:`NotApplicable` with the reason; that ends the job as ``not_applicable``,
which is not an error.

The result types (:class:`Volume`, :class:`ModelResult`, :class:`Finding`,
:class:`Region`, :class:`SegmentLabel`, :class:`ClassLabel`, :class:`Code`) live in
:mod:`dicomnode.kernel`, shared with the output builders; they are re-exported here so
that a model author imports everything from this one module, as models written
before the kernel existed do.

Models have no I/O of their own: they never read DICOM or the index. Weights are
loaded once when the model is built and stay loaded between jobs.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from dicomnode.kernel import ClassLabel, Code, Finding, ModelResult, Region, SegmentLabel, Volume
from dicomnode.rules import Match, compile_condition

__all__ = [
    "RULE_KEYS",
    "ClassLabel",
    "Code",
    "Finding",
    "Model",
    "ModelResult",
    "NotApplicable",
    "Preference",
    "Region",
    "SegmentLabel",
    "SeriesRule",
    "StudyViews",
    "View",
    "ViewSpec",
    "Volume",
]


class NotApplicable(Exception):
    """The model does not apply to this study; the message says why."""


class Preference(enum.StrEnum):
    """How to choose among several series that fit one view, in the order given."""

    ORIGINAL = "original"  # ImageType ORIGINAL before DERIVED
    MOST_INSTANCES = "most_instances"  # more slices (or frames) first
    LATEST = "latest"  # most recently received first


#: The attribute each any-of field of a :class:`SeriesRule` reads, as a key of the rule
#: language. A candidate's ImageLaterality falls back to Laterality (see
#: :mod:`dicomnode.worker.views`).
RULE_KEYS: Mapping[str, str] = {
    "modality": "Modality",
    "laterality": "ImageLaterality",
    "view_position": "ViewPosition",
    "image_plane": "ImagePlane",
    "body_part": "BodyPartExamined",
}


def _description_items(pattern: str) -> list[str]:
    """A description expression as items of the language, meaning what it always meant.

    A SeriesRule searched its expression in the description, a missing one read as
    empty text; in the language a missing attribute matches only the item ``""``, so
    an expression that finds empty text (``"^(?!.*scout)"``) brings that item along.
    """
    pattern = pattern.removeprefix("re:")
    try:
        finds_empty = re.search(pattern, "", re.IGNORECASE) is not None
    except re.error:
        finds_empty = False  # compile_condition refuses it, naming the key
    return [f"re:{pattern}", ""] if finds_empty else [f"re:{pattern}"]


@dataclass(frozen=True, slots=True)
class SeriesRule:
    """Which series may fill a view: a rule of the one rule language, compiled.

    Each non-empty field becomes a condition of :mod:`dicomnode.rules` on one attribute
    (:data:`RULE_KEYS`), and every condition must hold; empty fields match anything.
    Values read as in a pipeline's ``match`` table: a tuple means any of its items,
    text matches case-insensitively, ``"re:..."`` is a regular expression, ``">=2"``
    compares numbers, ``""`` matches a missing attribute, and a multi-valued attribute
    matches when any of its values does.

    Three fields read differently from a ``match`` table, so that the rules of existing
    models and manifests keep their meaning (``docs/models.md`` sets them side by side):

    * ``series_description`` is always a regular expression, searched
      case-insensitively (a ``re:`` prefix is allowed), and a missing description is
      searched as empty text;
    * ``image_type`` lists values ImageType must *all* contain: one condition per value,
      where ``ImageType = ["A", "B"]`` in a ``match`` table is any of them;
    * ``min_instances`` counts the candidate's frames, which is no header attribute.

    Attributes
    ----------
    modality, laterality, view_position, image_plane, body_part
        Modality, ImageLaterality/Laterality (``L``, ``R``), ViewPosition (``CC``,
        ``MLO``, ``PA``, ``LL``, ...), the plane derived from ImageOrientationPatient
        (``AXIAL``, ``CORONAL``, ``SAGITTAL``, ``OBLIQUE``), BodyPartExamined.
    series_description
        Regular expression, or None.
    image_type
        Values ImageType must contain, e.g. ``("ORIGINAL",)``.
    min_instances
        Fewest frames (instances times frames) the series must have.
    match
        The compiled conditions (derived from the fields, not an argument).
    """

    modality: tuple[str, ...] = ()
    laterality: tuple[str, ...] = ()
    view_position: tuple[str, ...] = ()
    image_plane: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    series_description: str | None = None
    image_type: tuple[str, ...] = ()
    min_instances: int = 1
    match: Match = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.min_instances < 1:
            raise ValueError(f"SeriesRule.min_instances must be >= 1, got {self.min_instances}")
        conditions = []
        for name, key, value in self._conditions():
            try:
                conditions.append(compile_condition(key, value))
            except ValueError as exc:
                raise ValueError(f"SeriesRule.{name}: {exc}") from None
        object.__setattr__(self, "match", Match(tuple(conditions)))

    def _conditions(self) -> Iterator[tuple[str, str, object]]:
        """(field, key, value) of each condition, in field order."""
        for name in (*RULE_KEYS, "image_type"):
            if isinstance(getattr(self, name), str):
                # A bare string would silently become a tuple of its letters.
                raise ValueError(f"SeriesRule.{name} must be a tuple of strings, not a string")
        for name, key in RULE_KEYS.items():
            if values := getattr(self, name):
                yield name, key, list(values)
        if self.series_description is not None:
            items = _description_items(self.series_description)
            yield "series_description", "SeriesDescription", items
        for value in self.image_type:
            yield "image_type", "ImageType", value


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """A named view a model takes: a series rule, required or optional, a preference."""

    name: str
    rule: SeriesRule
    required: bool = True
    prefer: tuple[Preference, ...] = (
        Preference.ORIGINAL,
        Preference.MOST_INSTANCES,
        Preference.LATEST,
    )


@dataclass(frozen=True, slots=True)
class View:
    """One view handed to a model: the volume plus the header values it was chosen by."""

    name: str
    volume: Volume
    modality: str | None = None
    laterality: str | None = None
    view_position: str | None = None
    series_description: str | None = None


@dataclass(frozen=True, slots=True)
class StudyViews:
    """What :meth:`Model.predict` gets: the study's views by name, and the options.

    Optional views that no series fits are absent from ``views`` and named in
    ``missing``. ``options`` are the pipeline's ``options`` table.
    """

    study_instance_uid: str
    views: Mapping[str, View]
    missing: tuple[str, ...] = ()
    options: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Model(Protocol):
    """What the worker needs from a model.

    Attributes
    ----------
    name, version
        Identify the model (and the algorithm in its outputs).
    description
        One line for ``dicomnode models``.
    views
        The views it takes.
    labels
        Segment labels it draws (empty for a classifier).
    classes
        Classes it scores (empty for a pure segmenter).
    """

    name: str
    version: str
    description: str
    views: tuple[ViewSpec, ...]
    labels: tuple[SegmentLabel, ...]
    classes: tuple[ClassLabel, ...]

    def predict(self, study: StudyViews) -> ModelResult:
        """Process one study; raise NotApplicable when it does not apply."""
        ...
