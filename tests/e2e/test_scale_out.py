"""Scale-out on a real PostgreSQL server: one `serve`, three `worker` processes."""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicomnode.index.schema import InstanceRecord, JobRecord, JobState, StudyRecord
from tests.factories import encode, small_ct
from tests.nodeproc import NodeProcess, WorkerProcess
from tests.scu import storescu

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.dcmtk,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed"),
]

SETTINGS = """
[worker]
lease_seconds = 2
retry_backoff_seconds = 0.1
max_attempts = 3
poll_seconds = 0.1

[[pipelines]]
name = "stats"
match = { Modality = "CT" }
model = "test-stats"
options = { delay_seconds = 0.15 }
"""

STUDIES = 200


def write_studies(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.dcm"
        path.write_bytes(encode(small_ct(rows=8, columns=8)))  # one study each
        paths.append(path)
    return paths


def job_states(node: NodeProcess) -> Counter[JobState]:
    with node.session() as session:
        return Counter(session.scalars(select(JobRecord.state)))


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_workers_run_each_of_200_jobs_exactly_once_despite_kills(
    postgres_url: str, tmp_path: Path
) -> None:
    files = write_studies(tmp_path / "in", STUDIES)
    data_dir = tmp_path / "shared"
    node = NodeProcess(
        tmp_path / "serve", data_dir=data_dir, command="serve", extra_toml=SETTINGS,
        database_url=postgres_url, study_quiet_seconds=0.5,
    )  # fmt: skip
    node.start()
    workers = [WorkerProcess(node.config, tmp_path / f"worker{i}.log") for i in range(3)]
    try:
        half = STUDIES // 2
        sent = storescu(node.port, files[:half], ("-R",))
        assert sent.returncode == 0, sent.stderr
        # SIGKILL the server mid-way; a restart loses nothing already acknowledged.
        node.kill()
        node.start()
        sent = storescu(node.port, files[half:], ("-R",))
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: sum(job_states(node).values()) == STUDIES, 60, "200 jobs queued")

        # SIGKILL a worker while it holds a job.
        victim = workers[0]
        held: list[int] = []

        def victim_holds_a_job() -> bool:
            with node.session() as session:
                held[:] = session.scalars(
                    select(JobRecord.id).where(
                        JobRecord.state == JobState.RUNNING,
                        JobRecord.lease_owner.like(f"%:{victim.pid}"),
                    )
                ).all()
            return bool(held)

        wait_until(victim_holds_a_job, 60, "the victim to hold a job")
        victim.kill()
        wait_until(lambda: job_states(node)[JobState.DONE] == STUDIES, 180, "all jobs done")

        with node.session() as session:
            jobs = list(session.scalars(select(JobRecord)))
            studies = session.scalar(select(func.count(StudyRecord.id)))
            instances = session.scalar(select(func.count(InstanceRecord.id)))
        assert studies == instances == STUDIES
        assert len(jobs) == STUDIES
        assert len({j.study_id for j in jobs}) == STUDIES  # one job per study
        by_id = {j.id: j for j in jobs}
        assert by_id[held[0]].attempts == 2  # the victim's job ran again elsewhere
        assert not by_id[held[0]].lease_owner.endswith(f":{victim.pid}")  # type: ignore[union-attr]
        # Exactly once: every job finished once, in one of the surviving workers' logs.
        done = Counter(
            int(m)
            for w in workers
            for m in re.findall(r"action=job_done[^\n]*? job_id=(\d+)", w.log_text())
        )
        assert sorted(done) == sorted(by_id)
        assert set(done.values()) == {1}
        assert all(w.proc.poll() is None for w in workers[1:])
    finally:
        for worker in workers:
            worker.stop()
        node.stop()
