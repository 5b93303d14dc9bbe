"""Old import location of the index operations, now split by concept.

Import from the concept's module instead: :mod:`dicomnode.index.instances`,
:mod:`dicomnode.index.studies`, :mod:`dicomnode.index.series` and
:mod:`dicomnode.index.associations` (as :mod:`dicomnode.index.jobs` and
:mod:`dicomnode.index.deliveries`). This module only re-exports, for the modules
that still import from here (``worker/views.py``, ``worker/training_data.py``,
``bench/job_queue.py``, ``tests/unit/test_views.py``); delete it once they have moved.
"""

from __future__ import annotations

from dicomnode.index.associations import close_association, open_association
from dicomnode.index.instances import (
    IdCache,
    StudyImage,
    find_instances,
    record_instances,
    study_images,
)
from dicomnode.index.series import SeriesAttributes, series_rule_attributes
from dicomnode.index.studies import (
    StableStudy,
    StudySummary,
    find_completed_studies,
    list_studies,
    mark_study_stable,
)

__all__ = [
    "IdCache",
    "SeriesAttributes",
    "StableStudy",
    "StudyImage",
    "StudySummary",
    "close_association",
    "find_completed_studies",
    "find_instances",
    "list_studies",
    "mark_study_stable",
    "open_association",
    "record_instances",
    "series_rule_attributes",
    "study_images",
]
