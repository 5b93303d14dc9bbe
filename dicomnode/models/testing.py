"""Deterministic CPU test models that exercise the job queue (not clinical models).

``test-stats``
    Takes one view, ``series`` (any image series; the one with most frames), and
    reports its pixel statistics (slices, mean, min, max). Options: ``delay_seconds``
    (sleep, to test timeouts and kills), ``require_modality`` (NotApplicable when the
    view's modality differs).
``test-fail``
    Always raises, to test retries, backoff and dead jobs.
"""

from __future__ import annotations

import time

import numpy as np

from dicomnode.models.api import (
    ClassLabel,
    ModelResult,
    NotApplicable,
    Preference,
    SegmentLabel,
    SeriesRule,
    StudyViews,
    ViewSpec,
)

__all__ = ["TestFailModel", "TestStatsModel"]

_ANY_SERIES = (ViewSpec("series", SeriesRule(), prefer=(Preference.MOST_INSTANCES,)),)


class TestStatsModel:
    """Pixel statistics of the largest series; deterministic for the same instances."""

    __test__ = False  # not a pytest test class
    name = "test-stats"
    version = "2"
    description = "Test model: pixel statistics of the largest series (exercises the queue)"
    views = _ANY_SERIES
    labels: tuple[SegmentLabel, ...] = ()
    classes: tuple[ClassLabel, ...] = ()

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def predict(self, study: StudyViews) -> ModelResult:
        """Sleep if asked, then summarise the view."""
        delay = float(str(study.options.get("delay_seconds", 0)))
        if delay:
            time.sleep(delay)
        view = study.views["series"]
        wanted = study.options.get("require_modality")
        if wanted and view.modality != wanted:
            raise NotApplicable(f"no {wanted} series in the study")
        values = view.volume.array.astype(np.float64)
        stats = {
            "instances": len(set(view.volume.sop_instance_uids)),
            "slices": view.volume.shape[0],
            "mean": round(float(values.mean()), 3),
            "min": float(values.min()),
            "max": float(values.max()),
        }
        return ModelResult(summary={"series": {view.volume.series_instance_uid: stats}})


class TestFailModel:
    """Raises on every call."""

    __test__ = False
    name = "test-fail"
    version = "1"
    description = "Test model: fails on every call (exercises retries)"
    views = _ANY_SERIES
    labels: tuple[SegmentLabel, ...] = ()
    classes: tuple[ClassLabel, ...] = ()

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def predict(self, study: StudyViews) -> ModelResult:
        """Fail, always."""
        raise RuntimeError("test-fail model failed on purpose")
