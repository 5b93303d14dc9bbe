"""What the index holds, as tables: ``studies``, ``jobs`` and ``deliveries``.

These commands read the index as it is and never migrate it (only the node and
``dicomnode db upgrade`` do): an index behind the code's schema is reported with one
line that says to run ``dicomnode db upgrade``. ``jobs`` and ``deliveries`` share one
way to list rows (``--limit``, ``--state``) and to queue rows again (``retry``),
described per kind by a :class:`_Records`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import click

from dicomnode.cli.app import (
    NodeCommand,
    NodeGroup,
    index_session,
    print_table,
    settings_of,
    start_logging,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dicomnode.index.deliveries import DeliverySummary
    from dicomnode.index.jobs import JobSummary
    from dicomnode.index.studies import StudySummary

__all__ = ["deliveries", "jobs", "studies"]

_TIME = "%Y-%m-%d %H:%M:%S"
_JOB_COLUMNS = (
    "ID",
    "Study Instance UID",
    "Pipeline",
    "State",
    "Tries",
    "Created",
    "Seconds",
    "Error / result",
)
_DELIVERY_COLUMNS = (
    "ID",
    "What",
    "SOP Instance UID",
    "Peer",
    "State",
    "Tries",
    "Status",
    "Error",
    "Sent at",
)


@dataclass(frozen=True, slots=True)
class _Records:
    """One kind of row that is listed and retried, and how.

    Attributes
    ----------
    plural
        The rows' name in messages (``jobs``).
    states
        The enum of the rows' states (for ``--state``).
    columns
        Titles of the table's columns.
    listing
        ``(session, limit, state or None)`` -> the most recent rows, newest first.
    cells
        One row -> its table cells.
    requeue
        ``(session, ids, every failed one)`` -> the ids queued again (commits).
    refused
        Why an id may not have been queued, for the error line.
    """

    plural: str
    states: type[Enum]
    columns: tuple[str, ...]
    listing: Callable[[Session, int, Any], Sequence[Any]]
    cells: Callable[[Any], tuple[str, ...]]
    requeue: Callable[[Session, tuple[int, ...], bool], list[int]]
    refused: str


def _job_cells(row: JobSummary) -> tuple[str, ...]:
    seconds = " ".join(f"{k}={v:g}" for k, v in row.timings.items())
    detail = row.error or row.result or ""
    return (
        str(row.id), row.study_instance_uid, row.pipeline, row.state,
        f"{row.attempts}/{row.max_attempts}", row.created_at.strftime(_TIME), seconds,
        detail[:80],
    )  # fmt: skip


def _jobs() -> _Records:
    from dicomnode.index.jobs import list_jobs, retry_job
    from dicomnode.index.schema import JobState

    return _Records(
        plural="jobs",
        states=JobState,
        columns=_JOB_COLUMNS,
        listing=list_jobs,
        cells=_job_cells,
        # retry_job takes one job and commits it: a refusal leaves the others queued.
        requeue=lambda session, ids, _failed: [i for i in ids if retry_job(session, i)],
        refused="unknown or running",
    )


def _delivery_cells(row: DeliverySummary) -> tuple[str, ...]:
    status = "" if row.last_status is None else f"0x{row.last_status:04X}"
    what = row.what if row.route is None else f"{row.what} ({row.route})"
    sent = row.sent_at.strftime(_TIME) if row.sent_at else ""
    return (
        str(row.id), what, row.sop_instance_uid, row.peer, row.state, str(row.attempts),
        status, (row.error or "")[:80], sent,
    )  # fmt: skip


def _deliveries() -> _Records:
    from dicomnode.index.deliveries import list_deliveries, retry_deliveries
    from dicomnode.index.schema import DeliveryState

    return _Records(
        plural="deliveries",
        states=DeliveryState,
        columns=_DELIVERY_COLUMNS,
        listing=list_deliveries,
        cells=_delivery_cells,
        requeue=lambda session, ids, failed: retry_deliveries(session, ids, failed=failed),
        refused="unknown, being sent, or invalid",
    )


def _show(ctx: click.Context, kind: _Records, limit: int, state: str | None) -> None:
    """Print the most recent rows of ``kind`` (in ``state`` only, when given)."""
    settings = settings_of(ctx)
    start_logging(ctx)
    try:
        wanted = kind.states(state) if state else None
    except ValueError:
        raise click.BadParameter(f"unknown state {state!r}", param_hint="--state") from None
    with index_session(settings) as session:
        rows = kind.listing(session, limit, wanted)
    print_table(kind.columns, [kind.cells(row) for row in rows], width=220)


def _retry(ctx: click.Context, kind: _Records, ids: tuple[int, ...], failed: bool) -> None:
    """Queue rows ``ids`` (and every failed one) again; fail naming the ids not queued."""
    settings = settings_of(ctx)
    start_logging(ctx)
    with index_session(settings) as session:
        queued = kind.requeue(session, ids, failed)
    click.echo(f"{len(queued)} {kind.plural} queued")
    missing = sorted(set(ids) - set(queued))
    if missing:
        listed = ", ".join(map(str, missing))
        raise click.ClickException(f"not queued ({kind.refused}): {listed}")


@click.group(cls=NodeGroup, invoke_without_command=True)
@click.option("--limit", default=50, show_default=True, help="Most recent jobs to show.")
@click.option("--state", default=None, help="Only jobs in this state (queued, running, ...).")
@click.pass_context
def jobs(ctx: click.Context, limit: int, state: str | None) -> None:
    """List jobs with their state, timings and errors."""
    if ctx.invoked_subcommand is None:
        _show(ctx, _jobs(), limit, state)


@jobs.command("retry")
@click.argument("job_ids", nargs=-1, required=True, type=int, metavar="ID...")
@click.pass_context
def jobs_retry(ctx: click.Context, job_ids: tuple[int, ...]) -> None:
    """Queue jobs ID... again now (failed, dead, done or not-applicable ones)."""
    _retry(ctx, _jobs(), job_ids, failed=False)


@click.group(cls=NodeGroup, invoke_without_command=True)
@click.option("--limit", default=50, show_default=True, help="Most recent deliveries to show.")
@click.option("--state", default=None, help="Only deliveries in this state (pending, sent, ...).")
@click.pass_context
def deliveries(ctx: click.Context, limit: int, state: str | None) -> None:
    """List deliveries to peers with their state, attempts and last status."""
    if ctx.invoked_subcommand is None:
        _show(ctx, _deliveries(), limit, state)


@deliveries.command("retry")
@click.argument("delivery_ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--failed", is_flag=True, help="Retry every failed delivery.")
@click.pass_context
def deliveries_retry(ctx: click.Context, delivery_ids: tuple[int, ...], failed: bool) -> None:
    """Send deliveries ID... (or every failed one) again now."""
    if not delivery_ids and not failed:
        raise click.UsageError("name delivery IDs or pass --failed")
    _retry(ctx, _deliveries(), delivery_ids, failed)


def _study_cells(row: StudySummary) -> tuple[str, ...]:
    received = row.last_received_at
    return (
        row.study_instance_uid, row.study_date or "", row.modalities, str(row.series),
        str(row.instances), f"{row.size_bytes / 1e6:.1f}", row.state, received.strftime(_TIME),
    )  # fmt: skip


@click.command(cls=NodeCommand)
@click.option("--limit", default=50, show_default=True, help="Most recent studies to show.")
@click.pass_context
def studies(ctx: click.Context, limit: int) -> None:
    """List the studies in the index (most recent first)."""
    settings = settings_of(ctx)
    start_logging(ctx)
    from dicomnode.index.studies import list_studies

    with index_session(settings) as session:
        rows = list_studies(session, limit)
    columns = ("Study Instance UID", "Date", "Modality", "Series", "Instances", "MB", "State",
               "Last received")  # fmt: skip
    print_table(columns, [_study_cells(row) for row in rows], width=200)
