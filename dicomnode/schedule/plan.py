"""What to do with a study that became stable: which pipelines run, which routes forward.

Rules are evaluated per series on the header of its first instance (read from the
store, pixels skipped) plus derived keys. A pipeline matches a study when any of its
series matches; a route forwards the instances of each matching series. Jobs and
deliveries are unique per (study version, pipeline) and (instance, route, peer), so a
second scan of the same study adds nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.config import PipelineSettings, RouteSettings, Settings
from dicomnode.index.jobs import enqueue_job
from dicomnode.index.queries import StableStudy
from dicomnode.index.schema import DeliveryRecord, InstanceRecord, SeriesRecord
from dicomnode.schedule.rules import Match, attributes_from_dataset, compile_match

__all__ = ["Plan", "compile_plan", "plan_study", "series_attributes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """The compiled pipelines and routes of a node."""

    pipelines: tuple[tuple[PipelineSettings, Match], ...]
    routes: tuple[tuple[RouteSettings, Match], ...]


def compile_plan(settings: Settings) -> Plan:
    """Compile every rule once (config validation already proved they compile)."""
    return Plan(
        pipelines=tuple((p, compile_match(p.match)) for p in settings.pipelines),
        routes=tuple((r, compile_match(r.match)) for r in settings.routes),
    )


def series_attributes(session: Session, data_dir: Path, study_id: int) -> dict[int, object]:
    """Rule attributes of each series of a study, keyed by series id."""
    out: dict[int, object] = {}
    rows = session.execute(
        select(SeriesRecord.id, InstanceRecord.path, InstanceRecord.calling_ae)
        .join(InstanceRecord, InstanceRecord.series_id == SeriesRecord.id)
        .where(SeriesRecord.study_id == study_id)
        .order_by(SeriesRecord.id, InstanceRecord.instance_number, InstanceRecord.id)
    ).all()
    for series_id, path, calling_ae in rows:
        if series_id in out:
            continue
        ds = dcmread(data_dir / path, stop_before_pixels=True)
        out[series_id] = attributes_from_dataset(ds, calling_ae=calling_ae)
    return out


def plan_study(
    session: Session, settings: Settings, plan: Plan, study: StableStudy
) -> tuple[int, int]:
    """Queue the jobs and deliveries a stable study calls for (no commit); their counts."""
    if not plan.pipelines and not plan.routes:
        return 0, 0
    attributes = series_attributes(session, settings.data_dir, study.id)
    jobs = 0
    for pipeline, match in plan.pipelines:
        if any(match.evaluate(attrs).matched for attrs in attributes.values()):  # type: ignore[arg-type]
            jobs += enqueue_job(
                session, study.id, study.version, pipeline.name, pipeline.model,
                settings.worker.max_attempts, pipeline.priority,
            )  # fmt: skip
    deliveries = 0
    for route, match in plan.routes:
        matching = [sid for sid, attrs in attributes.items() if match.evaluate(attrs).matched]  # type: ignore[arg-type]
        for peer in route.send_to:
            deliveries += _queue_route(session, matching, route.name, peer)
    return jobs, deliveries


def _queue_route(session: Session, series_ids: list[int], route: str, peer: str) -> int:
    if not series_ids:
        return 0
    instance_ids = set(
        session.scalars(select(InstanceRecord.id).where(InstanceRecord.series_id.in_(series_ids)))
    )
    queued = set(
        session.scalars(
            select(DeliveryRecord.instance_id).where(
                DeliveryRecord.instance_id.in_(instance_ids),
                DeliveryRecord.route == route,
                DeliveryRecord.peer == peer,
            )
        )
    )
    new = sorted(instance_ids - queued)
    session.add_all(DeliveryRecord(instance_id=i, route=route, peer=peer) for i in new)
    return len(new)
