"""The web page's HTML side, served in-process on a real index fed by the real ingest.

Pages, search, actions behind the token (bearer and signed-in session with CSRF), the
audit of those actions, the rule tester with real files, and no patient data anywhere.
The browser's view of the same pages is ``tests/e2e/test_web_browser.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.cli.rules import check_files
from dicomnode.config import ConfigError, Settings, load_settings
from dicomnode.index.audit import list_audit_events
from dicomnode.index.jobs import enqueue_job
from dicomnode.index.schema import JobRecord, JobState, StudyRecord
from dicomnode.web.app import create_app
from dicomnode.web.auth import COOKIE
from dicomnode.web.health import Check
from dicomnode.web.server import WebServer
from tests.factories import encode, small_ct
from tests.ingested import IngestedNode, ingested_node, store
from tests.nodeproc import free_port
from tests.webclient import WebClient

TOKEN = "correct-horse-battery-staple"
CANARY = "CANARY^Pagewright^Quill"
CANARY_ID = "CANARY-PID-3141"
CANARY_BIRTH = "19020304"


def ct(study: str, series: str, accession: str, date: str, modality: str = "CT") -> Dataset:
    ds = small_ct(study_instance_uid=study, series_instance_uid=series, patient_name=CANARY)
    ds.PatientID = CANARY_ID
    ds.PatientBirthDate = CANARY_BIRTH
    ds.AccessionNumber = accession
    ds.StudyDate = date
    ds.Modality = modality
    return ds


@pytest.fixture
def node(tmp_path: Path) -> Iterator[IngestedNode]:
    with ingested_node(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path / "var") as running:
        yield running


def settings_for(node: IngestedNode, token: str = TOKEN) -> Settings:
    return Settings(
        node={"data_dir": str(node.data_dir), "database_url": node.url},
        web={"token": token},
        pipelines=[{"name": "ct-seg", "model": "ct-lesion-seg", "match": {"Modality": "CT"}}],
        routes=[{"name": "mr-out", "match": {"Modality": "MR"}, "send_to": ["pacs"]}],
        peers=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
    )


class Served(WebClient):
    """A client of the node's web application, served by the node's WebServer."""

    fingerprint: str = ""


@pytest.fixture
def serve(node: IngestedNode) -> Iterator[Callable[..., Served]]:
    """``serve(token=...)``: the app on its own port; stopped when the test ends."""
    servers: list[WebServer] = []

    def start(token: str = TOKEN) -> Served:
        settings = settings_for(node, token)
        app = create_app(
            settings, node.sessions, scp=lambda: Check(True, {"accepting": True}),
            rule_tester=lambda files, ae: check_files(settings, files, ae),
        )  # fmt: skip
        server = WebServer(app, "127.0.0.1", free_port())
        server.start()
        servers.append(server)
        client = Served(server.address[1])
        client.fingerprint = app.state.auth.fingerprint
        return client

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def studies(node: IngestedNode) -> dict[str, str]:
    """Three studies (two CT, one MR) through the real ingest; their UIDs by name."""
    uids = {"first": generate_uid(), "second": generate_uid(), "mr": generate_uid()}
    store(node, ct(uids["first"], generate_uid(), "ACC-1", "20260101"), "CTSCANNER")
    store(node, ct(uids["first"], generate_uid(), "ACC-1", "20260101"), "CTSCANNER")
    store(node, ct(uids["second"], generate_uid(), "ACC-2", "20260315"), "OTHERCT")
    store(node, ct(uids["mr"], generate_uid(), "ACC-3", "20260601", modality="MR"), "MRI1")
    return uids


def queued_job(node: IngestedNode, study_uid: str) -> int:
    with node.sessions() as session:
        study_id = session.scalar(
            select(StudyRecord.id).where(StudyRecord.study_instance_uid == study_uid)
        )
        assert study_id is not None
        enqueue_job(session, study_id, 1, "ct-seg", "ct-lesion-seg", 3)
        session.commit()
        job = session.scalar(select(JobRecord.id).where(JobRecord.study_id == study_id))
        assert job is not None
        return job


def job_state(node: IngestedNode, job_id: int) -> JobState:
    with node.sessions() as session:
        state = session.scalar(select(JobRecord.state).where(JobRecord.id == job_id))
        assert state is not None
        return state


def rows(html: str, table_id: str) -> list[str]:
    """The rows of the table with ``id=table_id`` (header row excluded)."""
    match = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert match, f"no table {table_id}"
    return re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)[1:]


def test_the_overview_shows_traffic_queue_peers_and_versions(
    node: IngestedNode, studies: dict[str, str], serve: Callable[..., Served]
) -> None:
    queued_job(node, studies["first"])
    page = serve().get("/")
    assert page.status_code == 200
    assert 'id="instances-hour">4<' in page.text
    queue = rows(page.text, "queue")
    assert '<td class="num">1</td>' in queue[0]  # one queued job
    assert "pacs" in page.text and "127.0.0.1:104" in page.text
    assert "ct-lesion-seg" in page.text  # the pipeline's model, not run yet
    assert "htmx.min.js" in page.text


def test_studies_are_searched_by_uid_accession_date_modality_and_calling_ae(
    node: IngestedNode, studies: dict[str, str], serve: Callable[..., Served]
) -> None:
    client = serve()

    def found(**query: str) -> set[str]:
        page = client.get("/studies", query)
        assert page.status_code == 200
        return {uid for uid in studies.values() if uid in page.text}

    assert found() == set(studies.values())
    assert found(accession="ACC-2") == {studies["second"]}
    assert found(modality="mr") == {studies["mr"]}
    assert found(calling_ae="CTSCANNER") == {studies["first"]}
    assert found(date_from="20260301", date_to="20260331") == {studies["second"]}
    assert found(study_uid=studies["first"][:-2]) >= {studies["first"]}
    first = rows(client.get("/studies", {"accession": "ACC-1"}).text, "studies")
    assert len(first) == 1 and ">2</td>" in first[0]  # two series, two instances


def test_a_study_page_lists_its_series_jobs_and_deliveries(
    node: IngestedNode, studies: dict[str, str], serve: Callable[..., Served]
) -> None:
    job = queued_job(node, studies["first"])
    page = serve().get(f"/studies/{studies['first']}")
    assert page.status_code == 200
    assert len(rows(page.text, "series")) == 2
    assert f'<td class="num">{job}</td>' in rows(page.text, "jobs")[0]
    assert serve().get(f"/studies/{generate_uid()}").status_code == 404


def test_no_patient_name_id_or_birth_date_on_any_page(
    node: IngestedNode, studies: dict[str, str], serve: Callable[..., Served]
) -> None:
    queued_job(node, studies["first"])
    client = serve()
    paths = ["/", "/studies", "/jobs", "/deliveries", "/audit", "/rules", "/login"]
    paths += [f"/studies/{uid}" for uid in studies.values()]
    for path in paths:
        page = client.get(path)
        assert page.status_code == 200, path
        for secret in (CANARY, CANARY.split("^")[0], CANARY_ID, CANARY_BIRTH):
            assert secret not in page.text, (path, secret)


def test_an_action_without_the_token_is_refused_and_changes_nothing(
    node: IngestedNode, studies: dict[str, str], serve: Callable[..., Served]
) -> None:
    job = queued_job(node, studies["first"])
    client = serve()
    assert client.post(f"/jobs/{job}/cancel").status_code == 401
    wrong = client.post(f"/jobs/{job}/cancel", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert job_state(node, job) is JobState.QUEUED


def test_no_token_set_means_every_action_is_refused(
    node: IngestedNode, studies: dict[str, str], serve: Callable[..., Served]
) -> None:
    job = queued_job(node, studies["first"])
    client = serve(token="")
    refused = client.post(f"/jobs/{job}/cancel", headers={"Authorization": "Bearer "})
    assert refused.status_code == 403
    assert job_state(node, job) is JobState.QUEUED
    assert "sign in for actions" in client.get("/").text


def test_a_script_with_the_bearer_token_cancels_and_retries_a_job_and_is_audited(
    node: IngestedNode, studies: dict[str, str], serve: Callable[..., Served]
) -> None:
    job = queued_job(node, studies["first"])
    client = serve()
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    cancelled = client.post(f"/jobs/{job}/cancel", headers=bearer)
    assert cancelled.json() == {"what": f"cancel job {job}", "done": True}
    assert job_state(node, job) is JobState.DEAD
    again = client.post(f"/jobs/{job}/cancel", headers=bearer)
    assert again.status_code == 409  # a dead job cannot be cancelled
    assert client.post(f"/jobs/{job}/retry", headers=bearer).json()["done"] is True
    assert job_state(node, job) is JobState.QUEUED

    with node.sessions() as session:
        events = list_audit_events(session, event="web_action")
    assert [e.detail for e in events] == [
        f"retry job {job}",
        f"cancel job {job}",
        f"cancel job {job}",
    ]
    assert {e.actor for e in events} == {client.fingerprint}
    assert all(TOKEN not in (e.actor or "") for e in events)
    assert "web_action" in client.get("/audit").text


def test_a_signed_in_browser_acts_with_its_csrf_value_only(
    node: IngestedNode, studies: dict[str, str], serve: Callable[..., Served]
) -> None:
    job = queued_job(node, studies["first"])
    client = serve()
    assert client.post("/login", data={"token": "wrong"}).status_code == 303
    assert COOKIE not in client.cookies
    signed = client.post("/login", data={"token": TOKEN})
    assert signed.status_code == 303 and COOKIE in client.cookies
    page = client.get("/jobs").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf, "a signed-in page carries the CSRF value in its forms"

    assert client.post(f"/jobs/{job}/cancel", data={"csrf": "0" * 64}).status_code == 403
    other_site = client.post(
        f"/jobs/{job}/cancel", data={"csrf": csrf.group(1)},
        headers={"Origin": "http://evil.example"},
    )  # fmt: skip
    assert other_site.status_code == 403
    assert job_state(node, job) is JobState.QUEUED

    done = client.post(
        f"/jobs/{job}/cancel", data={"csrf": csrf.group(1)},
        headers={"Referer": f"http://127.0.0.1:{client.port}/jobs"},
    )  # fmt: skip
    assert done.status_code == 303 and done.headers["location"].startswith("/jobs?done=")
    assert job_state(node, job) is JobState.DEAD


def test_force_complete_makes_a_receiving_study_due_now(
    node: IngestedNode, studies: dict[str, str], serve: Callable[..., Served]
) -> None:
    from dicomnode.index.schema import utc_now
    from dicomnode.index.studies import find_completed_studies

    client = serve()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    now = utc_now()
    with node.sessions() as session:
        due_before = find_completed_studies(session, now.replace(year=2000), now.replace(year=2000))
    assert due_before == []
    done = client.post(f"/studies/{studies['second']}/force-complete", headers=bearer)
    assert done.json()["done"] is True
    with node.sessions() as session:
        due = find_completed_studies(session, now.replace(year=2000), now.replace(year=2000))
        uid = session.scalar(select(StudyRecord.study_instance_uid).where(StudyRecord.id.in_(due)))
    assert uid == studies["second"]


def test_the_rule_tester_says_which_rule_matches_each_uploaded_file_and_why(
    serve: Callable[..., Served],
) -> None:
    files = {
        "ct.dcm": encode(ct(generate_uid(), generate_uid(), "A", "20260101")),
        "mr.dcm": encode(ct(generate_uid(), generate_uid(), "B", "20260101", modality="MR")),
        "junk.dcm": b"not dicom at all" * 10,
    }
    page = serve().upload(
        "/rules",
        [("files", name, data) for name, data in files.items()],
        data={"calling_ae": "SCANNER"},
    )
    assert page.status_code == 200
    sections = dict(re.findall(r"<h2>(.*?)</h2>(.*?)</section>", page.text, re.S))
    assert set(sections) == set(files)
    assert re.search(r"ct-seg</td><td><span class=\"state ok\">match", sections["ct.dcm"])
    assert re.search(r"mr-out</td><td><span class=\"state failed\">no match", sections["ct.dcm"])
    assert "MR" in sections["ct.dcm"]  # the value the route wanted, against the one seen
    assert re.search(r"mr-out</td><td><span class=\"state ok\">match", sections["mr.dcm"])
    assert "would refuse it" in sections["junk.dcm"]
    assert CANARY not in page.text


def test_the_web_token_is_refused_from_the_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[web]\ntoken = "in-a-file"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="DICOMNODE_WEB__TOKEN"):
        load_settings(path)


def test_the_web_token_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_WEB__TOKEN", "from-env")
    settings = load_settings(None)
    assert settings.web.token.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)


def test_the_conformance_statement_is_served_as_a_page_and_as_written(
    serve: Callable[..., Served],
) -> None:
    from dicomnode import __version__
    from dicomnode.uids import implementation_identity

    client = serve()
    page = client.get("/conformance")
    assert page.status_code == 200
    assert "<h1" in page.text and "DICOM Conformance Statement" in page.text
    assert page.text.count("<table>") >= 10  # the generated tables, rendered
    class_uid, version_name = implementation_identity(__version__)
    assert class_uid in page.text and version_name in page.text
    assert "<script" not in page.text.split("</head>", 1)[1]  # nothing from the document runs
    source = client.get("/conformance.md")
    assert source.text.startswith("# dicomnode: DICOM Conformance Statement")
