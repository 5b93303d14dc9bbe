"""Group a study's series into the views a model declares.

A *candidate* is a series, or the part of a series that shares one laterality, view
position and image plane: some mammography systems put all four views in one series,
others one view per series, and both must group the same way. Objects that are not
images a model can read (SEG, SR, presentation states, ...) are never candidates.

A view's :class:`~dicomnode.models.api.SeriesRule` is a rule of the one rule language
(:mod:`dicomnode.rules`), evaluated on :attr:`Candidate.attributes`. Each
:class:`~dicomnode.models.api.ViewSpec` is filled, in the order the model
declares them, by the best candidate its rule matches that no earlier view took; the
view's preferences order the matches (ORIGINAL before DERIVED, most frames, latest
received), and series number and UID break the remaining ties so the choice is
deterministic. A missing required view raises
:class:`~dicomnode.models.api.NotApplicable` with a reason that names the view, what
it needs, and what the study holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from dicomnode.index.instances import StudyImage
from dicomnode.models.api import NotApplicable, Preference, SeriesRule, ViewSpec

__all__ = ["Candidate", "ViewGroups", "find_candidates", "group_views", "rule_matches"]

logger = logging.getLogger(__name__)

#: Modalities of objects that hold no image for a model (PS3.3 C.7.3.1.1.1).
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "KO", "PR", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "PLAN", "FID"}
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Candidate:
    """Images of one series that can fill one view."""

    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    laterality: str | None
    view_position: str | None
    image_plane: str | None
    image_type: tuple[str, ...]
    frames: int
    received_at: datetime | None
    images: tuple[StudyImage, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        """The instances' files, in Instance Number order."""
        return tuple(image.path for image in self.images)

    def describe(self) -> str:
        """Short text for reasons and logs: modality, plane/laterality/view, frames."""
        parts = [self.modality or "?"]
        parts += [v for v in (self.laterality, self.view_position, self.image_plane) if v]
        return f"{' '.join(parts)} ({self.frames} frames)"

    @property
    def attributes(self) -> Mapping[str, object]:
        """What a :class:`~dicomnode.models.api.SeriesRule` reads, by rule-language key.

        The values are the index's columns of the candidate's first image, so
        ImageLaterality is ImageLaterality, else Laterality, as ingest records it.
        """
        return {
            "Modality": self.modality,
            "ImageLaterality": self.laterality,
            "ViewPosition": self.view_position,
            "ImagePlane": self.image_plane,
            "BodyPartExamined": self.body_part_examined,
            "SeriesDescription": self.series_description,
            "ImageType": self.image_type,
        }


@dataclass(frozen=True, slots=True)
class ViewGroups:
    """The candidate chosen for each view, and the optional views left empty."""

    chosen: dict[str, Candidate]
    missing: tuple[str, ...]
    #: View name -> how many candidates matched (more than one: a duplicate view).
    matches: dict[str, int]


def _key(image: StudyImage) -> tuple[str, str | None, str | None, str | None]:
    return (image.series_instance_uid, image.laterality, image.view_position, image.image_plane)


def find_candidates(images: Iterable[StudyImage]) -> list[Candidate]:
    """Split a study's images into candidates (series x laterality x view x plane)."""
    groups: dict[tuple[str, str | None, str | None, str | None], list[StudyImage]] = {}
    for image in images:
        if (image.modality or "").upper() in NON_IMAGE_MODALITIES or image.rows is None:
            continue
        groups.setdefault(_key(image), []).append(image)
    out = []
    for members in groups.values():
        first = members[0]
        received = [m.received_at for m in members if m.received_at is not None]
        out.append(
            Candidate(
                series_instance_uid=first.series_instance_uid,
                modality=first.modality,
                series_number=first.series_number,
                series_description=first.series_description,
                body_part_examined=first.body_part_examined,
                laterality=first.laterality,
                view_position=first.view_position,
                image_plane=first.image_plane,
                image_type=tuple(v.strip().upper() for v in (first.image_type or "").split("\\")),
                frames=sum(max(1, m.number_of_frames) for m in members),
                received_at=max(received) if received else None,
                images=tuple(members),
            )
        )
    return out


def rule_matches(rule: SeriesRule, candidate: Candidate) -> bool:
    """Whether the candidate has the frames ``rule`` needs and meets all its conditions."""
    return (
        candidate.frames >= rule.min_instances and rule.match.evaluate(candidate.attributes).matched
    )


def _preference_key(prefer: Sequence[Preference], candidate: Candidate) -> tuple[object, ...]:
    key: list[object] = []
    for preference in prefer:
        if preference is Preference.ORIGINAL:
            key.append(0 if "ORIGINAL" in candidate.image_type else 1)
        elif preference is Preference.MOST_INSTANCES:
            key.append(-candidate.frames)
        elif preference is Preference.LATEST:
            received = candidate.received_at or _EPOCH
            key.append(-(received - _EPOCH).total_seconds())
    # Deterministic tie-break whatever the preferences.
    key += [candidate.series_number or 0, candidate.series_instance_uid, candidate.describe()]
    return tuple(key)


def _needs(rule: SeriesRule) -> str:
    fields = {
        "modality": rule.modality,
        "laterality": rule.laterality,
        "view position": rule.view_position,
        "plane": rule.image_plane,
        "body part": rule.body_part,
        "image type": rule.image_type,
    }
    parts = [f"{name} {'/'.join(values)}" for name, values in fields.items() if values]
    if rule.series_description:
        parts.append(f"description ~ {rule.series_description!r}")
    if rule.min_instances > 1:
        parts.append(f">= {rule.min_instances} frames")
    return ", ".join(parts) or "any image series"


def group_views(specs: Sequence[ViewSpec], candidates: Sequence[Candidate]) -> ViewGroups:
    """Choose one candidate per view.

    Raises
    ------
    NotApplicable
        When no candidate fits a required view; the message names the view, what it
        needs and what the study has.
    """
    chosen: dict[str, Candidate] = {}
    matches: dict[str, int] = {}
    missing: list[str] = []
    taken: set[int] = set()
    for spec in specs:
        fits = [
            (i, c)
            for i, c in enumerate(candidates)
            if i not in taken and rule_matches(spec.rule, c)
        ]
        matches[spec.name] = len(fits)
        if not fits:
            if spec.required:
                have = ", ".join(sorted(c.describe() for c in candidates)) or "no image series"
                raise NotApplicable(
                    f"no series for required view {spec.name!r} ({_needs(spec.rule)}); "
                    f"study has: {have}"
                )
            missing.append(spec.name)
            continue
        index, best = min(fits, key=lambda item: _preference_key(spec.prefer, item[1]))
        taken.add(index)
        chosen[spec.name] = best
    return ViewGroups(chosen=chosen, missing=tuple(missing), matches=matches)
