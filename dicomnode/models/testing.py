"""Deterministic CPU test models that exercise the job queue (not clinical models).

``test-stats``
    Reads every instance of the study, decodes its pixels and reports per-series
    statistics (instances, mean, min, max). Options: ``delay_seconds`` (sleep, to test
    timeouts and kills), ``require_modality`` (NotApplicable when no series has it).
``test-fail``
    Always raises, to test retries, backoff and dead jobs.
"""

from __future__ import annotations

import time

import numpy as np
from pydicom import dcmread

from dicomnode.models.api import NotApplicable, StudyInput

__all__ = ["TestFailModel", "TestStatsModel"]


class TestStatsModel:
    """Per-series pixel statistics; deterministic for the same instances."""

    __test__ = False  # not a pytest test class
    name = "test-stats"
    version = "1"

    def predict(self, study: StudyInput) -> dict[str, object]:
        """Sleep if asked, then summarise each series."""
        delay = float(str(study.options.get("delay_seconds", 0)))
        if delay:
            time.sleep(delay)
        wanted = study.options.get("require_modality")
        if wanted and not any(s.modality == wanted for s in study.series):
            raise NotApplicable(f"no {wanted} series in the study")
        series: dict[str, object] = {}
        for item in study.series:
            values = [dcmread(path).pixel_array.astype(np.float64) for path in item.files]
            stacked = np.concatenate([v.ravel() for v in values]) if values else np.zeros(1)
            series[item.series_instance_uid] = {
                "instances": len(item.files),
                "mean": round(float(stacked.mean()), 3),
                "min": float(stacked.min()),
                "max": float(stacked.max()),
            }
        return {"series": series}


class TestFailModel:
    """Raises on every call."""

    __test__ = False
    name = "test-fail"
    version = "1"

    def predict(self, study: StudyInput) -> dict[str, object]:
        """Fail, always."""
        raise RuntimeError("test-fail model failed on purpose")
