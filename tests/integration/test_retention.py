"""Retention removes every file the data folder keeps for a study it deletes.

Instances arrive through the real ingest path (spool, group commit, index rows) on
SQLite and PostgreSQL; a re-sent instance with new bytes leaves its older copy in
``superseded/``, and a job's folder holds its files. Deleting the study must take all
of them, and nothing of another study.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dicomnode.config import NodeSettings, RetentionSettings, Settings
from dicomnode.index.schema import JobRecord, JobState, StudyRecord, StudyState, utc_now
from dicomnode.receive.ingest import Outcome
from dicomnode.schedule.retention import apply_retention
from tests.factories import small_ct
from tests.ingested import DATABASES, IngestedNode, database_url, ingested_node, store


@pytest.fixture(params=DATABASES)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IngestedNode]:
    with ingested_node(database_url(request, tmp_path), tmp_path / "var") as ingested:
        yield ingested


def store_twice(node: IngestedNode) -> Dataset:
    """A new study's instance, received, then received again with other bytes."""
    first = small_ct(study_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    assert store(node, first) is Outcome.STORED
    first.InstanceNumber = 99
    assert store(node, first) is Outcome.REPLACED
    return first


def settle(node: IngestedNode, study_instance_uid: str, days_ago: float) -> int:
    """Make a study stable, last received ``days_ago``; its id."""
    with node.sessions() as session:
        session.execute(
            update(StudyRecord)
            .where(StudyRecord.study_instance_uid == study_instance_uid)
            .values(state=StudyState.STABLE, last_received_at=utc_now() - timedelta(days=days_ago))
        )
        session.commit()
        return session.scalars(
            select(StudyRecord.id).where(StudyRecord.study_instance_uid == study_instance_uid)
        ).one()


def add_done_job(node: IngestedNode, study_id: int) -> Path:
    """A finished job of the study, with a file in its folder; that folder."""
    with node.sessions() as session:
        job = JobRecord(
            study_id=study_id, study_version=1, pipeline="p", model="test-stats",
            max_attempts=1, state=JobState.DONE,
        )  # fmt: skip
        session.add(job)
        session.commit()
        folder = node.layout.job_folder(job.id)
    folder.mkdir(parents=True)
    (folder / "masks.npz").write_bytes(b"masks")
    return folder


def retention(node: IngestedNode) -> Settings:
    return Settings(
        node=NodeSettings(data_dir=node.layout.root, database_url=node.url),
        retention=RetentionSettings(max_age_days=1),
    )


def test_retention_deletes_the_superseded_copies_and_job_folders_of_a_deleted_study(
    node: IngestedNode,
) -> None:
    old, kept = store_twice(node), store_twice(node)
    old_id = settle(node, old.StudyInstanceUID, days_ago=2)
    settle(node, kept.StudyInstanceUID, days_ago=0)
    old_job = add_done_job(node, old_id)
    old_copies = node.layout.superseded_copies(old.StudyInstanceUID, [old.SOPInstanceUID])
    kept_copies = node.layout.superseded_copies(kept.StudyInstanceUID, [kept.SOPInstanceUID])
    assert len(old_copies) == len(kept_copies) == 1

    deleted = apply_retention(retention(node), node.sessions)

    assert deleted == [old.StudyInstanceUID]
    assert not old_copies[0].exists()
    assert not (node.layout.superseded / old.StudyInstanceUID).exists()
    assert not (node.layout.instances / old.StudyInstanceUID).exists()
    assert not old_job.exists()
    assert kept_copies[0].is_file()  # another study's copy stays
    assert (node.layout.instances / kept.StudyInstanceUID).is_dir()


def test_retention_deletes_superseded_copies_kept_by_earlier_releases(node: IngestedNode) -> None:
    # Before the per-study layout every copy lay in superseded/ itself.
    old = store_twice(node)
    settle(node, old.StudyInstanceUID, days_ago=2)
    legacy = node.layout.superseded / f"{old.SOPInstanceUID}.0123456789abcdef.dcm"
    legacy.write_bytes(b"older copy")
    other = node.layout.superseded / f"{generate_uid()}.0123456789abcdef.dcm"
    other.write_bytes(b"another instance's copy")

    assert apply_retention(retention(node), node.sessions) == [old.StudyInstanceUID]

    assert not legacy.exists()
    assert other.is_file()
