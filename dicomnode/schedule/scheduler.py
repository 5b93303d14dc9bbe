"""APScheduler jobs of the serving process: completion, planning, leases, retention,
sending, and forwarding the audit trail.

Stages talk only through the index (STYLE), so the sending and forwarding jobs are
callables the CLI passes in rather than imports of :mod:`dicomnode.send`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.index.jobs import recover_expired_leases
from dicomnode.schedule.completion import complete_studies
from dicomnode.schedule.plan import compile_plan
from dicomnode.schedule.retention import apply_retention

__all__ = [
    "FORWARD_AUDIT_INTERVAL_SECONDS",
    "SEND_INTERVAL_SECONDS",
    "build_scheduler",
    "scan_interval",
]

logger = logging.getLogger(__name__)

#: How often due deliveries are looked for (a cheap read when there are none).
SEND_INTERVAL_SECONDS = 0.25
#: How often unforwarded audit events are looked for (the forwarder backs off by itself
#: while its collector is down).
FORWARD_AUDIT_INTERVAL_SECONDS = 1.0


def scan_interval(quiet_seconds: float) -> float:
    """How often to look for stable studies: often enough to be on time (±20 %)."""
    return max(0.2, min(5.0, quiet_seconds / 5))


def _guarded(name: str, work: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            work()
        except Exception:
            # The next run retries; a failing database must not stop the scheduler.
            logger.exception(f"{name} failed", extra={"action": f"{name}_failed"})

    return run


def _recover(settings: Settings, session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        for job_id in recover_expired_leases(session, settings.worker.retry_backoff_seconds):
            logger.warning("lease expired", extra={"action": "lease_expired", "job_id": job_id})


def build_scheduler(
    settings: Settings,
    session_factory: sessionmaker[Session],
    send_deliveries: Callable[[], object] | None = None,
    forward_audit: Callable[[], object] | None = None,
) -> BackgroundScheduler:
    """A scheduler (not started) with the node's periodic jobs.

    Parameters
    ----------
    settings
        The node's settings.
    session_factory
        Sessions on the index.
    send_deliveries
        Sends the due deliveries (``dicomnode.send.deliveries.send_due_deliveries``
        bound to the node); run every SEND_INTERVAL_SECONDS, one run at a time. None: no sending.
    forward_audit
        Forwards unforwarded audit events to the syslog collector
        (``dicomnode.send.audit_syslog.AuditForwarder``); run every
        FORWARD_AUDIT_INTERVAL_SECONDS, one run at a time. None: no forwarding.
    """
    scheduler = BackgroundScheduler(timezone="UTC")
    plan = compile_plan(settings)
    periodic: dict[str, tuple[float, Callable[[], object]]] = {
        "complete_studies": (
            scan_interval(settings.node.study_quiet_seconds),
            lambda: complete_studies(settings, session_factory, plan),
        ),
        "recover_leases": (
            max(0.5, settings.worker.lease_seconds / 3),
            lambda: _recover(settings, session_factory),
        ),
        "apply_retention": (
            settings.retention.check_seconds,
            lambda: apply_retention(settings, session_factory),
        ),
    }
    if send_deliveries is not None:
        periodic["send_deliveries"] = (SEND_INTERVAL_SECONDS, send_deliveries)
    if forward_audit is not None:
        periodic["forward_audit"] = (FORWARD_AUDIT_INTERVAL_SECONDS, forward_audit)
    for name, (seconds, work) in periodic.items():
        scheduler.add_job(
            _guarded(name, work), "interval", seconds=seconds, id=name,
            max_instances=1, coalesce=True,
        )  # fmt: skip
    return scheduler
