"""Previews of stored instances are cached per study and go with the study.

Instances arrive through the real ingest path (``tests/ingested.py``); their previews
are rendered from the stored files into ``DataLayout.previews`` and retention deletes
a deleted study's previews with its other files, and nothing of another study.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import update

from dicomnode.config import NodeSettings, RetentionSettings, Settings
from dicomnode.index.layout import DataLayout
from dicomnode.index.schema import StudyRecord, StudyState, utc_now
from dicomnode.receive.ingest import Outcome
from dicomnode.schedule.retention import apply_retention
from dicomnode.web.previews import PreviewCache, projection_preview
from tests.factories import small_ct
from tests.ingested import DATABASES, IngestedNode, database_url, ingested_node, store


@pytest.fixture(params=DATABASES)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IngestedNode]:
    with ingested_node(database_url(request, tmp_path), tmp_path / "var") as ingested:
        yield ingested


def stored_study(node: IngestedNode, days_ago: float) -> tuple[str, Path]:
    """A one-instance study received through ingest, stable since ``days_ago``."""
    ds = small_ct(study_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    assert store(node, ds) is Outcome.STORED
    with node.sessions() as session:
        session.execute(
            update(StudyRecord)
            .where(StudyRecord.study_instance_uid == ds.StudyInstanceUID)
            .values(state=StudyState.STABLE, last_received_at=utc_now() - timedelta(days=days_ago))
        )
        session.commit()
    relative = DataLayout.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                           ds.SOPInstanceUID)  # fmt: skip
    return str(ds.StudyInstanceUID), node.layout.path(relative)


def test_retention_deletes_a_deleted_studys_previews_and_keeps_the_others(
    node: IngestedNode,
) -> None:
    cache = PreviewCache(node.layout.previews)
    old, old_file = stored_study(node, days_ago=2)
    kept, kept_file = stored_study(node, days_ago=0)
    for study, path in ((old, old_file), (kept, kept_file)):
        png = cache.get_or_render(
            ("views", path), lambda p=path: projection_preview([p]), study_instance_uid=study
        )
        assert png.startswith(b"\x89PNG")
    assert len(list(node.layout.preview_dir(old).iterdir())) == 1

    settings = Settings(
        node=NodeSettings(data_dir=node.layout.root, database_url=node.url),
        retention=RetentionSettings(max_age_days=1),
    )
    assert apply_retention(settings, node.sessions) == [old]

    assert not node.layout.preview_dir(old).exists()
    assert len(list(node.layout.preview_dir(kept).iterdir())) == 1
    assert node.layout.previews.is_dir()
