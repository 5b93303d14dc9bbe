"""Commands that run the node: ``run``, ``serve``, ``receive``, ``worker``, ``db upgrade``.

These are the only commands that migrate the index: the node's processes bring it to
the code's schema as they start (the serving process in a forked child, see
:func:`_preflight`), and ``db upgrade`` does it on demand. Process control (signals,
the node's lifeline, draining associations) is in :mod:`dicomnode.cli.process`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from dicomnode import __version__
from dicomnode.cli.app import NodeCommand, NodeGroup, log_args, settings_of, start_logging
from dicomnode.cli.process import (
    ORPHAN_RECEIVER_EXIT_S,
    drain_associations,
    hide_pixel_libraries,
    show_pixel_libraries,
    stop_event,
    stop_with_parent,
)
from dicomnode.config import Settings
from dicomnode.errors import DicomnodeError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from dicomnode.receive.ingest import Ingest
    from dicomnode.web.server import WebServer
    from dicomnode.worker.supervisor import Supervisor

__all__ = ["db", "receive", "run", "serve", "worker"]

logger = logging.getLogger(__name__)

#: prometheus-client's variable (read when it is first imported): where the processes
#: of one node share their metrics. Named here, not taken from dicomnode.metrics,
#: whose import would import prometheus-client before the variable is set.
_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


@click.command(cls=NodeCommand)
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run everything on this machine: SCP, scheduler and supervised workers."""
    _start_serving(ctx, with_workers=True)


@click.command(cls=NodeCommand)
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the SCP and the scheduler only; workers run elsewhere (`dicomnode worker`)."""
    _start_serving(ctx, with_workers=False)


def _start_serving(ctx: click.Context, with_workers: bool) -> None:
    hide_pixel_libraries()  # before the settings: compiling rules imports pydicom
    settings = settings_of(ctx)
    start_logging(ctx, settings, to_file=True)
    _serve(ctx, settings, with_workers=with_workers)


def _check_models(settings: Settings) -> None:
    from dicomnode.models.registry import available_models

    installed = available_models(settings.model_dirs)
    for pipeline in settings.pipelines:
        if pipeline.model not in installed:
            raise click.ClickException(
                f"bad configuration: pipeline {pipeline.name!r} names unknown model "
                f"{pipeline.model!r} (installed: {', '.join(installed)})"
            )


def _receiving(settings: Settings) -> tuple[Engine, sessionmaker[Session], Ingest, Any]:
    """Start one receiving process's part: index writer and SCP."""
    from dicomnode.index.db import make_engine, make_session_factory
    from dicomnode.receive.ingest import Ingest
    from dicomnode.receive.scp import start_scp

    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    node = settings.node
    ingest = Ingest(
        settings.data_dir, engine, max_instance_bytes=node.max_instance_bytes,
        max_inflated_bytes=node.max_inflated_bytes, max_elements=node.max_elements,
    )  # fmt: skip
    ingest.start()
    try:
        server = start_scp(settings, ingest, session_factory)
    except DicomnodeError as exc:  # e.g. a TLS file that cannot be loaded
        raise click.ClickException(str(exc)) from exc
    return engine, session_factory, ingest, server


def _stop_receiving(engine: Engine, ingest: Ingest, server: Any, grace: float = 30.0) -> None:
    # Stop accepting, let running associations finish (bounded), then drain the writer.
    server.shutdown()
    drain_associations(server, grace)
    ingest.stop()
    engine.dispose()


def _preflight(settings: Settings, node_pid: int) -> None:
    """What the serving process checks once at start (run in a forked child)."""
    from dicomnode.index.db import upgrade_database
    from dicomnode.worker.supervisor import die_with_node

    die_with_node(node_pid)  # a node killed mid-start leaves no migration running
    show_pixel_libraries()  # the model check imports the models, which need numpy

    _check_models(settings)
    _audit_forwarder(settings, None)  # [audit] syslog_ca must load: say so now
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)
    _backfill(settings)
    _reconcile(settings)


def _reconcile(settings: Settings) -> None:
    """Index or quarantine instance files a crash left unindexed (reads files)."""
    from dicomnode.receive.reconcile import reconcile_instances

    reconcile_instances(settings.database_url, settings.data_dir)


def _backfill(settings: Settings) -> None:
    """Record rule attributes of series indexed before revision 0004 (reads files)."""
    from dicomnode.receive.backfill import backfill_database

    node = settings.node
    backfill_database(
        settings.database_url, settings.data_dir,
        max_inflated_bytes=node.max_inflated_bytes, max_elements=node.max_elements,
    )  # fmt: skip


