"""What training a model needs, whatever the model: labelled studies, the split, the card.

``dicomnode train MODEL --data DIR`` reads DICOM images and DICOM SEG labels from a
folder (``dicomnode.worker.training_data`` does that I/O), groups each study into the
model's views exactly as the worker does, and hands the model a list of
:class:`LabelledStudy`. The split is at patient level with a fixed seed, so no patient
is in two of train / validation / test, and the same data always splits the same way.
A trainable model implements :class:`Trainable`; its trainer stops early on the
validation metric and the CLI writes the weights and a model card.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from dicomnode.models.api import Code, StudyViews

__all__ = [
    "LabelledStudy",
    "Progress",
    "Split",
    "Trainable",
    "TruthSegment",
    "model_card",
    "patient_key",
    "split_by_patient",
]

#: Called with one line of progress text (an epoch's losses and metrics).
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TruthSegment:
    """One ground-truth segment from a DICOM SEG, on the grid of one of the study's views.

    Attributes
    ----------
    view
        Name of the view whose volume the mask lies on.
    type
        Segmented Property Type Code.
    label
        SegmentLabel (or SegmentDescription) text.
    mask
        Boolean array (slices, rows, columns), the view volume's shape.
    """

    view: str
    type: Code
    label: str
    mask: npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class LabelledStudy:
    """A study grouped into a model's views, with its ground-truth segments.

    ``patient_key`` is a one-way hash of the PatientID: it keys the split and is never
    shown or logged.
    """

    patient_key: str
    study: StudyViews
    segments: tuple[TruthSegment, ...]


@dataclass(frozen=True, slots=True)
class Split:
    """Train / validation / test studies, disjoint by patient."""

    train: tuple[LabelledStudy, ...]
    validation: tuple[LabelledStudy, ...]
    test: tuple[LabelledStudy, ...]

    def counts(self) -> dict[str, int]:
        """Studies per part."""
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def patient_key(patient_id: str) -> str:
    """Stable, non-reversible key for a PatientID (the split never keeps the ID)."""
    return hashlib.sha256(patient_id.encode()).hexdigest()[:16]


def split_by_patient(
    studies: Sequence[LabelledStudy],
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Split:
    """Split studies into train / validation / test by patient with a fixed seed.

    Each part gets at least one patient when there are three or more.

    Raises
    ------
    ValueError
        When the fractions do not sum to 1 or there are fewer than 3 patients.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    patients = sorted({s.patient_key for s in studies})
    if len(patients) < 3:
        raise ValueError(f"need studies of at least 3 patients to split, got {len(patients)}")
    order = np.random.default_rng(seed).permutation(len(patients))
    n_val = max(1, round(fractions[1] * len(patients)))
    n_test = max(1, round(fractions[2] * len(patients)))
    val = {patients[i] for i in order[:n_val]}
    test = {patients[i] for i in order[n_val : n_val + n_test]}

    def part(keys: set[str] | None) -> tuple[LabelledStudy, ...]:
        if keys is None:
            return tuple(s for s in studies if s.patient_key not in val | test)
        return tuple(s for s in studies if s.patient_key in keys)

    return Split(train=part(None), validation=part(val), test=part(test))


@runtime_checkable
class Trainable(Protocol):
    """A model that ``dicomnode train`` / ``evaluate`` can work with."""

    name: str
    version: str

    def fit(
        self,
        train: Sequence[LabelledStudy],
        validation: Sequence[LabelledStudy],
        *,
        seed: int,
        progress: Progress,
        max_epochs: int | None = None,
    ) -> dict[str, object]:
        """Train from scratch with early stopping on validation; return the training record.

        ``max_epochs`` caps the model's own epoch limit (None: the model's default).
        """
        ...

    def evaluate(self, studies: Sequence[LabelledStudy]) -> dict[str, float]:
        """Metrics of the current weights on these studies."""
        ...

    def save(self, path: Path) -> None:
        """Write the weights to ``path`` (a single file)."""
        ...


def model_card(
    model: Trainable,
    *,
    description: str,
    data: str,
    split: Split | Mapping[str, int],
    seed: int,
    record: dict[str, object],
    metrics: dict[str, float],
    date: str,
) -> str:
    """The Markdown model card ``dicomnode train`` writes beside the weights.

    ``split`` is the split, or its counts (generated studies: one patient each).
    """
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()))
    # The per-epoch history and the calibration table are in the JSON record; the card
    # keeps the summary.
    training = "\n".join(
        f"- {k}: {v}" for k, v in record.items() if k not in ("history", "calibration")
    )
    counts = split.counts() if isinstance(split, Split) else dict(split)
    return f"""# Model card: {model.name} {model.version}

{description}

## Data
{data}

Split at patient level with seed {seed}: {counts["train"]} train, {counts["validation"]}
validation, {counts["test"]} test studies (no patient in two parts).

## Training
{training}

## Metrics on the test split
| metric | value |
|---|---|
{rows}

Trained on {date} with `dicomnode train {model.name}`.
"""
