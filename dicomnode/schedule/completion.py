"""Study completion: stable after a quiet period, or forced after a long trickle."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.index.schema import utc_now
from dicomnode.index.studies import StableStudy, find_completed_studies, mark_study_stable
from dicomnode.schedule.plan import Plan, plan_study

__all__ = ["complete_studies"]

logger = logging.getLogger(__name__)


def complete_studies(
    settings: Settings, session_factory: sessionmaker[Session], plan: Plan
) -> list[StableStudy]:
    """Mark quiet (or overdue) studies stable and queue their jobs and deliveries.

    Each study is marked and planned in one transaction: if the process dies, a study
    is either still receiving (and found again) or stable with all its work queued.
    """
    now = utc_now()
    node = settings.node
    quiet = now - timedelta(seconds=node.study_quiet_seconds)
    force = now - timedelta(seconds=node.study_force_complete_seconds)
    with session_factory() as session:
        due = find_completed_studies(session, quiet, force)
    stable = []
    for study_id in due:
        with session_factory() as session:
            study = mark_study_stable(session, study_id, quiet, force, now)
            if study is None:
                session.rollback()
                continue
            jobs, deliveries = plan_study(session, settings, plan, study)
            session.commit()
        stable.append(study)
        logger.info(
            "study stable",
            extra={
                "action": "study_stable",
                "study_instance_uid": study.study_instance_uid,
                "version": study.version,
                "forced": study.forced,
                "jobs": jobs,
                "deliveries": deliveries,
            },
        )
    return stable