def _sender(settings: Settings, session_factory: sessionmaker[Session]) -> Callable[[], object]:
    """The scheduler's sending job: send the due deliveries of this node."""
    from dicomnode.send.deliveries import default_owner, send_due_deliveries

    owner = default_owner()
    return lambda: send_due_deliveries(settings, session_factory, owner)


def _audit_forwarder(
    settings: Settings, session_factory: sessionmaker[Session] | None
) -> Callable[[], object] | None:
    """The scheduler's job forwarding the audit trail to ``[audit] syslog_host``; None
    when it is empty (or only checking, without ``session_factory``). Raises
    ConfigError when ``syslog_ca`` cannot be loaded."""
    from dicomnode.send.audit_syslog import AuditForwarder, syslog_target

    target = syslog_target(settings)
    if target is None or session_factory is None:
        return None
    return AuditForwarder(settings, session_factory, target)


def _audit_start_stop(
    settings: Settings, session_factory: sessionmaker[Session], command: str, start: bool
) -> None:
    """Record the node's start with its settings, or its stop (never raises for the
    database: the audit trail logs and swallows its own failures)."""
    from dicomnode.index.audit import record_audit_event
    from dicomnode.index.schema import AuditEventType

    event = AuditEventType.SETTINGS_LOADED if start else AuditEventType.APPLICATION_STOPPED
    source = settings.source or "built-in defaults"
    detail = f"{command} {__version__}, settings {source}" if start else command
    with session_factory() as session:
        record_audit_event(session, event, detail=detail, actor=f"{command}:{os.getpid()}")


def _share_metrics(settings: Settings) -> None:
    """Make ``data_dir/metrics/`` the node's multiprocess metrics folder, empty.

    Called before this process imports prometheus-client; every process the node
    starts inherits the variable, so all of them write their values there.
    """
    from dicomnode.index.layout import DataLayout

    folder = DataLayout(settings.data_dir).metrics
    if "prometheus_client" in sys.modules:  # too late for this process to share
        logger.warning(
            "metrics of the serving process are not shared",
            extra={"action": "metrics_not_shared"},
        )
    shutil.rmtree(folder, ignore_errors=True)  # the values of a previous run
    folder.mkdir(parents=True)
    os.environ[_METRICS_ENV] = str(folder)


def _web(
    settings: Settings, server: Any, supervisor: Supervisor, with_workers: bool
) -> tuple[WebServer, Engine] | None:
    """The web server (bound, not yet serving) and its own index engine; None if off.

    Raises ConfigError when ``[web] host``/``port`` cannot be listened on.
    """
    if not settings.web.enabled:
        return None
    from dicomnode.index.db import make_engine, make_session_factory
    from dicomnode.index.layout import DataLayout
    from dicomnode.web.app import create_app
    from dicomnode.web.health import Check
    from dicomnode.web.server import WebServer

    def scp() -> Check:
        running, expected = supervisor.running("receive")
        ok = bool(server.accepting) and running == expected
        detail = {"accepting": bool(server.accepting), "receivers": running + 1,
                  "receivers_expected": expected + 1}  # fmt: skip
        return Check(ok, detail)

    def workers() -> Check:
        running, expected = supervisor.running("worker")
        return Check(running == expected, {"running": running, "expected": expected})

    logging.getLogger("uvicorn").setLevel(logging.WARNING)  # our records say it
    # An engine of its own: a slow page never holds a connection receiving needs.
    engine = make_engine(settings.database_url)
    from dicomnode.cli.rules import check_files

    app = create_app(
        settings, make_session_factory(engine), scp=scp,
        workers=workers if with_workers else None,
        multiprocess_dir=DataLayout(settings.data_dir).metrics,
        rule_tester=lambda files, calling_ae: check_files(settings, files, calling_ae),
    )  # fmt: skip
    try:
        return WebServer(app, settings.web.host, settings.web.port), engine
    except DicomnodeError:
        engine.dispose()
        raise


