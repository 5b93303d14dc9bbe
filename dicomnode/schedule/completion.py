"""Study completion: a study is stable once no instance arrived for a quiet period."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.index.queries import mark_stable_studies
from dicomnode.index.schema import utc_now

__all__ = ["find_stable_studies"]

logger = logging.getLogger(__name__)


def find_stable_studies(session_factory: sessionmaker[Session], quiet_seconds: float) -> list[str]:
    """Mark studies quiet for ``quiet_seconds`` as stable and return their UIDs."""
    now = utc_now()
    with session_factory() as session:
        uids = mark_stable_studies(session, now - timedelta(seconds=quiet_seconds), now)
    for uid in uids:
        logger.info("study stable", extra={"action": "study_stable", "study_instance_uid": uid})
    return uids
