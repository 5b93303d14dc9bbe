"""What to do with a study that became stable: which pipelines run, which routes forward.

Rules are evaluated per series on the attributes the index recorded for it at ingest
(the top-level attributes of its representative instance, plus derived keys); no file
is opened here. That matters because planning runs inside the transaction that marks
the study stable: on SQLite that transaction holds the database's one write lock,
and a file read there (a slow disk, a deflate bomb) would stall every receiving
process waiting to commit (0xA700 to senders).

A pipeline matches a study when any of its series matches; a route forwards the
instances of each matching series. Jobs and deliveries are unique per (study version,
pipeline) and (instance, route, peer), so a second scan of the same study adds nothing.
The statements are the index's (:func:`~dicomnode.index.jobs.enqueue_job`,
:func:`~dicomnode.index.deliveries.queue_route_deliveries`); this module decides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from dicomnode.config import PipelineSettings, RouteSettings, Settings
from dicomnode.index.deliveries import queue_route_deliveries
from dicomnode.index.jobs import enqueue_job
from dicomnode.index.series import series_rule_attributes
from dicomnode.index.studies import StableStudy
from dicomnode.rules import Match, compile_match
from dicomnode.schedule.rules import rule_attributes

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


def series_attributes(session: Session, study_id: int) -> dict[int, Mapping[str, object]]:
    """Rule attributes of each series of a study, keyed by series id, from the index."""
    out: dict[int, Mapping[str, object]] = {}
    for series in series_rule_attributes(session, study_id):
        if series.attributes is None:
            # Only a series indexed before revision 0004 that the start-up backfill
            # has not reached: rules see no attributes rather than a file being read.
            logger.warning(
                "series has no recorded attributes",
                extra={"action": "series_attributes_missing",
                       "series_instance_uid": series.series_instance_uid},
            )  # fmt: skip
        out[series.series_id] = rule_attributes(series.attributes, series.calling_ae)
    return out


def plan_study(
    session: Session, settings: Settings, plan: Plan, study: StableStudy
) -> tuple[int, int]:
    """Queue the jobs and deliveries a stable study calls for (no commit); their counts."""
    if not plan.pipelines and not plan.routes:
        return 0, 0
    attributes = series_attributes(session, study.id)
    jobs = 0
    for pipeline, match in plan.pipelines:
        if any(match.evaluate(attrs).matched for attrs in attributes.values()):
            jobs += enqueue_job(
                session, study.id, study.version, pipeline.name, pipeline.model,
                settings.worker.max_attempts, pipeline.priority,
            )  # fmt: skip
    deliveries = 0
    for route, match in plan.routes:
        matching = [sid for sid, attrs in attributes.items() if match.evaluate(attrs).matched]
        for peer in route.send_to:
            deliveries += queue_route_deliveries(session, matching, route.name, peer)
    return jobs, deliveries
