"""The ``dicomnode`` command line; the one place that wires the stages together."""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dicomnode import __version__
from dicomnode.config import PeerSettings, Settings, load_settings
from dicomnode.errors import ConfigError, DicomnodeError
from dicomnode.log import configure_logging

__all__ = ["main"]

logger = logging.getLogger(__name__)

_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def _settings(ctx: click.Context) -> Settings:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings(obj.get("config"))
        except ConfigError as exc:
            raise click.ClickException(f"bad configuration: {exc}") from exc
    settings: Settings = obj["settings"]
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dicomnode")
@click.option(
    "--config", "-c", type=click.Path(path_type=Path, dir_okay=False),
    help="Settings file (default: $DICOMNODE_CONFIG, else ./settings.toml, else built-in).",
)  # fmt: skip
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING, ERROR.")
@click.option("--log-json", is_flag=True, help="Write log records as JSON lines.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, log_level: str, log_json: bool) -> None:
    """dicomnode: a DICOM node that receives, indexes, runs models and sends results."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["log"] = (log_level, "json" if log_json else "text")


def _logging(ctx: click.Context, settings: Settings | None = None, to_file: bool = False) -> None:
    level, style = ctx.obj["log"]
    log_dir = settings.data_dir / "logs" if settings is not None and to_file else None
    configure_logging(level, log_dir, style)


# -- run ------------------------------------------------------------------------------


@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the node: SCP + scheduler in one process (workers arrive in a later release)."""
    settings = _settings(ctx)
    _logging(ctx, settings, to_file=True)
    _serve(settings)


def _serve(settings: Settings) -> None:
    from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
    from dicomnode.receive.ingest import Ingest
    from dicomnode.receive.scp import start_scp
    from dicomnode.schedule.scheduler import build_scheduler

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        logger.info(
            "stopping", extra={"action": "node_stopping", "signal": signal.Signals(signum).name}
        )
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    ingest = Ingest(settings.data_dir, session_factory)
    ingest.start()
    server = start_scp(settings, ingest, session_factory)
    scheduler = build_scheduler(settings, session_factory)
    scheduler.start()
    logger.info(
        "node ready",
        extra={"action": "node_ready", "data_dir": str(settings.data_dir), "version": __version__},
    )
    while not stop.wait(0.5):
        pass
    # Stop accepting, let running associations finish (bounded), then drain the writer.
    server.shutdown()
    deadline = time.monotonic() + 30
    # Rejected or never-negotiated sockets linger until pynetdicom's ARTIM timer;
    # only established associations are worth waiting for.
    while time.monotonic() < deadline and any(
        assoc.is_established for assoc in server.active_associations
    ):
        time.sleep(0.1)
    for assoc in server.active_associations:
        assoc.abort()
    scheduler.shutdown(wait=True)
    ingest.stop()
    engine.dispose()
    logger.info("node stopped", extra={"action": "node_stopped"})


# -- db -------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or upgrade the index schema to the latest revision."""
    settings = _settings(ctx.find_root())
    _logging(ctx.find_root())
    from dicomnode.index.db import upgrade_database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)
    click.echo("database is at the latest revision")


# -- echo / send -----------------------------------------------------------------------


def _peer(settings: Settings, name: str) -> PeerSettings:
    for peer in settings.peers:
        if peer.name == name:
            return peer
    match = _PEER.match(name)
    if match:
        return PeerSettings(
            name=name, ae_title=match["ae"], host=match["host"], port=int(match["port"])
        )
    known = ", ".join(p.name for p in settings.peers) or "none configured"
    raise click.BadParameter(f"unknown peer {name!r} (known: {known}; or use AE@host:port)")


@cli.command()
@click.argument("peer")
@click.pass_context
def echo(ctx: click.Context, peer: str) -> None:
    """C-ECHO a PEER (a name from settings, or AE@host:port)."""
    settings = _settings(ctx)
    _logging(ctx)
    from dicomnode.send.scu import echo_peer

    target = _peer(settings, peer)
    try:
        status = echo_peer(target, settings.node.ae_title)
    except DicomnodeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"C-ECHO {target.ae_title}@{target.host}:{target.port}: status 0x{status:04X}")
    if status != 0:
        sys.exit(1)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--to", "to", required=True, help="Peer name from settings, or AE@host:port.")
@click.pass_context
def send(ctx: click.Context, paths: tuple[Path, ...], to: str) -> None:
    """C-STORE files and folders (recursively) to a peer, with a progress bar."""
    settings = _settings(ctx)
    _logging(ctx)
    from dicomnode.send.scu import collect_files, send_files

    target = _peer(settings, to)
    try:
        files = collect_files(paths)
    except DicomnodeError as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console(stderr=True)
    columns = (
        TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("send", total=len(files))
        report = send_files(
            files, target, settings.node.ae_title, lambda n: progress.advance(task, n)
        )
    for path, reason in report.failed[:20]:
        console.print(f"[red]failed[/red] {path}: {reason}")
    click.echo(
        f"sent {report.sent} of {len(files)} to {target.name}"
        f" ({report.warnings} with warnings, {len(report.failed)} failed)"
    )
    if report.failed:
        sys.exit(1)


# -- studies ---------------------------------------------------------------------------


@cli.command()
@click.option("--limit", default=50, show_default=True, help="Most recent studies to show.")
@click.pass_context
def studies(ctx: click.Context, limit: int) -> None:
    """List the studies in the index (most recent first)."""
    settings = _settings(ctx)
    _logging(ctx)
    from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
    from dicomnode.index.queries import list_studies

    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        rows = list_studies(session, limit)
    engine.dispose()
    table = Table(
        "Study Instance UID",
        "Date",
        "Modality",
        "Series",
        "Instances",
        "MB",
        "State",
        "Last received",
    )
    for row in rows:
        table.add_row(
            row.study_instance_uid,
            row.study_date or "",
            row.modalities,
            str(row.series),
            str(row.instances),
            f"{row.size_bytes / 1e6:.1f}",
            row.state,
            row.last_received_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    Console(width=200).print(table)


def main() -> None:
    """Entry point of the ``dicomnode`` command."""
    cli(obj={})
