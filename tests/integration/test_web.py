"""The web server of `run` and `serve`: /healthz, /readyz and /metrics, as a user runs it.

Nodes start as a user starts them (``tests.nodeproc.NodeProcess``, which gives each
its own free ``[web] port``) and are asked over HTTP; instances arrive from a
pynetdicom SCU. The application is also served in-process by the node's own
``WebServer`` where a failing probe is easier to make than a failing node.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.config import Settings
from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
from dicomnode.metrics import DELIVERY_ATTEMPTS
from dicomnode.web.app import create_app
from dicomnode.web.health import Check, Probe
from dicomnode.web.server import WebServer
from tests.factories import small_ct
from tests.nodeproc import NodeProcess, free_port, port_is_free
from tests.pg import PostgresServer, postgres_available
from tests.recording_scp import RecordingSCP

#: Patient data that must never reach /metrics.
CANARY_NAME = "CANARY^Metrics^Zebulon"
CANARY_ID = "CANARY-ID-4711"
CALLING_AE = "METRICSCU"


def get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    """GET ``path`` from the web server on ``port``: the status and the body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as rsp:
            return int(rsp.status), rsp.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body = get(port, path)
    return status, json.loads(body)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name`` in a text exposition, by their sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def canary_ct() -> Dataset:
    ds = small_ct(rows=8, columns=8, patient_name=CANARY_NAME)
    ds.PatientID = CANARY_ID
    return ds


