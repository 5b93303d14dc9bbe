"""Retention: delete old stable studies, or the oldest when the disk is too full.

A study is never deleted while it is receiving or has unfinished work (a queued,
running or failed job, a pending delivery). Rows go first, in one transaction per
study (:func:`~dicomnode.index.studies.delete_study`), then every file the layout
keeps for it (:meth:`~dicomnode.index.layout.DataLayout.remove_study_files`: its
instances, their superseded copies, its jobs' masks and outputs): a crash in between
leaves unreferenced files (space, nothing wrong), never rows pointing at missing files.
Each deleted study is a ``study_deleted`` audit event.

The audit trail has its own retention (``[audit] retention_days``): older events are
deleted in the same periodic run, except those a configured syslog collector has not
received yet (:func:`~dicomnode.index.audit.delete_audit_events_before`).
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.index.audit import delete_audit_events_before, record_audit_event
from dicomnode.index.layout import DataLayout
from dicomnode.index.schema import AuditEventType, utc_now
from dicomnode.index.studies import delete_study, find_deletable_studies

__all__ = ["apply_retention", "delete_old_audit_events", "disk_used_percent"]

logger = logging.getLogger(__name__)


def disk_used_percent(path: Path) -> float:
    """How full the filesystem holding ``path`` is, in percent."""
    usage = shutil.disk_usage(path)
    return 100.0 * usage.used / usage.total


def _delete_study(
    session_factory: sessionmaker[Session], layout: DataLayout, study_id: int, reason: str
) -> int | None:
    """Delete one study's rows (if still stable) then its files, and record it.

    Returns the number of files removed, or None when the study was kept.
    """
    with session_factory() as session:
        deleted = delete_study(session, study_id)
        if deleted is None:
            return None
        files = layout.remove_study_files(
            deleted.study_instance_uid,
            deleted.instance_paths,
            deleted.sop_instance_uids,
            deleted.job_ids,
        )
        instances = len(deleted.instance_paths)
        record_audit_event(
            session, AuditEventType.STUDY_DELETED, study_instance_uid=deleted.study_instance_uid,
            instances=instances, detail=f"retention ({reason}): {instances} instances",
            actor="scheduler",
        )  # fmt: skip
    return files


def delete_old_audit_events(settings: Settings, session_factory: sessionmaker[Session]) -> int:
    """Delete the audit events older than ``[audit] retention_days``; how many.

    Nothing while ``retention_days`` is 0. With a syslog collector configured, an event
    it has not received yet is kept whatever its age.
    """
    days = settings.audit.retention_days
    if not days:
        return 0
    cutoff = utc_now() - timedelta(days=days)
    with session_factory() as session:
        deleted = delete_audit_events_before(
            session, cutoff, keep_unforwarded=bool(settings.audit.syslog_host)
        )
    if deleted:
        logger.info(
            "audit events deleted",
            extra={"action": "audit_events_deleted", "events": deleted, "days": days},
        )
    return deleted


def apply_retention(settings: Settings, session_factory: sessionmaker[Session]) -> list[str]:
    """Delete what the retention settings call for; return the deleted study UIDs.

    Old audit events go too (:func:`delete_old_audit_events`).
    """
    delete_old_audit_events(settings, session_factory)
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
        reason = "age" if too_old else "disk"
        files = _delete_study(session_factory, layout, study.id, reason)
        if files is not None:
            uid = study.study_instance_uid
            deleted.append(uid)
            logger.info(
                "study deleted",
                extra={"action": "study_deleted", "study_instance_uid": uid,
                       "files": files, "reason": reason},
            )  # fmt: skip
    return deleted
