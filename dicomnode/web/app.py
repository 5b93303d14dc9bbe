"""The web application: one FastAPI app, one router per area.

Read-only. :func:`create_app` builds it from the settings, the index and what the
serving process knows of itself (its DICOM listener and its workers, as probes);
:class:`~dicomnode.web.server.WebServer` serves it in a thread of ``dicomnode run``
and ``dicomnode serve``. The areas so far:

* :mod:`dicomnode.web.health`: ``/healthz`` and ``/readyz``;
* :mod:`dicomnode.web.metrics`: ``/metrics``.

No interactive API documentation is served (``/docs`` would fetch scripts from the
internet; the node works offline).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import __version__
from dicomnode.config import Settings
from dicomnode.web import health, metrics
from dicomnode.web.health import Probe, Readiness, database_probe, disk_probe, elsewhere_probe
from dicomnode.web.metrics import IndexCollector, MetricsSource

__all__ = ["create_app"]


def create_app(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    scp: Probe,
    workers: Probe | None = None,
    multiprocess_dir: Path | None = None,
) -> FastAPI:
    """The node's web application.

    Parameters
    ----------
    settings
        The node's settings (data folder, retention guard).
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
    """
    app = FastAPI(
        title="dicomnode", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
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
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app
