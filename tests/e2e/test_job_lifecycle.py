"""Jobs over their life: reruns, forced completion, timeouts, shutdown, routes, CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from dicomnode.index.schema import DeliveryRecord, JobRecord, JobState, StudyRecord, StudyState
from dicomnode.receive.status import Status
from tests.factories import encode, small_ct
from tests.nodeproc import NodeProcess
from tests.scu import send_file

PEER = """
[[peers]]
name = "archive"
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = 4242
"""


def pipeline(model: str = "test-stats", **options: object) -> str:
    opts = ", ".join(f"{k} = {v!r}" for k, v in options.items())
    return (
        f'\n[[pipelines]]\nname = "p"\nmatch = {{ Modality = "CT" }}\nmodel = "{model}"\n'
        f"options = {{ {opts} }}\n"
    )


def send(node: NodeProcess, tmp_path: Path, **uids: str) -> str:
    ds = small_ct(**uids)
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    path.write_bytes(encode(ds))
    assert send_file(node.port, path) == Status.SUCCESS
    return str(ds.StudyInstanceUID)


def jobs(node: NodeProcess) -> list[JobRecord]:
    with node.session() as session:
        return list(session.scalars(select(JobRecord).order_by(JobRecord.id)))


def wait(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_late_instance_reruns_the_pipeline_on_the_new_study_version(tmp_path: Path) -> None:
    extra = "[worker]\ncount = 1\n" + pipeline()
    with NodeProcess(tmp_path / "n", extra_toml=extra, study_quiet_seconds=0.5) as node:
        study = send(node, tmp_path)
        wait(lambda: [j.state for j in jobs(node)] == [JobState.DONE])
        send(node, tmp_path, study_instance_uid=study)  # a late instance
        wait(lambda: [j.state for j in jobs(node)] == [JobState.DONE, JobState.DONE])
        first, second = jobs(node)
        assert (first.study_version, second.study_version) == (1, 2)
        assert first.study_id == second.study_id


def test_study_that_keeps_trickling_is_forced_complete(tmp_path: Path) -> None:
    settings = {"study_quiet_seconds": 30, "study_force_complete_seconds": 1.5}
    with NodeProcess(tmp_path / "n", extra_toml="[worker]\ncount = 0\n", **settings) as node:
        study = send(node, tmp_path)
        for _ in range(5):  # never quiet for 30 s
            time.sleep(0.4)
            send(node, tmp_path, study_instance_uid=study)

        def stable() -> bool:
            with node.session() as session:
                record = session.scalars(select(StudyRecord)).one()
                return record.state is StudyState.STABLE

        wait(stable, 10)
        assert "forced=True" in node.log_text()


def test_job_running_past_its_timeout_fails_and_the_worker_is_replaced(tmp_path: Path) -> None:
    extra = (
        "[worker]\ncount = 1\njob_timeout_seconds = 1\nmax_attempts = 1\nlease_seconds = 3\n"
        + pipeline(delay_seconds=30)
    )
    with NodeProcess(tmp_path / "n", extra_toml=extra, study_quiet_seconds=0.3) as node:
        send(node, tmp_path)
        wait(lambda: [j.state for j in jobs(node)] == [JobState.DEAD], 20)
        assert "timed out after 1 s" in (jobs(node)[0].error or "")
        wait(lambda: "action=worker_restarted" in node.log_text(), 10)


def test_sigterm_lets_the_running_job_finish(tmp_path: Path) -> None:
    extra = "[worker]\ncount = 1\n" + pipeline(delay_seconds=4)
    node = NodeProcess(tmp_path / "n", extra_toml=extra, study_quiet_seconds=0.3).start()
    try:
        send(node, tmp_path)
        # The worker imports torch when the first job is claimable (lazy start): on a
        # loaded machine that alone took over 10 s (CI, 2026-12-06).
        wait(lambda: [j.state for j in jobs(node)] == [JobState.RUNNING], 60)
        assert node.stop() == 0
        assert [j.state for j in jobs(node)] == [JobState.DONE]
    finally:
        node.kill()  # a no-op once stopped; never leave the node behind a failure


def test_matching_route_queues_one_delivery_per_instance_and_peer(tmp_path: Path) -> None:
    extra = (
        "[worker]\ncount = 0\n" + PEER
        + '\n[[routes]]\nname = "ct-archive"\nmatch = { Modality = "CT" }\nsend_to = ["archive"]\n'
        + '\n[[routes]]\nname = "mr-archive"\nmatch = { Modality = "MR" }\nsend_to = ["archive"]\n'
    )  # fmt: skip
    with NodeProcess(tmp_path / "n", extra_toml=extra, study_quiet_seconds=0.3) as node:
        study = send(node, tmp_path)
        send(node, tmp_path, study_instance_uid=study)

        def queued() -> list[tuple[str | None, str]]:
            with node.session() as session:
                return [(d.route, d.peer) for d in session.scalars(select(DeliveryRecord))]

        wait(lambda: len(queued()) == 2)
        time.sleep(1)  # a second scan adds nothing
        assert queued() == [("ct-archive", "archive")] * 2


def dicomnode(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_jobs_command_lists_and_retries(tmp_path: Path) -> None:
    extra = "[worker]\ncount = 1\nmax_attempts = 1\n" + pipeline(model="test-fail")
    with NodeProcess(tmp_path / "n", extra_toml=extra, study_quiet_seconds=0.3) as node:
        send(node, tmp_path)
        wait(lambda: [j.state for j in jobs(node)] == [JobState.DEAD])
        listed = dicomnode(node.config, "jobs")
        assert listed.returncode == 0, listed.stderr
        assert "dead" in listed.stdout
        # Our own words for the failure: stage, exception type, where (no library text).
        assert (jobs(node)[0].error or "").startswith("model: RuntimeError at testing.predict")
        job_id = jobs(node)[0].id
        retried = dicomnode(node.config, "jobs", "retry", str(job_id))
        assert retried.returncode == 0, retried.stderr
        wait(lambda: jobs(node)[0].attempts == 1 and jobs(node)[0].state is JobState.DEAD)
        missing = dicomnode(node.config, "jobs", "retry", "999")
        assert missing.returncode == 1


def test_pipeline_naming_an_unknown_model_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(pipeline(model="no-such-model"))
    done = dicomnode(config, "run")
    assert done.returncode == 1
    assert "pipeline 'p' names unknown model 'no-such-model'" in done.stderr


def test_rules_test_explains_which_rules_a_file_triggers(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(
        PEER + pipeline() + '\n[[routes]]\nname = "mg"\nmatch = { Modality = "MG" }\n'
        'send_to = ["archive"]\n'
    )
    path = tmp_path / "ct.dcm"
    path.write_bytes(encode(small_ct()))
    done = dicomnode(config, "rules", "test", str(path))
    assert done.returncode == 0, done.stderr
    assert "pipeline p: MATCH" in done.stdout
    assert "route mg: no match" in done.stdout
    assert "Modality: wanted 'MG', got 'CT' -> no" in done.stdout


def test_models_command_lists_the_test_models(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("")
    done = dicomnode(config, "models")
    assert done.returncode == 0
    assert "test-stats" in done.stdout and "test-fail" in done.stdout


def test_retention_deletes_old_studies_but_never_ones_with_unfinished_work(
    tmp_path: Path,
) -> None:
    extra = (
        "[worker]\ncount = 1\nmax_attempts = 5\nretry_backoff_seconds = 600\n"
        "[retention]\nmax_age_days = 0.00002\ncheck_seconds = 0.5\n"  # about 1.7 s
        '\n[[pipelines]]\nname = "p"\nmatch = { SeriesDescription = "keep" }\n'
        'model = "test-fail"\n'
    )
    with NodeProcess(tmp_path / "n", extra_toml=extra, study_quiet_seconds=0.3) as node:
        busy = small_ct()
        busy.SeriesDescription = "keep"
        (tmp_path / "busy.dcm").write_bytes(encode(busy))
        assert send_file(node.port, tmp_path / "busy.dcm") == Status.SUCCESS
        idle = send(node, tmp_path)
        wait(lambda: [j.state for j in jobs(node)] == [JobState.FAILED])

        def uids() -> set[str]:
            with node.session() as session:
                return set(session.scalars(select(StudyRecord.study_instance_uid)))

        wait(lambda: idle not in uids(), 15)
        assert uids() == {busy.StudyInstanceUID}  # its job will be retried: kept
        assert [p.name for p in node.stored_files()] == [f"{busy.SOPInstanceUID}.dcm"]
        assert not (node.data_dir / "instances" / idle).exists()
        assert "action=study_deleted" in node.log_text()


def test_workers_stop_when_their_node_is_killed(tmp_path: Path) -> None:
    import os
    import re

    node = NodeProcess(tmp_path / "n", extra_toml="[worker]\ncount = 2\n").start()
    wait(lambda: len(re.findall(r"action=worker_started", node.log_text())) == 2)
    pids = [int(p) for p in re.findall(r"action=worker_spawned slot=\d pid=(\d+)", node.log_text())]
    node.kill()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie until its (dead) parent's reaper collects it
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"

    wait(lambda: all(gone(pid) for pid in pids), 15)
