"""A failed job's error text, stored and logged, never quotes an element value."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select

from dicomnode.index.schema import JobRecord, JobState
from dicomnode.receive.status import Status
from tests.factories import small_ct, with_raw_value
from tests.nodeproc import NodeProcess
from tests.scu import send_file

CANARY = "CANARY^SECRET"
PIPELINE = """
[worker]
count = 1
max_attempts = 1

[[pipelines]]
name = "p"
match = { Modality = "CT" }
model = "test-stats"
"""


def test_job_failing_on_a_value_pydicom_quotes_stores_and_logs_no_value(tmp_path: Path) -> None:
    # Reading this Image Position (Patient) raises "could not convert string to float:
    # 'CANARY^SECRET'"; the patient's name is the same canary.
    ds = small_ct(patient_name=CANARY)
    path = tmp_path / "poisoned.dcm"
    path.write_bytes(with_raw_value(ds, "ImagePositionPatient", CANARY.encode() + b"\\0\\0"))
    with NodeProcess(tmp_path / "n", extra_toml=PIPELINE, study_quiet_seconds=0.3) as node:
        assert send_file(node.port, path) == Status.SUCCESS
        deadline = time.monotonic() + 60
        job = None
        while time.monotonic() < deadline:
            with node.session() as session:
                job = session.scalars(select(JobRecord)).first()
            if job is not None and job.state is JobState.DEAD:
                break
            time.sleep(0.2)
        assert job is not None and job.state is JobState.DEAD, job and job.state
        deadline = time.monotonic() + 5
        while "action=job_failed" not in node.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = node.log_text()
    assert job.error is not None
    assert CANARY not in job.error and "CANARY" not in job.error
    assert job.error.startswith("load: ValueError at "), job.error
    assert "action=job_failed" in log
    assert "CANARY" not in log