def send(port: int, datasets: list[Dataset], calling_ae: str = CALLING_AE) -> list[int]:
    """C-STORE ``datasets`` over one association; each response's status."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def process_samples(metrics_dir: Path, pid: int, name: str, tmp_path: Path) -> float:
    """The total of ``name`` one process of the node wrote (its files alone)."""
    alone = tmp_path / f"metrics-{pid}"
    alone.mkdir(exist_ok=True)
    for path in metrics_dir.glob(f"*_{pid}.db"):
        shutil.copy(path, alone / path.name)
    return sum(
        sample.value
        for family in MultiProcessCollector(None, path=str(alone)).collect()
        for sample in family.samples
        if sample.name == name and sample.labels.get("calling_ae") == CALLING_AE
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    # Two receiving processes (the node and one child) and one supervised worker.
    with NodeProcess(tmp_path_factory.mktemp("web"), receive_processes=2) as running:
        yield running


def test_healthz_says_the_node_is_alive(node: NodeProcess) -> None:
    assert node.web_port is not None
    assert get_json(node.web_port, "/healthz") == (200, {"status": "ok"})


def test_readyz_passes_every_check_of_a_running_node(node: NodeProcess) -> None:
    assert node.web_port is not None
    status, body = get_json(node.web_port, "/readyz")

    assert status == 200, body
    assert body["status"] == "ready" and body["failing"] == []
    checks = body["checks"]
    assert list(checks) == ["database", "disk", "scp", "workers"]
    assert all(check["ok"] for check in checks.values())
    assert checks["scp"] == {
        "ok": True, "accepting": True, "receivers": 2, "receivers_expected": 2
    }  # fmt: skip
    assert checks["workers"] == {"ok": True, "running": 1, "expected": 1}
    assert checks["disk"]["free_bytes"] > 0 and "not_writable" not in checks["disk"]


def test_metrics_count_instances_by_calling_ae_from_every_receiving_process(
    node: NodeProcess, tmp_path: Path
) -> None:
    assert node.web_port is not None and node.proc is not None
    metrics_dir = node.data_dir / "metrics"
    receiver = next(pid for pid in node.serving_pids() if pid != node.proc.pid)
    name = "dicomnode_instances_received_total"
    before = get(node.web_port, "/metrics")[1]
    sent = 0
    # The kernel spreads associations over both processes (SO_REUSEPORT): send until
    # each has stored some, two instances per association.
    while sent < 80 and not all(
        process_samples(metrics_dir, pid, name, tmp_path) > 0 for pid in node.serving_pids()
    ):
        assert send(node.port, [canary_ct(), canary_ct()]) == [0, 0]
        sent += 2
    assert process_samples(metrics_dir, receiver, name, tmp_path) > 0, "the child stored none"
    duplicate = canary_ct()
    assert send(node.port, [duplicate, duplicate]) == [0, 0]

    status, text = get(node.web_port, "/metrics")

    assert status == 200

    def grew(name: str, *labels: tuple[str, str]) -> float:
        return samples(text, name).get(labels, 0) - samples(before, name).get(labels, 0)

    ae = ("calling_ae", CALLING_AE)
    assert grew(name, ae, ("outcome", "stored")) == sent + 1
    assert grew(name, ae, ("outcome", "duplicate")) == 1
    assert grew("dicomnode_received_bytes_total", ae) > 0
    assert grew("dicomnode_store_seconds_count") == sent + 2
    assert grew("dicomnode_associations_accepted_total", ae) == sent // 2 + 1
    assert samples(text, "dicomnode_jobs")[(("state", "queued"),)] == 0
    assert samples(text, "dicomnode_deliveries")[(("state", "pending"),)] == 0
    assert samples(text, "dicomnode_index_up")[()] == 1
    assert samples(text, "dicomnode_data_dir_free_bytes")[()] > 0


def test_metrics_never_show_patient_data(node: NodeProcess) -> None:
    assert node.web_port is not None
    ds = canary_ct()
    assert send(node.port, [ds]) == [0]

    status, text = get(node.web_port, "/metrics")

    assert status == 200 and "dicomnode_instances_received_total" in text
    for secret in (CANARY_NAME, "CANARY", "Zebulon", CANARY_ID, str(ds.StudyInstanceUID)):
        assert secret not in text


def test_associations_rejected_are_counted_by_reason(node: NodeProcess) -> None:
    assert node.web_port is not None
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage)
    for _ in range(4):  # some reach each receiving process
        assoc = ae.associate("127.0.0.1", node.port, ae_title="NOT-THE-NODE")
        assert not assoc.is_established

    _, text = get(node.web_port, "/metrics")

    rejected = samples(text, "dicomnode_associations_rejected_total")
    assert rejected[(("reason", "called_ae_title"),)] == 4


def test_refusals_are_counted_by_their_reason(tmp_path: Path) -> None:
    allowed = {"allowed_calling_aets": ["ONLYME"], "receive_processes": 1}
    with NodeProcess(tmp_path, command="serve", **allowed) as node:
        assert node.web_port is not None
        before = get(node.web_port, "/metrics")[1]
        ae = AE(ae_title="INTRUDER")
        ae.acse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CTImageStorage)
        assert not ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE").is_established
        socket.create_connection(("127.0.0.1", node.port), timeout=5).close()  # a port probe

        def rejected(text: str, reason: str) -> float:
            counts = samples(text, "dicomnode_associations_rejected_total")
            return counts.get((("reason", reason),), 0)

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = get(node.web_port, "/metrics")[1]
            if rejected(after, "no_request") > rejected(before, "no_request"):
                break
            time.sleep(0.1)

    assert rejected(after, "calling_ae_title") - rejected(before, "calling_ae_title") == 1
    assert rejected(after, "no_request") - rejected(before, "no_request") == 1
    accepted = samples(after, "dicomnode_associations_accepted_total")
    assert (("calling_ae", "INTRUDER"),) not in accepted


def job_and_route_settings(recorder_port: int) -> str:
    """A worker running ``test-stats`` on CT studies, and a route of CT to a recorder."""
    return (
        "[worker]\ncount = 1\npoll_seconds = 0.1\n"
        "[send]\nretry_backoff_seconds = 0.3\n"
        f'[[peers]]\nname = "recorder"\nae_title = "RECORDER"\nhost = "127.0.0.1"\n'
        f"port = {recorder_port}\n"
        '[[routes]]\nname = "ct"\nmatch = { Modality = "CT" }\nsend_to = ["recorder"]\n'
        '[[pipelines]]\nname = "stats"\nmatch = { Modality = "CT" }\nmodel = "test-stats"\n'
    )


@pytest.mark.slow
def test_metrics_count_jobs_of_the_worker_and_deliveries_of_the_scheduler(
    tmp_path: Path,
) -> None:
    with RecordingSCP() as recorder:
        extra = job_and_route_settings(recorder.port)
        with NodeProcess(tmp_path, extra_toml=extra, study_quiet_seconds=0.5) as node:
            web_port = node.web_port
            assert web_port is not None
            assert send(node.port, [canary_ct(), canary_ct()]) == [0, 0]  # two studies

            def finished() -> str | None:
                text = get(web_port, "/metrics")[1]
                done = samples(text, "dicomnode_jobs").get((("state", "done"),), 0)
                sent = samples(text, "dicomnode_deliveries").get((("state", "sent"),), 0)
                return text if done == 2 and sent == 2 else None

            deadline = time.monotonic() + 120
            while (text := finished()) is None and time.monotonic() < deadline:
                time.sleep(0.2)

    assert text is not None, "two jobs done and two deliveries sent in time"
    pipeline = ("pipeline", "stats")
    jobs = samples(text, "dicomnode_jobs_finished_total")
    assert jobs[(pipeline, ("state", "done"))] == 2  # counted by the worker process
    stages = samples(text, "dicomnode_job_stage_seconds_count")
    for stage in ("queue", "model_load", "load", "model"):
        assert stages[(pipeline, ("stage", stage))] == 2, stage
    attempts = samples(text, "dicomnode_delivery_attempts_total")
    assert attempts[(("outcome", "sent"), ("peer", "recorder"))] == 2
    assert len(recorder.stored) == 2
    for secret in (CANARY_NAME, CANARY_ID):
        assert secret not in text


@pytest.mark.postgres
@pytest.mark.slow
def test_readyz_names_the_database_when_postgresql_is_down(tmp_path: Path) -> None:
    reason = postgres_available()
    if reason is not None:
        pytest.skip(reason)
    with PostgresServer() as server:
        url = server.create_database("readyz")
        node = NodeProcess(tmp_path, command="serve", database_url=url).start()
        try:
            assert node.web_port is not None
            status, body = get_json(node.web_port, "/readyz")
            assert status == 200, body
            assert body["checks"]["workers"] == {"ok": True, "where": "elsewhere"}

            server.stop()
            status, body = get_json(node.web_port, "/readyz")

            assert status == 503
            assert body["status"] == "not_ready"
            assert body["failing"] == ["database"]
            assert body["checks"]["database"]["ok"] is False
            assert body["checks"]["database"]["error"].startswith("OperationalError")
            # /metrics still answers, saying the index did not.
            status, text = get(node.web_port, "/metrics")
            assert status == 200
            assert samples(text, "dicomnode_index_up")[()] == 0
            assert samples(text, "dicomnode_jobs") == {}
        finally:
            node.kill()


def test_readyz_names_the_disk_when_fuller_than_the_retention_guard(tmp_path: Path) -> None:
    extra = "[retention]\ndisk_high_water_percent = 0.001\n"
    with NodeProcess(tmp_path, command="serve", extra_toml=extra) as node:
        assert node.web_port is not None
        status, body = get_json(node.web_port, "/readyz")

    assert status == 503
    assert body["failing"] == ["disk"]
    assert body["checks"]["disk"]["above_high_water"] is True
    assert body["checks"]["disk"]["high_water_percent"] == 0.001


def test_the_web_server_stops_with_the_node(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, command="serve").start()
    assert node.web_port is not None
    assert get(node.web_port, "/healthz")[0] == 200

    assert node.stop() == 0

    assert port_is_free(node.web_port)
    assert "action=web_stopped" in node.log_text()


def test_a_taken_web_port_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeProcess(tmp_path, command="serve", extra_toml=f"[web]\nport = {port}\n")
        proc = node.launch()
        assert proc.wait(60) == 1
    errors = [line for line in node.log_text().splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: [web] port: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert port_is_free(node.port)  # the SCP it had started is gone too


def test_no_web_server_when_disabled(tmp_path: Path) -> None:
    port = free_port()
    extra = f"[web]\nenabled = false\nport = {port}\n"
    with NodeProcess(tmp_path, command="serve", extra_toml=extra):
        with pytest.raises(urllib.error.URLError):
            get(port, "/healthz", timeout=2)


@pytest.fixture
def index_settings(tmp_path: Path) -> Settings:
    settings = Settings(node={"data_dir": tmp_path / "var"})  # type: ignore[arg-type]
    upgrade_database(settings.database_url)
    for folder in ("spool", "instances"):
        (settings.data_dir / folder).mkdir()
    return settings


@contextmanager
def serving(settings: Settings, scp: Probe, workers: Probe | None = None) -> Iterator[int]:
    """The application served on a free port of 127.0.0.1, as the node serves it."""
    engine = make_engine(settings.database_url)
    app = create_app(settings, make_session_factory(engine), scp=scp, workers=workers)
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    try:
        yield server.address[1]
    finally:
        server.stop()
        engine.dispose()


def test_readyz_answers_503_naming_each_failing_probe(index_settings: Settings) -> None:
    def broken() -> Check:
        raise RuntimeError("a probe that raises")

    with serving(index_settings, lambda: Check(False, {"accepting": False}), broken) as port:
        status, text = get(port, "/readyz")

    assert status == 503
    body = json.loads(text)
    assert body["failing"] == ["scp", "workers"]
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["scp"] == {"ok": False, "accepting": False}
    assert body["checks"]["workers"]["error"].startswith("RuntimeError at ")
    assert "a probe that raises" not in text  # an exception's words are never shown


def test_metrics_of_a_lone_process_show_its_own_values(index_settings: Settings) -> None:
    DELIVERY_ATTEMPTS.labels("lone-peer", "sent").inc()

    with serving(index_settings, lambda: Check(True)) as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
            content_type = rsp.headers["content-type"]
            text = rsp.read().decode()

    assert content_type.startswith("text/plain")
    jobs = samples(text, "dicomnode_jobs")
    assert set(jobs) == {
        (("state", state),)
        for state in ("queued", "running", "done", "failed", "not_applicable", "dead")
    }
    attempts = samples(text, "dicomnode_delivery_attempts_total")
    assert attempts[(("outcome", "sent"), ("peer", "lone-peer"))] >= 1
    assert samples(text, "dicomnode_data_dir_free_bytes")[()] > 0


def test_the_web_server_stops_in_process_and_frees_its_port(index_settings: Settings) -> None:
    with serving(index_settings, lambda: Check(True)) as port:
        assert get(port, "/healthz") == (200, '{"status":"ok"}')

    assert port_is_free(port)
