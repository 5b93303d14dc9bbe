"""Retention: delete old stable studies, or the oldest when the disk is too full.

A study is never deleted while it is receiving or has unfinished work (a queued,
running or failed job, a pending delivery). Rows go first, in one transaction per
study (:func:`~dicomnode.index.studies.delete_study`), then every file the layout
keeps for it (:meth:`~dicomnode.index.layout.DataLayout.remove_study_files`: its
instances, their superseded copies, its jobs' masks and outputs): a crash in between
leaves unreferenced files (space, nothing wrong), never rows pointing at missing files.
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.index.layout import DataLayout
from dicomnode.index.schema import utc_now
from dicomnode.index.studies import delete_study, find_deletable_studies

__all__ = ["apply_retention", "disk_used_percent"]

logger = logging.getLogger(__name__)


def disk_used_percent(path: Path) -> float:
    """How full the filesystem holding ``path`` is, in percent."""
    usage = shutil.disk_usage(path)
    return 100.0 * usage.used / usage.total


def _delete_study(
    session_factory: sessionmaker[Session], layout: DataLayout, study_id: int
) -> int | None:
    """Delete one study's rows (if still stable) then its files.

    Returns the number of files removed, or None when the study was kept.
    """
    with session_factory() as session:
        deleted = delete_study(session, study_id)
    if deleted is None:
        return None
    return layout.remove_study_files(
        deleted.study_instance_uid,
        deleted.instance_paths,
        deleted.sop_instance_uids,
        deleted.job_ids,
    )


def apply_retention(settings: Settings, session_factory: sessionmaker[Session]) -> list[str]:
    """Delete what the retention settings call for; return the deleted study UIDs."""
    policy = settings.retention
    if not policy.max_age_days and not policy.disk_high_water_percent:
        return []
    cutoff = utc_now() - timedelta(days=policy.max_age_days)
    layout = DataLayout(settings.data_dir)
    with session_factory() as session:
        candidates = find_deletable_studies(session)
    deleted = []
    for study in candidates:
        too_old = bool(policy.max_age_days) and study.last_received_at < cutoff
        too_full = bool(policy.disk_high_water_percent) and (
            disk_used_percent(settings.data_dir) > policy.disk_high_water_percent
        )
        if not (too_old or too_full):
            continue
        files = _delete_study(session_factory, layout, study.id)
        if files is not None:
            uid = study.study_instance_uid
            deleted.append(uid)
            reason = "age" if too_old else "disk"
            logger.info(
                "study deleted",
                extra={"action": "study_deleted", "study_instance_uid": uid,
                       "files": files, "reason": reason},
            )  # fmt: skip
    return deleted
