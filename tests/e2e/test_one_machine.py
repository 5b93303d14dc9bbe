"""The whole node on one machine: storescu in, stable studies, jobs run by workers."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.index.schema import JobRecord, JobState, StudyRecord
from dicomnode.synth.ct import build_ct_series
from tests.factories import encode
from tests.nodeproc import NodeProcess, children
from tests.scu import storescu

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed"),
]

PIPELINES = """
[worker]
count = 2
lease_seconds = 3
retry_backoff_seconds = 0.2
max_attempts = 2

[[pipelines]]
name = "ct-stats"
match = { Modality = "CT", Rows = ">=16" }
model = "test-stats"

[[pipelines]]
name = "mr-stats"
match = { Modality = "MR" }
model = "test-stats"

[[pipelines]]
name = "ct-broken"
match = { Modality = "CT", SeriesDescription = "re:broken" }
model = "test-fail"
"""


def write_study(folder: Path, n: int, description: str = "plain") -> str:
    """One CT series of ``n`` 16 x 16 slices (a real stack: the worker builds a volume)."""
    folder.mkdir(parents=True)
    study_uid = generate_uid()
    series = build_ct_series(
        slices=n, rows=16, columns=16, study_instance_uid=study_uid, series_description=description
    )
    for i, ds in enumerate(series):
        (folder / f"{i}.dcm").write_bytes(encode(ds))
    return study_uid


def wait_for_jobs(node: NodeProcess, count: int, timeout: float = 60) -> list[JobRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.session() as session:
            jobs = list(session.scalars(select(JobRecord).order_by(JobRecord.id)))
        finished = [
            j for j in jobs if j.state in (JobState.DONE, JobState.DEAD, JobState.NOT_APPLICABLE)
        ]
        if len(jobs) >= count and len(finished) == len(jobs):
            return jobs
        time.sleep(0.2)
    raise AssertionError(
        f"jobs did not finish: {[(j.pipeline, j.state) for j in jobs]}\n{node.log_text()[-3000:]}"
    )


def test_each_stable_study_gets_one_job_per_matching_pipeline_run_by_workers(
    tmp_path: Path,
) -> None:
    node = NodeProcess(tmp_path / "node", study_quiet_seconds=1)
    node.config.write_text(node.config.read_text() + PIPELINES)
    with node:
        plain = write_study(tmp_path / "a", 5)
        broken = write_study(tmp_path / "b", 3, description="broken scanner")
        for folder in ("a", "b"):
            done = storescu(node.port, sorted((tmp_path / folder).iterdir()), ("-R",))
            assert done.returncode == 0, done.stderr
        jobs = wait_for_jobs(node, 3)
        with node.session() as session:
            uids = {s.id: s.study_instance_uid for s in session.scalars(select(StudyRecord))}
        by_key = {(uids[j.study_id], j.pipeline): j for j in jobs}
        # exactly one job per stable study and matching pipeline; MR matched nothing
        assert sorted(by_key) == sorted(
            [(plain, "ct-stats"), (broken, "ct-stats"), (broken, "ct-broken")]
        )
        assert len(jobs) == 3
        stats = by_key[(plain, "ct-stats")]
        assert stats.state is JobState.DONE
        result = json.loads(stats.result or "{}")
        assert result["model"] == "test-stats"
        assert [s["instances"] for s in result["series"].values()] == [5]
        timings = json.loads(stats.timings or "{}")
        assert {"queue", "load", "model"} <= set(timings)
        # run in a worker process, not in the node (SCP) process
        assert node.proc is not None
        assert stats.lease_owner is not None
        assert not stats.lease_owner.endswith(f":{node.proc.pid}")
        worker_pid = stats.lease_owner.split(":")[-1]
        assert re.search(rf"action=worker_spawned slot=\d+ pid={worker_pid}\b", node.log_text())
        failing = by_key[(broken, "ct-broken")]
        assert failing.state is JobState.DEAD
        assert failing.attempts == 2
        # Stage, type and place only: a model's message may quote data (PITFALLS.md).
        assert (failing.error or "").startswith("model: RuntimeError at testing.predict:")
        assert "action=job_done" in node.log_text()


def _workers(node: NodeProcess) -> list[int]:
    assert node.proc is not None
    return [
        pid
        for pid in children(node.proc.pid)
        if " worker " in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    ]


def _torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_a_worker_loads_torch_only_when_it_has_a_job(tmp_path: Path) -> None:
    """An idle worker beside the receivers costs neither torch's start-up CPU nor its
    memory: a node restarted under a PACS's backlog receives at full speed."""
    one_worker = PIPELINES.replace("count = 2", "count = 1")
    with NodeProcess(tmp_path / "node", extra_toml=one_worker, study_quiet_seconds=1) as node:
        time.sleep(3)  # longer than an eager start-up took to import torch
        (worker,) = _workers(node)
        assert not _torch_loaded(worker)
        write_study(tmp_path / "study", 4)
        storescu(node.port, sorted((tmp_path / "study").iterdir()))
        jobs = wait_for_jobs(node, 1)
        assert {j.state for j in jobs} == {JobState.DONE}
        assert _torch_loaded(worker)  # the device was resolved for the first job
