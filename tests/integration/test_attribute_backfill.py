"""Series indexed before revision 0004 get their rule attributes from their files.

The index is built at revision 0003 and filled as the node of that time did (no
attributes); after ``upgrade head`` the start-up backfill reads each series'
representative file, outside any transaction, with ingest's own header walk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import NodeSettings, PipelineSettings, Settings
from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
from dicomnode.index.schema import InstanceRecord, JobRecord, SeriesRecord, StudyRecord, utc_now
from dicomnode.receive.backfill import backfill_series_attributes
from dicomnode.receive.ingest import Ingest
from dicomnode.receive.inspect import inspect_instance
from dicomnode.receive.spool import SpoolFile
from dicomnode.schedule.completion import complete_studies
from dicomnode.schedule.plan import compile_plan
from tests.factories import encode, small_ct
from tests.txwatch import WriteWatch


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database at revision 0003, the schema before series recorded attributes."""
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        database = request.getfixturevalue("postgres_url")
    upgrade_database(database, "0003")
    return database


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


def ct(study: str, series: str, number: int | None, **values: object) -> Dataset:
    ds = small_ct(study_instance_uid=study, series_instance_uid=series)
    if number is None:
        del ds.InstanceNumber
    else:
        ds.InstanceNumber = number
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def index_as_before_0004(conn: Connection, data_dir: Path, datasets: list[Dataset]) -> None:
    """Write the files and the rows a node at revision 0003 wrote for them."""
    now = utc_now()
    studies: dict[str, int] = {}
    series: dict[str, int] = {}
    for ds in datasets:
        relative = f"instances/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / relative).write_bytes(encode(ds))
        if ds.StudyInstanceUID not in studies:
            studies[ds.StudyInstanceUID] = conn.execute(
                insert(StudyRecord).returning(StudyRecord.id),
                {"study_instance_uid": ds.StudyInstanceUID, "state": "receiving",
                 "first_received_at": now, "receiving_since": now, "last_received_at": now},
            ).scalar_one()  # fmt: skip
        if ds.SeriesInstanceUID not in series:
            series[ds.SeriesInstanceUID] = conn.execute(
                insert(SeriesRecord).returning(SeriesRecord.id),
                {"study_id": studies[ds.StudyInstanceUID], "modality": ds.Modality,
                 "series_instance_uid": ds.SeriesInstanceUID},
            ).scalar_one()  # fmt: skip
        conn.execute(
            insert(InstanceRecord),
            {"series_id": series[ds.SeriesInstanceUID], "sop_instance_uid": ds.SOPInstanceUID,
             "sop_class_uid": ds.SOPClassUID, "transfer_syntax_uid": ds.file_meta.TransferSyntaxUID,
             "instance_number": ds.get("InstanceNumber"), "number_of_frames": 1,
             "size_bytes": len(encode(ds)), "sha256": "0" * 64, "path": relative,
             "calling_ae": "OLDCT", "received_at": now},
        )  # fmt: skip


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    """The scheduler's engine (ingest, when it runs, has its own)."""
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def recorded(sessions: sessionmaker[Session], series_uid: str) -> tuple[str | None, str | None]:
    with sessions() as session:
        row = session.execute(
            select(SeriesRecord.attributes, SeriesRecord.attributes_sop_instance_uid).where(
                SeriesRecord.series_instance_uid == series_uid
            )
        ).one()
        return row[0], row[1]


def test_backfill_records_the_representative_header_without_reading_in_a_transaction(
    url: str, data_dir: Path, engine: Engine, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    study, series = generate_uid(), generate_uid()
    old = [ct(study, series, n, Manufacturer="OLD VENDOR", ImageComments=str(n)) for n in (3, 1, 2)]
    with engine.begin() as conn:
        index_as_before_0004(conn, data_dir, old)
    upgrade_database(url)
    assert recorded(sessions, series) == (None, None)

    with WriteWatch(engine, data_dir) as watch:
        assert backfill_series_attributes(sessions, data_dir) == 1

    attributes, representative = recorded(sessions, series)
    first = old[1]  # Instance Number 1
    assert representative == first.SOPInstanceUID
    path = data_dir / "instances" / study / series / f"{first.SOPInstanceUID}.dcm"
    assert attributes == inspect_instance(path, tmp_path).attributes.to_json()
    assert watch.files_read_outside and watch.reads_inside_writes == []
    assert backfill_series_attributes(sessions, data_dir) == 0  # nothing left to do


def test_backfilled_series_are_planned_and_keep_their_representative_up_to_date(
    url: str, data_dir: Path, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    study, series = generate_uid(), generate_uid()
    with engine.begin() as conn:
        index_as_before_0004(conn, data_dir, [ct(study, series, 5, Manufacturer="OLD VENDOR")])
    upgrade_database(url)
    backfill_series_attributes(sessions, data_dir)
    # A late instance that sorts first takes over, as in a series indexed after 0004.
    ingest_engine = make_engine(url)
    ingest = Ingest(data_dir, ingest_engine)
    ingest.start()
    try:
        late = ct(study, series, 1, Manufacturer="NEW VENDOR")
        spool = SpoolFile(ingest.spool_dir)
        spool.write(encode(late))
        ingest.store(spool, str(late.SOPClassUID), str(late.SOPInstanceUID), "CT1", None)
    finally:
        ingest.stop()
        ingest_engine.dispose()
    config = Settings(
        node=NodeSettings(data_dir=data_dir, database_url=url, study_quiet_seconds=0.05),
        pipelines=(
            PipelineSettings(name="new", model="test-stats", match={"Manufacturer": "NEW VENDOR"}),
        ),
    )
    time.sleep(0.1)

    complete_studies(config, sessions, compile_plan(config))

    attributes, representative = recorded(sessions, series)
    assert representative == late.SOPInstanceUID
    assert json.loads(attributes or "")["Manufacturer"] == "NEW VENDOR"
    with sessions() as session:
        assert session.scalars(select(JobRecord.pipeline)).all() == ["new"]


def test_series_whose_file_is_gone_records_no_attributes_and_says_so(
    url: str,
    data_dir: Path,
    engine: Engine,
    sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = ct(generate_uid(), generate_uid(), 1)
    with engine.begin() as conn:
        index_as_before_0004(conn, data_dir, [ds])
    upgrade_database(url)
    next((data_dir / "instances").rglob("*.dcm")).unlink()

    with caplog.at_level(logging.WARNING, logger="dicomnode.receive.backfill"):
        assert backfill_series_attributes(sessions, data_dir) == 1

    assert recorded(sessions, ds.SeriesInstanceUID) == ("{}", ds.SOPInstanceUID)
    assert [r.action for r in caplog.records] == ["series_backfill_unreadable"]  # type: ignore[attr-defined]
