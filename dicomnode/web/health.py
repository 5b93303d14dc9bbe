"""``/healthz`` (liveness) and ``/readyz`` (readiness): is this node fit to receive?

``/healthz`` answers 200 ``{"status": "ok"}`` whenever the web server answers at all:
the process is alive. ``/readyz`` runs every check of a :class:`Readiness` and
answers 200 with each one's result, or 503 naming the failing ones:

* ``database``: the index answers a query (:func:`~dicomnode.index.db.ping_database`);
* ``disk``: the data folder and the folders the receivers write to are writable, and
  the disk is no fuller than ``retention.disk_high_water_percent`` (when set), the
  point at which retention starts deleting studies;
* ``scp``: the serving process's DICOM listener accepts, and the extra receiving
  processes run (a probe of the serving process, :class:`Probe`);
* ``workers``: under ``run``, the supervised worker processes run; under ``serve``
  workers run elsewhere, and the check passes saying so.

Each check reports in our words only: names, counts, states and error types (never
paths of instances or a library's error text).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.index.db import ping_database
from dicomnode.index.layout import DataLayout
from dicomnode.log import describe_error

__all__ = [
    "Check",
    "Probe",
    "Readiness",
    "database_probe",
    "disk_probe",
    "elsewhere_probe",
    "router",
]

router = APIRouter(tags=["health"])


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check's result.

    Parameters
    ----------
    ok
        Whether the check passed.
    detail
        What it found, as JSON values (no patient data, no paths of instances).
    """

    ok: bool
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"ok": ..., **detail}``."""
        return {"ok": self.ok, **self.detail}


#: A readiness check: called on each ``/readyz``, in a thread of the web server.
Probe = Callable[[], Check]


@dataclass(frozen=True)
class Readiness:
    """The checks ``/readyz`` runs, by name, in order.

    Parameters
    ----------
    probes
        Each check's name and probe; a probe that raises fails its check with the
        error's type (:func:`~dicomnode.log.describe_error`).
    """

    probes: Mapping[str, Probe]

    def run(self) -> dict[str, Check]:
        """Run every check; one failing never stops the others."""
        results: dict[str, Check] = {}
        for name, probe in self.probes.items():
            try:
                results[name] = probe()
            except Exception as exc:
                results[name] = Check(False, {"error": describe_error(exc)})
        return results


def database_probe(session_factory: sessionmaker[Session]) -> Probe:
    """A probe reading the index through ``session_factory``."""

    def probe() -> Check:
        with session_factory() as session:
            ping_database(session)
        return Check(True)

    return probe


def disk_probe(data_dir: Path, high_water_percent: float) -> Probe:
    """A probe of the data folder: writable, and no fuller than ``high_water_percent``.

    Parameters
    ----------
    data_dir
        The node's data folder.
    high_water_percent
        ``retention.disk_high_water_percent``; 0 checks writability only.
    """
    layout = DataLayout(data_dir)
    # Where receiving writes: a success needs both (spool, then instances).
    folders = {"data_dir": layout.root, "spool": layout.spool, "instances": layout.instances}

    def probe() -> Check:
        # access(2) also answers EROFS for root on a read-only filesystem.
        unwritable = [name for name, path in folders.items() if not os.access(path, os.W_OK)]
        usage = shutil.disk_usage(layout.root)
        used = 100.0 * usage.used / usage.total  # as retention measures it
        full = bool(high_water_percent) and used > high_water_percent
        detail: dict[str, Any] = {
            "free_bytes": usage.free,
            "used_percent": round(used, 2),
            "high_water_percent": high_water_percent,
        }
        if unwritable:
            detail["not_writable"] = unwritable
        if full:
            detail["above_high_water"] = True
        return Check(not unwritable and not full, detail)

    return probe


def elsewhere_probe() -> Check:
    """The workers check of ``serve``: workers run elsewhere, so it passes."""
    return Check(True, {"where": "elsewhere"})


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when every check passes, else 503 naming the failing ones."""
    readiness: Readiness = request.app.state.readiness
    results = readiness.run()
    failing = [name for name, check in results.items() if not check.ok]
    body = {
        "status": "not_ready" if failing else "ready",
        "failing": failing,
        "checks": {name: check.to_json() for name, check in results.items()},
    }
    return JSONResponse(body, status_code=503 if failing else 200)
