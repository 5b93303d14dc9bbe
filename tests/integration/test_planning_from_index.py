"""Planning from the index alone: rules see what ingest recorded, no file is opened.

Instances go through the real ingest path (header walk, group commit, index rows) on
SQLite and PostgreSQL; the scheduler's jobs then run against the same database.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dicomnode.config import (
    NodeSettings,
    PeerSettings,
    PipelineSettings,
    RetentionSettings,
    RouteSettings,
    Settings,
)
from dicomnode.index.schema import (
    DeliveryRecord,
    InstanceRecord,
    JobRecord,
    JobState,
    SeriesRecord,
    StudyRecord,
)
from dicomnode.receive.ingest import Outcome
from dicomnode.receive.inspect import inspect_instance
from dicomnode.schedule.completion import complete_studies
from dicomnode.schedule.plan import compile_plan
from dicomnode.schedule.retention import apply_retention
from dicomnode.send.deliveries import send_due_deliveries
from tests.factories import small_ct
from tests.ingested import DATABASES, IngestedNode, database_url, ingested_node, store
from tests.recording_scp import RecordingSCP
from tests.txwatch import WriteWatch

QUIET_S = 0.05


@pytest.fixture(params=DATABASES)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IngestedNode]:
    with ingested_node(database_url(request, tmp_path), tmp_path / "var") as ingested:
        yield ingested


def ct(study: str, series: str, number: int | None, **values: object) -> Dataset:
    ds = small_ct(study_instance_uid=study, series_instance_uid=series)
    if number is None:
        del ds.InstanceNumber
    else:
        ds.InstanceNumber = number
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def settings(node: IngestedNode, **kwargs: object) -> Settings:
    return Settings(
        node=NodeSettings(
            data_dir=node.data_dir, database_url=node.url, study_quiet_seconds=QUIET_S
        ),
        **kwargs,  # type: ignore[arg-type]
    )


def complete(node: IngestedNode, config: Settings) -> None:
    time.sleep(QUIET_S * 2)  # the study is quiet
    stable = complete_studies(config, node.sessions, compile_plan(config))
    assert stable, "no study became stable"


def jobs(node: IngestedNode) -> list[str]:
    with node.sessions() as session:
        return sorted(session.scalars(select(JobRecord.pipeline)))


def routed(node: IngestedNode) -> set[tuple[str, str | None, str]]:
    """(SOP Instance UID, route, peer) of every instance delivery."""
    with node.sessions() as session:
        rows = session.execute(
            select(InstanceRecord.sop_instance_uid, DeliveryRecord.route, DeliveryRecord.peer)
            .join(InstanceRecord, InstanceRecord.id == DeliveryRecord.instance_id)
        )  # fmt: skip
        return set(rows)


def series_row(node: IngestedNode, series_uid: str) -> SeriesRecord:
    with node.sessions() as session:
        return session.scalars(
            select(SeriesRecord).where(SeriesRecord.series_instance_uid == series_uid)
        ).one()


PEER = PeerSettings(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=104)


def test_planner_matches_rules_with_every_instance_file_gone(node: IngestedNode) -> None:
    study, axial, bone = generate_uid(), generate_uid(), generate_uid()
    for number in (1, 2):
        store(node, ct(study, axial, number, Manufacturer="ACME Medical"))
    bone_uids = []
    for number in (1, 2, 3):
        ds = ct(study, bone, number, ConvolutionKernel="BONE", ImageType=["DERIVED", "SECONDARY"])
        bone_uids.append(str(ds.SOPInstanceUID))
        store(node, ds, calling_ae="RECON")
    config = settings(
        node,
        peers=(PEER,),
        pipelines=(
            # Keys no typed column holds, derived keys and comparisons.
            PipelineSettings(name="acme-axial", model="test-stats", match={
                "Manufacturer": "re:^acme", "ImagePlane": "AXIAL", "CallingAETitle": "ct1",
                "Rows": ">=16"}),
            PipelineSettings(name="mr", model="test-stats", match={"Modality": "MR"}),
        ),
        routes=(
            RouteSettings(name="bone", send_to=("archive",), match={
                "ConvolutionKernel": "bone", "ImageType": "DERIVED", "CallingAETitle": "RECON"}),
        ),
    )  # fmt: skip
    # Nothing to read: the planner must work from what ingest recorded.
    shutil.rmtree(node.data_dir / "instances")

    complete(node, config)

    assert jobs(node) == ["acme-axial"]
    assert routed(node) == {(uid, "bone", "archive") for uid in bone_uids}


def test_rules_see_the_same_attributes_in_the_index_as_in_the_file(
    node: IngestedNode, tmp_path: Path
) -> None:
    ds = ct(generate_uid(), generate_uid(), 1, StationName="CT-ROOM-2", SliceThickness="1.25")
    store(node, ds)
    stored = node.data_dir / "instances" / ds.StudyInstanceUID / ds.SeriesInstanceUID
    from_file = inspect_instance(stored / f"{ds.SOPInstanceUID}.dcm", tmp_path)

    recorded = json.loads(series_row(node, ds.SeriesInstanceUID).attributes or "")

    assert recorded == json.loads(from_file.attributes.to_json())
    assert recorded["StationName"] == "CT-ROOM-2"
    assert recorded["SliceThickness"] == "1.25"
    assert recorded["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert recorded["Rows"] == 16
    # No patient identifiers in the index (docs/receive.md, "Logs"); sex and age are kept.
    assert "PatientName" not in recorded and "PatientID" not in recorded
    assert "PatientBirthDate" not in recorded
    assert "PixelData" not in recorded


def test_series_representative_is_the_lowest_instance_number_whatever_the_arrival_order(
    node: IngestedNode,
) -> None:
    study, series = generate_uid(), generate_uid()
    arrivals = [(None, "none"), (3, "three"), (1, "one"), (2, "two")]
    uids = {}
    for number, text in arrivals:
        ds = ct(study, series, number, ImageComments=text)
        uids[text] = str(ds.SOPInstanceUID)
        store(node, ds)

    row = series_row(node, series)

    assert row.attributes_sop_instance_uid == uids["one"]
    assert json.loads(row.attributes or "")["ImageComments"] == "one"


def test_resent_representative_with_new_bytes_refreshes_the_series_attributes(
    node: IngestedNode,
) -> None:
    study, series = generate_uid(), generate_uid()
    first = ct(study, series, 1, ConvolutionKernel="STANDARD")
    store(node, first)
    store(node, ct(study, series, 2, ConvolutionKernel="STANDARD"))
    first.ConvolutionKernel = "BONE"  # a corrected copy of the same instance

    assert store(node, first) is Outcome.REPLACED

    row = series_row(node, series)
    assert row.attributes_sop_instance_uid == first.SOPInstanceUID
    assert json.loads(row.attributes or "")["ConvolutionKernel"] == "BONE"


def test_watch_sees_a_file_read_inside_a_write_transaction(node: IngestedNode) -> None:
    # The control for the test below: the watch does catch what it looks for.
    ds = ct(generate_uid(), generate_uid(), 1)
    store(node, ds)
    path = next((node.data_dir / "instances").rglob("*.dcm"))
    with WriteWatch(node.engine, node.data_dir) as watch, node.sessions() as session:
        session.execute(update(StudyRecord).values(study_description="x"))
        path.read_bytes()
        session.commit()
        path.read_bytes()

    assert [f for _, f in watch.reads_inside_writes] == [str(path)]
    assert watch.files_read_outside == [str(path)]


def test_scheduler_jobs_never_read_a_file_inside_a_write_transaction(node: IngestedNode) -> None:
    with RecordingSCP() as scp:
        peer = PeerSettings(name="archive", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port)
        config = settings(
            node,
            peers=(peer,),
            pipelines=(PipelineSettings(name="ct", model="test-stats", match={"Modality": "CT"}),),
            routes=(RouteSettings(name="all", send_to=("archive",), match={"Modality": "CT"}),),
            retention=RetentionSettings(max_age_days=1e-9),
        )
        study, series = generate_uid(), generate_uid()
        for number in range(1, 6):
            store(node, ct(study, series, number))

        with WriteWatch(node.engine, node.data_dir) as watch:
            complete(node, config)  # plans: one job, five deliveries
            sent = send_due_deliveries(config, node.sessions)  # reads the five files
            with node.sessions() as session:  # the job finishes, so retention may delete
                session.execute(update(JobRecord).values(state=JobState.DONE))
                session.commit()
            deleted = apply_retention(config, node.sessions)

    assert sent.sent == 5 and len(scp.received) == 5
    assert deleted == [study]
    assert watch.reads_inside_writes == []
    assert len(watch.files_read_outside) >= 5  # the sender's reads were seen
    with node.sessions() as session:
        assert session.scalars(select(DeliveryRecord.id)).all() == []  # gone with the study


def test_replanning_a_study_queues_only_its_new_instances(
    node: IngestedNode, caplog: pytest.LogCaptureFixture
) -> None:
    config = settings(
        node,
        peers=(PEER,),
        routes=(RouteSettings(name="all", send_to=("archive",), match={"Modality": "CT"}),),
    )
    study, series = generate_uid(), generate_uid()
    for number in (1, 2, 3):
        store(node, ct(study, series, number))
    complete(node, config)
    late = ct(study, series, 4)
    store(node, late)  # the study goes back to receiving

    with caplog.at_level(logging.INFO, logger="dicomnode.schedule.completion"):
        complete(node, config)

    assert len(routed(node)) == 4
    assert (str(late.SOPInstanceUID), "all", "archive") in routed(node)
    stable = [r for r in caplog.records if getattr(r, "action", None) == "study_stable"]
    assert [(r.version, r.deliveries) for r in stable] == [(2, 1)]  # type: ignore[attr-defined]
