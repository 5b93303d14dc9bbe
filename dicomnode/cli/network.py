"""DICOM utilities in the spirit of DCMTK's: ``echo`` and ``send``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
from rich.console import Console

from dicomnode.cli.app import NodeCommand, progress_bar, settings_of, start_logging
from dicomnode.config import PeerSettings, Settings
from dicomnode.errors import DicomnodeError

__all__ = ["echo", "send"]

_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def _peer(settings: Settings, name: str) -> PeerSettings:
    """A peer from ``[[peers]]`` by name, or one written as ``AE@host:port``."""
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


@click.command(cls=NodeCommand)
@click.argument("peer")
@click.pass_context
def echo(ctx: click.Context, peer: str) -> None:
    """C-ECHO a PEER (a name from settings, or AE@host:port)."""
    settings = settings_of(ctx)
    start_logging(ctx)
    from dicomnode.send.scu import echo_peer

    target = _peer(settings, peer)
    try:
        status = echo_peer(target, settings.node.ae_title)
    except DicomnodeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"C-ECHO {target.ae_title}@{target.host}:{target.port}: status 0x{status:04X}")
    if status != 0:
        sys.exit(1)


@click.command(cls=NodeCommand)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--to", "to", required=True, help="Peer name from settings, or AE@host:port.")
@click.pass_context
def send(ctx: click.Context, paths: tuple[Path, ...], to: str) -> None:
    """C-STORE files and folders (recursively) to a peer, with a progress bar."""
    settings = settings_of(ctx)
    start_logging(ctx)
    from dicomnode.send.scu import collect_files, send_files

    target = _peer(settings, to)
    try:
        files = collect_files(paths)
    except DicomnodeError as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console(stderr=True)
    with progress_bar() as progress:
        task = progress.add_task("sending", total=len(files))
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
