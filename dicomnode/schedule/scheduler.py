"""APScheduler jobs of the serving process."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.schedule.completion import find_stable_studies

__all__ = ["build_scheduler", "scan_interval"]

logger = logging.getLogger(__name__)


def scan_interval(quiet_seconds: float) -> float:
    """How often to look for stable studies: often enough to be on time (±20 %)."""
    return max(0.2, min(5.0, quiet_seconds / 5))


def _safe_find_stable(session_factory: sessionmaker[Session], quiet: float) -> None:
    try:
        find_stable_studies(session_factory, quiet)
    except Exception:
        # The next run retries; a failing database must not stop the scheduler.
        logger.exception("stable-study scan failed", extra={"action": "stable_scan_failed"})


def build_scheduler(
    settings: Settings, session_factory: sessionmaker[Session]
) -> BackgroundScheduler:
    """A scheduler (not started) with the node's periodic jobs."""
    scheduler = BackgroundScheduler(timezone="UTC")
    quiet = settings.node.study_quiet_seconds
    scheduler.add_job(
        _safe_find_stable,
        "interval",
        seconds=scan_interval(quiet),
        args=[session_factory, quiet],
        id="find_stable_studies",
        max_instances=1,
        coalesce=True,
    )
    return scheduler
