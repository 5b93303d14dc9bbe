"""The HTML pages: overview, studies, a study with its results, jobs, deliveries, audit.

Server-rendered with Jinja2 (autoescaped) from the index; htmx, vendored under
``static/``, refreshes the overview and runs the studies search as one types, so the
page works offline. No page, URL or title carries a patient name, ID or birth date:
the index holds none (docs/receive.md, "Logs"), and previews are drawn from pixels
and codes only. Every route is a plain ``def``: FastAPI runs it in a worker thread of
the web server, never on the receivers' threads.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import __version__
from dicomnode.config import Settings
from dicomnode.index.deliveries import count_deliveries_by_state, list_deliveries
from dicomnode.index.jobs import count_jobs_by_state, list_jobs
from dicomnode.index.overview import model_versions, peer_states, recent_traffic
from dicomnode.index.schema import DeliveryState, JobState
from dicomnode.index.studies import StudySearch, search_studies, study_detail
from dicomnode.web.auth import WebAuth
from dicomnode.web.health import Check, Readiness

__all__ = ["PAGE_LIMIT", "page", "router", "templates"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["pages"])
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
#: Rows per list page.
PAGE_LIMIT = 100


def page(request: Request, name: str, title: str, nav: str, **context: Any) -> HTMLResponse:
    """Render template ``name`` with what every page shows (sign-in state, flash)."""
    auth: WebAuth = request.app.state.auth
    csrf = auth.csrf_for(request)
    flash = request.query_params.get("done", "")
    error = request.query_params.get("error", "")
    return templates.TemplateResponse(
        request,
        name,
        {
            "title": title,
            "nav": nav,
            "signed_in": bool(csrf),
            "csrf": csrf,
            "flash": error or flash,
            "flash_error": bool(error),
            **context,
        },
    )


def _sessions(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.sessions
    return factory


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@dataclass(frozen=True, slots=True)
class Disk:
    """The data folder's disk, against retention's guard."""

    free_bytes: int
    free_percent: float
    guard: float


def _enum_value(cls: type[JobState] | type[DeliveryState], value: str) -> Any:
    if not value:
        return None
    try:
        return cls(value)
    except ValueError:
        raise HTTPException(400, f"unknown state {value!r}") from None


@router.get("/", response_class=HTMLResponse)
def overview(request: Request) -> HTMLResponse:
    """SCP, traffic, queue depths, peers, disk and versions."""
    settings = _settings(request)
    readiness: Readiness = request.app.state.readiness
    checks = readiness.run()
    usage = shutil.disk_usage(settings.data_dir)
    with _sessions(request)() as session:
        traffic = recent_traffic(session)
        jobs = count_jobs_by_state(session)
        deliveries = count_deliveries_by_state(session)
        peers = peer_states(session, [p.name for p in settings.peers])
        models = model_versions(session)
    for name in {p.model for p in settings.pipelines} - set(models):
        models[name] = "not run yet"
    return page(
        request,
        "overview.html",
        "Overview",
        "Overview",
        scp=_probe_view(checks.get("scp")),
        workers=_probe_view(checks.get("workers")),
        traffic=traffic,
        jobs={s.value: n for s, n in jobs.items()},
        deliveries={s.value: n for s, n in deliveries.items()},
        peers=list(zip(peers, settings.peers, strict=True)),
        disk=Disk(
            usage.free,
            100.0 * usage.free / usage.total,
            settings.retention.disk_high_water_percent,
        ),
        version=__version__,
        models=dict(sorted(models.items())),
    )


@dataclass(frozen=True, slots=True)
class ProbeView:
    """A readiness check as the overview shows it."""

    ok: bool
    detail: str


def _probe_view(check: Check | None) -> ProbeView:
    if check is None:
        return ProbeView(False, "not checked")
    detail = ", ".join(f"{k} {v}" for k, v in check.detail.items())
    return ProbeView(check.ok, detail)


@router.get("/studies", response_class=HTMLResponse)
def studies(
    request: Request,
    study_uid: str = "",
    accession: str = "",
    date_from: str = "",
    date_to: str = "",
    modality: str = "",
    calling_ae: str = "",
) -> HTMLResponse:
    """Search studies; the newest first."""
    search = StudySearch(
        study_uid.strip(), accession.strip(), date_from.strip(), date_to.strip(),
        modality.strip().upper(), calling_ae.strip(),
    )  # fmt: skip
    with _sessions(request)() as session:
        found = search_studies(session, search, PAGE_LIMIT)
    return page(
        request, "studies.html", "Studies", "Studies",
        studies=found, search=search, limit=PAGE_LIMIT,
    )  # fmt: skip


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study(request: Request, study_uid: str) -> HTMLResponse:
    """One study: series, jobs, results with previews, deliveries."""
    with _sessions(request)() as session:
        detail = study_detail(session, study_uid)
        if detail is None:
            raise HTTPException(404, "no such study in the index")
        jobs = list_jobs(session, PAGE_LIMIT, study_uid=study_uid)
        deliveries = list_deliveries(session, PAGE_LIMIT, study_uid=study_uid)
    results = request.app.state.results
    # Each SR is read once: its table, and whether it draws regions (a preview of its own).
    findings = {o.id: results.findings(o) for o in detail.outputs if o.kind == "sr"}
    projections = {i for i, rows in findings.items() if rows and any(r.regions for r in rows)}
    return page(
        request, "study.html", f"Study {study_uid}", "Studies",
        detail=detail, jobs=jobs, deliveries=deliveries,
        findings=findings, projections=projections,
    )  # fmt: skip


@router.get("/jobs", response_class=HTMLResponse)
def jobs(
    request: Request, state: str = "", pipeline: str = "", study_uid: str = ""
) -> HTMLResponse:
    """Jobs, newest first, filtered by state, pipeline and study."""
    settings = _settings(request)
    with _sessions(request)() as session:
        found = list_jobs(
            session, PAGE_LIMIT, _enum_value(JobState, state),
            study_uid=study_uid.strip() or None, pipeline=pipeline or None,
        )  # fmt: skip
    return page(
        request, "jobs.html", "Jobs", "Jobs",
        jobs=found, states=[s.value for s in JobState], state=state,
        pipelines=[p.name for p in settings.pipelines], pipeline=pipeline, study_uid=study_uid,
    )  # fmt: skip


@router.get("/deliveries", response_class=HTMLResponse)
def deliveries(
    request: Request, state: str = "", peer: str = "", study_uid: str = ""
) -> HTMLResponse:
    """Deliveries, newest first, filtered by state, peer and study."""
    settings = _settings(request)
    with _sessions(request)() as session:
        found = list_deliveries(
            session, PAGE_LIMIT, _enum_value(DeliveryState, state),
            peer=peer or None, study_uid=study_uid.strip() or None,
        )  # fmt: skip
    return page(
        request, "deliveries.html", "Deliveries", "Deliveries",
        deliveries=found, states=[s.value for s in DeliveryState], state=state,
        peers=[p.name for p in settings.peers], peer=peer, study_uid=study_uid,
    )  # fmt: skip
