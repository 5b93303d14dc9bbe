"""``/metrics``: the Prometheus text exposition of every process of the node.

Counters and histograms come from the files the node's processes write in
multiprocess mode (:mod:`dicomnode.metrics`), added up at each scrape. Gauges that
describe the node's state are computed at scrape time from the index and the data
folder (:class:`IndexCollector`): jobs and deliveries by state, and the free space of
the data folder's disk. ``docs/operate.md`` lists every metric.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.index.deliveries import count_deliveries_by_state
from dicomnode.index.jobs import count_jobs_by_state

__all__ = ["IndexCollector", "MetricsSource", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])


class IndexCollector(Collector):
    """Gauges read at scrape time: queue depths from the index, free disk space.

    Parameters
    ----------
    session_factory
        Sessions on the index.
    data_dir
        The node's data folder.
    """

    def __init__(self, session_factory: sessionmaker[Session], data_dir: Path) -> None:
        self.session_factory = session_factory
        self.data_dir = data_dir

    def collect(self) -> Iterable[Metric]:
        """The gauges; without the queue depths when the index cannot be read."""
        up = GaugeMetricFamily(
            "dicomnode_index_up", "1 when the index answered this scrape's queries, else 0."
        )
        try:
            with self.session_factory() as session:
                jobs = count_jobs_by_state(session)
                deliveries = count_deliveries_by_state(session)
        except SQLAlchemyError as exc:
            logger.warning(
                "metrics: index not readable",
                extra={"action": "metrics_index_failed", "error": type(exc).__name__},
            )
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            yield _by_state("dicomnode_jobs", "Jobs in the index now, by state.", jobs.items())
            yield _by_state(
                "dicomnode_deliveries",
                "Deliveries in the index now, by state.",
                deliveries.items(),
            )
        yield up
        yield GaugeMetricFamily(
            "dicomnode_data_dir_free_bytes",
            "Bytes free on the filesystem of the data folder.",
            value=shutil.disk_usage(self.data_dir).free,
        )


def _by_state(
    name: str, documentation: str, counts: Iterable[tuple[str, int]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    for state, count in counts:
        family.add_metric([str(state)], count)
    return family


class _InProcess(Collector):
    """This process's own metrics (no multiprocess folder: a test, a lone process)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


@dataclass(frozen=True)
class MetricsSource:
    """Where a scrape's values come from.

    Parameters
    ----------
    index
        The gauges computed at scrape time.
    multiprocess_dir
        The node's ``PROMETHEUS_MULTIPROC_DIR``; None: this process's own values.
    """

    index: IndexCollector
    multiprocess_dir: Path | None

    def render(self) -> bytes:
        """The text exposition of one scrape."""
        registry = CollectorRegistry(auto_describe=False)
        if self.multiprocess_dir is not None:
            MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        else:
            registry.register(_InProcess())
        registry.register(self.index)
        return generate_latest(registry)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text exposition (format 0.0.4)."""
    source: MetricsSource = request.app.state.metrics
    return Response(source.render(), media_type=CONTENT_TYPE_LATEST)
