"""The web application: one FastAPI app, one router per area.

:func:`create_app` builds it from the settings, the index and what the serving
process knows of itself (its DICOM listener and its workers, as probes; the rule
tester; the audit hook); :class:`~dicomnode.web.server.WebServer` serves it in a
thread of ``dicomnode run`` and ``dicomnode serve``. The areas:

* :mod:`dicomnode.web.health`: ``/healthz`` and ``/readyz``;
* :mod:`dicomnode.web.metrics`: ``/metrics``;
* :mod:`dicomnode.web.pages`: the HTML pages (overview, studies, a study with its
  result previews from :mod:`dicomnode.web.results`, jobs, deliveries);
* :mod:`dicomnode.web.actions`: retry, cancel, force-complete, sign-in
  (:mod:`dicomnode.web.auth`);
* :mod:`dicomnode.web.ruletest`: the rule tester;
* :mod:`dicomnode.web.audit`: the audit trail;
* :mod:`dicomnode.web.conformance`: the DICOM Conformance Statement;
* ``/static``: the stylesheet and htmx, vendored (the page works offline).

No interactive API documentation is served (``/docs`` would fetch scripts from the
internet; the node works offline).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import __version__
from dicomnode.config import Settings
from dicomnode.web import actions, audit, conformance, health, metrics, pages, results, ruletest
from dicomnode.web.audit import AuditHook, index_audit
from dicomnode.web.auth import WebAuth
from dicomnode.web.health import Probe, Readiness, database_probe, disk_probe, elsewhere_probe
from dicomnode.web.metrics import IndexCollector, MetricsSource
from dicomnode.web.results import Results
from dicomnode.web.ruletest import RuleTester

__all__ = ["STATIC", "create_app"]

#: The page's stylesheet and scripts, shipped in the package.
STATIC = Path(__file__).parent / "static"


def _no_rule_tester(*_: object) -> list[ruletest.Verdict]:
    raise RuntimeError("this web application was built without a rule tester")


def create_app(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    scp: Probe,
    workers: Probe | None = None,
    multiprocess_dir: Path | None = None,
    rule_tester: RuleTester | None = None,
    audit_hook: AuditHook | None = None,
) -> FastAPI:
    """The node's web application.

    Parameters
    ----------
    settings
        The node's settings (data folder, retention guard, peers, pipelines, token).
    session_factory
        Sessions on the index, from an engine of the web server's own, so a slow
        page never holds a connection the receivers need.
    scp
        Whether this node's DICOM listener (and its other receiving processes) accept.
    workers
        Whether the supervised workers run; None when they run elsewhere (``serve``).
    multiprocess_dir
        The folder the node's processes write their metrics to; None: this process's
        own metrics only.
    rule_tester
        The rule tester of ``dicomnode rules test`` (the command serving the page
        gives it; the web stage cannot read files as ingest does by itself).
    audit_hook
        Where the page's actions are recorded; the index's audit trail by default.
    """
    app = FastAPI(
        title="dicomnode", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    app.state.sessions = session_factory
    app.state.readiness = Readiness(
        {
            "database": database_probe(session_factory),
            "disk": disk_probe(settings.data_dir, settings.retention.disk_high_water_percent),
            "scp": scp,
            "workers": workers or elsewhere_probe,
        }
    )
    app.state.metrics = MetricsSource(
        IndexCollector(session_factory, settings.data_dir), multiprocess_dir
    )
    app.state.auth = WebAuth(settings.web.token.get_secret_value())
    app.state.results = Results(settings.data_dir, session_factory)
    app.state.rule_tester = rule_tester or _no_rule_tester
    app.state.audit = audit_hook or index_audit(session_factory)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(pages.router)
    app.include_router(results.router)
    app.include_router(actions.router)
    app.include_router(ruletest.router)
    app.include_router(audit.router)
    app.include_router(conformance.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