def _serve(ctx: click.Context, settings: Settings, with_workers: bool) -> None:
    from dicomnode.forked import run_forked

    try:
        run_forked(_preflight, settings, os.getpid())  # keeps numpy, models, Alembic out
    except DicomnodeError as exc:
        raise click.ClickException(str(exc)) from exc
    from dicomnode.schedule.scheduler import build_scheduler
    from dicomnode.worker.supervisor import Supervisor

    stop = stop_event()
    _share_metrics(settings)
    engine, session_factory, ingest, server = _receiving(settings)
    roles = ["receive"] * (settings.receive_processes - 1)
    roles += ["worker"] * (settings.worker.count if with_workers else 0)
    supervisor = Supervisor(roles, ctx.ensure_object(dict).get("config"), log_args(ctx))
    try:
        web = _web(settings, server, supervisor, with_workers)
    except DicomnodeError as exc:  # the web port is taken
        supervisor.stop()
        _stop_receiving(engine, ingest, server, grace=0.0)
        raise click.ClickException(str(exc)) from exc
    command = "run" if with_workers else "serve"
    _audit_start_stop(settings, session_factory, command, start=True)
    forward_audit = _audit_forwarder(settings, session_factory)  # syslog_ca checked by preflight
    scheduler = build_scheduler(
        settings, session_factory, _sender(settings, session_factory), forward_audit
    )
    scheduler.start()
    supervisor.start()
    if web is not None:
        web[0].start()
    logger.info(
        "node ready",
        extra={"action": "node_ready", "data_dir": str(settings.data_dir),
               "receivers": settings.receive_processes, "workers": roles.count("worker"),
               "version": __version__},
    )  # fmt: skip
    stop.wait()
    if web is not None:  # first: /readyz must not answer from a node half stopped
        web[0].stop()
        web[1].dispose()
    scheduler.shutdown(wait=True)
    supervisor.stop()
    _audit_start_stop(settings, session_factory, command, start=False)
    _stop_receiving(engine, ingest, server)
    logger.info("node stopped", extra={"action": "node_stopped"})


@click.command(cls=NodeCommand, hidden=True)
@click.option("--supervised", is_flag=True, help="Started by `run`/`serve`.")
@click.pass_context
def receive(ctx: click.Context, supervised: bool) -> None:
    """An extra receiving process (SCP + index writer) sharing the node's port."""
    hide_pixel_libraries()  # before the settings: compiling rules imports pydicom
    settings = settings_of(ctx)
    start_logging(ctx, settings, to_file=not supervised)
    engine, _, ingest, server = _receiving(settings)
    # Until here SIGTERM, also the one the kernel sends when the node dies, ends us at
    # once: nothing has been received yet.
    stop = stop_event()
    lifeline = stop_with_parent(stop, supervised, exit_after=ORPHAN_RECEIVER_EXIT_S)
    stop.wait()
    # An orphan frees the port at once and aborts what it is receiving: nothing it
    # acknowledged is lost (success means committed) and the peer sends the rest again.
    orphaned = lifeline is not None and not lifeline.node_alive()
    _stop_receiving(engine, ingest, server, grace=0.0 if orphaned else 30.0)


@click.command(cls=NodeCommand)
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs.")
@click.option(
    "--supervised", is_flag=True, hidden=True, help="Started by `run`: log to stderr only."
)
@click.pass_context
def worker(ctx: click.Context, max_jobs: int | None, supervised: bool) -> None:
    """Run one worker: claim jobs from the shared database and run their pipelines."""
    settings = settings_of(ctx)
    # Under `run` the node's stderr (and its log file) carries our records.
    start_logging(ctx, settings, to_file=not supervised)
    from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
    from dicomnode.models.device import resolve_device
    from dicomnode.models.registry import available_models
    from dicomnode.worker import SHUTDOWN_GRACE_S
    from dicomnode.worker.idle import wait_for_work

    _check_models(settings)
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    if settings.worker.device not in ("auto", "cpu"):
        # A GPU asked for by name must exist: say so now, not at the first job.
        resolve_device(settings.worker.device)
    stop = stop_event()

    # Until here SIGTERM, also the one the kernel sends when the node dies, ends us at
    # once: we hold no job yet. From here it stops us in order, and a supervised worker
    # also stops when its node dies (even by SIGKILL), so a restarted node never finds
    # an orphan working beside it.
    stop_with_parent(stop, supervised, exit_after=SHUTDOWN_GRACE_S + 10.0)
    # torch and the models wait for the first job (dicomnode/worker/idle.py).
    models = available_models(settings.model_dirs)
    if wait_for_work(session_factory, models, stop, settings.worker.poll_seconds):
        from dicomnode.worker.runner import Worker

        runner = Worker(settings, session_factory)

        def _relay() -> None:
            stop.wait()
            runner.stop.set()

        threading.Thread(target=_relay, daemon=True).start()
        runner.run(max_jobs)
    engine.dispose()


@click.group(cls=NodeGroup)
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or upgrade the index schema to the latest revision."""
    settings = settings_of(ctx)
    start_logging(ctx)
    from dicomnode.index.db import upgrade_database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)
    _backfill(settings)
    click.echo("database is at the latest revision")
